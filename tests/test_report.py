"""The report (summary.md + one self-contained index.html), the nightly workflow, progress lines."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, schema_violations

from infermatrix.cli.report import main as report
from infermatrix.report.data import merge_runs, rows

#: The scenario modules this test copies and runs; each must reach the report.
SCENARIOS = ("latency", "throughput", "cold-start", "memory", "generate")

REPO = Path(__file__).resolve().parent.parent
QUICK = [*FAST, "--throughput-time=0.05", "--backends=numpy", "--devices=cpu"]


@pytest.fixture
def runs(suite: pytest.Pytester, tmp_path: Path) -> dict[str, Path]:
    """Two per-environment result files of one run (fp32, fp16), a slowed copy, and 3 accepted baselines."""
    shutil.copy(REPO / "suites" / "test_throughput.py", suite.path / "test_throughput.py")
    out: dict[str, Path] = {}
    for name, args in {"fp32": ["--precisions=fp32"], "fp16": ["--precisions=fp16"]}.items():
        out[name] = tmp_path / f"{name}.json"
        assert suite.runpytest(*QUICK, *args, f"--benchmark-json={out[name]}").ret == 0
    # One case 20x slower, the others as measured: a regression the verdicts cannot take for
    # machine-wide drift (slowing every case alike would be, by design).
    slow = json.loads(out["fp32"].read_text())
    for bench in slow["benchmarks"]:
        if bench["name"] == "test_latency[tinymlp-numpy-cpu-fp32-b1]":
            bench["stats"]["data"] = [x * 20 for x in bench["stats"]["data"]]
            for key in ("min", "max", "mean", "median", "q1", "q3"):
                bench["stats"][key] *= 20
    out["slow"] = tmp_path / "slow.json"
    out["slow"].write_text(json.dumps(slow))
    store = tmp_path / "baselines"
    for _ in range(3):
        base = tmp_path / "base.json"
        assert suite.runpytest(*QUICK, "--precisions=fp32", "--min-rounds=200", f"--benchmark-json={base}").ret == 0
        assert subprocess.run([sys.executable, "-m", "infermatrix", "accept", str(base), "--baselines", str(store)],
                              capture_output=True).returncode == 0
    out["baselines"] = store
    return out


def test_the_report_merges_environments_and_puts_regressions_first(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    status = report([str(runs["slow"]), str(runs["fp16"]), "--baseline", str(runs["baselines"]), "--out", str(out)])
    assert status == 1  # a regression fails the nightly
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# infermatrix report")
    verdict_rows = [line for line in summary.splitlines() if line.startswith("| ") and "test_" in line]
    assert verdict_rows[0].startswith("| regressed | test_latency[tinymlp-numpy-cpu-fp32-b1] | history (probe) |"), \
        verdict_rows[:3]
    # groups first, then cases; each row says the mode that judged it and what it could detect
    lines = summary.splitlines()
    groups_at = lines.index("| verdict | group | mode | cases | ratio | 95% CI | q | detectable | note |")
    cases_at = lines.index("| verdict | case | mode | ratio | 95% CI | q | detectable | runs | note |")
    assert groups_at < cases_at
    assert any(line.startswith("| ") and "backend=numpy" in line and "| history |" in line and "%" in line
               for line in lines[groups_at:cases_at])
    assert "CPU: " in summary and "machine fingerprint: " in summary and "numpy " in summary
    assert "reference probe (slow.json): numpy " in summary and "readings" in summary
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # latency, heatmap, throughput, trends
    assert not re.search(r"""(src|href)=["']https?://""", page)  # self-contained: nothing fetched
    for section in ("Latency", "Speed-up between backends", "Throughput against batch size", "Trends",
                    "Machine and versions", "All results"):
        assert f"<h2>{section}</h2>" in page


def test_without_regressions_the_report_passes_and_without_baselines_it_says_so(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    assert report([str(runs["fp32"]), "--out", str(tmp_path / "a")]) == 0
    assert "No baselines given" in (tmp_path / "a" / "summary.md").read_text()
    assert report([str(runs["fp32"]), "--baseline", str(tmp_path / "empty"), "--out", str(tmp_path / "b")]) == 0
    assert "No baseline for machine" in (tmp_path / "b" / "summary.md").read_text()


def test_a_failed_case_fails_the_report_with_or_without_baselines(runs: dict[str, Path], tmp_path: Path) -> None:
    failing = json.loads(runs["fp32"].read_text())
    failing["infermatrix"]["failed"] = {"test_latency[tinymlp-numpy-cpu-fp32-b8]": "the worker died (SIGSEGV)"}
    (tmp_path / "failing.json").write_text(json.dumps(failing))
    assert report([str(tmp_path / "failing.json"), "--out", str(tmp_path / "a")]) == 1
    assert report([str(tmp_path / "failing.json"), "--baseline", str(runs["baselines"]),
                   "--out", str(tmp_path / "b")]) == 1
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "| failed | test_latency[tinymlp-numpy-cpu-fp32-b8] |" in summary and "SIGSEGV" in summary


def test_bad_report_inputs_name_the_file(runs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert report([str(runs["fp32"]), str(runs["slow"]), "--out", str(tmp_path / "x")]) == 2
    assert "is in both" in capsys.readouterr().err
    other = json.loads(runs["fp16"].read_text())
    other["machine_info"]["infermatrix"]["cpu_model"] = "Another CPU"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert report([str(runs["fp32"]), str(tmp_path / "other.json"), "--out", str(tmp_path / "x")]) == 2
    assert "different machines" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report([str(tmp_path / "empty"), "--out", str(tmp_path / "x")]) == 2
    assert "no result files" in capsys.readouterr().err


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium here (make test installs Debian's chromium when it runs as root)")


def test_every_scenario_of_a_case_reaches_the_report(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """latency, throughput, cold-start, memory and generate of tinymlp b1 (generate: the
    numpy backend's tinygen, its generation counterpart) all land in rows, summary and page."""
    for module in ("test_throughput.py", "test_cold_start.py", "test_memory.py", "test_generate.py"):
        shutil.copy(REPO / "suites" / module, suite.path / module)
    # the cold-start/memory child process loads this checkout and the numpy backend from tests/
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NUMPY_BACKEND_GENERATION_DIR", str(tmp_path / "tinygen"))
    out = tmp_path / "run.json"
    result = suite.runpytest(*QUICK, "--scenarios=all", "--precisions=fp32", "--batch-sizes=1",
                             "-k", "tinymlp or tinygen", f"--benchmark-json={out}")
    assert result.parseoutcomes().get("passed") == 5, result.outlines[-30:]
    benchmarks = json.loads(out.read_text())["benchmarks"]
    for bench in benchmarks:
        assert schema_violations(bench["extra_info"]) == [], bench["name"]

    table = rows(merge_runs([out]))
    assert sorted(r.scenario for r in table) == sorted(SCENARIOS)  # one row each, none dropped
    by_scenario = {r.scenario: r for r in table}
    assert by_scenario["cold-start"].result.cold_start_total_s > 0
    assert by_scenario["memory"].result.memory_host_peak_rss_added_bytes > 0
    assert by_scenario["generate"].result.ttft_ms > 0 and by_scenario["generate"].case_id == "tinygen-numpy-cpu-fp32-b1"
    assert {r.case_id for r in table if r.scenario != "generate"} == {"tinymlp-numpy-cpu-fp32-b1"}

    assert report([str(out), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    for heading in ("## Generation", "## Cold start", "## Memory"):
        assert heading in summary
    cold = summary.split("## Cold start")[1].split("##")[0]
    memory = summary.split("## Memory")[1].split("##")[0]
    assert "| tinymlp-numpy-cpu-fp32-b1 |" in cold and "| tinymlp-numpy-cpu-fp32-b1 |" in memory
    page = (tmp_path / "report" / "index.html").read_text()
    for section in ("Latency", "Throughput against batch size", "Generation: time to first token and tokens/s",
                    "Cold start", "Memory", "All results"):
        assert f"<h2>{section}</h2>" in page, section
    all_results = page.split("<h2>All results</h2>")[1].split("</table>")[0]
    for scenario in SCENARIOS:
        assert f"<td>{scenario}</td>" in all_results, scenario


def test_the_page_renders_in_headless_chromium_with_every_plot_decoded(runs: dict[str, Path], tmp_path: Path) -> None:
    browser = chromium()
    out = tmp_path / "report"
    report([str(runs["fp32"]), str(runs["fp16"]), "--baseline", str(runs["baselines"]), "--out", str(out)])
    page = (out / "index.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    decoded = re.search(r'data-images-decoded="(\d+)/(\d+)"', dom.stdout)
    assert decoded, dom.stderr[-2000:]
    assert int(decoded.group(2)) >= 4 and decoded.group(1) == decoded.group(2)
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,2000", page], capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one


def test_the_nightly_workflow_passes_actionlint() -> None:
    binary = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if binary is None:
        pytest.skip("actionlint is not installed (pip install 'infermatrix[test]')")
    proc = subprocess.run([binary, str(REPO / ".github" / "workflows" / "nightly.yml")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workflow = (REPO / ".github" / "workflows" / "nightly.yml").read_text()
    # the night itself is Python (python -m infermatrix nightly, tests/test_nightly.py), not YAML
    assert "GITHUB_STEP_SUMMARY" in workflow and "python -m infermatrix nightly" in workflow


def test_long_runs_say_which_case_runs_and_how_many_are_left(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a real subprocess: in-process runs capture output differently, and a line written
    # while a test's output is captured never reaches the terminal (it did, once)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    result = suite.runpytest_subprocess(*QUICK, "--precisions=fp32")
    result.stdout.fnmatch_lines(["infermatrix [[]1/3] tinylinear-numpy-cpu-fp32-b2 — 2 case(s) left*",
                                 "infermatrix [[]3/3] tinymlp-numpy-cpu-fp32-b4 — 0 case(s) left*"])


@pytest.mark.skipif(shutil.which("tox", path=str(Path(sys.executable).parent)) is None and shutil.which("tox") is None,
                    reason="tox is not installed (pip install 'infermatrix[test]')")
def test_a_slice_of_the_nightly_runs_through_tox(tmp_path: Path) -> None:
    """The nightly's real path on one small slice: a backend environment, then the report environment."""
    pytest.importorskip("torch")  # fills the cache the torch-less environment reads
    cache, results, report_dir = tmp_path / "cache", tmp_path / "results", tmp_path / "report"
    slice_args = ["--models=resnet18", "--batch-sizes=1", "--precisions=fp32", "--min-rounds=3", "--min-time=0.1",
                  "--max-time=0.2",
                  "--throughput-time=0.2"]
    warm = subprocess.run([sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "--warm-cache",
                           f"--infermatrix-cache={cache}", *slice_args], cwd=REPO, capture_output=True, text=True)
    assert warm.returncode == 0, warm.stdout[-2000:]
    env = {**os.environ, "INFERMATRIX_CACHE_DIR": str(cache), "INFERMATRIX_RESULTS": str(results),
           "INFERMATRIX_REPORT": str(report_dir), "INFERMATRIX_BASELINES": str(tmp_path / "baselines")}
    tox = [sys.executable, "-m", "tox", "--workdir", str(tmp_path / ".tox")]
    bench = subprocess.run([*tox, "-e", "onnxruntime", "--", *slice_args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=1200)
    assert bench.returncode == 0, bench.stdout[-3000:]
    assert (results / "onnxruntime.json").exists(), bench.stdout[-3000:]  # timed, not all skipped
    final = subprocess.run([*tox, "-e", "report"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout[-3000:]
    summary = (report_dir / "summary.md").read_text()
    assert "**1 case(s) timed, 0 failed" in summary and "No baseline for machine" in summary
    page = (report_dir / "index.html").read_text()
    assert "resnet18-onnxruntime-cpu-fp32-b1" in page


def serve_record(case_id: str, points: list[tuple[int, float, float]], knee: int | None) -> dict:
    """A served case's benchmark: (concurrency, output tokens/s, TPOT p50 ms) per load point."""
    from infermatrix.results.record import CaseResult

    made = [{"concurrency": c, "requests": 8, "failed": 0, "duration_s": 1.0, "request_throughput": tps / 40,
             "output_tokens_per_s": tps, "output_tokens": int(tps),
             **{f"{k}_ms": {"p50": v, "p90": v * 1.2, "p99": v * 1.5, "mean": v} for k, v in
                (("ttft", 10 * c), ("tpot", tpot), ("itl", tpot), ("e2e", 40 * tpot + 10 * c))},
             "client_cpu_s": 0.02, "client_cpu_share": 0.02, "goodput": tps / 80, "slo_attained": 0.5}
            for c, tps, tpot in points]
    model, backend, device, precision, _ = case_id.split("-")
    info = CaseResult(case_id=case_id, model=model, backend=backend, device=device, precision=precision,
                      batch_size=1, scenario="serve", accuracy={"passed": True, "identical_share": 1.0},
                      serve={"points": made, "knee": knee, "client_floor": {"ttft_ms": 0.5, "itl_ms": 0.005},
                             "load": {"requests": 8}}).to_extra_info()
    return {"name": f"test_serve[{case_id}]", "group": None, "stats": {"median": 0.3, "data": [0.3] * 8},
            "extra_info": info}


def generate_record(case_id: str, ttft: float, itl: float) -> dict:
    from infermatrix.results.record import CaseResult

    model, backend, device, precision, _ = case_id.split("-")
    info = CaseResult(case_id=case_id, model=model, backend=backend, device=device, precision=precision,
                      batch_size=1, scenario="generate", ttft_ms=ttft, itl_p50_ms=itl, decode_tokens_per_s=1e3 / itl,
                      e2e_tokens_per_s=900.0, generate={"prompt16-new32": {"ttft_ms": ttft, "itl_p50_ms": itl,
                                                   "decode_tokens_per_s": 1e3 / itl, "e2e_tokens_per_s": 900.0}},
                      generate_primary="prompt16-new32").to_extra_info()
    return {"name": f"test_generate[{case_id}]", "group": None, "stats": {"median": 0.04, "data": [0.04] * 5},
            "extra_info": info}


def test_served_cases_get_load_points_curves_and_the_in_process_figures_beside_them(tmp_path: Path) -> None:
    from infermatrix.report.data import served_beside_generate, serving_table

    benchmarks = [serve_record("tinyllama-vllm-cpu-fp32-b1", [(1, 400, 2.5), (2, 760, 2.6), (4, 800, 5.0)], 1),
                  serve_record("tinyllama-openai-remote-bf16-b1", [(1, 300, 3.3), (2, 330, 6.0)], None),
                  generate_record("tinyllama-torch-cpu-fp32-b1", 8.5, 4.5)]
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks,
                                "datetime": "2026-11-24T00:00:00", "infermatrix": {"failed": {}}}))
    table = rows(merge_runs([path]))
    serve = [r for r in table if r.scenario == "serve"]
    points = serving_table(serve)
    assert len(points) == 5 and [p["knee"] for p in points if p["case"].startswith("tinyllama-vllm")] == [
        False, True, False]
    beside = served_beside_generate(serve, [r for r in table if r.scenario == "generate"])
    assert [b["how"] for b in beside] == ["in process: torch", "served: openai, 1 request in flight",
                                          "served: vllm, 1 request in flight"]
    assert beside[-1]["per_token_ms"] == 2.5 and beside[-1]["tokens_per_s"] == pytest.approx(400)
    out = tmp_path / "report"
    assert report([str(path), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "## Serving" in summary and "concurrency 2 (knee)" in summary
    assert "| tinyllama | in process: torch | tinyllama-torch-cpu-fp32-b1 |" in summary
    page = (out / "index.html").read_text()
    assert 'alt="Serving — tinyllama"' in page and "data:image/png;base64," in page


def latency_record(case_id: str, median_ms: float, variant: dict | None = None, model_size: int | None = None,
                   top1: float | None = None) -> dict:
    from infermatrix.results.record import CaseResult

    head, precision, batch = case_id.rsplit("-", 2)
    model, backend, device = head.split("-", 2)
    info = CaseResult(case_id=case_id, model=model, backend=backend, device=device, precision=precision,
                      batch_size=int(batch[1:]), scenario="latency", latency_p50_ms=median_ms,
                      accuracy={"passed": True, "centered_cosine_worst": 0.9}, model_size_bytes=model_size,
                      variant=variant,
                      agreement_with_original=None if top1 is None else {
                          "of": model.split(".")[0], "samples": 32, "top1_agreement": top1,
                          "cosine_mean": top1, "cosine_min": top1 - 0.1}).to_extra_info()
    return {"name": f"test_latency[{case_id}]", "group": None,
            "stats": {"median": median_ms / 1e3, "data": [median_ms / 1e3] * 8}, "extra_info": info}


def test_variants_get_a_trade_off_table_a_plot_and_a_json_beside_the_report(tmp_path: Path) -> None:
    """Speed-up over the original's fp32 on the same backend; the originals' own precisions
    are rows too; agreement is the case's own outputs against the original (so the original's
    post-training int8 and a variant's int8 stand side by side), the variant module's beside it;
    sizes are the case's and the variant's."""
    from infermatrix.report.data import variant_table

    pruned = {"name": "pruned50", "of": "resnet18", "parameters": 3_000_000, "nonzero_parameters": 3_000_000,
              "agreement": {"top1_agreement": 0.4, "cosine_mean": 0.8, "cosine_min": 0.7}}
    benchmarks = [latency_record("resnet18-onnxruntime-cpu-fp32-b1", 10.0, model_size=46_000_000, top1=1.0),
                  latency_record("resnet18-onnxruntime-cpu-int8-b1", 5.0, top1=0.9),
                  latency_record("resnet18.pruned50-onnxruntime-cpu-fp32-b1", 4.0, pruned, 12_000_000, top1=0.41),
                  latency_record("resnet18.pruned50-onnxruntime-cpu-int8-b1", 2.5, pruned, top1=0.3),
                  latency_record("resnet18.pruned50-openvino-cpu-fp32-b1", 3.0, pruned),  # no original here
                  latency_record("vgg19-onnxruntime-cpu-fp32-b1", 90.0)]  # no variant: not in the table
    path = tmp_path / "variants.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks,
                                "datetime": "2026-11-24T00:00:00", "infermatrix": {"failed": {}}}))
    table = variant_table([r for r in rows(merge_runs([path])) if r.scenario == "latency"], [])
    by_case = {t["case"]: t for t in table}
    assert set(by_case) == {b["name"][len("test_latency["):-1] for b in benchmarks[:5]}
    assert by_case["resnet18.pruned50-onnxruntime-cpu-int8-b1"]["speedup"] == pytest.approx(4.0)
    assert by_case["resnet18.pruned50-onnxruntime-cpu-fp32-b1"]["speedup"] == pytest.approx(2.5)
    assert by_case["resnet18-onnxruntime-cpu-int8-b1"]["speedup"] == pytest.approx(2.0)
    assert by_case["resnet18-onnxruntime-cpu-int8-b1"]["variant"] is None
    assert by_case["resnet18.pruned50-openvino-cpu-fp32-b1"]["speedup"] is None  # nothing to compare with
    assert by_case["resnet18.pruned50-onnxruntime-cpu-fp32-b1"]["top1_agreement"] == 0.41
    assert by_case["resnet18.pruned50-onnxruntime-cpu-fp32-b1"]["variant_top1_agreement"] == 0.4
    assert by_case["resnet18.pruned50-onnxruntime-cpu-int8-b1"]["top1_agreement"] == 0.3
    assert by_case["resnet18-onnxruntime-cpu-int8-b1"]["top1_agreement"] == 0.9
    assert by_case["resnet18.pruned50-openvino-cpu-fp32-b1"]["top1_agreement"] is None  # not recorded: not made up
    assert by_case["resnet18.pruned50-onnxruntime-cpu-fp32-b1"]["model_size_mb"] == pytest.approx(12.0)
    out = tmp_path / "report"
    assert report([str(path), "--out", str(out)]) == 0
    assert "## Variants" in (out / "summary.md").read_text()
    page = (out / "index.html").read_text()
    assert 'alt="Variants — resnet18"' in page
    stored = json.loads((out / "variants.json").read_text())
    assert {t["case"] for t in stored} == set(by_case)
