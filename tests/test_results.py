"""What a run leaves behind: the accuracy gate's verdict and the fields of the result JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import FAST, schema_violations


def run_json(suite: pytest.Pytester, *options: str) -> tuple[pytest.RunResult, dict]:
    out = suite.path / "out.json"
    result = suite.runpytest(f"--benchmark-json={out}", *FAST, *options)
    # written even when no case was timed (pytest-benchmark alone would skip it: issue #20)
    return result, json.loads(out.read_text())


def test_perturbed_outputs_fail_the_accuracy_gate_with_figures_and_are_not_timed(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUMPY_BACKEND_PERTURB", "0.2")
    result, data = run_json(suite, "--backends", "numpy", "--precisions", "fp32", "--devices", "cpu", "-rf")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 3 and "passed" not in outcomes
    result.stdout.fnmatch_lines(
        ["*tinymlp-numpy-cpu-fp32-b1: accuracy check failed (relative L2 error * > 0.001*): "
         "rel_l2_error=* max_abs_error=* centered_cosine worst=* median=* class_agreement=* over 32 samples"]
    )
    assert data["benchmarks"] == []  # a case that fails the gate stores no timing


def test_small_fp16_error_passes_the_fp16_gate_but_not_the_fp32_one(suite: pytest.Pytester) -> None:
    result, data = run_json(suite, "--backends", "numpy", "--precisions", "fp16", "--devices", "cpu")
    assert result.parseoutcomes()["passed"] == 3
    for bench in data["benchmarks"]:
        accuracy = bench["extra_info"]["accuracy"]
        assert 1e-5 < accuracy["rel_l2_error"] < 5e-2  # fp16 really ran: not bit-identical to fp32


def test_result_json_carries_latency_accuracy_config_and_machine(suite: pytest.Pytester) -> None:
    result, data = run_json(suite, "-k", "tinymlp-numpy-cpu-fp32-b4")
    assert result.parseoutcomes()["passed"] == 1
    (bench,) = data["benchmarks"]
    info = bench["extra_info"]
    assert info["case_id"] == "tinymlp-numpy-cpu-fp32-b4"
    assert (info["model"], info["backend"], info["device"], info["precision"], info["batch_size"]) == (
        "tinymlp", "numpy", "cpu", "fp32", 4)
    assert info["backend_config"]["dtype"] == "float32" and info["backend_config"]["threads"] >= 1
    assert info["accuracy"]["passed"] is True and info["accuracy"]["class_agreement"] == 1.0
    assert info["accuracy"]["rel_l2_error"] < 1e-6
    # percentiles and throughput are computed from the very rounds pytest-benchmark stored
    rounds = np.array(bench["stats"]["data"])
    assert len(rounds) == info["rounds"] == bench["stats"]["rounds"] >= 3
    assert info["latency_p50_ms"] == pytest.approx(np.percentile(rounds, 50) * 1e3)
    # a tail is there only with the rounds LoadGen's early-stopping estimate needs (p90: 64)
    tails = info["latency_percentiles"]
    assert tails["p50"]["samples"] == len(rounds) and tails["p50"]["method"] == "median"
    for key, needed in (("p90", 64), ("p99", 662), ("p99_9", 6636)):
        assert tails[key]["samples"] == len(rounds) and tails[key]["samples_needed"] == needed, key
        if len(rounds) < needed:
            assert tails[key]["value_ms"] is None and f"latency_{key}_ms" not in info, key
        else:
            assert info[f"latency_{key}_ms"] == tails[key]["value_ms"] >= info["latency_p50_ms"], key
    assert info["throughput_samples_per_s"] == pytest.approx(4 / np.median(rounds))
    assert info["stop_reason"] in ("precision reached", "time budget spent", "max rounds")
    lo, hi = info["median_ci95_ms"]
    assert lo <= info["latency_p50_ms"] <= hi
    assert info["first_inference_s"] > 0 and info["prepare_s"] >= 0 and info["warmup_calls"] >= 2
    assert info["model_size_bytes"] == 64 * 10 * 4
    assert "memory_host_rss_delta_bytes" in info
    machine = data["machine_info"]["infermatrix"]
    assert machine["cpu_physical_cores"] >= 1 and machine["cpu_model"]
    assert machine["backends"]["ghost"]["available"] is False
    assert machine["backends"]["numpy"]["version"] == np.__version__


def test_each_case_carries_the_reference_probe_read_right_before_it(suite: pytest.Pytester) -> None:
    result, data = run_json(suite, "--backends", "numpy", "--precisions", "fp32", "--devices", "cpu")
    assert result.ret == 0
    probe = data["infermatrix"]["probe"]
    assert probe["enabled"] and probe["readings"] == len(data["benchmarks"]) >= 2
    identity = probe["identity"]
    assert identity["numpy"] == np.__version__ and identity["threads"] >= 1 and identity["beside"] == "worker"
    assert 0 < probe["seconds"] < 10 and probe["per_reading_ms"] > 0  # its cost, as this run paid it
    times = []
    for bench in data["benchmarks"]:
        reading = bench["extra_info"]["machine_probe"]
        assert reading["key"] == probe["key"] and len(reading["matmul_ms"]) == identity["matmul_rounds"]
        assert len(reading["copy_ms"]) == identity["copy_rounds"]
        assert all(t > 0 for t in reading["matmul_ms"] + reading["copy_ms"])
        assert schema_violations(bench["extra_info"]) == []
        times.append(reading["time"])
    assert len(set(times)) == len(times)  # one reading per case, interleaved with them

    result, data = run_json(suite, "--backends", "numpy", "--precisions", "fp32", "--devices", "cpu",
                            "--machine-probe=off")
    assert data["infermatrix"]["probe"] == {"enabled": False, "why": "--machine-probe=off"}
    assert all("machine_probe" not in bench["extra_info"] for bench in data["benchmarks"])
