"""Regression verdicts on synthetic runs with known effects, baselines on disk, and the
--benchmark-compare / --inject-slowdown flow through a real pytest run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST

from infermatrix.case.runner import PreparedCase
from infermatrix.cli import main as cli
from infermatrix.measure.paired import interleaved
from infermatrix.results import baselines, verdicts

MACHINE = {"infermatrix": {"cpu_model": "Test CPU", "cpu_physical_cores": 2, "gpus": [], "os": "Linux",
                           "arch": "x86_64"}}


def fake_run(medians: dict[str, float], cosine: float = 0.999, failed: dict[str, str] | None = None) -> dict:
    return {
        "machine_info": MACHINE,
        "benchmarks": [{"name": key, "stats": {"median": m, "data": [m]},
                        "extra_info": {"case_id": f"{key}-numpy-cpu-fp32-b1",
                                       "accuracy": {"cosine_similarity": cosine}}}
                       for key, m in medians.items()],
        "infermatrix": {"failed": failed or {}},
    }


def noisy_runs(rng: np.random.Generator, cases: int, runs: int, sigma: float = 0.08, bimodal: float = 0.15,
               drift: float = 0.1) -> list[dict[str, float]]:
    """Lognormal noise, two run levels per case (±bimodal), a machine-wide drift per run, rare outliers."""
    base = {f"case{i}": float(np.exp(rng.uniform(-7, -2))) for i in range(cases)}
    out = []
    for _ in range(runs):
        machine = rng.uniform(-drift, drift)
        run = {}
        for key, value in base.items():
            level = bimodal if rng.random() < 0.5 else -bimodal
            outlier = 0.3 if rng.random() < 0.02 else 0.0
            run[key] = value * math.exp(machine + level + outlier + rng.normal(0, sigma))
        out.append(run)
    return out


def test_unchanged_code_is_almost_never_flagged() -> None:
    rng = np.random.default_rng(0)
    flagged = total = 0
    for _ in range(20):
        runs = noisy_runs(rng, cases=30, runs=7)
        results = verdicts.judge([fake_run(r) for r in runs[:-1]], fake_run(runs[-1]))
        flagged += sum(v.verdict in ("regressed", "improved") for v in results)
        total += len(results)
    assert flagged / total <= 0.01, f"{flagged} of {total} unchanged cases flagged"


def test_large_slowdowns_are_caught_and_each_case_states_what_it_could_see() -> None:
    rng = np.random.default_rng(1)
    caught = slowed = 0
    for _ in range(20):
        runs = noisy_runs(rng, cases=30, runs=11, bimodal=0.05)
        current = dict(runs[-1])
        for key in list(current)[:10]:
            current[key] *= 1.6
        results = {v.key: v for v in verdicts.judge([fake_run(r) for r in runs[:-1]], fake_run(current))}
        for key in list(current)[:10]:
            slowed += 1
            caught += results[key].verdict == "regressed"
        assert all(0 < v.min_detectable_change < 1 for v in results.values())
    assert caught / slowed >= 0.8, f"caught {caught} of {slowed}"


def test_machine_wide_drift_is_not_a_regression() -> None:
    rng = np.random.default_rng(2)
    runs = noisy_runs(rng, cases=30, runs=6, drift=0.0)
    current = {k: v * 1.3 for k, v in runs[-1].items()}  # everything 30% slower: the machine, not the code
    results = verdicts.judge([fake_run(r) for r in runs[:-1]], fake_run(current))
    assert not any(v.verdict == "regressed" for v in results)
    assert math.exp(results[0].drift) == pytest.approx(1.3, rel=0.15)


def test_new_missing_failed_and_accuracy_drops() -> None:
    history = [fake_run({"a": 1.0, "b": 1.0, "c": 1.0}), fake_run({"a": 1.02, "b": 0.98, "c": 1.0})]
    current = fake_run({"a": 1.0, "d": 1.0}, failed={"c": "accuracy check failed"})
    current["benchmarks"][0]["extra_info"]["accuracy"]["cosine_similarity"] = 0.95
    by_key = {v.key: v for v in verdicts.judge(history, current)}
    assert by_key["a"].verdict == "regressed" and "accuracy dropped" in by_key["a"].reason
    assert by_key["b"].verdict == "missing"
    assert by_key["c"].verdict == "failed"
    assert by_key["d"].verdict == "new"
    table = verdicts.table(list(by_key.values()))
    assert table.index("regressed") < table.index("missing")


def test_injected_slowdown_is_the_stated_share() -> None:
    class Sleeper:
        def run(self, inputs):
            time.sleep(0.002)
            return []

    def prepared(slowdown: float) -> PreparedCase:
        return PreparedCase(case=None, session=Sleeper(), inputs={}, accuracy=None, prepare_s=0,  # type: ignore
                            warmup_calls=0, rss_before_bytes=0, flops_per_sample=None, threads=1, slowdown=slowdown)

    result = interleaved({"plain": prepared(0).call, "slowed": prepared(0.25).call}, trials=5, calls_per_trial=10)
    assert statistics_median(result.ratios("slowed", "plain")) == pytest.approx(1.25, abs=0.05)


def statistics_median(values):
    return float(np.median(values))


# ---- baselines on disk -------------------------------------------------------------


def test_bad_result_files_get_errors_that_name_them(tmp_path: Path) -> None:
    cases = {
        "truncated.json": json.dumps(fake_run({"a": 1.0}))[:40],
        "notjson.json": "hello",
        "schema.json": json.dumps({"benchmarks": "nope"}),
        "foreign.json": json.dumps({"machine_info": {}, "benchmarks": [{"name": "x", "stats": {}, "extra_info": {}}]}),
    }
    messages = {"truncated.json": "not valid JSON", "notjson.json": "not valid JSON",
                "schema.json": "not a pytest-benchmark result", "foreign.json": "no case_id"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(baselines.BaselineError, match=messages[name]) as info:
            baselines.load_run(path)
        assert str(path) in str(info.value)
    with pytest.raises(baselines.BaselineError, match="no such file"):
        baselines.load_run(tmp_path / "absent.json")


def test_accept_keeps_history_and_never_overwrites(tmp_path: Path) -> None:
    run = fake_run({"a": 1.0})
    first = baselines.accept(run, tmp_path)
    second = baselines.accept(run, tmp_path)
    assert first != second and first.parent == second.parent
    # oldest first, also within one second (plain name sorting would put '-1' first)
    assert baselines.history(tmp_path, baselines.fingerprint(MACHINE)) == [first, second]
    assert baselines.load_run(first)["benchmarks"][0]["name"] == "a"


def test_compare_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i, scale in enumerate([1.0, 1.01, 0.99, 1.0, 2.0]):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(fake_run({f"c{j}": (j + 1) * 1e-3 * scale * (1 + 0.01 * ((i + j) % 3))
                                              for j in range(3)} | {"steady": 1e-3})))
        paths.append(path)
    assert cli(["compare", *map(str, paths[:4])]) == 0
    capsys.readouterr()
    assert cli(["compare", *map(str, paths[:3]), str(paths[4]), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["c0"]["verdict"] == "regressed" and out["steady"]["verdict"] == "unchanged"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert cli(["compare", str(paths[0]), str(broken)]) == 2
    assert "broken.json" in capsys.readouterr().err


# ---- through pytest ------------------------------------------------------------------


def test_benchmark_compare_flags_an_injected_slowdown(suite: pytest.Pytester, tmp_path: Path) -> None:
    store = tmp_path / "baselines"
    common = ["-k", "tinymlp-numpy-cpu-fp32", f"--infermatrix-baselines={store}", "--min-rounds=200",
              "--min-time=0.05", "--max-time=0.3"]
    first = suite.runpytest(*common, "--benchmark-compare")
    first.stdout.fnmatch_lines(["*no baseline for machine * nothing to compare*"])
    assert first.ret == 0
    for _ in range(3):
        assert suite.runpytest(*common, "--accept-baseline").ret == 0
    (machine_dir,) = store.iterdir()
    assert len(list(machine_dir.glob("*.json"))) == 3
    # µs-scale calls move a lot between runs: inject a change far beyond that noise
    slowed = suite.runpytest(*common, "--benchmark-compare", "--inject-slowdown", "numpy=2000")
    slowed.stdout.fnmatch_lines(["*infermatrix verdicts against 3 baseline run(s)*",
                                 "*| regressed | test_latency[[]tinymlp-numpy-cpu-fp32-b1]*",
                                 "*case(s) regressed: failing the session*"])
    assert slowed.ret == pytest.ExitCode.TESTS_FAILED
    relaxed = suite.runpytest(*common, "--benchmark-compare", "--inject-slowdown", "numpy=2000",
                              "--regression-fails=no")
    assert relaxed.ret == 0


def test_inject_slowdown_names_a_real_backend(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--inject-slowdown", "tensorflowz=10", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--inject-slowdown: unknown backend 'tensorflowz'*"])


def test_repeated_processes_shrink_what_can_be_detected() -> None:
    rng = np.random.default_rng(3)
    runs = noisy_runs(rng, cases=20, runs=6)

    def with_repeats(run: dict[str, float], n: int) -> dict:
        data = fake_run(run)
        for bench in data["benchmarks"]:
            median = bench["stats"]["median"]
            bench["extra_info"]["repeat_medians_ms"] = list(median * 1e3 * np.exp(rng.normal(0, 0.08, n)))
        return data

    single = verdicts.judge([fake_run(r) for r in runs[:-1]], fake_run(runs[-1]))
    repeated = verdicts.judge([fake_run(r) for r in runs[:-1]], with_repeats(runs[-1], 5))
    mdc = {v.key: v.min_detectable_change for v in single}
    smaller = sum(v.min_detectable_change < mdc[v.key] for v in repeated)
    assert smaller >= 15, f"only {smaller} of 20 cases gained from 5 repeats"
