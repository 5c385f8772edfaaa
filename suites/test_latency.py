"""Scenario ``latency`` (single stream): one request at a time, per case of the matrix.

Each case is prepared, warmed up and checked against the fp32 reference by the
``infermatrix_prepared`` fixture before a single round is timed. With ``--repeats N``
the case is also timed in N fresh processes, and the spread between them is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infermatrix.isolated import repeat_info
from infermatrix.plugin import CaseHandle
from infermatrix.timing import TimingPolicy

pytestmark = pytest.mark.infermatrix_scenario("latency")


def test_latency(
    infermatrix_prepared: CaseHandle, infermatrix_policy: TimingPolicy, request: pytest.FixtureRequest,
    benchmark: Any,
) -> None:
    timing = infermatrix_prepared.latency(benchmark, infermatrix_policy)
    if not timing.samples_s:  # only under --benchmark-disable
        return
    assert timing.median_s > 0, f"{infermatrix_prepared.case.id}: a zero median means the timer saw no work"
    repeats = request.config.getoption("--repeats")
    if repeats > 0:
        infermatrix_prepared.extra_info.update(
            repeat_info(request.config, Path(__file__), infermatrix_prepared.case.id, repeats, timing.median_s)
        )
