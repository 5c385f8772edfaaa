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
    # the proof of precision: 20 convolutions and the classifier, all on fp32 weights
    proof = info["precision_evidence"]
    assert proof["status"] == "verified" and proof["compute"] == {"fp32": 21}, proof
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


# ---- proof of precision: what each torch path really computes in ----------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def prepare_tiny(backend_name: str, precision: str, workdir: Path, cache: Path, batch_size: int = 2):  # noqa: ANN201
    from tiny_torch_model import TINY_CNN

    from infermatrix.api.types import BackendInfo, PrepareContext, RunOptions, Target
    from plugins.backends import torch as torch_backend

    workdir.mkdir(parents=True, exist_ok=True)
    return torch_backend.pytest_infermatrix_prepare(
        BackendInfo(backend_name, ("cpu",), torch_backend.PRECISIONS), TINY_CNN, Target("cpu", precision), batch_size,
        PrepareContext(workdir=workdir, options=RunOptions(cache_root=cache, threads=1)))


def passes_accuracy(session, precision: str, cache: Path) -> bool:  # noqa: ANN001
    from tiny_torch_model import TINY_CNN

    from infermatrix.case.runner import run_in_batches
    from infermatrix.gate.accuracy import compare_outputs
    from infermatrix.gate.reference import accuracy_inputs, reference_outputs

    got = run_in_batches(session, accuracy_inputs(TINY_CNN, 8), 2)
    return compare_outputs(got, reference_outputs(TINY_CNN, 8, cache), precision, classifier=True).passed


def test_eager_bf16_shows_bf16_weights_and_a_silent_fp32_fails(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermatrix.gate.precision import check_precision
    from infermatrix.machine import cpu_supports_bf16
    from plugins.backends import torch as torch_backend

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16 (the case is a skip here)")
    evidence = prepare_tiny("torch", "bf16", tmp_path / "real", tiny_cache).precision_evidence()
    assert check_precision("bf16", evidence).passed and evidence.compute == {"bf16": 4}  # 3 convolutions, 1 linear
    assert evidence.facts["output_dtype"] == "bfloat16" and evidence.facts["parameter_dtypes"] == {"bfloat16": 14}
    monkeypatch.setitem(torch_backend.FLOAT_DTYPES, "bf16", "float32")  # sabotage: the cast skipped
    silent = prepare_tiny("torch", "bf16", tmp_path / "silent", tiny_cache)
    proof = check_precision("bf16", silent.precision_evidence())
    assert not proof.passed and proof.evidence.compute == {"fp32": 4}
    assert proof.evidence.facts["output_dtype"] == "float32"


def test_int8_dynamic_shows_torchao_int8_weights_and_a_silent_fp32_fails(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torchao = pytest.importorskip("torchao.quantization")
    from infermatrix.gate.precision import check_precision

    evidence = prepare_tiny("torch", "int8-dynamic", tmp_path / "real", tiny_cache).precision_evidence()
    # torchao quantizes Linear layers only: the classifier; the convolutions stay fp32
    assert evidence.compute == {"int8-dynamic": 1, "fp32": 3} and check_precision("int8-dynamic", evidence).passed
    monkeypatch.setattr(torchao, "quantize_", lambda module, config: None)  # sabotage: quantization skipped
    proof = check_precision("int8-dynamic", prepare_tiny("torch", "int8-dynamic", tmp_path / "silent",
                                                         tiny_cache).precision_evidence())
    assert not proof.passed and proof.evidence.compute == {"fp32": 4}


def test_torch_compile_int8_lowers_to_onednn_int8_kernels_and_a_silent_fp32_fails(
    tmp_path: Path, tiny_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchao")
    from infermatrix.gate.precision import check_precision
    from plugins.backends import torch as torch_backend

    session = prepare_tiny("torch-compile", "int8", tmp_path / "real", tiny_cache)
    evidence = session.precision_evidence()
    assert check_precision("int8", evidence).passed and evidence.compute == {"int8": 4, "fp32": 0}
    assert sum(n for name, n in evidence.facts["generated_kernel_calls"].items() if "onednn.q" in name) == 4
    # sabotage: PT2E skipped, the fp32 module compiled under the int8 id
    monkeypatch.setattr(torch_backend, "_quantize_static_pt2e", lambda module, *args: module)
    silent = prepare_tiny("torch-compile", "int8", tmp_path / "silent", tiny_cache)
    assert not passes_accuracy(silent, "int8", tiny_cache)  # the gate's floor refuses it too: fp32 to fp32's rounding
    proof = check_precision("int8", silent.precision_evidence())
    assert not proof.passed and proof.evidence.compute == {"int8": 0, "fp32": 4}
    assert "no compute op ran in int8" in proof.failures[0]
