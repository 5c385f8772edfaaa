"""Scenario modules: selection, a case's scenarios sharing one prepared session,
throughput, and the fresh-process scenarios (cold start, memory, repeats)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import FAST

from infermatrix.cli import overhead

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def all_scenarios(suite: pytest.Pytester) -> pytest.Pytester:
    for module in ("test_throughput.py", "test_cold_start.py", "test_memory.py"):
        shutil.copy(REPO / "suites" / module, suite.path / module)
    return suite


def collected_modules(result: pytest.RunResult) -> set[str]:
    return {line.split("::")[0] for line in result.outlines if "::" in line}


def test_default_scenarios_are_latency_and_throughput(all_scenarios: pytest.Pytester) -> None:
    result = all_scenarios.runpytest("--collect-only", "-q", "-k", "tinymlp-numpy-cpu-fp32-b1")
    assert collected_modules(result) == {"test_latency.py", "test_throughput.py"}
    result = all_scenarios.runpytest("--collect-only", "-q", "-k", "tinymlp-numpy-cpu-fp32-b1", "--scenarios", "all")
    assert collected_modules(result) == {"test_latency.py", "test_throughput.py", "test_cold_start.py",
                                         "test_memory.py"}
    result = all_scenarios.runpytest("--collect-only", "-q", "-k", "tinymlp-numpy-cpu-fp32-b1", "--scenarios", "memory")
    assert collected_modules(result) == {"test_memory.py"}


def test_unknown_scenario_is_a_usage_error(all_scenarios: pytest.Pytester) -> None:
    result = all_scenarios.runpytest("--scenarios", "latency,soak")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--scenarios: unknown 'soak'; valid: latency, throughput, cold-start, memory, all*"])


def test_a_cases_scenarios_share_one_prepared_session(
    all_scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "prepares.log"
    monkeypatch.setenv("NUMPY_BACKEND_PREPARE_LOG", str(log))
    out = tmp_path / "out.json"
    result = all_scenarios.runpytest("--backends", "numpy", "--precisions", "fp32", "--devices", "cpu",
                                     "--throughput-time", "0.05", f"--benchmark-json={out}", *FAST)
    assert result.parseoutcomes()["passed"] == 6  # 3 cases x (latency, throughput)
    assert len(log.read_text().splitlines()) == 3  # one prepare per case
    benchmarks = json.loads(out.read_text())["benchmarks"]
    throughput = [b for b in benchmarks if b["extra_info"]["scenario"] == "throughput"]
    assert len(throughput) == 3
    for bench in throughput:
        info = bench["extra_info"]
        assert info["throughput_best_config"]["config"] == "sequential"
        assert info["throughput_samples_per_s"] == max(c["samples_per_s"] for c in info["throughput_sweep"])
        assert "latency_p50_ms" not in info  # each scenario records only its own figures


def test_cold_start_and_memory_run_the_case_in_a_fresh_process(
    all_scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the child processes import this checkout (not whichever one is installed) and the numpy backend
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "prepares.log"
    monkeypatch.setenv("NUMPY_BACKEND_PREPARE_LOG", str(log))
    out = tmp_path / "out.json"
    result = all_scenarios.runpytest("-k", "tinymlp-numpy-cpu-fp32-b4", "--scenarios", "cold-start,memory",
                                     f"--benchmark-json={out}", *FAST)
    assert result.parseoutcomes()["passed"] == 2
    assert len(log.read_text().splitlines()) == 1  # the child prepared it once, for both scenarios
    by_scenario = {b["extra_info"]["scenario"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    cold = by_scenario["cold-start"]
    assert cold["cold_start_total_s"] >= cold["first_inference_s"] > 0
    assert cold["isolated_process_wall_s"] > cold["prepare_s"]
    memory = by_scenario["memory"]
    assert memory["memory_host_peak_rss_added_bytes"] >= 0 and memory["model_size_bytes"] == 64 * 10 * 4


def test_repeats_time_the_case_in_fresh_processes(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the child processes import this checkout (not whichever one is installed) and the numpy backend
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out.json"
    result = suite.runpytest("-k", "tinymlp-numpy-cpu-fp32-b1", "--repeats", "2", f"--benchmark-json={out}", *FAST)
    assert result.parseoutcomes()["passed"] == 1
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["repeats"] == 2 and len(info["repeat_medians_ms"]) == 2
    assert all(m > 0 for m in info["repeat_medians_ms"]) and info["between_process_cv"] >= 0
    # an injected slowdown holds in the fresh processes too (the verdicts judge their medians)
    slow_out = tmp_path / "slow.json"
    result = suite.runpytest("-k", "tinymlp-numpy-cpu-fp32-b1", "--repeats", "2", "--inject-slowdown", "numpy=2000",
                             f"--benchmark-json={slow_out}", *FAST)
    assert result.parseoutcomes()["passed"] == 1
    (slow,) = json.loads(slow_out.read_text())["benchmarks"]
    ratio = min(slow["extra_info"]["repeat_medians_ms"]) / max(info["repeat_medians_ms"])
    assert ratio > 8, f"the fresh processes' medians moved {ratio:.1f}x under a 21x slowdown"


def test_overhead_benchmark_reports_its_figures() -> None:
    result = overhead.measure(n=2000, trials=3)
    assert result["calls_per_trial"] == 2000 and result["trials"] == 3
    assert result["noop_call_us_median"] > 0
    # a figure, not a verdict: the documented command reports it (docs/measurements.md)
    assert result["overhead_per_call_us_max"] >= result["overhead_per_call_us_median"]
