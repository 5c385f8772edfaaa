"""Tail percentiles: LoadGen's early-stopping estimate against LoadGen's own figures and a
brute-force transcription of its loop, the option that collects the samples, and the report."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, schema_violations

from infermatrix.measure import tails

# ---- the estimator ---------------------------------------------------------------------------------


def test_the_minimum_samples_are_the_ones_loadgen_prints() -> None:
    # mlcommons/inference, tools/submission/directory_structure_samples/sample_1/open/NVIDIA/results/
    # Jetson-Thor_TRT/llama3.1-8b-edge/SingleStream/performance/run_1/mlperf_log_summary.txt (p90, 10000
    # queries): " * Processed at least 64 queries (10000)." / " * Would discard 929 highest latency queries."
    assert tails.min_samples(90) == 64
    assert tails.overlatency_allowed(10_000, 90) - 1 == 929
    # Printed by LoadGen itself (PyPI mlcommons-loadgen 6.0.17, SingleStream, a SUT that answers at
    # once, N queries, the target percentile set): "Need to process at least 64 / 662 / 6636
    # queries" for p90 / p99 / p99.9, and "Would discard 2 / 77 / 8 highest latency queries" for
    # p90 at 100 and 1000 queries and p99 at 2000.
    assert [tails.min_samples(p) for p in (90, 99, 99.9)] == [64, 662, 6636]
    assert [tails.overlatency_allowed(n, p) - 1 for n, p in ((100, 90), (1000, 90), (2000, 99))] == [2, 77, 8]
    assert tails.min_samples(95) == 130  # the same rule (checked by brute force below)


def odds(h: int, t: int, p: float) -> float:
    """LoadGen's ``odds(h, t, p, d=0)``: t or fewer over-bound queries in h + t, summed term by
    term in log space (no scipy)."""
    n, q = h + t, 1 - p
    return math.fsum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                              + k * math.log(q) + (n - k) * math.log(p)) for k in range(t + 1))


@functools.cache
def brute_min_passing(t: int, p: float) -> int:
    """The smallest h with odds < 1 - c, by counting up (LoadGen binary-searches the same predicate)."""
    h = brute_min_passing(t - 1, p) if t > 1 else 1  # h grows with t
    while odds(h, t, p) >= 0.01:
        h += 1
    return h


def loadgen_single_stream(n: int, p: float) -> int:
    """``PerformanceSummary::EarlyStopping``'s SingleStream case (loadgen/results.cc), line for line:
    the t whose t-th slowest query is reported, or 0 for "Need to process at least ..."."""
    h_min = brute_min_passing(1, p)
    if n < h_min + 1:
        return 0
    t = 1
    for i in range(2, n + 1):
        h = brute_min_passing(i, p)
        if n < h + i:
            t = i - 1
            break
    return t


@pytest.mark.parametrize(("percentile", "counts"), [
    (90, [*range(1, 300), 500, 1000, 2000]),
    (95, [129, 130, 131, 300, 1000]),
    (99, [661, 662, 663, 1000, 2000, 3000]),
    (99.9, [6635, 6636, 6637, 8000]),
])
def test_the_estimate_matches_loadgens_loop_computed_by_brute_force(percentile: float, counts: list[int]) -> None:
    p = percentile / 100
    assert tails.min_samples(percentile) == brute_min_passing(1, p) + 1
    for t in range(1, 6):
        assert tails.min_passing(t, percentile) == brute_min_passing(t, p), t
    for n in counts:
        assert tails.overlatency_allowed(n, percentile) == loadgen_single_stream(n, p), n


def test_the_estimate_is_the_t_th_slowest_sample_and_none_below_the_minimum() -> None:
    # LoadGen 6.0.17 on 100 queries answered after 1..100 ms (shuffled): "Early stopping 90.0th
    # percentile estimate: 98137851" ns — the third slowest, as here.
    rng = np.random.default_rng(0)
    samples = rng.permutation(np.arange(1.0, 101.0))  # 1..100, shuffled
    found = tails.estimate(samples, 90)
    t = tails.overlatency_allowed(100, 90)
    assert t == 3  # 100 queries: discard the 2 slowest, report the third
    assert found.value_s == 98.0 and found.order_statistic == 98 and found.samples == 100
    assert found.method == "loadgen-early-stopping" and found.confidence == 0.99
    short = tails.estimate(samples[:16], 99)
    assert short.value_s is None and short.order_statistic is None
    assert short.samples == 16 and short.samples_needed == 662
    assert short.why is not None and "16 samples" in short.why and "662" in short.why


def test_the_estimate_is_at_or_above_the_true_percentile_99_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    true_p90 = -math.log(0.1)  # exponential(1)
    trials = 2000
    values = [tails.estimate(rng.exponential(1.0, 200), 90).value_s for _ in range(trials)]
    above = sum(v is not None and v >= true_p90 for v in values)
    assert above / trials >= 0.985, above / trials  # nominal 99%: conservative, as LoadGen means it


def test_keys_and_bad_tails() -> None:
    assert [tails.percentile_key(p) for p in (50, 90, 99.9, 99.99)] == ["p50", "p90", "p99_9", "p99_99"]
    for bad in (50, 100, 101, float("nan"), 10):
        with pytest.raises(ValueError, match="above 50 and below 100"):
            tails.check_tail(bad)


# ---- the option, end to end on the numpy backend --------------------------------------------------


def run_json(suite: pytest.Pytester, *options: str) -> tuple[pytest.RunResult, dict]:
    out = suite.path / "out.json"
    result = suite.runpytest(f"--benchmark-json={out}", *FAST, "-k", "tinymlp-numpy-cpu-fp32-b1", *options)
    return result, json.loads(out.read_text()) if out.exists() else {}


def test_tail_percentiles_make_the_latency_loop_collect_their_samples(suite: pytest.Pytester) -> None:
    result, data = run_json(suite, "--tail-percentiles=90,99")
    assert result.ret == 0, result.outlines[-20:]
    (bench,) = data["benchmarks"]
    info = bench["extra_info"]
    rounds = sorted(bench["stats"]["data"])
    assert info["rounds"] == len(rounds) >= 662 and info["stop_reason"] == "tail samples collected"
    for key, percentile in (("p90", 90), ("p99", 99)):
        detail = info["latency_percentiles"][key]
        rank = detail["order_statistic"]
        assert rank == len(rounds) - tails.overlatency_allowed(len(rounds), percentile) + 1
        assert info[f"latency_{key}_ms"] == detail["value_ms"] == pytest.approx(rounds[rank - 1] * 1e3)
    # p99.9 was not asked for: 6636 rounds, not collected, and the record says how to get it
    assert "latency_p99_9_ms" not in info
    assert info["latency_percentiles"]["p99_9"]["value_ms"] is None
    assert "--tail-percentiles 99.9" in info["latency_percentiles"]["p99_9"]["not_estimable"]
    assert schema_violations(info) == []


def test_a_tail_the_time_limit_cuts_short_is_not_estimable_and_says_why(suite: pytest.Pytester) -> None:
    # p99.99 needs 66,381 rounds; 0.1 s of a µs-scale call may not get them — and if it does, the
    # value is there: either way no number without its samples.
    result, data = run_json(suite, "--tail-percentiles=99.99", "--tail-max-time=0.1")
    assert result.ret == 0, result.outlines[-20:]
    info = data["benchmarks"][0]["extra_info"]
    detail = info["latency_percentiles"]["p99_99"]
    assert detail["samples_needed"] == 66381
    if info["rounds"] < 66381:
        assert info["stop_reason"] == "tail time limit spent"
        assert detail["value_ms"] is None and "latency_p99_99_ms" not in info
        assert "--tail-max-time 0.1 s" in detail["not_estimable"]
    else:
        assert info["stop_reason"] == "tail samples collected" and detail["value_ms"] > 0


@pytest.mark.parametrize(("options", "message"), [
    (["--tail-percentiles=90,abc"], "--tail-percentiles '90,abc': give tail percentiles above 50 and below 100*"),
    (["--tail-percentiles=100"], "--tail-percentiles '100': 100 is not a tail; give tail percentiles*"),
    (["--tail-percentiles=,"], "--tail-percentiles ',': give tail percentiles*"),
    (["--tail-percentiles=99.999"], "*p99.999 needs 663* rounds, more than the 100000 a case is timed at most*"),
    (["--tail-percentiles=99", "--max-time=30", "--tail-max-time=10"],
     "--tail-max-time 10 is below --max-time 30: the limit for collecting tail samples must be at least*"),
    (["--tail-percentiles=99", "--tail-max-time=2000"],
     "--tail-max-time 2000 is not below --case-timeout 900: the worker would be stopped as hung first*"),
    (["--tail-max-time=0"], "--tail-max-time 0: give a number of seconds above 0"),
])
def test_bad_tail_options_are_usage_errors_naming_the_option(
    suite: pytest.Pytester, options: list[str], message: str
) -> None:
    result = suite.runpytest(*options, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])
    assert "Traceback" not in result.stderr.str()


# ---- the report -------------------------------------------------------------------------------------


def latency_bench(case_id: str, rounds: int, tails_asked: tuple[float, ...] = ()) -> dict:
    from infermatrix.case.runner import percentile_info
    from infermatrix.measure.timing import TimingPolicy

    samples = list(0.010 + 0.001 * np.random.default_rng(rounds).random(rounds))
    policy = TimingPolicy(tail_percentiles=tails_asked)
    model, backend, device, precision, batch = case_id.split("-")
    info = {"record_version": 2, "case_id": case_id, "model": model, "backend": backend, "device": device,
            "precision": precision, "batch_size": int(batch[1:]), "scenario": "latency", "rounds": rounds,
            "stop_reason": "precision reached", **percentile_info(samples, policy, "precision reached", "latency")}
    median = float(np.median(samples))
    return {"name": f"test_latency[{case_id}]", "group": None, "extra_info": info,
            "stats": {"median": median, "mean": median, "min": min(samples), "data": samples}}


def test_the_report_shows_n_e_for_a_tail_without_its_samples(tmp_path: Path) -> None:
    from infermatrix.cli.report import main as report
    from infermatrix.report.data import NotEstimable, generation_table, latency_table, merge_runs, rows

    generate = {"name": "test_generate[tinygen-numpy-cpu-fp32-b1]", "extra_info": {
        "record_version": 2, "case_id": "tinygen-numpy-cpu-fp32-b1", "model": "tinygen", "backend": "numpy",
        "device": "cpu", "precision": "fp32", "batch_size": 1, "scenario": "generate", "ttft_ms": 1.0,
        "e2e_tokens_per_s": 900.0, "itl_p50_ms": 1.0, "accuracy": {"identical_share": 1.0},
        "generate": {"prompt8-new12": {"ttft_ms": 1.0, "itl_p50_ms": 1.0, "itl_p99_ms": None, "itl_samples": 33.0,
                                       "itl_p99_samples_needed": 662.0, "e2e_tokens_per_s": 900.0}}},
        "stats": {"median": 0.013, "mean": 0.013, "min": 0.012, "data": [0.013]}}
    run = {"machine_info": {"infermatrix": {"cpu_model": "Test CPU", "cpu_physical_cores": 2}},
           "datetime": "2026-11-24T00:00:00", "benchmarks": [
               latency_bench("resnet18-torch-cpu-fp32-b1", 16), latency_bench("resnet18-onnxruntime-cpu-fp32-b1", 700),
               generate]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    table = {line[0]: line for line in latency_table([r for r in rows(merge_runs([path])) if r.scenario == "latency"])}
    short, long = table["resnet18-torch-cpu-fp32-b1"], table["resnet18-onnxruntime-cpu-fp32-b1"]
    assert short[2:5] == [NotEstimable(), NotEstimable(), NotEstimable()] and short[5] == 16
    assert isinstance(long[2], float) and isinstance(long[3], float) and long[4] == NotEstimable()
    (itl,) = generation_table([r for r in rows(merge_runs([path])) if r.scenario == "generate"])
    assert itl["itl_p99_ms"] == NotEstimable() and itl["itl_p50_ms"] == 1.0

    assert report([str(path), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    latency = page.split("<h2>Latency</h2>")[1].split("<h2>")[0]
    assert latency.count(">n/e</td>") == 4  # three tails of the 16-round case, p99.9 of the 700-round one
    assert 'title="16 samples; LoadGen&#x27;s early-stopping rule needs 662 for p99' in latency
    assert "n/e: not estimable" in latency and "p90: 64, p99: 662, p99.9: 6636" in latency
    assert "--tail-percentiles" in latency
    generation = page.split("<h2>Generation: time to first token and tokens/s</h2>")[1].split("<h2>")[0]
    assert "<td>n/e</td>" in generation and "n/e: not estimable" in generation
