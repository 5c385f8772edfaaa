"""Scenario ``latency`` (single stream): one request at a time, per case of the matrix.

Each case is prepared, warmed up and checked against the fp32 reference by the
``infermatrix_prepared`` fixture before a single round is timed.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.runner import PreparedCase, measure_latency
from infermatrix.timing import TimingPolicy


pytestmark = pytest.mark.infermatrix_scenario("latency")


def test_latency(infermatrix_prepared: PreparedCase, infermatrix_policy: TimingPolicy, benchmark: Any) -> None:
    timing = measure_latency(infermatrix_prepared, benchmark, infermatrix_policy)
    if timing.samples_s:  # empty only under --benchmark-disable
        assert timing.median_s > 0, f"{infermatrix_prepared.case.id}: a zero median means the timer saw no work"
