"""The torch backend for real: one end-to-end case through the repository's own suite,
the targets it states on this machine, and the seeded weights behind every backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent


def test_resnet18_fp32_b1_end_to_end_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "-k", "resnet18-torch-cpu-fp32-b1", "-p", "no:cacheprovider",
         f"--benchmark-json={out}", f"--infermatrix-cache={tmp_path / 'cache'}", "--max-time=1",
         "--scenarios=latency"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]
    assert bench["name"] == "test_latency[resnet18-torch-cpu-fp32-b1]"
    assert info["backend_config"]["memory_format"] == "channels_last"
    assert info["backend_config"]["dtype"] == "float32" and info["backend_config"]["threads"] >= 1
    # channels_last fp32 against the NCHW reference: equal to float rounding, but not bit-identical
    assert info["accuracy"]["passed"] and 0 < info["accuracy"]["rel_l2_error"] < 1e-4
    assert info["accuracy"]["class_agreement"] == 1.0 and info["accuracy"]["samples"] == 32
    assert info["flops_per_sample"] == pytest.approx(3.63e9, rel=0.01)  # 1.81 GMAC, counted by torch
    for key in ("latency_p50_ms", "throughput_samples_per_s",
                "first_inference_s", "load_s", "model_size_bytes", "achieved_gflops_per_s"):
        assert info[key] > 0, key
    # a tail is recorded only with the rounds it needs (--max-time=1 gives some tens: p90 needs 64)
    for key, tail in info["latency_percentiles"].items():
        estimable = info["rounds"] >= tail["samples_needed"]
        assert (tail["value_ms"] is not None) == estimable == (f"latency_{key}_ms" in info), key
    # the same weights are stored framework-neutrally for every other backend
    (weights,) = (tmp_path / "cache").glob("resnet18-*/weights.npz")
    assert "fc.weight" in np.load(weights).files


def test_torch_targets_say_why_a_precision_cannot_run_here() -> None:
    from plugins.backends import torch as torch_backend

    (eager, compiled, cudagraphs) = torch_backend.pytest_infermatrix_backends()
    targets = {(t.device, t.precision): t.skip_reason for t in torch_backend.pytest_infermatrix_targets(eager)}
    assert targets[("cpu", "fp32")] is None
    assert "torch-compile cpu int8" in targets[("cpu", "int8")]
    assert "tf32 is a CUDA" in targets[("cpu", "tf32")]
    if not torch.cuda.is_available():
        assert all("no CUDA device" in targets[("cuda", p)] for p in ("fp32", "fp16", "bf16"))
    from infermatrix.machine import cpu_supports_bf16

    bf16 = targets[("cpu", "bf16")]
    assert (bf16 is None) if cpu_supports_bf16() else ("avx512_bf16 or AMX" in bf16)
    compiled_targets = {(t.device, t.precision): t.skip_reason
                        for t in torch_backend.pytest_infermatrix_targets(compiled)}
    assert compiled_targets[("cpu", "int8")] is None
    cudagraph_targets = {(t.device, t.precision): t.skip_reason
                         for t in torch_backend.pytest_infermatrix_targets(cudagraphs)}
    assert "CUDA graphs are a CUDA feature" in cudagraph_targets[("cpu", "fp32")]


def test_seeded_weights_do_not_depend_on_torch_rng(tmp_path: Path) -> None:
    from infermatrix.gate.reference import build_torch_model
    from plugins.models.mobilenet import MODELS

    (model,) = MODELS
    torch.manual_seed(123)
    first = build_torch_model(model, tmp_path / "a").state_dict()
    torch.manual_seed(456)
    second = build_torch_model(model, tmp_path / "b").state_dict()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    # batch-norm statistics were estimated, not left at the identity
    assert not torch.all(first["features.1.conv.0.1.running_var"] == 1)


def test_user_weights_replace_the_seeded_ones_and_bad_ones_name_the_file(tmp_path: Path) -> None:
    import dataclasses

    from tiny_torch_model import TINY_CNN

    from infermatrix.gate.reference import build_torch_model

    seeded = build_torch_model(TINY_CNN, tmp_path / "cache")
    mine = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in seeded.state_dict().items()}
    path = tmp_path / "mine.pt"
    torch.save(mine, path)
    loaded = build_torch_model(dataclasses.replace(TINY_CNN, weights_path=str(path)), tmp_path / "cache")
    assert all(torch.equal(loaded.state_dict()[k], mine[k]) for k in mine)
    # a different content key: references and exports of user weights never mix with seeded ones
    assert dataclasses.replace(TINY_CNN, weights_path=str(path)).cache_key() != TINY_CNN.cache_key()
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match="wrong.pt: these weights do not fit model 'tinycnn'"):
        build_torch_model(dataclasses.replace(TINY_CNN, weights_path=str(wrong)), tmp_path / "cache")
