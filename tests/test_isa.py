"""The CPU's instruction sets: how they are recorded, how they file baselines apart, and
how each backend's int8 recipe follows them.

What each test checks on which ISA:
- the recipe and fingerprint tests are pure functions of flag sets, so they check every
  CPU class (AVX2 only, AVX-512 without VNNI, AVX-512 + VNNI, AVX-VNNI, AMX) on any host;
- ``test_int8_on_real_avx2_kernels`` runs ONNX Runtime's real non-VNNI kernels on any
  x86-64 host, under QEMU's Zen 3 CPU model (AVX2 + FMA, no AVX-512, no VNNI), and checks
  that the full-range u8s8 graph saturates there while the recipe chosen for that CPU
  and the TensorRT graph check do not.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from infermatrix.machine import Isa, isa, machine_summary
from infermatrix.results import baselines

AVX2_ONLY = frozenset({"avx", "avx2", "fma", "f16c"})  # Zen 3, Haswell..Comet Lake
AVX512_NO_VNNI = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}  # Skylake-SP
AVX512_VNNI = AVX512_NO_VNNI | {"avx512_vnni", "avx512_bf16"}  # Zen 4, Cascade/Cooper Lake
AVX_VNNI = AVX2_ONLY | {"avx_vnni"}  # Alder Lake client cores
AMX = AVX512_VNNI | {"amx_int8", "amx_bf16", "amx_tile"}  # Sapphire Rapids

CPUS = {"avx2": AVX2_ONLY, "avx512": AVX512_NO_VNNI, "avx512-vnni": AVX512_VNNI, "avx-vnni": AVX_VNNI, "amx": AMX}
SATURATING = {"avx2", "avx512"}  # u8s8 through VPMADDUBSW


@pytest.mark.parametrize("name", CPUS)
def test_int8_vnni_follows_the_flags(name: str) -> None:
    cpu = Isa(CPUS[name])
    assert cpu.int8_vnni == (name not in SATURATING)
    assert ("VPMADDUBSW" in cpu.int8_kernel()) == (name in SATURATING)


def test_onednn_cap_takes_vnni_away_from_onednn_only() -> None:
    zen4 = AVX512_VNNI | {"avx_vnni"}
    assert Isa(zen4, "AVX2").int8_vnni  # ONNX Runtime's MLAS ignores the oneDNN cap
    assert not Isa(zen4, "AVX2").onednn_int8_vnni
    assert not Isa(zen4, "avx512_core").onednn_int8_vnni  # AVX-512 without its VNNI level
    assert Isa(zen4, "AVX2_VNNI").onednn_int8_vnni  # the CPU's AVX-VNNI under that cap
    assert not Isa(AVX512_VNNI, "AVX2_VNNI").onednn_int8_vnni  # ...but only if the CPU has AVX-VNNI
    assert Isa(zen4, "AVX512_CORE_VNNI").onednn_int8_vnni and Isa(zen4, None).onednn_int8_vnni
    assert not Isa(AVX2_ONLY, "DEFAULT").onednn_int8_vnni


def test_this_process_reads_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert isa().onednn_max_cpu_isa == "AVX2" and not isa().onednn_int8_vnni


@pytest.mark.parametrize("name", CPUS)
def test_each_backend_int8_recipe_follows_the_cpu(name: str) -> None:
    pytest.importorskip("onnxruntime")
    from infermatrix.forms.onnx_quant import cpu_int8_recipe
    from plugins.backends.openvino import int8_overflow_fix
    from plugins.backends.torch import int8_reduce_range

    cpu, saturates = Isa(CPUS[name]), name in SATURATING
    ort = cpu_int8_recipe(cpu)
    assert ort.reduce_range == saturates
    assert ("VPMADDUBSW" in ort.reason) == saturates  # the reason names the cause
    assert int8_overflow_fix(cpu)[0] == ("enable" if saturates else "disable")
    assert int8_reduce_range(cpu)[0] == saturates
    # a oneDNN cap below VNNI moves OpenVINO and torch (oneDNN) to the safe recipe, not ONNX Runtime
    capped = Isa(CPUS[name], "AVX2")
    assert int8_overflow_fix(capped)[0] == "enable" and int8_reduce_range(capped)[0]
    assert cpu_int8_recipe(capped).reduce_range == saturates


def _machine(**changes: object) -> dict:
    info = {"cpu_model": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_family": 25, "cpu_model_number": 17,
            "cpu_stepping": 1, "cpu_cache_bytes": {"l1d": 32768, "l2": 1048576, "l3": 33554432},
            "isa": {flag: True for flag in AVX512_VNNI}, "cpu_physical_cores": 2, "gpus": [], "os": "Linux",
            "arch": "x86_64"}
    info.update(changes)
    return {"infermatrix": info}


def test_fingerprint_files_cpu_generations_apart() -> None:
    zen4 = baselines.fingerprint(_machine())
    assert zen4 == baselines.fingerprint(_machine())
    assert "f25m17-avx512vnni" in zen4  # readable: which generation, which int8 path
    differing = {
        "family/model": _machine(cpu_model_number=1),
        "stepping": _machine(cpu_stepping=2),
        "vendor": _machine(cpu_vendor="GenuineIntel"),
        "isa flags": _machine(isa={flag: True for flag in AVX2_ONLY}),
        "one flag": _machine(isa={flag: True for flag in AVX512_VNNI - {"avx512_bf16"}}),
        "caches": _machine(cpu_cache_bytes={"l1d": 32768, "l2": 524288, "l3": 33554432}),
    }
    prints = {what: baselines.fingerprint(machine) for what, machine in differing.items()}
    assert zen4 not in prints.values() and len(set(prints.values())) == len(prints), prints
    assert "f25m1-avx2" in baselines.fingerprint(_machine(cpu_model_number=1, isa={f: True for f in AVX2_ONLY}))


def test_a_run_with_onednn_capped_is_filed_apart() -> None:
    capped = _machine(isa={**{flag: True for flag in AVX512_VNNI}, "onednn_max_cpu_isa": "AVX2"})
    assert baselines.fingerprint(capped) != baselines.fingerprint(_machine())
    assert "onednn-avx2" in baselines.fingerprint(capped)


def test_fingerprint_ignores_flags_that_change_no_kernel() -> None:
    assert baselines.fingerprint(_machine()) == baselines.fingerprint(
        _machine(isa={**{flag: True for flag in AVX512_VNNI}, "onednn_max_cpu_isa": None, "int8_vnni": True}))


def test_this_machine_records_its_isa_and_identity() -> None:
    summary = machine_summary()
    isa_record = summary["isa"]
    for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "avx512_fp16", "f16c"):
        assert isinstance(isa_record[flag], bool), flag
    assert isa_record["int8_vnni"] == isa().int8_vnni
    if platform.machine() == "x86_64":
        assert summary["cpu_vendor"] and summary["cpu_family"] is not None and summary["cpu_model_number"] is not None
        assert summary["cpu_cache_bytes"].get("l2", 0) > 0


def test_report_machine_section_names_the_isa() -> None:
    from infermatrix.report.write import machine_lines

    lines = "\n".join(machine_lines({"machine_info": _machine(isa={flag: True for flag in AVX2_ONLY})}))
    assert "family 25 model 17" in lines
    assert "AVX2" in lines and "no AVX-512" in lines and "no VNNI" in lines and "no AMX" in lines


# ---- the real AVX2 kernels, under emulation --------------------------------------------------

EMULATED_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    from numpy._core._multiarray_umath import __cpu_features__ as cpu
    folder, = sys.argv[1:]
    inputs = dict(np.load(folder + "/inputs.npz"))
    for name in ("full-range", "recipe", "tensorrt-graph"):
        for fused in (True, False):
            options = ort.SessionOptions()
            options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused
                                                else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            session = ort.InferenceSession(f"{folder}/{name}.onnx", options, providers=["CPUExecutionProvider"])
            np.save(f"{folder}/{name}-{'fused' if fused else 'graph'}.npy", session.run(None, inputs)[0])
    print(json.dumps({"avx2": cpu["AVX2"], "avx512f": cpu["AVX512F"], "avx512vnni": cpu["AVX512VNNI"]}))
""")


def _emulator() -> str:
    if platform.machine() != "x86_64":
        pytest.skip("the AVX2 emulation test runs on x86-64 hosts")
    found = shutil.which("qemu-x86_64")
    if found is None:
        pytest.skip("qemu-x86_64 is not installed (make test installs Debian's qemu-user when it runs as root)")
    return found


def test_int8_on_real_avx2_kernels(tmp_path: Path) -> None:
    """ONNX Runtime's non-VNNI u8s8 kernels, run for real under QEMU's EPYC-Milan (Zen 3)
    model: the full-range graph saturates there, the AVX2 recipe and the TensorRT graph
    check compute what their graphs say — on whatever CPU runs this test."""
    qemu = _emulator()
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_torch_model import TINY_CNN

    from infermatrix.forms.onnx_export import onnx_model
    from infermatrix.forms.onnx_quant import cpu_int8_recipe, quantize_static_qdq
    from infermatrix.forms.onnx_variants import graph_variant
    from infermatrix.gate.reference import accuracy_inputs

    cache = tmp_path / "cache"
    source, _ = onnx_model(TINY_CNN, cache)
    quantize_static_qdq(source, tmp_path / "full-range.onnx", TINY_CNN, symmetric=False)
    recipe = cpu_int8_recipe(Isa(AVX2_ONLY))
    quantize_static_qdq(source, tmp_path / "recipe.onnx", TINY_CNN, symmetric=False, reduce_range=recipe.reduce_range)
    shutil.copy(graph_variant(TINY_CNN, "int8", cache).path, tmp_path / "tensorrt-graph.onnx")
    np.savez(tmp_path / "inputs.npz", **accuracy_inputs(TINY_CNN, 8))
    script = tmp_path / "run.py"
    script.write_text(EMULATED_RUN)
    done = subprocess.run([qemu, "-cpu", "EPYC-Milan", sys.executable, str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"avx2": True, "avx512f": False, "avx512vnni": False}, "the emulated CPU is not AVX2-only"

    def fused_vs_graph(name: str) -> float:
        fused, graph = (np.load(tmp_path / f"{name}-{kind}.npy") for kind in ("fused", "graph"))
        return float(np.linalg.norm(fused - graph) / np.linalg.norm(graph))

    # Measured: full range 0.04 (saturated sums), the recipe ~1e-3 (requantization rounding).
    assert fused_vs_graph("full-range") > 0.02, "the emulated u8s8 kernels did not saturate: not VPMADDUBSW?"
    assert fused_vs_graph("recipe") < 0.01, "7-bit weights still saturate on AVX2"
    # The TensorRT graph check runs the graph unfused: the same numbers on any CPU.
    native = _run_unfused(tmp_path / "tensorrt-graph.onnx", tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "tensorrt-graph-graph.npy"), native, rtol=1e-5, atol=1e-5)


def _run_unfused(path: Path, folder: Path) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, dict(np.load(folder / "inputs.npz")))[0])


OPENVINO_UNDER_AVX2_CAP = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path[:0] = sys.argv[2:4]
    from tiny_torch_model import TINY_CNN
    from infermatrix.gate.reference import accuracy_inputs, reference_outputs
    from infermatrix.case.runner import run_in_batches
    from infermatrix.gate.accuracy import compare_outputs
    from infermatrix.api.types import BackendInfo, PrepareContext, RunOptions, Target
    from plugins.backends import openvino as backend
    folder = Path(sys.argv[1])
    session = backend.pytest_infermatrix_prepare(
        BackendInfo("openvino", ("cpu",), ("int8",)), TINY_CNN, Target("cpu", "int8"), 4,
        PrepareContext(workdir=folder, options=RunOptions(cache_root=folder / "cache", threads=1)))
    got = run_in_batches(session, accuracy_inputs(TINY_CNN, 8), 4)
    report = compare_outputs(got, reference_outputs(TINY_CNN, 8, folder / "cache"), "int8", classifier=True,
                             backend_config=session.config)
    from infermatrix.gate.precision import check_precision
    proof = check_precision("int8", session.precision_evidence()).as_dict()
    print(json.dumps({"config": {k: v for k, v in session.config.items() if k.startswith("int8")},
                      "passed": report.passed, "tolerance": report.tolerance, "failures": report.failures,
                      "proof": proof}))
""")


def test_openvino_int8_under_an_avx2_cap_takes_the_7bit_recipe(tmp_path: Path) -> None:
    """OpenVINO's oneDNN obeys ONEDNN_MAX_CPU_ISA, so its AVX2 int8 kernels run natively on
    a bigger CPU: the case must choose NNCF's overflow fix there and pass the gate."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    pytest.importorskip("torch")
    script = tmp_path / "run.py"
    script.write_text(OPENVINO_UNDER_AVX2_CAP)
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(tests), str(tests.parent)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["config"]["int8_overflow_fix"] == "enable" and seen["config"]["int8_7bit"] is True
    assert "VPMADDUBSW" in seen["config"]["int8_kernel"]
    assert seen["tolerance"] == "int8, 7-bit recipe (no VNNI)"
    assert seen["passed"], seen["failures"]
    # and the runtime model shows int8 convolutions on oneDNN's AVX2 int8 kernels, not an f32 fallback
    assert seen["proof"]["passed"] and seen["proof"]["compute"] == {"int8": 4}, seen["proof"]
    conv_kernels = seen["proof"]["facts"]["compute_primitives"]["Convolution"]
    assert all("avx2" in kernel and "avx512" not in kernel for kernel in conv_kernels), conv_kernels


def test_a_onednn_cap_below_bf16_takes_native_bf16_away() -> None:
    """Under ONEDNN_MAX_CPU_ISA=AVX2 OpenVINO still reports BF16 from CPUID, then cannot build a
    bf16 kernel: the bf16 cases of the oneDNN backends are skips there, as on a CPU without bf16."""
    flags = AVX512_VNNI  # with avx512_bf16
    assert Isa(flags).onednn_bf16
    assert not Isa(flags, "AVX2").onednn_bf16 and not Isa(flags, "AVX512_CORE_VNNI").onednn_bf16
    assert Isa(flags, "AVX512_CORE_BF16").onednn_bf16
    assert not Isa(AVX2_ONLY).onednn_bf16
