"""Scenario ``throughput`` (offline): the most samples per second for each case.

The case's batch size is one axis of the sweep (the matrix holds each batch size as a
case); the other is concurrency where the backend has it (OpenVINO's async queue under
the THROUGHPUT hint, parallel ONNX Runtime runs). Every configuration tried and the
best one land in ``extra_info``.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.plugin import CaseHandle

pytestmark = pytest.mark.infermatrix_scenario("throughput")


def test_throughput(infermatrix_prepared: CaseHandle, request: pytest.FixtureRequest, benchmark: Any) -> None:
    results = infermatrix_prepared.throughput(benchmark, request.config.getoption("--throughput-time"))
    assert all(r["samples_per_s"] > 0 for r in results), results
