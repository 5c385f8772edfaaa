"""Offline throughput: the most samples per second a backend reaches for one case.

A session that can run requests concurrently (OpenVINO's async infer queue, parallel
ONNX Runtime runs) offers ``throughput_configs()``; the scenario times each for a fixed
window and keeps the best. Every session also gets the plain sequential loop, so the
sweep always has the one-request baseline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

#: Runs ``calls`` inferences of the case's batch (spread over the configuration's
#: concurrent requests) and returns when all are done.
BatchRunner = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class ThroughputConfig:
    name: str
    requests: int
    run: BatchRunner
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ThroughputResult:
    config: ThroughputConfig
    samples_per_s: float
    calls: int
    elapsed_s: float
    #: seconds per batch in each timing window (for pytest-benchmark's statistics)
    window_s_per_batch: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.name,
            "requests": self.config.requests,
            **self.config.details,
            "samples_per_s": self.samples_per_s,
            "calls": self.calls,
            "elapsed_s": self.elapsed_s,
        }


def measure_config(config: ThroughputConfig, batch_size: int, duration_s: float, windows: int = 5) -> ThroughputResult:
    """Warm up, then run ``windows`` windows of about ``duration_s / windows`` each."""
    config.run(max(1, config.requests))  # warm-up: every request slot used once
    started = time.perf_counter()
    config.run(max(1, config.requests))
    per_call = max((time.perf_counter() - started) / max(1, config.requests), 1e-6)
    calls_per_window = max(config.requests, int(duration_s / windows / per_call))
    window_times: list[float] = []
    total_calls = 0
    total_elapsed = 0.0
    for _ in range(windows):
        t0 = time.perf_counter()
        config.run(calls_per_window)
        elapsed = time.perf_counter() - t0
        window_times.append(elapsed / calls_per_window)
        total_calls += calls_per_window
        total_elapsed += elapsed
    return ThroughputResult(
        config=config,
        samples_per_s=total_calls * batch_size / total_elapsed,
        calls=total_calls,
        elapsed_s=total_elapsed,
        window_s_per_batch=window_times,
    )


def sequential_config(call: Callable[[], Any]) -> ThroughputConfig:
    def run(calls: int) -> None:
        for _ in range(calls):
            call()

    return ThroughputConfig("sequential", 1, run, {"execution": "one request at a time"})


def sweep(
    session: Any, call: Callable[[], Any], inputs: Any, batch_size: int, duration_s: float, threads: int
) -> list[ThroughputResult]:
    configs = [sequential_config(call)]
    offered = getattr(session, "throughput_configs", None)
    if offered is not None:
        configs += list(offered(inputs, threads))
    return [measure_config(config, batch_size, duration_s) for config in configs]
