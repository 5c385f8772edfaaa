"""The generate scenario: the tiny Llama on torch, OpenVINO GenAI and ONNX Runtime GenAI,
the token-identity gate, and the figures (TTFT, inter-token latency, tokens/s)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from infermatrix.case import language
from infermatrix.case.generation import TOKEN_TOLERANCE, Generated, compare_tokens, corpus, figures, prompt_ids

REPO = Path(__file__).resolve().parent.parent


def reference(new_tokens: int = 32) -> dict[str, list[list[int]]]:
    """What the trained tiny Llama gives on the default sweep (prompts 16 and 64, batch 1): the language's cycle."""
    return {f"{p}x{new_tokens}": language.continuation(prompt_ids(p, 1, 0, 2000), new_tokens, 0, 2000)
            for p in (16, 64)}


REDUCED = sorted(TOKEN_TOLERANCE)  # every precision below fp32 the gate knows
EVERY = ["fp32", *REDUCED]


Streams = dict[str, list[list[int]]]


def each(streams: Streams, change: Callable[[int, list[int]], list[int]]) -> Streams:
    """``streams`` with every sequence changed (``change(index in its batch, tokens)``)."""
    return {key: [change(i, row) for i, row in enumerate(rows)] for key, rows in streams.items()}


def test_the_reference_passes_every_precision_and_fp32_must_match_every_token() -> None:
    want = reference()
    for precision in EVERY:
        report = compare_tokens(want, want, precision)
        assert report.passed and report.identical_share == 1.0 and report.prefix_lengths == (32, 32), precision
        assert report.first_divergence is None and report.compared == 64
    late = {"16x32": [want["16x32"][0][:28] + [7, 7, 7, 7]], "64x32": want["64x32"]}  # one sequence's last 4 off
    diverged = compare_tokens(late, want, "fp32")
    assert not diverged.passed and diverged.first_divergence == 28 and "fp32 tokens must equal" in diverged.message("x")
    for precision in REDUCED:  # a late divergence (a near-tie) is what a working lower precision may show
        report = compare_tokens(late, want, precision)
        assert report.passed and report.prefix_lengths == (28, 32) and report.identical_share == 60 / 64, precision


def test_a_stuck_stream_fails_every_precision() -> None:
    want = reference()
    stuck_streams: list[Callable[[int, list[int]], list[int]]] = [
        lambda i, row: [row[0]] * len(row),  # the first token right, then stuck on it
        lambda i, row: [5] * len(row),
        lambda i, row: [row[-1]] * len(row),
    ]
    for stuck in stuck_streams:
        for precision in EVERY:
            report = compare_tokens(each(want, stuck), want, precision)
            assert not report.passed and report.identical_share <= 1 / 32, precision


def test_a_random_stream_fails_every_precision() -> None:
    want = reference()
    rng = np.random.default_rng(0)
    alphabet = language.cycle(0, 2000)
    for trial in range(200):  # uniform over the vocabulary, and over the 256 tokens the model ever emits
        pool = np.arange(2000) if trial % 2 else alphabet
        random = each(want, lambda i, row, pool=pool: [int(t) for t in rng.choice(pool, len(row))])
        for precision in EVERY:
            assert not compare_tokens(random, want, precision).passed, (trial, precision)


def test_a_right_start_then_garbage_fails_below_fp32_too() -> None:
    want = reference()
    rng = np.random.default_rng(1)
    for precision in REDUCED:
        keep = TOKEN_TOLERANCE[precision].min_prefix - 1  # the longest start that must not be enough
        for right in sorted({2, keep}):
            for tail in ("random", "stuck"):
                def garbage(i: int, row: list[int], right: int = right, tail: str = tail) -> list[int]:
                    rest = [int(t) for t in rng.integers(0, 2000, len(row) - right)] if tail == "random" else \
                        [row[right - 1]] * (len(row) - right)
                    return row[:right] + rest
                report = compare_tokens(each(want, garbage), want, precision)
                assert not report.passed and report.shortest_prefix == right, (precision, right, tail)
                assert f"16x32 sequence 0 keeps the reference's tokens for {right} steps" in report.failures[0]
        # the right start in one sequence only, the other garbage from the first token
        half = each(want, lambda i, row: row if i else [int(t) for t in rng.integers(0, 2000, len(row))])
        assert not compare_tokens({"16x32": half["16x32"], "64x32": want["64x32"]}, want, precision).passed


def test_sequences_from_other_prompts_fail() -> None:
    want = reference()
    swapped = {"16x32": want["64x32"], "64x32": want["16x32"]}
    shifted = each(want, lambda i, row: row[1:] + [row[0]])  # one step ahead: the right tokens, the wrong positions
    batch = {"16x32": language.continuation(prompt_ids(16, 3, 0, 2000), 32, 0, 2000)}
    rotated = {"16x32": batch["16x32"][1:] + batch["16x32"][:1]}  # batch rows answered for each other
    for precision in EVERY:
        assert not compare_tokens(swapped, want, precision).passed, precision
        assert not compare_tokens(shifted, want, precision).passed, precision
        assert not compare_tokens(rotated, batch, precision).passed, precision


def test_missing_short_and_long_output_fails() -> None:
    want = reference()
    broken = {
        "empty": each(want, lambda i, row: []),
        "one token": each(want, lambda i, row: row[:1]),
        "short": each(want, lambda i, row: row[:24]),  # right as far as it goes
        "long": each(want, lambda i, row: [*row, row[0]]),
        "no sequences": {key: [] for key in want},
        "a missing configuration": {"16x32": want["16x32"]},
    }
    for name, got in broken.items():
        for precision in EVERY:
            report = compare_tokens(got, want, precision)
            assert not report.passed, (name, precision)


def test_training_is_seeded_and_deterministic_and_part_of_the_cache_key() -> None:
    needs("torch", "transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from infermatrix.case.generation import GenerationSpec

    recipe = language.Training(steps=6, shapes=((2, 16), (1, 32)))
    trained = []
    for _ in range(2):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=64))
        log = language.train(model, recipe, seed=0, vocab_size=64)
        assert log["last_loss"] < log["first_loss"] and not model.training
        trained.append(model.state_dict())
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    spec = GenerationSpec(config={"vocab_size": 64}, training=recipe)
    assert spec.key() != dataclasses.replace(spec, training=language.Training(steps=7)).key()
    assert spec.key() != dataclasses.replace(spec, training=None).key()


def test_garbage_cannot_reach_the_thresholds_by_chance() -> None:
    """The chance that a uniformly random stream passes, from the thresholds themselves:
    both default sequences keep ``min_prefix`` tokens (each step 1/256 even for a stream
    drawn from the 256 tokens the model emits), or, looser, the pooled share is reached."""
    for precision, tolerance in TOKEN_TOLERANCE.items():
        assert 2 <= tolerance.min_prefix <= 32 and 0.5 <= tolerance.min_share <= 1, precision
        prefix_chance = (1 / 256) ** (2 * tolerance.min_prefix)
        needed = int(np.ceil(tolerance.min_share * 64))
        share_chance = sum(math.comb(64, k) * (1 / 256) ** k * (255 / 256) ** (64 - k) for k in range(needed, 65))
        assert prefix_chance < 1e-30 and share_chance < 1e-30, (precision, prefix_chance, share_chance)


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
    assert prompt_ids(16, 1, 0, 2000)[0, 0] == 0 and prompt_ids(16, 1, 0, 2000)[:, 1:].min() >= language.SPECIAL
    assert corpus(0)[:3] == corpus(0)[:3] and corpus(0)[:3] != corpus(1)[:3]


def test_prompts_are_segments_of_the_language_and_ask_for_tokens_they_do_not_hold() -> None:
    order = language.cycle(0, 2000)
    assert len(order) == len(set(order.tolist())) == language.ALPHABET  # a cycle: no token twice
    following = {int(a): int(b) for a, b in zip(order, np.roll(order, -1), strict=True)}
    for length in (16, 64):
        ids = prompt_ids(length, 2, 0, 2000)
        assert (ids[0] != ids[1]).any()  # each sequence starts somewhere else
        for row in ids:
            assert all(following[int(a)] == int(b) for a, b in zip(row[1:], row[2:], strict=False))
            assert not set(language.continuation(row[None], 32, 0, 2000)[0]) & set(row.tolist())
    assert len(language.cycle(0, 64)) == 60  # a small vocabulary: every token but the special ones


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


#: The default generation matrix on a CPU: every backend's generation precisions.
DEFAULT_GENERATION = {"torch": ("fp32", "bf16", "int8-dynamic"), "onnxruntime": ("fp32", "int8-weight-only"),
                      "openvino": ("fp32", "int8-weight-only", "int4-weight-only")}


def test_generate_runs_every_default_case_of_the_tiny_llama_and_each_passes_the_token_gate(tmp_path: Path) -> None:
    """torch, OpenVINO GenAI and ONNX Runtime GenAI at every generation precision: fp32 gives
    torch's tokens exactly, and every lower precision passes its gate (measured: all of them
    keep every token of the trained model)."""
    needs("torch", "transformers", "openvino_genai", "onnxruntime_genai", "optimum", "torchao")
    out = tmp_path / "generate.json"
    precisions = sorted({p for ps in DEFAULT_GENERATION.values() for p in ps})
    proc = run_generate(tmp_path / "cache", out, f"--precisions={','.join(precisions)}", "--devices=cpu",
                        "-k", "generate")
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = {b["extra_info"]["case_id"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert set(results) == {f"tinyllama-{b}-cpu-{p}-b1" for b, ps in DEFAULT_GENERATION.items() for p in ps}
    for case_id, info in results.items():
        assert info["accuracy"]["passed"] and info["accuracy"]["compared"] == 2 * 12, case_id
        if case_id.endswith("-fp32-b1"):
            assert info["accuracy"]["identical_share"] == 1.0 and info["accuracy"]["prefix_lengths"] == [12, 12]
        assert set(info["generate"]) == {"prompt8-new12", "prompt24-new12"}
        for config in info["generate"].values():
            assert config["ttft_ms"] > 0 and config["decode_tokens_per_s"] > 0 and config["itl_p50_ms"] > 0
            # a few runs x 11 inter-token gaps: below the 662 samples a p99 needs, so none is made up
            if config["itl_samples"] < 662:
                assert config["itl_p99_ms"] is None and config["itl_p99_samples_needed"] == 662
            else:
                assert config["itl_p99_ms"] >= config["itl_p50_ms"]
        assert info["isolation"] == "process"
        proof = info["precision_evidence"]  # read from each backend's export / modules, before timing
        claimed = case_id.split("-cpu-")[1].removesuffix("-b1")
        assert proof["status"] == "verified" and proof["passed"] and proof["compute"].get(claimed), (case_id, proof)
    # the precision each backend's compute ran in is recorded, not assumed
    ov_config = results["tinyllama-openvino-cpu-fp32-b1"]["backend_config"]
    assert ov_config["properties"]["KV_CACHE_PRECISION"] == "f32"
    assert ov_config["prefix_caching"] is False  # else every timed call after the first skips its prefill
    assert results["tinyllama-openvino-cpu-int4-weight-only-b1"]["backend_config"]["weight_format"].startswith("int4")
    assert results["tinyllama-onnxruntime-cpu-int8-weight-only-b1"]["backend_config"]["builder_precision"] == "int8"
    # the reference is the trained model's: it continues each prompt round the language's cycle
    (store,) = (tmp_path / "cache").glob("tinyllama-*/reference-tokens-b1-*.json")
    for key, tokens in json.loads(store.read_text()).items():
        length, new = map(int, key.split("x"))
        assert tokens == language.continuation(prompt_ids(length, 1, 0, 2000), new, 0, 2000), key


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
