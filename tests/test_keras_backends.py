"""TensorFlow (Keras 3) and PlaidML (Keras 2.2.4): the same network, the same weights.

Every model with a Keras form gives torch's fp32 logits (relative L2 <= 1e-4) on
TensorFlow here, and on PlaidML from its own environment (``INFERMATRIX_PLAIDML_PYTHON``,
set by ``make test``; Keras 2.2.4 cannot live beside Keras 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERAS_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "vgg19"]


def model_spec(name: str):  # noqa: ANN201
    sys.path.insert(0, str(REPO))
    from plugins.models import mobilenet, resnet, vgg

    return next(m for m in resnet.MODELS + mobilenet.MODELS + vgg.MODELS if m.name == name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return tmp_path_factory.mktemp("cache")


PARTIAL_WEIGHTS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import keras
from plugins.models.resnet import MODELS
from infermatrix.forms.keras import load_torch_state
from infermatrix.gate.reference import torch_state
state = dict(torch_state(MODELS[0], Path(sys.argv[2])))
del state["layer2.0.bn1.running_var"]
try:
    load_torch_state(MODELS[0].build_keras(keras), state)
except KeyError as exc:
    print("refused:", exc)
"""


def test_a_partial_weight_set_is_refused(cache: Path) -> None:
    needs_tensorflow()
    from infermatrix.gate.reference import reference_outputs

    reference_outputs(model_spec("resnet18"), 8, cache)  # the weights, made with torch in this process
    # Keras (TensorFlow) in a process of its own: TensorFlow beside torch crashed processes here
    proc = subprocess.run([sys.executable, "-c", PARTIAL_WEIGHTS, str(REPO), str(cache)], capture_output=True,
                          text=True, timeout=300)
    assert "refused: \"keras layer needs torch tensor 'layer2.0.bn1.running_var'" in proc.stdout, proc.stderr[-2000:]


def run_suite(python: str, cache: Path, out: Path, *args: str,
              home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if home is not None:
        env["HOME"] = str(home)
        env.pop("PLAIDML_SETTINGS", None)
    return subprocess.run(
        [python, "-m", "pytest", "suites/test_latency.py", "-q", "-p", "no:cacheprovider",
         f"--infermatrix-cache={cache}", f"--benchmark-json={out}", "--min-rounds=3", "--min-time=0.01",
         "--max-time=0.1", *args],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=900,
    )


def test_tensorflow_gives_torchs_logits_for_every_keras_model_through_a_compiled_function(
    cache: Path, tmp_path: Path
) -> None:
    needs_tensorflow()
    out = tmp_path / "tf.json"
    proc = run_suite(sys.executable, cache, out, "--backends=tensorflow,tensorflow-xla", "--batch-sizes=1",
                     "--precisions=fp32,bf16", "-k", "tensorflow-cpu-fp32 or resnet18")
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = {b["extra_info"]["case_id"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert set(results) >= {f"{m}-tensorflow-cpu-fp32-b1" for m in KERAS_MODELS} | {
        "resnet18-tensorflow-xla-cpu-fp32-b1"}
    for case_id, info in results.items():
        assert info["backend_config"]["api"].startswith("tf.function"), case_id  # never predict()
        assert info["compile_s"] > 0 and info["accuracy"]["passed"], case_id
        assert info["backend_config"]["compute_dtype"] == ("bfloat16" if "bf16" in case_id else "float32")
        proof = info["precision_evidence"]
        assert proof["status"] == "verified" and set(proof["compute"]) == {"bf16" if "bf16" in case_id else "fp32"}
        if "fp32" in case_id:
            assert info["accuracy"]["rel_l2_error"] <= 1e-4, (case_id, info["accuracy"])
    assert "jit_compile=True" in results["resnet18-tensorflow-xla-cpu-fp32-b1"]["backend_config"]["api"]


TENSORFLOW_PROOF = """
import json, sys
from pathlib import Path
sys.path[:0] = sys.argv[2:4]
from tiny_torch_model import TINY_CNN
from infermatrix.api.types import BackendInfo, PrepareContext, RunOptions, Target
from infermatrix.gate.precision import check_precision
from plugins.backends import tensorflow as backend
folder = Path(sys.argv[1])
found = {}
def prove(name, precision, backend_name="tensorflow"):
    (folder / name).mkdir()
    session = backend.pytest_infermatrix_prepare(
        BackendInfo(backend_name, ("cpu",), backend.PRECISIONS), TINY_CNN, Target("cpu", precision), 2,
        PrepareContext(workdir=folder / name, options=RunOptions(cache_root=folder / "cache", threads=1)))
    found[name] = check_precision(precision, session.precision_evidence()).as_dict()
    session.close()
prove("fp32", "fp32")
prove("bf16", "bf16")
prove("xla-fp32", "fp32", "tensorflow-xla")
prove("xla-bf16", "bf16", "tensorflow-xla")  # a target that is a skip: what XLA:CPU does with bf16
backend.POLICY["bf16"] = "float32"  # sabotage: the mixed policy is never set, the model computes fp32
prove("silent-bf16", "bf16")
print(json.dumps(found))
"""


def test_tensorflow_bf16_traces_bf16_compute_and_a_silent_fp32_fails_the_proof(tmp_path: Path) -> None:
    needs_tensorflow()
    from infermatrix.machine import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("tensorflow bf16 runs only on CPUs with avx512_bf16 or AMX")
    pytest.importorskip("torch")
    from tiny_torch_model import TINY_CNN

    from infermatrix.gate.reference import reference_outputs

    reference_outputs(TINY_CNN, 8, tmp_path / "cache")  # the weights, made with torch in this process
    script = tmp_path / "prove.py"
    script.write_text(TENSORFLOW_PROOF)
    tests = Path(__file__).parent
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(tests), str(REPO)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["fp32"]["status"] == "verified" and found["fp32"]["compute"] == {"fp32": 4}  # 3 Conv2D, 1 MatMul
    assert found["bf16"]["status"] == "verified" and found["bf16"]["compute"] == {"bf16": 4}
    assert found["bf16"]["facts"]["weighted_layers"]["Conv2D: mixed_bfloat16 -> bfloat16"] == 3
    silent = found["silent-bf16"]
    assert not silent["passed"] and silent["compute"] == {"fp32": 4}
    assert "no compute op ran in bf16" in silent["failures"][0]
    # XLA: its optimized HLO is the evidence, and on the CPU it computes bf16 in f32
    assert found["xla-fp32"]["status"] == "verified" and found["xla-fp32"]["compute"] == {"fp32": 4}
    xla_bf16 = found["xla-bf16"]
    assert not xla_bf16["passed"] and xla_bf16["compute"] == {"fp32": 4}, xla_bf16
    assert xla_bf16["facts"]["weighted_layers"]["Conv2D: mixed_bfloat16 -> bfloat16"] == 3  # what Keras was told


def test_tensorflow_xla_bf16_on_cpu_is_a_skip_that_says_why() -> None:
    needs_tensorflow()
    from infermatrix.api.types import BackendInfo
    from plugins.backends import tensorflow as backend

    if backend._keras3_problem():
        pytest.skip(backend._keras3_problem())
    targets = {t.precision: t.skip_reason for t in backend.pytest_infermatrix_targets(
        BackendInfo("tensorflow-xla", ("cpu",), backend.PRECISIONS)) if t.device == "cpu"}
    assert "XLA:CPU computes bf16 convolutions and matrix multiplications in f32" in targets["bf16"]


def needs_tensorflow() -> None:
    """Skip without TensorFlow, without importing it here (beside torch it crashed this process)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed (pip install 'infermatrix[tensorflow]')")


def plaidml_python() -> str:
    python = os.environ.get("INFERMATRIX_PLAIDML_PYTHON", str(REPO / ".venv-plaidml" / "bin" / "python"))
    if not Path(python).exists():
        pytest.skip("no PlaidML environment (make test creates .venv-plaidml; or set INFERMATRIX_PLAIDML_PYTHON)")
    return python


def test_plaidml_gives_torchs_logits_for_every_keras_model_without_any_setup(cache: Path, tmp_path: Path) -> None:
    python = plaidml_python()
    from infermatrix.gate.reference import reference_outputs

    for name in KERAS_MODELS:  # the PlaidML environment has no torch: it reads weights and references here
        reference_outputs(model_spec(name), 8, cache)
    home = tmp_path / "home"  # no ~/.plaidml, no PLAIDML_* variables: the backend configures PlaidML itself
    home.mkdir()
    out = tmp_path / "plaidml.json"
    proc = run_suite(python, cache, out, "--backends=plaidml", "--precisions=fp32", "--batch-sizes=1", home=home)
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = {b["extra_info"]["case_id"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert set(results) == {f"{m}-plaidml-llvm_cpu.0-fp32-b1" for m in KERAS_MODELS}
    for case_id, info in results.items():
        assert info["accuracy"]["rel_l2_error"] <= 1e-4, (case_id, info["accuracy"])
        assert info["compile_s"] > 0 and info["backend_config"]["keras"] == "2.2.4"
        assert info["precision_evidence"]["status"] == "verified", (case_id, info["precision_evidence"])
    assert list(home.iterdir()) == []  # the user's home configuration was never written


PLAIDML_PROOF = """
import json, sys
from pathlib import Path
sys.path[:0] = sys.argv[2:4]
from tiny_torch_model import TINY_CNN
from infermatrix.api.types import BackendInfo, PrepareContext, RunOptions, Target
from infermatrix.gate.precision import check_precision
from plugins.backends import plaidml as backend
folder = Path(sys.argv[1])
session = backend.pytest_infermatrix_prepare(
    BackendInfo("plaidml", ("llvm_cpu.0",), backend.PRECISIONS), TINY_CNN, Target("llvm_cpu.0", "fp32"), 2,
    PrepareContext(workdir=folder, options=RunOptions(cache_root=folder / "cache", threads=1)))
print(json.dumps(check_precision("fp32", session.precision_evidence()).as_dict()))
"""


def test_plaidml_shows_the_kernel_dtypes_it_compiled(tmp_path: Path) -> None:
    python = plaidml_python()
    pytest.importorskip("torch")
    from tiny_torch_model import TINY_CNN

    from infermatrix.gate.reference import reference_outputs

    reference_outputs(TINY_CNN, 8, tmp_path / "cache")  # the weights; the PlaidML environment has no torch
    script = tmp_path / "prove.py"
    script.write_text(PLAIDML_PROOF)
    tests = Path(__file__).parent
    proc = subprocess.run([python, str(script), str(tmp_path), str(tests), str(REPO)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proof = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proof["status"] == "verified" and proof["compute"] == {"fp32": 4}, proof
    assert proof["facts"] == {"kernels": {"Conv2D float32": 3, "Dense float32": 1}, "floatx": "float32",
                              "output_dtype": "float32"}


def test_plaidml_evidence_tells_fp16_kernels_from_fp32_ones() -> None:
    """fp16 cannot run on llvm_cpu (its kernels abort the process, so does building an fp16 model
    there): the reading of kernel dtypes is checked on stand-ins with Keras 2.2.4's interface."""
    from types import SimpleNamespace

    from infermatrix.gate.precision import check_precision
    from plugins.backends.plaidml import keras_evidence

    class Conv2D(SimpleNamespace):
        pass

    class Dense(SimpleNamespace):
        pass

    class BatchNormalization(SimpleNamespace):
        pass

    keras = SimpleNamespace(backend=SimpleNamespace(dtype=lambda weight: weight.dtype))

    def net(dtype: str) -> SimpleNamespace:
        weight = SimpleNamespace(dtype=dtype)
        return SimpleNamespace(layers=[Conv2D(weights=[weight]), BatchNormalization(weights=[weight]),
                                       Dense(weights=[weight, weight])])

    half = keras_evidence(keras, net("float16"), "float16", "float16")
    assert half.compute == {"fp16": 2} and check_precision("fp16", half).passed
    assert not check_precision("fp32", half).passed
    silent = check_precision("fp16", keras_evidence(keras, net("float32"), "float32", "float32"))
    assert not silent.passed and "no compute op ran in fp16" in silent.failures[0]
