"""How much the harness adds to every timed call: ``python -m infermatrix overhead``.

A no-op session (it returns its input) is timed through the suite's own loop —
``timing.timed_rounds`` recording each round into pytest-benchmark's statistics, the
call going through ``PreparedCase.call`` and ``Session.run`` exactly as in a case — and
through a bare ``for`` loop calling the same no-op. The difference per call is the
harness's overhead, reported as the median of several interleaved trials.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np


class NoOpSession:
    config: dict[str, Any] = {}
    size_bytes = None

    def __init__(self) -> None:
        from infermatrix.api.types import PrepareTimes

        self.times = PrepareTimes()

    def run(self, inputs: dict[str, Any]) -> list[Any]:
        return [inputs["x"]]

    def close(self) -> None:
        pass


def bare_loop(call: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - started


def harness_loop(call: Any, n: int) -> float:
    from pytest_benchmark.stats import Stats

    from infermatrix.measure.timing import TimingPolicy, timed_rounds

    stats = Stats()  # type: ignore[no-untyped-call]
    # precision target unreachable and budget ample, so exactly n rounds run
    policy = TimingPolicy(min_rounds=n, min_time_s=0.0, max_time_s=3600.0, max_rounds=n, target_precision=1e-9)
    started = time.perf_counter()
    timed_rounds(call, policy, record=stats.update)
    return time.perf_counter() - started


def measure(n: int = 20_000, trials: int = 9) -> dict[str, float]:
    from infermatrix.case.runner import PreparedCase

    session = NoOpSession()
    inputs = {"x": np.zeros(1, dtype=np.float32)}
    prepared = PreparedCase(case=None, session=session, inputs=inputs, accuracy=None, prepare_s=0.0,  # type: ignore[arg-type]
                            warmup_calls=0, rss_before_bytes=0, flops_per_sample=None, threads=1)
    overheads, bare_per_call = [], []
    for _ in range(trials):
        bare = bare_loop(prepared.call, n)
        harness = harness_loop(prepared.call, n)
        overheads.append((harness - bare) / n)
        bare_per_call.append(bare / n)
    return {
        "calls_per_trial": n,
        "trials": trials,
        "overhead_per_call_us_median": statistics.median(overheads) * 1e6,
        "overhead_per_call_us_max": max(overheads) * 1e6,
        "noop_call_us_median": statistics.median(bare_per_call) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=9)
    args = parser.parse_args(argv)
    result = measure(args.calls, args.trials)
    for key, value in result.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
