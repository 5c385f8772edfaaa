"""OpenVINO, on the model's cached ONNX export.

The path, and why (see docs/backends.md):
- ``ov.convert_model`` on the cached ONNX, reshaped to the case's static batch (static
  shapes let the CPU plugin pick its best kernels), compiled on each device that
  ``Core().available_devices`` reports.
- ``INFERENCE_PRECISION_HINT`` is set for *every* precision: left alone, the CPU plugin
  runs bf16 on CPUs that have it (this one does), so an "fp32" case would silently be
  bf16 — and slower here. int8 keeps f32 for the parts NNCF leaves unquantized.
- The latency scenario compiles with the ``LATENCY`` performance hint and calls
  ``InferRequest.infer`` synchronously; threads = ``--threads``.
- int8 is ``nncf.quantize`` (post-training, calibrated on the model's calibration
  inputs), OpenVINO's own tool, with its ``overflow_fix`` chosen by the CPU: without
  VNNI the CPU plugin's int8 kernels use VPMADDUBSW, which saturates, and NNCF's
  documented remedy is weights on half the 8-bit range (see :func:`int8_overflow_fix`).
- Proof of precision: the compiled model's runtime model
  (``CompiledModel.get_runtime_model()``), whose every op carries the plugin's execution
  facts in its rt_info (``layerType``, ``runtimePrecision``, ``primitiveType``): the
  precision each convolution and matrix multiplication really executes in
  (:func:`runtime_evidence`). The hint read back (``INFERENCE_PRECISION_HINT``) only says
  what was asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermatrix.api.announce import announce_backend
from infermatrix.api.types import (
    FORM_GENERATION,
    FORM_TORCH,
    Arrays,
    BackendInfo,
    Command,
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    Target,
)
from infermatrix.forms.onnx_export import onnx_model
from infermatrix.gate.precision import PrecisionEvidence, check_precision
from infermatrix.machine import Isa, isa

NAME = "openvino"
DEVICES = ("cpu", "gpu", "npu")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-weight-only", "int4-weight-only")
#: Text generation (OpenVINO GenAI's LLMPipeline): f32 compute, weights f32 or compressed by
#: NNCF without calibration (optimum-cli ``--weight-format int8/int4``): weight-only, not ``int8``.
GENERATION_PRECISIONS = ("fp32", "int8-weight-only", "int4-weight-only")
#: The matrix's precision → OpenVINO's inference precision hint.
PRECISION_HINT = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32", "int8-weight-only": "f32",
                  "int4-weight-only": "f32"}
#: The capability a device must report (OPTIMIZATION_CAPABILITIES) for each precision.
CAPABILITY = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16", "int8": "INT8", "int8-weight-only": "FP32",
              "int4-weight-only": "FP32"}
#: optimum-cli ``--weight-format`` of each generation precision (int4's group size is added per model).
WEIGHT_FORMAT = {"fp32": "fp32", "int8-weight-only": "int8", "int4-weight-only": "int4"}


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    info = announce_backend(NAME, "openvino", "openvino", DEVICES, PRECISIONS, extra="openvino")
    generates = importlib.util.find_spec("openvino_genai") is not None
    return [dataclasses.replace(info, forms=(FORM_TORCH, FORM_GENERATION) if generates else (FORM_TORCH,),
                                generation_precisions=GENERATION_PRECISIONS if generates else ())]


@pytest.hookimpl
def pytest_infermatrix_commands() -> list[Command]:
    def fidelity(argv: list[str]) -> int:
        from plugins.backends import openvino_fidelity

        return openvino_fidelity.main(argv)

    return [Command("fidelity", "the suite's OpenVINO timing against OpenVINO's own benchmark_app", fidelity)]


def ov_device(device: str) -> str:
    return device.upper()


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name != NAME:
        return None
    import importlib.util

    import openvino as ov

    core = ov.Core()
    present = [d.split(".")[0] for d in core.available_devices]
    targets = []
    for device in DEVICES:
        name = ov_device(device)
        if name not in present:
            reason = f"openvino: no {name} device (available: {', '.join(core.available_devices)})"
            targets += [Target(device, p, reason) for p in PRECISIONS]
            continue
        capabilities = core.get_property(name, "OPTIMIZATION_CAPABILITIES")
        for precision in PRECISIONS:
            reason = None
            if CAPABILITY[precision] not in capabilities:
                needs = " (needs avx512_bf16 or AMX)" if precision == "bf16" and name == "CPU" else ""
                reason = (f"openvino: {name} does not report {CAPABILITY[precision]} "
                          f"(capabilities: {', '.join(capabilities)}){needs}")
            elif precision == "bf16" and name == "CPU" and not isa().onednn_bf16:
                reason = (f"openvino: the CPU plugin's oneDNN is capped below bf16 "
                          f"(ONEDNN_MAX_CPU_ISA={isa().onednn_max_cpu_isa}), though the CPU reports BF16")
            elif precision != "fp32" and precision.startswith("int") and importlib.util.find_spec("nncf") is None:
                reason = f"openvino: {precision} needs nncf (pip install 'infermatrix[openvino]')"
            targets.append(Target(device, precision, reason))
    return targets


#: Layer types of the runtime model that compute (convolutions, matrix multiplications),
#: as the CPU plugin names them (FullyConnected: a MatMul with constant weights).
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm",
                  "ScaledDotProductAttention", "RNNSeq", "RNNCell")
#: ``runtimePrecision`` → the matrix's precision: an int8 layer executes on u8/i8 inputs.
RUNTIME_PRECISION = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f16": "fp16", "f32": "fp32", "u4": "int4",
                     "i4": "int4", "f8e4m3": "fp8", "f8e5m2": "fp8"}
#: The rt_info keys of a runtime model's op (ov::exec_model_info: LAYER_TYPE, RUNTIME_PRECISION, IMPL_TYPE).
RUNTIME_KEYS = ("layerType", "runtimePrecision", "primitiveType")


def runtime_evidence(layers: Iterable[tuple[str, str, str]]) -> PrecisionEvidence:
    """The precision each compute layer executes in, from the runtime model's
    ``(layerType, runtimePrecision, primitiveType)`` of every op."""
    by_type: dict[str, dict[str, int]] = {}
    kernels: dict[str, dict[str, int]] = {}
    compute: dict[str, int] = {}
    for layer_type, runtime_precision, primitive in layers:
        per_type = by_type.setdefault(layer_type, {})
        per_type[runtime_precision] = per_type.get(runtime_precision, 0) + 1
        if layer_type in COMPUTE_LAYERS:
            ran = RUNTIME_PRECISION.get(runtime_precision, runtime_precision)
            compute[ran] = compute.get(ran, 0) + 1
            per_kernel = kernels.setdefault(layer_type, {})
            per_kernel[primitive] = per_kernel.get(primitive, 0) + 1
    return PrecisionEvidence(
        compute=compute, unit="runtime layers",
        api="CompiledModel.get_runtime_model(): each op's rt_info layerType / runtimePrecision / primitiveType",
        facts={"runtime_precision_by_layer_type": by_type, "compute_primitives": kernels})


def compiled_evidence(compiled: Any) -> PrecisionEvidence:
    """:func:`runtime_evidence` of a compiled model."""
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type, runtime_precision, primitive = (info[key].astype(str) if key in info else "?"
                                                    for key in RUNTIME_KEYS)
        layers.append((layer_type, runtime_precision, primitive))
    return runtime_evidence(layers)


@dataclasses.dataclass
class OpenVinoSession:
    request: Any
    compiled: Any
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    #: kept to compile the throughput configuration (THROUGHPUT hint) from the same model
    ov_model: Any = None
    core: Any = None
    properties: dict[str, str] = dataclasses.field(default_factory=dict)

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        # share_inputs avoids a copy of the inputs; outputs are copied out because the
        # request reuses its output buffers on the next call.
        results = self.request.infer(inputs, share_inputs=True)
        return [np.array(results[output]) for output in self.compiled.outputs]

    def precision_evidence(self) -> PrecisionEvidence:
        """What the plugin compiled: the runtime model's execution precision per layer."""
        return compiled_evidence(self.compiled)

    def throughput_configs(self, inputs: Arrays, threads: int) -> list[Any]:
        """OpenVINO's own throughput path: THROUGHPUT hint, as many streams and
        requests as the plugin finds optimal, an ``AsyncInferQueue`` kept full."""
        import openvino as ov

        from infermatrix.measure.throughput import ThroughputConfig

        properties = {**self.properties, "PERFORMANCE_HINT": "THROUGHPUT"}
        compiled = self.core.compile_model(self.ov_model, self.config["device"], properties)
        _check_precision(compiled, self.properties["INFERENCE_PRECISION_HINT"], self.config["precision"])
        proof = check_precision(self.config["precision"], compiled_evidence(compiled))
        if not proof.passed:  # this compilation is timed too: it must run what the case says
            raise RuntimeError(proof.message(f"openvino THROUGHPUT compilation of {self.config['precision']}"))
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, requests)

        def run(calls: int) -> None:
            for _ in range(calls):
                queue.start_async(inputs)
            queue.wait_all()

        details = {"performance_hint": "THROUGHPUT", "num_streams": _as_text(compiled.get_property("NUM_STREAMS")),
                   "infer_requests": requests, "execution": "AsyncInferQueue"}
        return [ThroughputConfig(f"async queue, {requests} requests", requests, run, details)]

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self.ov_model = None


def _as_text(value: Any) -> str:
    """OpenVINO properties come back as ov.Type / enums / ints; record them as plain text."""
    to_string = getattr(value, "to_string", None)
    return str(to_string()) if callable(to_string) else str(value)


def _check_precision(compiled: Any, expected_hint: str, precision: str) -> None:
    """Never time a case in another precision than its id says."""
    reported = _as_text(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if reported != expected_hint:
        raise RuntimeError(f"openvino compiled {precision} as {reported}, not {expected_hint}")


def int8_overflow_fix(cpu: Isa) -> tuple[str, str]:
    """NNCF's ``OverflowFix`` for the CPU at hand, and why.

    Measured on mobilenet_v2, cosine to fp32 (8 samples), VNNI CPU natively / the same
    CPU with oneDNN capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, which the CPU plugin's
    oneDNN obeys): ``disable`` 0.976 / 0.957, NNCF's default ``first_layer_only`` 0.975 /
    0.962 (fails the gate, as seen on a real Zen 3), ``enable`` 0.972 / 0.972. With VNNI
    nothing saturates, so the full range (``disable``) is kept.
    """
    if cpu.onednn_int8_vnni:
        return "disable", "VNNI accumulates u8 x s8 in 32 bits: full-range weights cannot saturate"
    return ("enable", "no VNNI for oneDNN (CPU flags or ONEDNN_MAX_CPU_ISA): the int8 kernels use VPMADDUBSW, whose "
                      "int16 pair sums saturate; NNCF's overflow fix puts every weight on half the 8-bit range")


def quantize_int8(ov_model: Any, model: ModelSpec, batch_size: int, overflow_fix: str) -> Any:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    batches = model.calibration_inputs(batch_size=batch_size)
    dataset = nncf.Dataset(batches)
    return nncf.quantize(ov_model, dataset, subset_size=len(batches) * batch_size,
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix)))


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> OpenVinoSession | None:
    if backend.name != NAME:
        return None
    import openvino as ov

    times = PrepareTimes()
    source, export = onnx_model(model, context.cache_root)
    core = ov.Core()
    started = time.perf_counter()
    ov_model = ov.convert_model(str(source))
    ov_model.reshape({inp.get_any_name(): [batch_size, *spec.shape]
                      for inp, spec in zip(ov_model.inputs, model.inputs, strict=True)})
    times.convert_s = time.perf_counter() - started + (export["export_s"] or 0.0)
    quantizer = None
    recipe: dict[str, Any] = {}
    if target.precision == "int8":
        cpu = isa()
        # The saturation is the CPU's int8 instructions': a GPU or NPU keeps the full range.
        overflow_fix, reason = (int8_overflow_fix(cpu) if ov_device(target.device) == "CPU"
                                else ("disable", f"{ov_device(target.device)}: no VPMADDUBSW involved; full range"))
        started = time.perf_counter()
        ov_model = quantize_int8(ov_model, model, batch_size, overflow_fix)
        times.quantize_s = time.perf_counter() - started
        quantizer = f"nncf.quantize (post-training, default preset, overflow_fix={overflow_fix})"
        recipe = {"int8_kernel": cpu.int8_kernel(onednn=True) if ov_device(target.device) == "CPU" else "device",
                  "int8_overflow_fix": overflow_fix,
                  "int8_7bit": overflow_fix == "enable",
                  "int8_recipe_reason": reason}

    # The IR on disk is the model's size as OpenVINO stores it (int8 shows its compression).
    xml = context.workdir / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size

    device = ov_device(target.device)
    properties = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": PRECISION_HINT[target.precision],
    }
    if device == "CPU":
        properties["INFERENCE_NUM_THREADS"] = str(context.threads)
    started = time.perf_counter()
    compiled = core.compile_model(ov_model, device, properties)
    times.compile_s = time.perf_counter() - started
    reported = {key: _as_text(compiled.get_property(key)) for key in
                ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS")}
    if device == "CPU":
        reported["INFERENCE_NUM_THREADS"] = _as_text(compiled.get_property("INFERENCE_NUM_THREADS"))
    _check_precision(compiled, PRECISION_HINT[target.precision], target.precision)
    return OpenVinoSession(
        request=compiled.create_infer_request(),
        compiled=compiled,
        config={
            "device": device,
            "precision": target.precision,
            "quantizer": quantizer,
            **recipe,
            "static_batch": batch_size,
            "execution": "InferRequest.infer (synchronous)",
            **{k.lower(): v for k, v in reported.items()},
            "onnx_exporter": export.get("exporter"),
            "onnx_export_cached": export["cached"],
            "openvino": ov.__version__,
        },
        times=times,
        size_bytes=size,
        ov_model=ov_model,
        core=core,
        properties=properties,
    )


# ---- text generation (the generate scenario): OpenVINO GenAI ------------------------------------


#: A weight Constant's element type → the precision a MatMul with that weight is named by.
WEIGHT_ELEMENT_PRECISION = {"u8": "int8-weight-only", "i8": "int8-weight-only", "u4": "int4-weight-only",
                            "i4": "int4-weight-only", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}
#: The ops between a compressed weight's Constant and its MatMul (decompression: Convert,
#: Subtract zero point, Multiply scale, Reshape groups; a Transpose).
DECOMPRESSION_OPS = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")


def weight_element_type(node: Any) -> str | None:
    """The element type of the Constant a weight input comes from (through its decompression
    subgraph), or None when the input is not a weight (an activation, a Parameter, a state)."""
    for _ in range(16):
        kind = node.get_type_name()
        if kind == "Constant":
            return str(node.get_output_element_type(0).get_type_name())
        if kind not in DECOMPRESSION_OPS or node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None


def ir_weight_evidence(ops: Iterable[Any]) -> PrecisionEvidence:
    """Every MatMul with a weight of an OpenVINO model by the element type its weight is stored
    in (u8/i8: int8-weight-only, u4/i4: int4-weight-only, f32: fp32); embeddings' Gathers as facts."""
    compute: dict[str, int] = {}
    matmuls: dict[str, int] = {}
    gathers: dict[str, int] = {}
    for op in ops:
        kind = op.get_type_name()
        if kind == "MatMul":
            # a linear layer's weight is the second input (aten::linear → MatMul(x, W, transpose_b))
            element = weight_element_type(op.input_value(1).get_node())
            if element is None:
                continue  # activation x activation (the rotary embedding's positions x inv_freq)
            ran = WEIGHT_ELEMENT_PRECISION.get(element, element)
            compute[ran] = compute.get(ran, 0) + 1
            matmuls[element] = matmuls.get(element, 0) + 1
        elif kind == "Gather" and op.input_value(0).get_partial_shape().rank.get_length() == 2:
            element = weight_element_type(op.input_value(0).get_node())
            if element is not None and element not in ("i32", "i64"):  # an embedding table: a lookup, not compute
                gathers[element] = gathers.get(element, 0) + 1
    return PrecisionEvidence(
        compute=compute, unit="weight MatMuls of the exported IR",
        api="openvino.Core().read_model of the export LLMPipeline loads (openvino_model.xml): each MatMul's weight "
            "Constant element type through its decompression ops (LLMPipeline exposes no compiled model)",
        facts={"matmul_weight_element_types": matmuls, "embedding_gather_element_types": gathers})


@dataclasses.dataclass
class GenAISession:
    """``LLMPipeline.generate`` on token ids, a ``StreamerBase`` stamping each token."""

    pipeline: Any
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    export: Path | None = None

    def generate(self, ids: np.ndarray, new_tokens: int) -> Any:
        import openvino as ov
        import openvino_genai as ov_genai

        from infermatrix.case.generation import Generated, TokenClock

        clock = TokenClock()
        stamp = clock.stamp

        class Stamps(ov_genai.StreamerBase):  # type: ignore[misc]
            def write(self, token: Any) -> Any:
                stamp()
                return ov_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        settings = ov_genai.GenerationConfig()
        settings.max_new_tokens = new_tokens
        settings.min_new_tokens = new_tokens
        settings.do_sample = False
        streamer = Stamps()
        clock.start()
        inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        result = self.pipeline.generate(inputs, settings, streamer)
        return Generated(tokens=[list(t) for t in result.tokens], token_times_s=list(clock.stamps),
                         total_s=clock.elapsed())

    def precision_evidence(self) -> PrecisionEvidence | None:
        """The weights of the exported IR LLMPipeline compiled: openvino_genai 2026.4's
        LLMPipeline has no accessor for its compiled model (generate, get_tokenizer,
        get/set_generation_config, start/finish_chat only), so the export is the evidence."""
        if self.export is None:
            return None
        import openvino as ov

        return ir_weight_evidence(ov.Core().read_model(str(self.export / "openvino_model.xml")).get_ordered_ops())

    def close(self) -> None:
        self.pipeline = None


def _group_size(config: Mapping[str, Any]) -> int:
    """int4 groups must divide every layer's width (688-wide MLPs refuse the default 128)."""
    widths = [int(config["hidden_size"]), int(config["intermediate_size"])]
    return next(g for g in (128, 64, 32, 16) if all(w % g == 0 for w in widths))


@pytest.hookimpl
def pytest_infermatrix_prepare_generation(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> GenAISession | None:
    if backend.name != NAME:
        return None
    return prepare_generation(model, target, batch_size, context)


def prepare_generation(model: ModelSpec, target: Target, batch_size: int, context: PrepareContext) -> GenAISession:
    if batch_size > 1:  # measured: LLMPipeline refuses a streamer for more than one sequence
        pytest.skip("openvino: LLMPipeline streams (and so times) tokens for batch 1 only")
    import shutil
    import sys

    import openvino_genai as ov_genai

    from infermatrix.case.generation import exported, model_dir
    from infermatrix.gate.reference import ReferenceUnavailable

    spec = model.generation
    folder = model_dir(model.name, spec, context.cache_root)
    fmt = [WEIGHT_FORMAT[target.precision]]
    if fmt == ["int4"]:
        fmt += ["--group-size", str(_group_size(spec.config))]
    export_name = f"openvino-{target.precision}"
    cli = shutil.which("optimum-cli", path=str(Path(sys.executable).parent)) or shutil.which("optimum-cli")
    if not (folder.parent / export_name / ".complete").exists() and cli is None:
        raise ReferenceUnavailable(f"{model.name}: no OpenVINO export in the cache and optimum-intel is not installed "
                                   "to make it; run the torch environment once or pip install 'infermatrix[llm]'")
    times = PrepareTimes()
    started = time.perf_counter()
    out = exported(folder, export_name, [cli or "optimum-cli", "export", "openvino", "--model", "{model}", "--task",
                                         "text-generation-with-past", "--weight-format",
                                         *fmt, "{out}"], "optimum-cli export openvino")
    times.convert_s = time.perf_counter() - started
    # The CPU plugin defaults to bf16 compute and a u8 KV cache on this CPU: say f32 for both,
    # so the precision is the weights' alone (only then do fp32 tokens match torch's).
    properties = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32",
                  "INFERENCE_NUM_THREADS": context.threads}
    # LLMPipeline caches prompt prefixes across calls by default: every timed call after the
    # first would skip the prompt's prefill (measured here: TTFT at 256 prompt tokens 1.1 ms
    # with the cache, 10.7 ms without). Each call must pay its own prefill.
    scheduler = ov_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    started = time.perf_counter()
    pipeline = ov_genai.LLMPipeline(str(out), ov_device(target.device), scheduler_config=scheduler, **properties)
    times.compile_s = time.perf_counter() - started
    size = sum(f.stat().st_size for f in out.glob("openvino_model.*"))
    return GenAISession(
        pipeline=pipeline, times=times, size_bytes=size, export=out,
        config={"api": "openvino_genai.LLMPipeline.generate (token ids in, StreamerBase per token)",
                "weight_format": " ".join(fmt), "properties": properties, "export": str(out),
                "prefix_caching": False,
                "openvino_genai": ov_genai.__version__},
    )
