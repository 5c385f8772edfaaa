"""The generate scenario: the tiny Llama on torch, OpenVINO GenAI and ONNX Runtime GenAI,
the token-identity gate, and the figures (TTFT, inter-token latency, tokens/s)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from infermatrix.case.generation import Generated, compare_tokens, corpus, figures, prompt_ids

REPO = Path(__file__).resolve().parent.parent


def test_fp32_must_match_every_token_and_lower_precisions_keep_a_share() -> None:
    reference = {"16x4": [[5, 6, 7, 8]]}
    assert compare_tokens({"16x4": [[5, 6, 7, 8]]}, reference, "fp32").passed
    diverged = compare_tokens({"16x4": [[5, 6, 9, 9]]}, reference, "fp32")
    assert not diverged.passed and diverged.first_divergence == 2 and diverged.identical_share == 0.5
    assert "fp32 tokens must equal" in diverged.message("x")
    assert compare_tokens({"16x4": [[5, 6, 9, 9]]}, reference, "int8").passed
    garbage = compare_tokens({"16x4": [[1, 1, 1, 1]]}, reference, "int8")  # a stuck stream fails any precision
    assert not garbage.passed and "identical-token share 0.000" in garbage.failures[0]


def test_figures_come_from_token_timestamps() -> None:
    runs = [Generated(tokens=[[1, 2, 3, 4, 5]], token_times_s=[0.010, 0.012, 0.014, 0.016, 0.018], total_s=0.020)]
    got = figures(runs, batch_size=1)
    assert got["ttft_ms"] == pytest.approx(10.0)
    assert got["itl_p50_ms"] == pytest.approx(2.0)
    # 4 inter-token gaps: no p99 (LoadGen's early-stopping estimate needs 662), and it says so
    assert got["itl_p99_ms"] is None and got["itl_samples"] == 4 and got["itl_p99_samples_needed"] == 662
    assert got["decode_tokens_per_s"] == pytest.approx(4 / 0.008)
    assert got["e2e_tokens_per_s"] == pytest.approx(5 / 0.020)


def test_prompts_and_tokenizer_text_are_seeded() -> None:
    assert (prompt_ids(16, 2, 0, 2000) == prompt_ids(16, 2, 0, 2000)).all()
    assert prompt_ids(16, 1, 0, 2000)[0, 0] == 0 and prompt_ids(16, 1, 0, 2000).min() >= 0
    assert corpus(0)[:3] == corpus(0)[:3] and corpus(0)[:3] != corpus(1)[:3]


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (pip install 'infermatrix[torch,llm,openvino,onnxruntime]')")


def run_generate(cache: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_generate.py", "-q", "-p", "no:cacheprovider",
         f"--infermatrix-cache={cache}", f"--benchmark-json={out}", "--generate-prompt-lengths=8,24",
         "--generate-new-tokens=12", "--min-rounds=3", "--min-time=0.01", "--max-time=0.2", *args],
        cwd=REPO, capture_output=True, text=True, timeout=1500,
    )


def test_generate_runs_the_tiny_llama_on_three_backends_with_torchs_tokens_at_fp32(tmp_path: Path) -> None:
    needs("torch", "transformers", "openvino_genai", "onnxruntime_genai", "optimum")
    out = tmp_path / "generate.json"
    proc = run_generate(tmp_path / "cache", out, "--precisions=fp32", "--devices=cpu", "-k", "generate")
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = {b["extra_info"]["case_id"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert set(results) == {f"tinyllama-{b}-cpu-fp32-b1" for b in ("torch", "openvino", "onnxruntime")}
    for case_id, info in results.items():
        assert info["accuracy"]["identical_share"] == 1.0 and info["accuracy"]["compared"] == 2 * 12, case_id
        assert set(info["generate"]) == {"prompt8-new12", "prompt24-new12"}
        for config in info["generate"].values():
            assert config["ttft_ms"] > 0 and config["decode_tokens_per_s"] > 0 and config["itl_p50_ms"] > 0
            # a few runs x 11 inter-token gaps: below the 662 samples a p99 needs, so none is made up
            if config["itl_samples"] < 662:
                assert config["itl_p99_ms"] is None and config["itl_p99_samples_needed"] == 662
            else:
                assert config["itl_p99_ms"] >= config["itl_p50_ms"]
        assert info["isolation"] == "process"
    # the precision each backend's compute ran in is recorded, not assumed
    ov_config = results["tinyllama-openvino-cpu-fp32-b1"]["backend_config"]
    assert ov_config["properties"]["KV_CACHE_PRECISION"] == "f32"
    assert ov_config["prefix_caching"] is False  # else every timed call after the first skips its prefill


def test_a_config_change_is_a_different_model_and_a_bad_key_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_generate(tmp_path, tmp_path / "x.json", "--generate-config=tinyllama:num_layerz=2", "--collect-only")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--generate-config 'tinyllama:num_layerz=2': expected tinyllama:KEY=VALUE" in proc.stderr
    proc = run_generate(tmp_path, tmp_path / "x.json", "--generate-prompt-lengths=0", "--collect-only")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR and "give positive integers" in proc.stderr


def test_generation_models_run_only_in_the_generate_scenario() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--backends=torch", "--devices=cpu", "--precisions=fp32"], cwd=REPO, capture_output=True,
                          text=True)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("test_generate.py::test_generate[tinyllama-torch-cpu-fp32-b1]" in i for i in ids)
    assert not any("tinyllama" in i and "test_generate.py" not in i for i in ids)
    assert not any("test_generate.py" in i and "tinyllama" not in i for i in ids)
