"""TensorRT (10 and later), from the model's cached ONNX export.

Written from TensorRT's own documentation and its 10.x → 11.x migration guide; it has
not run on a machine with TensorRT (none of this project's machines can install it).
What is exercised on every CI run: the precision graphs (fp16, symmetric int8 Q/DQ)
made and checked with ONNX Runtime on the CPU before any engine is built, the
optimization-profile shapes, the engine cache key, and the choice of API by version.

The path:
- ONNX → ``OnnxParser`` into a network created with the STRONGLY_TYPED flag where the
  version has it (required for strong typing on 10.12–10.x, accepted and ignored on
  11.x where strong typing is always on) and EXPLICIT_BATCH only before 10.0.
- Precision lives in the graph: fp32/tf32 use the exported graph, fp16 and int8 their
  graph variants (infermatrix.forms.onnx_variants). The weak-typing builder flags
  (``BuilderFlag.FP16``/``INT8``/``BF16``, calibrators) are never used; they are gone
  in 11.x. TF32 is the one math-mode flag: cleared for fp32, set for tf32.
- ``set_memory_pool_limit(WORKSPACE)``, one optimization profile (min = opt = max = the
  case's batch: static shapes per case, as every other backend here),
  ``build_serialized_network`` → ``Runtime.deserialize_cuda_engine``; engines cached on
  disk by ONNX content, TensorRT version, GPU, precision and profile.
- Execution: named I/O tensors (``num_io_tensors``, ``get_tensor_name``,
  ``get_tensor_mode``, ``get_tensor_shape``), device buffers from torch,
  ``set_tensor_address`` + ``execute_async_v3`` on a torch CUDA stream, synchronized
  before the call returns.
- Proof of precision: engines are built with ``ProfilingVerbosity.DETAILED`` so that the
  engine inspector (``engine.create_engine_inspector()``, ``get_engine_information(
  LayerInformationFormat.JSON)``) lists each layer with its type and its tensors'
  ``Format/Datatype``: the precision each convolution and matrix multiplication runs in
  (:func:`engine_evidence`). Written from the documentation (its JSON example); not run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermatrix.api.announce import announce_backend
from infermatrix.api.types import Arrays, BackendInfo, ModelSpec, PrepareContext, PrepareTimes, Target
from infermatrix.cache import atomic_write_bytes
from infermatrix.gate.precision import PrecisionEvidence

NAME = "tensorrt"
DEVICES = ("cuda",)
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
WORKSPACE_BYTES = 4 << 30
#: Engines keep per-layer details for the engine inspector (the proof of precision); part of
#: the engine key, so engines cached before (layer names only) are built again.
PROFILING_VERBOSITY = "DETAILED"


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    return [announce_backend(NAME, "tensorrt", "tensorrt", DEVICES, PRECISIONS, extra="tensorrt")]


def cuda_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "tensorrt: device buffers come from torch, which is not installed (pip install 'infermatrix[tensorrt]')"
    import torch

    if not torch.cuda.is_available():
        return "tensorrt: no CUDA device (torch.cuda.is_available() is False)"
    return None


def precision_reason(precision: str) -> str | None:
    if precision == "bf16":
        return "tensorrt: no bf16 graph converter in this suite (onnxconverter-common converts to fp16 only)"
    if precision in ("fp16", "int8"):
        needed = {"fp16": "onnxconverter_common", "int8": "onnxruntime"}[precision]
        if importlib.util.find_spec(needed) is None:
            return f"tensorrt: the {precision} graph is made with {needed}, which is not installed"
    return None


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name != NAME:
        return None
    device_reason = cuda_reason()
    return [Target("cuda", p, device_reason or precision_reason(p)) for p in PRECISIONS]


# -------------------------------------------------------------------------
# version-dependent API choices (tested without TensorRT)
# -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ApiPlan:
    """Which network-creation flags and builder flags this TensorRT version needs."""

    explicit_batch_flag: bool
    strongly_typed_flag: bool
    tf32_flag: bool


def api_plan(version: str, has_strongly_typed: bool, has_tf32_flag: bool) -> ApiPlan:
    major = int(version.split(".")[0])
    if major < 10:
        raise RuntimeError(
            f"tensorrt {version}: this backend uses the TensorRT 10+ API (execute_async_v3, named I/O tensors); "
            "upgrade TensorRT"
        )
    return ApiPlan(
        explicit_batch_flag=False,  # implicit batch is gone since 10.0; the flag is deprecated/removed
        strongly_typed_flag=has_strongly_typed,  # opt-in on 10.x, accepted and ignored on 11.x
        tf32_flag=has_tf32_flag,
    )


def profile_shapes(model: ModelSpec, batch_size: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shapes per input: the case's batch (static per case)."""
    return {spec.name: ((batch_size, *spec.shape),) * 3 for spec in model.inputs}


def engine_key(onnx_path: Path, trt_version: str, gpu: str, precision: str,
               shapes: Mapping[str, tuple[tuple[int, ...], ...]]) -> str:
    digest = hashlib.sha256()
    with open(onnx_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps({"trt": trt_version, "gpu": gpu, "precision": precision,
                              "shapes": {k: list(v) for k, v in sorted(shapes.items())},
                              "profiling_verbosity": PROFILING_VERBOSITY}, sort_keys=True).encode())
    return digest.hexdigest()[:24]


#: Layers that compute, by the inspector's ``ParameterType`` or ``LayerType`` (CaskConvolution,
#: CaskGemmConvolution, CaskDeconvolution, gemm, MatrixMultiply, ...).
COMPUTE_LAYER = re.compile(r"conv|gemm|matmul|matrixmultiply|fullyconnected", re.IGNORECASE)
#: The data type word of a tensor's ``Format/Datatype`` ("Channel major FP16 format where channel % 8 == 0",
#: "Thirty-two wide channel vectorized row major Int8 format", "Row major linear FP32") or of ``Weights.Type``.
TRT_TYPE = re.compile(r"\b(FP32|Float|FP16|Half|BF16|Int8|FP8|Int4|FP4)\b", re.IGNORECASE)
TRT_PRECISION = {"fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "bf16": "bf16", "int8": "int8",
                 "fp8": "fp8", "int4": "int4", "fp4": "fp4"}


def layer_precision(layer: Mapping[str, Any]) -> str | None:
    """The precision a layer computes in: its first input's data type (an int8 convolution
    reads int8), else its weights' type; None where the inspector shows neither."""
    for tensor in layer.get("Inputs") or []:
        found = TRT_TYPE.search(str(tensor.get("Format/Datatype", "")))
        if found:
            return TRT_PRECISION[found[1].lower()]
    found = TRT_TYPE.search(str((layer.get("Weights") or {}).get("Type", "")))
    return TRT_PRECISION[found[1].lower()] if found else None


def engine_evidence(information: str, tf32: bool = False) -> PrecisionEvidence | None:
    """The compute layers of an engine by precision, from the engine inspector's JSON
    (``get_engine_information(LayerInformationFormat.JSON)``). None when the engine keeps
    layer names only (built without ``ProfilingVerbosity.DETAILED``): nothing to show."""
    layers = json.loads(information).get("Layers") or []
    detailed = [layer for layer in layers if isinstance(layer, dict)]
    if not detailed:
        return None
    compute: dict[str, int] = {}
    by_type: dict[str, int] = {}
    unknown = 0
    for layer in detailed:
        kind = str(layer.get("ParameterType") or layer.get("LayerType") or "")
        if not COMPUTE_LAYER.search(kind) and not COMPUTE_LAYER.search(str(layer.get("LayerType", ""))):
            continue
        ran = layer_precision(layer)
        if ran is None:
            unknown += 1
            continue
        ran = "tf32" if ran == "fp32" and tf32 else ran
        compute[ran] = compute.get(ran, 0) + 1
        key = f"{layer.get('LayerType', kind)} {ran}"
        by_type[key] = by_type.get(key, 0) + 1
    return PrecisionEvidence(
        compute=compute, unit="engine layers",
        api="engine.create_engine_inspector().get_engine_information(LayerInformationFormat.JSON), built with "
            "ProfilingVerbosity.DETAILED: each compute layer's input Format/Datatype (else its Weights type)",
        facts={"compute_layers": by_type, "compute_layers_without_a_type": unknown, "layers": len(detailed)})


# -------------------------------------------------------------------------
# build and run (needs TensorRT and a GPU)
# -------------------------------------------------------------------------


def build_engine(onnx_path: Path, precision: str, shapes: Mapping[str, tuple[tuple[int, ...], ...]]) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    plan = api_plan(trt.__version__, hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
                    hasattr(trt.BuilderFlag, "TF32"))
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"tensorrt could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, PROFILING_VERBOSITY)  # for the engine inspector
    if plan.tf32_flag:
        if precision == "tf32":
            config.set_flag(trt.BuilderFlag.TF32)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default: "fp32" must mean fp32
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"tensorrt failed to build an engine for {onnx_path.name} ({precision})")
    return bytes(serialized)


@dataclasses.dataclass
class TensorRtSession:
    engine: Any
    context: Any
    stream: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    output_order: list[str]
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("tensorrt: execute_async_v3 failed")

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        import torch

        with torch.cuda.stream(self.stream):
            for name, buffer in self.inputs.items():
                buffer.copy_(torch.from_numpy(inputs[name]), non_blocking=False)
            self._enqueue()
            host = [self.outputs[name].float().cpu() for name in self.output_order]
        self.stream.synchronize()
        return [h.numpy() for h in host]

    def device_timings(self, inputs: Arrays, rounds: int) -> list[float]:
        import torch

        for name, buffer in self.inputs.items():
            buffer.copy_(torch.from_numpy(inputs[name]))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(rounds):
            self.stream.synchronize()
            start.record(self.stream)
            self._enqueue()
            end.record(self.stream)
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return samples

    def precision_evidence(self) -> PrecisionEvidence | None:
        """The engine inspector's layer information (with this context: concrete shapes and formats)."""
        import tensorrt as trt

        inspector = self.engine.create_engine_inspector()
        inspector.execution_context = self.context
        return engine_evidence(inspector.get_engine_information(trt.LayerInformationFormat.JSON),
                               tf32=bool(self.config.get("tf32")))

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.inputs.clear()
        self.outputs.clear()


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> TensorRtSession | None:
    if backend.name != NAME:
        return None
    import tensorrt as trt
    import torch

    from infermatrix.forms.onnx_export import onnx_model
    from infermatrix.forms.onnx_variants import check_on_cpu, graph_variant
    from infermatrix.gate.reference import model_cache

    times = PrepareTimes()
    started = time.perf_counter()
    source, export = onnx_model(model, context.cache_root)
    graph, tool = source, "exported fp32 graph"
    if target.precision in ("fp16", "int8"):
        variant = graph_variant(model, target.precision, context.cache_root)
        report = check_on_cpu(variant, model, context.cache_root)
        if not report.passed:  # never build an engine from a graph that is already wrong
            pytest.fail(report.message(f"{model.name} {target.precision} graph (ONNX Runtime, CPU)"), pytrace=False)
        graph, tool = variant.path, variant.tool
    times.convert_s = time.perf_counter() - started

    shapes = profile_shapes(model, batch_size)
    gpu = torch.cuda.get_device_name()
    key = engine_key(graph, trt.__version__, gpu, target.precision, shapes)
    engine_path = model_cache(model, context.cache_root).path(f"engine-{key}.plan")
    if engine_path.exists():
        serialized, built = engine_path.read_bytes(), False
    else:
        started = time.perf_counter()
        serialized = build_engine(graph, target.precision, shapes)
        times.compile_s = time.perf_counter() - started
        atomic_write_bytes(engine_path, serialized)
        built = True
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(serialized)
    execution = engine.create_execution_context()
    stream = torch.cuda.Stream()
    inputs, outputs, order = {}, {}, []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            shape = shapes[name][1]
            execution.set_input_shape(name, shape)
            buffer = torch.empty(shape, dtype=dtype, device="cuda")
            inputs[name] = buffer
        else:
            shape = tuple(execution.get_tensor_shape(name))
            buffer = torch.empty(shape, dtype=dtype, device="cuda")
            outputs[name] = buffer
            order.append(name)
        execution.set_tensor_address(name, buffer.data_ptr())
    order.sort(key=lambda n: model.output_names.index(n) if n in model.output_names else len(model.output_names))
    return TensorRtSession(
        engine=engine, context=execution, stream=stream, inputs=inputs, outputs=outputs, output_order=order,
        config={
            "precision": target.precision,
            "graph": graph.name,
            "graph_tool": tool,
            "strongly_typed": api_plan(trt.__version__, hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
                                       hasattr(trt.BuilderFlag, "TF32")).strongly_typed_flag,
            "tf32": target.precision == "tf32",
            "profile": {k: list(v[1]) for k, v in shapes.items()},
            "workspace_bytes": WORKSPACE_BYTES,
            "engine_cached": not built,
            "gpu": gpu,
            "tensorrt": trt.__version__,
            "onnx_exporter": export.get("exporter"),
            "onnx_export_cached": export["cached"],
        },
        times=times,
        size_bytes=len(serialized),
    )
