"""The reference probe: what one reading holds, what its identity covers, how it scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infermatrix.measure.probe import PROBE_VERSION, MachineProbe, ProbeSpec, score

SMALL = ProbeSpec(matmul_n=32, matmul_rounds=3, copy_bytes=2**16, copy_rounds=2)


def test_a_reading_holds_every_round_of_both_workloads_and_its_identity() -> None:
    probe = MachineProbe(threads=1, beside="worker", spec=SMALL)
    reading = probe.measure()
    assert reading["key"] == probe.key and reading["time"] > 1.7e9
    assert len(reading["matmul_ms"]) == 3 and len(reading["copy_ms"]) == 2
    assert all(t > 0 for t in reading["matmul_ms"] + reading["copy_ms"])
    summary = probe.summary()
    assert summary["readings"] == 1 and summary["seconds"] > 0 and summary["per_reading_ms"] > 0
    identity = summary["identity"]
    assert identity["numpy"] == np.__version__ and identity["probe_version"] == PROBE_VERSION
    assert identity["threads"] == 1 and identity["matmul_n"] == 32 and identity["beside"] == "worker"


def test_readings_of_another_workload_threads_or_neighbour_never_share_an_identity() -> None:
    keys = {MachineProbe(1, "worker", SMALL).key, MachineProbe(2, "worker", SMALL).key,
            MachineProbe(1, "same process", SMALL).key,
            MachineProbe(1, "worker", ProbeSpec(matmul_n=48, matmul_rounds=3, copy_bytes=2**16, copy_rounds=2)).key}
    assert len(keys) == 4
    assert MachineProbe(1, "worker", SMALL).key == MachineProbe(1, "worker", SMALL).key


def test_the_score_is_the_mean_log_median_and_refuses_what_is_not_a_reading() -> None:
    assert score({"matmul_ms": [1.0, 4.0, 2.0], "copy_ms": [8.0]}) == pytest.approx((math.log(2) + math.log(8)) / 2)
    for broken in ({"matmul_ms": [], "copy_ms": [1.0]}, {"copy_ms": [1.0]}, {"matmul_ms": [0.0], "copy_ms": [1.0]}):
        assert score(broken) is None
