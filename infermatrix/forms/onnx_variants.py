"""Precision lives in the graph: fp16 and symmetric int8 Q/DQ variants of a model's ONNX.

Strongly typed runtimes (TensorRT 10.12+, and 11.x where weak typing is gone) run the
precision the graph says, so the conversion happens here, on the CPU, with well-kept
tools: onnxconverter-common's fp16 converter (keeping fp32 inputs and outputs), and ONNX
Runtime's static quantizer writing explicit QuantizeLinear/DequantizeLinear pairs with
*symmetric* int8 activations and per-channel int8 weights (TensorRT requires symmetric
quantization: zero points must be 0). NVIDIA's ModelOpt does the same but pulls in
onnxruntime-gpu and cupy (hundreds of MB) — see docs/backends.md.

Each variant is checked with ONNX Runtime on the CPU against the fp32 reference *before*
any engine is built, so everything up to the engine build runs on every CI machine.
Variants are cached beside the source export, keyed by its file name and the tools'
versions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from infermatrix.api.announce import installed_version
from infermatrix.api.types import ModelSpec
from infermatrix.cache import ModelCache, seal, unseal
from infermatrix.forms.onnx_export import intact, onnx_model
from infermatrix.gate.accuracy import DEFAULT_SAMPLES, AccuracyReport, compare_outputs
from infermatrix.gate.reference import accuracy_inputs, model_cache, reference_outputs

#: Precisions a graph variant exists for (fp32 and tf32 use the exported graph itself).
VARIANT_PRECISIONS = ("fp16", "int8")


@dataclasses.dataclass(frozen=True)
class GraphVariant:
    path: Path
    precision: str
    tool: str
    cached: bool


def _fp16(source: Path, target: Path) -> str:
    import warnings

    import onnx
    from onnxconverter_common import float16

    from infermatrix.cache import atomic_write_bytes

    model = onnx.load(str(source))
    with warnings.catch_warnings():
        # "the float32 number ... will be truncated": tiny weights flushed to fp16's range, expected
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    atomic_write_bytes(target, converted.SerializeToString())
    return f"onnxconverter-common {installed_version('onnxconverter-common')} convert_float_to_float16(keep_io_types)"


def graph_variant(model: ModelSpec, precision: str, cache_root: Path) -> GraphVariant:
    """The model's ONNX graph in ``precision`` (made once, then cached)."""
    if precision not in VARIANT_PRECISIONS:
        raise ValueError(f"no graph variant for {precision!r}; variants exist for {', '.join(VARIANT_PRECISIONS)}")
    source, _ = onnx_model(model, cache_root)
    cache: ModelCache = model_cache(model, cache_root)
    tools = installed_version("onnxconverter-common") if precision == "fp16" else installed_version("onnxruntime")
    target = cache.path(f"{source.stem}.{precision}-{tools}.onnx")
    index = cache.read_json("variants.json") or {}
    if target.exists() and target.name in index and intact(target):
        return GraphVariant(target, precision, index[target.name], cached=True)
    unseal(target)
    if precision == "fp16":
        tool = _fp16(source, target)
    else:
        from infermatrix.forms.onnx_quant import quantize_static_qdq

        tool = quantize_static_qdq(source, target, model, symmetric=True)
    seal(target)
    index[target.name] = tool
    cache.write_json("variants.json", index)
    return GraphVariant(target, precision, tool, cached=False)


def check_on_cpu(variant: GraphVariant, model: ModelSpec, cache_root: Path,
                 samples: int = DEFAULT_SAMPLES) -> AccuracyReport:
    """Run ``variant`` with ONNX Runtime on the CPU and judge it against the fp32 reference.

    Graph optimizations are off, so ONNX Runtime executes the graph as written: each
    DequantizeLinear yields floats and the Conv/MatMul after it runs in fp32 — the
    arithmetic the Q/DQ graph prescribes, which TensorRT's int8 kernels compute without
    saturating. With fusions on, ONNX Runtime would run its own u8/s8 CPU kernels, whose
    results depend on the CPU (VPMADDUBSW saturates without VNNI: a tiny CNN's int8 graph
    then failed on a Zen 3 and passed on a Zen 4), so the check would judge the CPU, not
    the graph.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(variant.path), sess_options=options, providers=["CPUExecutionProvider"])
    got = session.run(None, accuracy_inputs(model, samples))
    expected = reference_outputs(model, samples, cache_root)
    return compare_outputs(got, expected, variant.precision, classifier=model.task == "classification")
