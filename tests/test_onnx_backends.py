"""ONNX export cache, ONNX Runtime and OpenVINO on a small CNN: the precision each case
claims is the precision it runs, int8 is really quantized, and accuracy holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from tiny_torch_model import TINY_CNN  # noqa: E402

from infermatrix.api.types import BackendInfo, PrepareContext, RunOptions, Target  # noqa: E402
from infermatrix.case.runner import run_in_batches  # noqa: E402
from infermatrix.forms import onnx_export  # noqa: E402
from infermatrix.gate.accuracy import compare_outputs  # noqa: E402
from infermatrix.gate.precision import check_precision  # noqa: E402
from infermatrix.gate.reference import accuracy_inputs, reference_outputs  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def context(tmp_path: Path, cache: Path) -> PrepareContext:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return PrepareContext(workdir=tmp_path, options=RunOptions(cache_root=cache, threads=1))


def check(session, precision: str, cache: Path, batch_size: int = 4):
    expected = reference_outputs(TINY_CNN, 8, cache)
    got = run_in_batches(session, accuracy_inputs(TINY_CNN, 8), batch_size)
    return compare_outputs(got, expected, precision, classifier=True)


def test_export_happens_once_and_again_only_for_a_changed_model(cache: Path) -> None:
    path, first = onnx_export.onnx_model(TINY_CNN, cache)
    assert first["cached"] is False and first["export_s"] > 0
    mtime = path.stat().st_mtime_ns
    again, second = onnx_export.onnx_model(TINY_CNN, cache)
    assert again == path and second["cached"] is True and second["export_s"] is None
    assert path.stat().st_mtime_ns == mtime
    changed, third = onnx_export.onnx_model(dataclasses.replace(TINY_CNN, version=TINY_CNN.version + "+1"), cache)
    assert changed != path and third["cached"] is False


def test_without_torch_the_cached_export_is_used_or_the_error_says_what_to_do(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = onnx_export.onnx_model(TINY_CNN, cache)
    monkeypatch.setattr(onnx_export, "torch_available", lambda: False)
    found, info = onnx_export.onnx_model(TINY_CNN, cache)
    assert found == path and info["cached"] is True
    with pytest.raises(onnx_export.OnnxUnavailable, match="tox -e torch"):
        onnx_export.onnx_model(TINY_CNN, tmp_path / "empty-cache")


class TestOnnxRuntime:
    ort = pytest.importorskip("onnxruntime")

    def prepare(self, precision: str, tmp_path: Path, cache: Path):
        from plugins.backends import onnxruntime as backend

        info = BackendInfo("onnxruntime", ("cpu",), ("fp32", "int8", "int8-dynamic"))
        return backend.pytest_infermatrix_prepare(info, TINY_CNN, Target("cpu", precision), context(tmp_path, cache))

    def test_fp32_matches_the_reference(self, tmp_path: Path, cache: Path) -> None:
        session = self.prepare("fp32", tmp_path, cache)
        report = check(session, "fp32", cache)
        assert report.passed and report.rel_l2_error < 1e-5
        assert session.config["provider"] == "CPUExecutionProvider"
        assert session.config["intra_op_num_threads"] == 1
        evidence = session.precision_evidence()  # NCHWc convolutions and a Gemm, all on fp32 weights
        assert check_precision("fp32", evidence).status == "verified" and evidence.compute == {"fp32": 4}

    def test_int8_is_a_real_static_quantization_that_passes_the_gate(self, tmp_path: Path, cache: Path) -> None:
        import onnx

        fp32 = self.prepare("fp32", tmp_path / "a", cache)
        int8 = self.prepare("int8", tmp_path / "b", cache)
        report = check(int8, "int8", cache)
        assert report.passed, report.failures
        assert report.rel_l2_error > 1e-4  # it is not secretly the fp32 graph
        ops = {node.op_type for node in onnx.load(str(tmp_path / "b" / int8.config["onnx_file"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert int8.size_bytes < fp32.size_bytes / 2
        assert int8.times.quantize_s > 0
        # the recipe follows this CPU: 7-bit weights exactly where MLAS's kernels lack VNNI, reason recorded
        from infermatrix.machine import isa

        assert int8.config["int8_reduce_range"] == (not isa().int8_vnni)
        assert "7-bit" in int8.config["quantizer"] if not isa().int8_vnni else "7-bit" not in int8.config["quantizer"]
        assert int8.config["int8_recipe_reason"] and int8.config["int8_kernel"] == isa().int8_kernel()
        # after ONNX Runtime's optimizations every Q/DQ-wrapped convolution and the dense layer
        # run as quantized kernels
        evidence = int8.precision_evidence()
        assert check_precision("int8", evidence).passed
        assert evidence.compute == {"int8": 4}
        assert evidence.facts["compute_ops"] == {"com.microsoft:QLinearConv": 3, "com.microsoft:QGemm": 1}

    def test_int8_dynamic_runs_integer_kernels_on_activations_quantized_per_call(
        self, tmp_path: Path, cache: Path
    ) -> None:
        session = self.prepare("int8-dynamic", tmp_path, cache)
        evidence = session.precision_evidence()
        assert check_precision("int8-dynamic", evidence).passed and evidence.compute == {"int8-dynamic": 4}
        assert evidence.facts["compute_ops"] == {"ConvInteger": 3, "com.microsoft:DynamicQuantizeMatMul": 1}
        assert not check_precision("int8", evidence).passed  # dynamic is not the static int8 a case may claim

    @pytest.mark.parametrize(("precision", "quantizer"), [("int8", "quantize_static_qdq"),
                                                          ("int8-dynamic", "quantize_dynamic_int8")])
    def test_sabotage_a_quantizer_that_writes_the_fp32_graph_fails_the_proof(
        self, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, precision: str, quantizer: str
    ) -> None:
        import shutil

        from plugins.backends import onnxruntime as backend

        def fp32_copy(source: Path, target: Path, *args: object, **kwargs: object) -> str:
            shutil.copy(source, target)
            return "no quantization (sabotage)"

        monkeypatch.setattr(backend, quantizer, fp32_copy)
        session = self.prepare(precision, tmp_path, cache)
        # Both gates refuse it: the accuracy gate by its floor (fp32 to fp32's rounding), the proof
        # by the optimized graph, which shows no integer kernel.
        report = check(session, precision, cache)
        assert not report.passed and report.failures == (
            f"relative L2 error {report.rel_l2_error:.3g} < 0.0001: the outputs match fp32 to fp32's own rounding, "
            f"so {precision} did not run",)
        proof = check_precision(precision, session.precision_evidence())
        assert not proof.passed and proof.evidence.compute == {"fp32": 4}
        assert f"no compute op ran in {precision}" in proof.failures[0]

    def test_targets_skip_what_this_build_lacks(self) -> None:
        from plugins.backends import onnxruntime as backend

        info = BackendInfo("onnxruntime", backend.DEVICES, backend.PRECISIONS)
        targets = {(t.device, t.precision): t.skip_reason for t in backend.pytest_infermatrix_targets(info)}
        assert targets[("cpu", "fp32")] is None and targets[("cpu", "int8")] is None
        assert "fp16" in targets[("cpu", "fp16")]
        if "CUDAExecutionProvider" not in self.ort.get_available_providers():
            assert "CUDAExecutionProvider is not in this build" in targets[("cuda", "fp32")]


class TestOpenVino:
    ov = pytest.importorskip("openvino")

    def prepare(self, precision: str, tmp_path: Path, cache: Path, batch_size: int = 4):
        from plugins.backends import openvino as backend

        info = BackendInfo("openvino", ("cpu",), ("fp32", "bf16", "int8"))
        return backend.pytest_infermatrix_prepare(
            info, TINY_CNN, Target("cpu", precision), batch_size, context(tmp_path, cache))

    def test_fp32_really_compiles_f32_even_where_the_cpu_defaults_to_bf16(self, tmp_path: Path, cache: Path) -> None:
        session = self.prepare("fp32", tmp_path, cache)
        assert session.config["inference_precision_hint"] == "f32"
        assert session.config["performance_hint"] == "LATENCY"
        report = check(session, "fp32", cache)
        assert report.passed and report.rel_l2_error < 1e-5
        proof = check_precision("fp32", session.precision_evidence())
        assert proof.status == "verified" and proof.evidence.compute == {"fp32": 4}  # 3 convolutions, 1 dense

    def test_bf16_where_the_cpu_has_it(self, tmp_path: Path, cache: Path) -> None:
        core = self.ov.Core()
        if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            pytest.skip("this CPU has no bf16")
        session = self.prepare("bf16", tmp_path, cache)
        assert session.config["inference_precision_hint"] == "bf16"
        report = check(session, "bf16", cache)
        assert report.passed and report.rel_l2_error > 1e-4  # bf16 really ran
        evidence = session.precision_evidence()
        assert check_precision("bf16", evidence).passed and evidence.compute == {"bf16": 4}
        assert not check_precision("fp32", evidence).passed

    def test_sabotage_bf16_hint_quietly_f32_passes_the_hint_readback_but_not_the_proof(
        self, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from plugins.backends import openvino as backend

        monkeypatch.setitem(backend.PRECISION_HINT, "bf16", "f32")  # "bf16" compiled as f32: a silent fp32
        session = self.prepare("bf16", tmp_path, cache)  # the old check (the hint read back) lets it through
        proof = check_precision("bf16", session.precision_evidence())
        assert not proof.passed and proof.evidence.compute == {"fp32": 4}
        assert "no compute op ran in bf16" in proof.message("tinycnn-openvino-cpu-bf16-b4")

    def test_int8_via_nncf_is_quantized_and_passes_the_gate(self, tmp_path: Path, cache: Path) -> None:
        fp32 = self.prepare("fp32", tmp_path / "a", cache)
        int8 = self.prepare("int8", tmp_path / "b", cache)
        report = check(int8, "int8", cache)
        assert report.passed, report.failures
        assert report.rel_l2_error > 1e-4
        ir = (tmp_path / "b" / "model.xml").read_text()
        assert "FakeQuantize" in ir or "FakeConvert" in ir
        # weights are stored as int8 in the IR (its XML dominates the total for a model this small)
        assert (tmp_path / "b" / "model.bin").stat().st_size < (tmp_path / "a" / "model.bin").stat().st_size / 2
        assert int8.size_bytes < fp32.size_bytes
        assert int8.config["inference_precision_hint"] == "f32"  # unquantized parts stay f32
        # NNCF's overflow fix follows the CPU (and ONEDNN_MAX_CPU_ISA): half-range weights only without VNNI
        from infermatrix.machine import isa

        assert int8.config["int8_overflow_fix"] == ("disable" if isa().onednn_int8_vnni else "enable")
        assert int8.config["int8_7bit"] == (not isa().onednn_int8_vnni) and int8.config["int8_recipe_reason"]
        # the runtime model executes every convolution and the dense layer on u8/i8 inputs
        evidence = int8.precision_evidence()
        assert check_precision("int8", evidence).passed and evidence.compute == {"int8": 4}
        assert set(evidence.facts["runtime_precision_by_layer_type"]["Convolution"]) <= {"u8", "i8"}

    def test_sabotage_int8_without_quantization_fails_the_proof(
        self, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from plugins.backends import openvino as backend

        monkeypatch.setattr(backend, "quantize_int8", lambda ov_model, *args: ov_model)  # NNCF skipped: f32
        session = self.prepare("int8", tmp_path, cache)
        assert session.config["inference_precision_hint"] == "f32"  # the hint int8 cases compile with anyway
        proof = check_precision("int8", session.precision_evidence())
        assert not proof.passed and proof.status == "contradicted" and proof.evidence.compute == {"fp32": 4}


def test_graph_evidence_tells_dynamic_from_static_integer_kernels() -> None:
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from plugins.backends.onnxruntime import graph_evidence

    def graph(quantize_op: str) -> object:
        quantize = (helper.make_node(quantize_op, ["x"], ["xq", "xs", "xz"]) if quantize_op == "DynamicQuantizeLinear"
                    else helper.make_node(quantize_op, ["x", "xs", "xz"], ["xq"]))  # scale fixed at calibration
        nodes = [quantize,
                 helper.make_node("MatMulIntegerToFloat", ["xq", "w", "xs", "ws"], ["y"], domain="com.microsoft"),
                 helper.make_node("MatMul", ["y", "w16"], ["z"])]
        w16 = helper.make_tensor("w16", TensorProto.FLOAT16, [1, 1], [0.5])
        return helper.make_graph(nodes, "g", [], [], initializer=[w16])

    dynamic = graph_evidence(graph("DynamicQuantizeLinear"))
    assert dynamic.compute == {"int8-dynamic": 1, "fp16": 1}
    assert graph_evidence(graph("QuantizeLinear")).compute == {"int8": 1, "fp16": 1}
    assert dynamic.facts["compute_ops"] == {"com.microsoft:MatMulIntegerToFloat": 1, "MatMul": 1}


def test_onnx_inputs_run_at_any_batch(cache: Path) -> None:
    import onnxruntime as ort

    path, _ = onnx_export.onnx_model(TINY_CNN, cache)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        (out,) = session.run(None, TINY_CNN.eval_inputs(batch))
        assert out.shape == (batch, 10) and np.isfinite(out).all()
