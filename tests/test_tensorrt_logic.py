"""Everything of the TensorRT path that runs without TensorRT: the precision graphs,
checked with ONNX Runtime on the CPU, the engine cache key, the profile, the API plan."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

from tiny_torch_model import TINY_CNN  # noqa: E402

from infermatrix.api.types import BackendInfo  # noqa: E402
from infermatrix.forms.onnx_variants import check_on_cpu, graph_variant  # noqa: E402
from plugins.backends import tensorrt as trt_backend  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_fp16_graph_is_fp16_inside_keeps_fp32_io_and_passes_the_gate(cache: Path) -> None:
    import onnx

    variant = graph_variant(TINY_CNN, "fp16", cache)
    graph = onnx.load(str(variant.path)).graph
    weights = [init for init in graph.initializer if len(init.dims) == 4]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # host interface unchanged
    report = check_on_cpu(variant, TINY_CNN, cache)
    assert report.passed, report.failures
    assert 1e-6 < report.rel_l2_error < 5e-2  # fp16 really computed


def test_int8_graph_has_symmetric_qdq_as_tensorrt_requires_and_passes_the_gate(cache: Path) -> None:
    import onnx
    from onnx import numpy_helper

    variant = graph_variant(TINY_CNN, "int8", cache)
    graph = onnx.load(str(variant.path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    quantize = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quantize, "no Q/DQ nodes"
    for node in quantize:
        if len(node.input) > 2:  # the zero point
            zero_point = initializers[node.input[2]]
            assert not zero_point.any(), node.name  # symmetric
            # activations and weights int8; biases are int32 (scale = input scale x weight scale)
            assert zero_point.dtype == (np.int32 if "bias" in node.input[0] else np.int8), node.name
    report = check_on_cpu(variant, TINY_CNN, cache)
    assert report.passed, report.failures


def test_variants_are_made_once(cache: Path) -> None:
    first = graph_variant(TINY_CNN, "int8", cache)
    again = graph_variant(TINY_CNN, "int8", cache)
    assert again.cached and again.path == first.path
    with pytest.raises(ValueError, match="no graph variant for 'bf16'"):
        graph_variant(TINY_CNN, "bf16", cache)


def test_a_graph_that_fails_the_gate_is_caught_before_any_engine(cache: Path) -> None:
    import onnx

    variant = graph_variant(TINY_CNN, "fp16", cache)
    model = onnx.load(str(variant.path))
    for init in model.graph.initializer:  # sabotage: zero every fp16 weight
        if init.data_type == onnx.TensorProto.FLOAT16 and len(init.dims) == 4:
            init.raw_data = bytes(len(init.raw_data))
    broken = cache / "broken-fp16.onnx"
    onnx.save(model, str(broken))
    report = check_on_cpu(dataclasses.replace(variant, path=broken), TINY_CNN, cache)
    assert not report.passed


def test_engine_key_changes_with_every_ingredient(tmp_path: Path) -> None:
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"graph-1")
    shapes = trt_backend.profile_shapes(TINY_CNN, 4)
    base = trt_backend.engine_key(onnx_file, "10.13.0", "NVIDIA H100", "fp16", shapes)
    assert base == trt_backend.engine_key(onnx_file, "10.13.0", "NVIDIA H100", "fp16", shapes)
    variants = {
        trt_backend.engine_key(onnx_file, "11.0.0", "NVIDIA H100", "fp16", shapes),
        trt_backend.engine_key(onnx_file, "10.13.0", "NVIDIA A100", "fp16", shapes),
        trt_backend.engine_key(onnx_file, "10.13.0", "NVIDIA H100", "int8", shapes),
        trt_backend.engine_key(onnx_file, "10.13.0", "NVIDIA H100", "fp16", trt_backend.profile_shapes(TINY_CNN, 8)),
    }
    onnx_file.write_bytes(b"graph-2")
    variants.add(trt_backend.engine_key(onnx_file, "10.13.0", "NVIDIA H100", "fp16", shapes))
    assert base not in variants and len(variants) == 5


def test_profile_covers_the_case_batch() -> None:
    assert trt_backend.profile_shapes(TINY_CNN, 8) == {"input": ((8, 3, 32, 32),) * 3}


def test_api_plan_by_version() -> None:
    assert trt_backend.api_plan("10.13.2", True, True) == trt_backend.ApiPlan(False, True, True)
    assert trt_backend.api_plan("11.1.0", True, True).strongly_typed_flag  # accepted (ignored) on 11.x
    assert not trt_backend.api_plan("10.0.1", False, True).strongly_typed_flag  # before the flag existed
    with pytest.raises(RuntimeError, match="TensorRT 10\\+ API"):
        trt_backend.api_plan("8.6.1", False, True)


def test_targets_name_what_is_missing() -> None:
    (info,) = trt_backend.pytest_infermatrix_backends()
    if importlib.util.find_spec("tensorrt") is None:
        assert not info.available
        assert "tensorrt: tensorrt is not installed (pip install 'infermatrix[tensorrt]'" in info.reason
    targets = {t.precision: t.skip_reason for t in trt_backend.pytest_infermatrix_targets(
        BackendInfo("tensorrt", ("cuda",), trt_backend.PRECISIONS))}
    import torch

    if not torch.cuda.is_available():
        assert all("no CUDA device" in reason for reason in targets.values())
    else:
        assert "bf16 graph converter" in targets["bf16"]


# ---- proof of precision: the engine inspector's JSON ---------------------------------------------
# The layer records below are shaped after TensorRT's documented engine-inspector output
# (ProfilingVerbosity.DETAILED, LayerInformationFormat.JSON); they were not produced by a real
# engine, since TensorRT cannot be installed here: they check the reading, not TensorRT.


def inspector_layer(layer_type: str, parameter_type: str, datatype: str, weights: str | None = None) -> dict:
    layer = {"Name": f"{layer_type}-{datatype}", "LayerType": layer_type, "ParameterType": parameter_type,
             "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [4, 16, 32, 32],
                         "Format/Datatype": datatype}],
             "Outputs": [{"Name": "y", "Location": "Device", "Dimensions": [4, 16, 32, 32],
                          "Format/Datatype": datatype}]}
    if weights is not None:
        layer["Weights"] = {"Type": weights, "Count": 432}
    return layer


def engine_json(*layers: dict) -> str:
    import json

    return json.dumps({"Layers": list(layers), "Bindings": ["input", "logits"]})


INT8_CONV = inspector_layer("CaskConvolution", "Convolution",
                            "Thirty-two wide channel vectorized row major Int8 format", "Int8")
FP16_CONV = inspector_layer("CaskConvolution", "Convolution",
                            "Channel major FP16 format where channel % 8 == 0", "Half")
FP32_GEMM = inspector_layer("CaskGemmConvolution", "Convolution", "Row major linear FP32", "Float")
REFORMAT = inspector_layer("Reformat", "Reformat", "Row major linear FP32")


def test_engine_evidence_reads_each_compute_layers_data_type() -> None:
    from infermatrix.gate.precision import check_precision

    int8 = trt_backend.engine_evidence(engine_json(REFORMAT, INT8_CONV, INT8_CONV, FP32_GEMM))
    assert int8.compute == {"int8": 2, "fp32": 1} and check_precision("int8", int8).passed
    fp16 = trt_backend.engine_evidence(engine_json(REFORMAT, FP16_CONV, FP16_CONV))
    assert fp16.compute == {"fp16": 2} and check_precision("fp16", fp16).passed
    # a layer without tensor formats (no execution context: dynamic shapes) falls back to its weights' type
    weights_only = dict(INT8_CONV, Inputs=[{"Name": "x", "Format/Datatype": "N/A due to dynamic shapes"}])
    assert trt_backend.engine_evidence(engine_json(weights_only)).compute == {"int8": 1}
    tf32 = trt_backend.engine_evidence(engine_json(FP32_GEMM), tf32=True)
    assert tf32.compute == {"tf32": 1} and check_precision("tf32", tf32).passed


def test_sabotage_an_fp32_engine_under_an_int8_or_fp16_id_fails_the_proof() -> None:
    from infermatrix.gate.precision import check_precision

    silent = trt_backend.engine_evidence(engine_json(REFORMAT, FP32_GEMM, FP32_GEMM))
    for precision in ("int8", "fp16"):
        proof = check_precision(precision, silent)
        assert not proof.passed and f"no compute op ran in {precision}" in proof.failures[0]


def test_an_engine_with_layer_names_only_gives_no_evidence_and_a_reduced_precision_fails_unverified() -> None:
    import json

    from infermatrix.gate.precision import check_precision

    names_only = json.dumps({"Layers": ["conv1 + relu1", "conv2"], "Bindings": ["input", "logits"]})
    assert trt_backend.engine_evidence(names_only) is None
    assert check_precision("int8", None).status == "unverified" and not check_precision("int8", None).passed
