"""Scenario ``throughput`` (offline): the most samples per second for each case.

The case's batch size is one axis of the sweep (the matrix holds each batch size as a
case); the other is concurrency where the backend has it (OpenVINO's async queue under
the THROUGHPUT hint, parallel ONNX Runtime runs). Every configuration tried and the
best one land in ``extra_info``.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.scenario import Prepared, Scenario
from infermatrix.case.runner import FORWARD, PreparedCase, measure_throughput


def measure(prepared: PreparedCase, benchmark: Any, duration_s: float) -> list[dict[str, Any]]:
    return [r.as_dict() for r in measure_throughput(prepared, benchmark, duration_s)]


SCENARIO = Scenario("throughput", FORWARD, default=True, order=1, measure=measure)
pytestmark = SCENARIO.mark()


def test_throughput(infermatrix_prepared: Prepared, request: pytest.FixtureRequest, benchmark: Any) -> None:
    results = infermatrix_prepared.run(SCENARIO, benchmark, request.config.getoption("--throughput-time"))
    assert all(r["samples_per_s"] > 0 for r in results), results
