"""Scenario ``memory``: what one case costs in memory and on disk.

Measured in a fresh process running only this case (a process's peak RSS says nothing
about one case once others ran in it): the peak host RSS the case added, the device's
peak (framework allocator and NVML, where there is a device) and the model's size on
disk as the backend stores it. Opt-in (``--scenarios memory`` or ``all``). The timing
rounds recorded are the isolated process's latency rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infermatrix.api.scenario import Scenario
from infermatrix.api.types import Case
from infermatrix.case.runner import FORWARD
from infermatrix.isolation.fresh import FreshRun, IsolatedRuns, isolated_key
from infermatrix.measure.timing import benchmark_recorder
from infermatrix.results import write

# Opt-in (a new process per case); runs after the in-process scenarios of its case.
SCENARIO = Scenario("memory", FORWARD, default=False, order=3)
pytestmark = SCENARIO.mark()


def test_memory(infermatrix_case: Case, request: pytest.FixtureRequest, benchmark: Any) -> None:
    runs = request.config.stash.setdefault(isolated_key, IsolatedRuns())
    # the latency scenario's test of this case, alone in a fresh process
    latency = FreshRun.of_test(Path(__file__).with_name("test_latency.py"), "test_latency", "latency",
                               infermatrix_case.id)
    run = runs.get(request.config, latency, infermatrix_case.backend.framework_module)
    child = run.result
    # every memory figure the child's hooks measured, typed or not yet a field of the record
    memory = {k: v for k, v in child.to_extra_info().items() if k.startswith("memory_")}
    benchmark.group = f"memory-{infermatrix_case.model.name}-b{infermatrix_case.batch_size}"
    write(benchmark, infermatrix_case, SCENARIO.name, {
        "backend_version": child.backend_version,
        **memory,
        "model_size_bytes": child.model_size_bytes,
        "isolated_process_wall_s": run.process_wall_s,
        "backend_config": child.backend_config,
        "accuracy": child.accuracy,
        "precision_evidence": child.precision_evidence,
    })
    record = benchmark_recorder(benchmark, "infermatrix memory (isolated run)")
    for sample in run.latency_samples_s:
        record(sample)
    assert memory.get("memory_host_peak_rss_added_bytes", 0) > 0, memory
