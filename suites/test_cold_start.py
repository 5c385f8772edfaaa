"""Scenario ``cold-start``: from nothing to the first answer, in a fresh process.

Each phase is timed apart: the framework's import (its own fresh interpreter), then in a
fresh pytest process for this case alone: load (weights), convert (export/conversion;
the ONNX export comes from the shared cache when it is warm), quantize, compile, first
inference. Opt-in (``--scenarios cold-start`` or ``all``): it costs a new process per case.
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
SCENARIO = Scenario("cold-start", FORWARD, default=False, order=2)
pytestmark = SCENARIO.mark()

PHASES = ("load_s", "convert_s", "quantize_s", "compile_s", "first_inference_s")


def test_cold_start(infermatrix_case: Case, request: pytest.FixtureRequest, benchmark: Any) -> None:
    runs = request.config.stash.setdefault(isolated_key, IsolatedRuns())
    # the latency scenario's test of this case, alone in a fresh process
    latency = FreshRun.of_test(Path(__file__).with_name("test_latency.py"), "test_latency", "latency",
                               infermatrix_case.id)
    run = runs.get(request.config, latency, infermatrix_case.backend.framework_module)
    child = run.result
    assert child.prepare_s is not None and child.first_inference_s is not None, child
    total = (run.framework_import_s or 0.0) + child.prepare_s + child.first_inference_s
    backend_config = dict(child.backend_config or {})
    benchmark.group = f"cold-start-{infermatrix_case.model.name}-b{infermatrix_case.batch_size}"
    write(benchmark, infermatrix_case, SCENARIO.name, {
        "backend_version": child.backend_version,
        "framework_import_s": run.framework_import_s,
        **{phase: getattr(child, phase) for phase in PHASES},
        "prepare_s": child.prepare_s,
        "cold_start_total_s": total,
        "isolated_process_wall_s": run.process_wall_s,
        "onnx_export_cached": backend_config.get("onnx_export_cached"),  # None: no ONNX on this path
        "backend_config": backend_config,
        "accuracy": child.accuracy,
        "precision_evidence": child.precision_evidence,
        "model_size_bytes": child.model_size_bytes,
    })
    # One round: the whole cold start, so pytest-benchmark's table and compare show it.
    benchmark_recorder(benchmark, "infermatrix cold-start (one isolated run)")(total)
    accuracy = child.accuracy or {}
    assert accuracy.get("passed"), accuracy.get("failures")
    assert child.first_inference_s > 0
