"""Scenario ``latency`` (single stream): one request at a time, per case of the matrix.

Each case is prepared, warmed up and checked against the fp32 reference by the
``infermatrix_prepared`` fixture before a single round is timed. With ``--repeats N``
the case is also timed in N fresh processes, and the spread between them is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infermatrix.api.scenario import Prepared, Scenario
from infermatrix.case.runner import FORWARD, measure_latency
from infermatrix.isolation.fresh import FreshRun, repeat_info
from infermatrix.measure.timing import TimingPolicy

SCENARIO = Scenario("latency", FORWARD, default=True, order=0, measure=measure_latency)
pytestmark = SCENARIO.mark()


def fresh_run(case_id: str) -> FreshRun:
    """This test for one case, as a fresh process runs it (cold start, memory, --repeats)."""
    return FreshRun.of_test(Path(__file__), "test_latency", SCENARIO.name, case_id)


def test_latency(
    infermatrix_prepared: Prepared, infermatrix_policy: TimingPolicy, request: pytest.FixtureRequest, benchmark: Any,
) -> None:
    timing = infermatrix_prepared.run(SCENARIO, benchmark, infermatrix_policy)
    if not timing.samples_s:  # only under --benchmark-disable
        return
    assert timing.median_s > 0, f"{infermatrix_prepared.case.id}: a zero median means the timer saw no work"
    repeats = request.config.getoption("--repeats")
    if repeats > 0:
        infermatrix_prepared.extra_info.update(
            repeat_info(request.config, fresh_run(infermatrix_prepared.case.id), repeats, timing.median_s)
        )
