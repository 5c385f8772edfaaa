"""Run one case in a fresh Python process, for the figures a warm process would falsify.

Cold start (framework import, load, convert, quantize, compile, first inference) is only
cold in a new process, and a process's peak RSS (``ru_maxrss``) only belongs to one case
when that case is the only thing the process did. The child is an ordinary pytest run
of one test (a scenario module names its node and the options that select it, e.g. the
latency test of that case), so it goes through exactly the same hooks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from infermatrix.isolation.pool import describe_exit
from infermatrix.results import CaseResult


@dataclasses.dataclass(frozen=True)
class IsolatedRun:
    case_id: str
    #: the child's latency record (its preparation phases, memory, accuracy)
    result: CaseResult
    latency_samples_s: list[float]
    process_wall_s: float
    framework_import_s: float | None


def _passthrough_options(config: pytest.Config) -> list[str]:
    args = []
    for option in ("--infermatrix-cache", "--threads", "--accuracy-samples"):
        value = config.getoption(option)
        if value is not None:
            args.append(f"{option}={value}")
    for weights in config.getoption("--model-weights"):
        args.append(f"--model-weights={weights}")
    return args


def framework_import_seconds(module: str, timeout_s: float = 300) -> float | None:
    """Seconds ``import module`` takes in a fresh interpreter (None if it fails)."""
    if not module:
        return None
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


@dataclasses.dataclass(frozen=True)
class FreshRun:
    """One test of one case as a fresh pytest process runs it: its node id and the options
    that select its scenario (the scenario module that owns the test says both)."""

    case_id: str
    node: str
    select: tuple[str, ...]

    @classmethod
    def of_test(cls, module: Path, test: str, scenario: str, case_id: str) -> FreshRun:
        """``test`` of ``module`` (a scenario module's parametrized test) for ``case_id``."""
        return cls(case_id, f"{module}::{test}[{case_id}]", (f"--scenarios={scenario}",))


def run_isolated(config: pytest.Config, fresh: FreshRun, framework_module: str,
                 timing_args: tuple[str, ...] = ("--min-rounds=5", "--min-time=0", "--max-time=1")) -> IsolatedRun:
    """Run ``fresh`` alone in a new process; its result JSON entry."""
    timeout_s = float(config.getoption("--case-timeout"))
    case_id = fresh.case_id
    with tempfile.TemporaryDirectory(prefix="infermatrix-isolated-") as tmp:
        out = Path(tmp) / "result.json"
        # --isolation=none: this process is already the case's own; a worker would hide its memory and imports.
        # --machine-probe=off: the probe's buffers would count in the process's memory, its work in cold start.
        cmd = [
            sys.executable, "-m", "pytest", fresh.node, "-q", "-p", "no:cacheprovider", f"--rootdir={config.rootpath}",
            f"--benchmark-json={out}", *fresh.select, "--isolation=none", "--machine-probe=off", *timing_args,
            *_passthrough_options(config),
        ]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=config.rootpath, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        except subprocess.TimeoutExpired:
            pytest.fail(f"{case_id}: hung — the isolated run gave no result within {timeout_s:g} s and was killed "
                        "(--case-timeout sets the limit)", pytrace=False)
        wall = time.perf_counter() - started
        # The file is written even when the case was not timed (no benchmarks): that is a failure too.
        benchmarks = json.loads(out.read_text())["benchmarks"] if out.exists() else []
        if proc.returncode != 0 or len(benchmarks) != 1:
            tail = (proc.stdout + proc.stderr)[-2000:]
            pytest.fail(f"{case_id}: the isolated run {describe_exit(proc.returncode)}:\n{tail}", pytrace=False)
        (bench,) = benchmarks
    return IsolatedRun(
        case_id=case_id,
        result=CaseResult.from_benchmark(bench),
        latency_samples_s=list(bench["stats"]["data"]),
        process_wall_s=wall,
        framework_import_s=framework_import_seconds(framework_module),
    )


@dataclasses.dataclass
class IsolatedRuns:
    """One isolated run per case per pytest session, shared by cold-start and memory."""

    runs: dict[str, IsolatedRun] = dataclasses.field(default_factory=dict)

    def get(self, config: pytest.Config, fresh: FreshRun, framework_module: str) -> IsolatedRun:
        if fresh.case_id not in self.runs:
            self.runs[fresh.case_id] = run_isolated(config, fresh, framework_module)
        return self.runs[fresh.case_id]


isolated_key = pytest.StashKey[IsolatedRuns]()


def repeat_info(config: pytest.Config, fresh: FreshRun, repeats: int, in_process_median_s: float) -> dict[str, Any]:
    """Time ``fresh`` (a case's latency test) in ``repeats`` fresh processes with this run's timing options.

    On a noisy machine a case's median moves between processes far more than within
    one (here ~17%, often between two levels); this records that spread beside the
    within-run figures so the regression verdicts can use it.
    """
    import numpy as np

    timing_args = tuple(
        f"{option}={config.getoption(option)}"
        for option in ("--min-rounds", "--min-time", "--max-time", "--target-precision")
    )
    # an injected slowdown holds in the fresh processes too: the verdicts judge their medians
    timing_args += tuple(f"--inject-slowdown={value}" for value in config.getoption("--inject-slowdown") or ())
    medians = []
    for _ in range(repeats):
        run = run_isolated(config, fresh, "", timing_args=timing_args)
        medians.append(float(np.median(run.latency_samples_s)))
    values = np.asarray(medians)
    return {
        "repeats": repeats,
        "repeat_medians_ms": [m * 1e3 for m in medians],
        "between_process_cv": float(values.std(ddof=1) / values.mean()) if repeats > 1 else None,
        "between_process_range_ratio": float(values.max() / values.min()),
        "in_process_median_vs_repeats": in_process_median_s / float(np.median(values)),
    }
