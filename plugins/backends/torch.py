"""PyTorch: ``torch`` (eager) and its variant ``torch-compile`` (Inductor).

The path, and why (see docs/backends.md):
- ``torch.inference_mode()`` around every call; channels_last for CNNs (0.90x of NCHW
  here, interleaved; ~20% in earlier separate runs); threads set to the physical cores.
- bf16 runs the whole module in bfloat16 (only where the CPU has native bf16 — on a
  CPU without it torch would emulate it, slowly, which is not a number worth having).
- int8 is a calibrated static quantization with PyTorch's own x86 flow: PT2E
  (``torch.export`` → ``prepare_pt2e`` with ``X86InductorQuantizer`` → calibrate →
  ``convert_pt2e``), from torchao since torch.ao's copy was removed. Its int8
  kernels exist only once Inductor lowers the graph, so int8 is a ``torch-compile``
  target; eager int8 is a skip that says so rather than a slow reference run.
- int8-dynamic uses torchao's ``Int8DynamicActivationInt8WeightConfig`` (the
  supported successor of ``torch.ao.quantization.quantize_dynamic``).
- On cuda every call ends with the outputs copied to the host (a synchronizing
  copy), so the timed call includes all device work.
- Proof of precision: for PT2E int8 the kernels Inductor generated (the wrapper code of
  the compiling call, captured with ``torch._inductor.utils.run_and_get_code``): oneDNN's
  quantized convolutions and linears against float ones; otherwise every convolution and
  linear module by the dtype of its weight (torchao's int8 weight tensors, with or without
  activation quantization), plus the output's dtype (:func:`module_evidence`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from infermatrix.api.announce import announce_backend
from infermatrix.api.types import (
    FORM_GENERATION,
    FORM_TORCH,
    Arrays,
    BackendInfo,
    MemoryReport,
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    Target,
)
from infermatrix.gate.precision import PrecisionEvidence
from infermatrix.gate.reference import build_torch_model
from infermatrix.machine import Isa, cpu_supports_bf16, isa

EAGER = "torch"
COMPILE = "torch-compile"
CUDAGRAPHS = "torch-cudagraphs"
VARIANTS = (EAGER, COMPILE, CUDAGRAPHS)
#: torch.compile mode per backend and device: on CUDA, Inductor's autotuned kernels
#: (max-autotune, without CUDA graphs) and CUDA graphs (reduce-overhead) are two variants;
#: on CPU the default mode with freezing is PyTorch's documented inference setting.
COMPILE_MODE = {
    (COMPILE, "cpu"): "default",
    (COMPILE, "cuda"): "max-autotune-no-cudagraphs",
    (CUDAGRAPHS, "cuda"): "reduce-overhead",
}
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "int8-dynamic")
#: The precisions that cast the whole module (and its float inputs): torch dtype names.
FLOAT_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
#: Text generation (transformers' generate with its KV cache) runs on the eager backend.
GENERATION_PRECISIONS = ("fp32", "bf16", "int8-dynamic")


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    return [
        dataclasses.replace(announce_backend(name, "torch", "torch", DEVICES, PRECISIONS, extra="torch"),
                            forms=(FORM_TORCH, FORM_GENERATION) if name == EAGER else (FORM_TORCH,),
                            generation_precisions=GENERATION_PRECISIONS if name == EAGER else ())
        for name in VARIANTS
    ]


def _cpu_reason(backend: str, precision: str) -> str | None:
    if backend == CUDAGRAPHS:
        return f"{backend}: CUDA graphs are a CUDA feature; see torch-compile for the compiled CPU path"
    if precision == "bf16" and not cpu_supports_bf16():
        return f"{backend}: bf16 needs a CPU with avx512_bf16 or AMX (this CPU would emulate it)"
    if precision == "bf16" and not isa().onednn_bf16:
        return (f"{backend}: bf16 needs oneDNN's bf16 kernels, and "
                f"ONEDNN_MAX_CPU_ISA={isa().onednn_max_cpu_isa} caps them")
    if precision == "fp16":
        return f"{backend}: fp16 on cpu has no native kernels here; fp16 is a cuda precision"
    if precision == "tf32":
        return f"{backend}: tf32 is a CUDA tensor-core mode (Ampere or newer)"
    if precision == "int8" and backend == EAGER:
        return (
            "torch: PT2E int8 kernels exist only after Inductor lowers the graph; "
            "see the torch-compile cpu int8 case"
        )
    if precision in ("int8", "int8-dynamic") and importlib.util.find_spec("torchao") is None:
        return f"{backend}: {precision} needs torchao (pip install 'infermatrix[torch]')"
    return None


def _cuda_reason(backend: str, precision: str) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"{backend}: no CUDA device (torch.cuda.is_available() is False)"
    if precision in ("int8", "int8-dynamic"):
        return f"{backend}: {precision} on cuda is not a torch path; see the tensorrt backend"
    major, _minor = torch.cuda.get_device_capability()
    if precision in ("tf32", "bf16") and major < 8:
        return f"{backend}: {precision} needs compute capability 8.0+ (this GPU has {major}.x)"
    return None


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name not in VARIANTS:
        return None
    targets = []
    for precision in PRECISIONS:
        targets.append(Target("cpu", precision, _cpu_reason(backend.name, precision)))
    for precision in PRECISIONS:
        targets.append(Target("cuda", precision, _cuda_reason(backend.name, precision)))
    return targets


#: A kernel call in Inductor's generated wrapper code: ``torch.ops.<namespace>.<op>[.<overload>](``
#: or ``extern_kernels.<op>(``.
KERNEL_CALL = re.compile(r"\b(torch\.ops\.\w+\.\w+|extern_kernels\.\w+)(?:\.\w+)?\(")
#: Generated calls that are int8 compute: oneDNN's quantized convolution / linear (PT2E
#: lowered by Inductor: qconv_pointwise, qconv2d_pointwise, qlinear_pointwise, ...) and int8
#: matmuls; not int8 data movement (quantized.max_pool2d).
INT8_KERNEL = re.compile(r"^(torch\.ops\.(onednn|quantized)\.q?(conv|linear)\w*|"
                         r"(torch\.ops\.aten\.|extern_kernels\.)(_int_mm|_weight_int8pack_mm))$")
#: Generated calls that are float convolutions or matrix multiplications.
FLOAT_KERNELS = ("torch.ops.mkldnn._convolution_pointwise", "torch.ops.mkldnn._convolution_transpose_pointwise",
                 "torch.ops.mkldnn._linear_pointwise", "torch.ops.mkl._mkl_linear", "torch.ops.aten.convolution",
                 "torch.ops.aten.mm", "torch.ops.aten.addmm", "torch.ops.aten.bmm", "extern_kernels.convolution",
                 "extern_kernels.mm", "extern_kernels.addmm", "extern_kernels.bmm", "extern_kernels.baddbmm")
#: A float weight's dtype → the matrix's precision.
DTYPE_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def kernel_calls(codes: list[str]) -> dict[str, int]:
    """The kernel calls in Inductor's generated wrapper code (one source per compiled graph)."""
    found: dict[str, int] = {}
    for code in codes:
        for name in KERNEL_CALL.findall(code):
            found[name] = found.get(name, 0) + 1
    return found


def compiled_int8_evidence(calls: Mapping[str, int], float_precision: str) -> PrecisionEvidence:
    """The compute kernels Inductor generated: int8 (oneDNN's quantized ones) or float (in the
    module's own dtype: the parts PT2E left unquantized)."""
    int8 = sum(n for name, n in calls.items() if INT8_KERNEL.match(name))
    floats = sum(n for name, n in calls.items() if name in FLOAT_KERNELS)
    return PrecisionEvidence(
        compute={"int8": int8, float_precision: floats}, unit="generated kernel calls",
        api="torch._inductor.utils.run_and_get_code on the compiling call: the wrapper's kernel calls",
        facts={"generated_kernel_calls": dict(calls)})


def _inner_tensors(weight: Any) -> list[Any]:
    """The plain tensors a tensor subclass (torchao's quantized weights) holds, recursively."""
    flatten = getattr(weight, "__tensor_flatten__", None)
    if flatten is None:
        return [weight]
    names, _ = flatten()
    return [t for name in names for t in _inner_tensors(getattr(weight, name))]


def weight_precision(weight: Any, tf32: bool) -> str:
    """The precision a layer with this weight computes in. torchao's int8 weights (``Int8Tensor``
    in 0.18: ``qdata`` int8; older: ``LinearActivationQuantizedTensor`` around int8 data) say
    whether they quantize activations too (``act_quant_kwargs`` / ``input_quant_func``)."""
    import torch

    if any(t.dtype == torch.int8 for t in _inner_tensors(weight)):
        dynamic = getattr(weight, "act_quant_kwargs", None) is not None or \
            getattr(weight, "input_quant_func", None) is not None
        return "int8-dynamic" if dynamic else "int8-weight-only"
    name = str(weight.dtype).replace("torch.", "")
    precision = DTYPE_PRECISION.get(name, name)
    return "tf32" if precision == "fp32" and tf32 else precision


def module_evidence(module: Any, output_dtype: str, tf32: bool,
                    calls: Mapping[str, int] | None = None) -> PrecisionEvidence:
    """Every convolution and linear module by the precision its weight computes in."""
    import torch
    from torch import nn

    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    compute: dict[str, int] = {}
    weights: dict[str, int] = {}
    for sub in module.modules():
        if isinstance(sub, layers) and isinstance(sub.weight, torch.Tensor):
            ran = weight_precision(sub.weight, tf32)
            compute[ran] = compute.get(ran, 0) + 1
            kind = f"{type(sub).__name__}: {type(sub.weight).__name__} {sub.weight.dtype}".replace("torch.", "")
            weights[kind] = weights.get(kind, 0) + 1
    parameters: dict[str, int] = {}
    for parameter in module.parameters():
        name = str(parameter.dtype).replace("torch.", "")
        parameters[name] = parameters.get(name, 0) + 1
    facts: dict[str, Any] = {"weights": weights, "parameter_dtypes": parameters, "output_dtype": output_dtype}
    if calls is not None:
        facts["generated_kernel_calls"] = dict(calls)
    return PrecisionEvidence(
        compute=compute, unit="convolution/linear modules",
        api="the modules' weight tensors (dtype; torchao's int8 tensor subclasses) and the output's dtype",
        facts=facts)


@dataclasses.dataclass
class TorchSession:
    module: Any
    model: ModelSpec
    device: str
    float_dtype: Any
    channels_last: bool
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    batch_size: int = 1
    #: the module before torch.compile wrapped it (the one whose weights the evidence reads)
    source_module: Any = None
    #: PT2E static int8, compiled: its evidence is the kernels Inductor generated
    static_int8: bool = False
    #: kernel calls of Inductor's generated code (None: not compiled, or not captured)
    kernels: dict[str, int] | None = None

    def to_tensors(self, inputs: Arrays) -> list[Any]:
        import torch

        tensors = []
        for spec in self.model.inputs:
            tensor = torch.from_numpy(inputs[spec.name]).to(self.device)
            if tensor.is_floating_point():
                tensor = tensor.to(self.float_dtype)
                if self.channels_last and tensor.dim() == 4:
                    tensor = tensor.contiguous(memory_format=torch.channels_last)
            tensors.append(tensor)
        return tensors

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.module(*self.to_tensors(inputs))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            # .cpu() is a synchronizing copy: the call returns only when the device is done.
            return [o.float().cpu().numpy() for o in outs]

    def precision_evidence(self) -> PrecisionEvidence | None:
        """PT2E int8: the int8 kernels Inductor generated; else the modules' weights, and the
        dtype of one output of the case's batch (read before ``run`` casts it to fp32)."""
        import torch

        if self.static_int8:
            if self.kernels is None:
                return None  # the generated code could not be captured: nothing to show
            return compiled_int8_evidence(self.kernels, DTYPE_PRECISION[str(self.float_dtype).replace("torch.", "")])
        with torch.inference_mode():
            out = self.module(*self.to_tensors(self.model.eval_inputs(self.batch_size)))
        first = out[0] if isinstance(out, (tuple, list)) else out
        tf32 = self.device == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
        return module_evidence(self.source_module if self.source_module is not None else self.module,
                               str(first.dtype).replace("torch.", ""), tf32, self.kernels)

    def close(self) -> None:
        self.module = None
        self.source_module = None


@dataclasses.dataclass
class TorchCudaSession(TorchSession):
    """On CUDA, besides the end-to-end call (host arrays in and out), the device's own
    time for the forward pass, measured with CUDA events on inputs already on the GPU."""

    def device_timings(self, inputs: Arrays, rounds: int) -> list[float]:
        import torch

        tensors = self.to_tensors(inputs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        with torch.inference_mode():
            for _ in range(rounds):
                torch.cuda.synchronize()
                start.record()
                self.module(*tensors)
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
        return samples

    def close(self) -> None:
        import torch

        self.module = None
        self.source_module = None
        torch.cuda.empty_cache()


@pytest.hookimpl(tryfirst=True)
def pytest_infermatrix_memory(session: Any, baseline_rss_bytes: int) -> MemoryReport | None:
    """Device memory of CUDA cases: torch's peak allocation and the process's NVML figure."""
    if not isinstance(session, TorchCudaSession):
        return None
    import resource

    import torch

    from infermatrix.case.runner import process_rss_bytes
    from infermatrix.machine import nvml_process_memory_bytes

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return MemoryReport(
        host_peak_rss_bytes=peak,
        host_peak_rss_added_bytes=max(0, peak - baseline_rss_bytes),
        host_rss_delta_bytes=process_rss_bytes() - baseline_rss_bytes,
        device_peak_bytes=int(torch.cuda.max_memory_allocated()),
        device_process_bytes=nvml_process_memory_bytes(),
        source="torch.cuda.max_memory_allocated (since prepare) + NVML process memory + psutil rss",
    )


def _state_size(module: Any) -> int:
    import torch

    buffer = io.BytesIO()
    try:
        torch.save(module.state_dict(), buffer)
    except Exception:  # some quantized tensor subclasses do not pickle; count raw bytes instead
        return sum(t.numel() * t.element_size() for t in module.state_dict().values() if hasattr(t, "numel"))
    return buffer.getbuffer().nbytes


def _split_reused_module_calls(graph_module: Any) -> Any:
    """Give each call of a reused module its own partition key.

    With non-strict ``torch.export`` (the default) the quantizer groups nodes by the
    module that produced them (``nn_module_stack``); torchvision's ResNet blocks call
    one ``self.relu`` twice, so both calls land in one partition with two outputs and
    ``X86InductorQuantizer`` stops with "Input partition has more than one output
    node" (torch 2.14 + torchao 0.18). Consecutive nodes of one call keep one key;
    later calls of the same module get ``<fqn>@call<n>``. Metadata only: the graph's
    computation is untouched.
    """
    previous: str | None = None
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            previous = None
            continue
        innermost = list(stack)[-1]
        fqn, cls = stack[innermost]
        if fqn != previous:
            calls[fqn] = calls.get(fqn, -1) + 1
        previous = fqn
        if calls[fqn]:
            renamed = dict(stack)
            renamed[innermost] = (f"{fqn}@call{calls[fqn]}", cls)
            node.meta["nn_module_stack"] = renamed
    return graph_module


def int8_reduce_range(cpu: Isa) -> tuple[bool, str]:
    """``reduce_range`` of ``get_default_x86_inductor_quantization_config``, and why.

    torchao's docstring: "Set it to True on earlier CPUs without VNNI to avoid accuracy
    issue" — oneDNN's u8s8 kernels there use VPMADDUBSW, whose int16 pair sums saturate;
    reduce_range keeps activations to 7 bits. oneDNN obeys ``ONEDNN_MAX_CPU_ISA``, so a
    cap below VNNI counts as no VNNI.
    """
    if cpu.onednn_int8_vnni:
        return False, "VNNI accumulates u8 x s8 in 32 bits: full-range activations cannot saturate"
    return True, ("no VNNI for oneDNN (CPU flags or ONEDNN_MAX_CPU_ISA): its int8 kernels use VPMADDUBSW, whose "
                  "int16 pair sums saturate; 7-bit activations (reduce_range) keep them exact")


def _quantize_static_pt2e(module: Any, model: ModelSpec, session: TorchSession, batch_size: int,
                          reduce_range: bool) -> Any:
    """PT2E static int8 for x86 Inductor, calibrated on the model's calibration inputs."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = tuple(session.to_tensors(model.eval_inputs(batch_size)))
    exported = _split_reused_module_calls(torch.export.export(module, example).module())
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    prepared = prepare_pt2e(exported, quantizer)
    for batch in model.calibration_inputs(batch_size):
        prepared(*session.to_tensors(batch))
    return convert_pt2e(prepared)


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> TorchSession | None:
    if backend.name not in VARIANTS:
        return None
    import torch

    times = PrepareTimes()
    if target.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.set_num_threads(context.threads)
    started = time.perf_counter()
    module = build_torch_model(model, context.cache_root)
    times.load_s = time.perf_counter() - started

    device, precision = target.device, target.precision
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        # Shapes are fixed per case: let cuDNN pick its fastest algorithms (the
        # autotuning happens in the untimed first call and warm-up).
        torch.backends.cudnn.benchmark = True
    float_dtype = getattr(torch, FLOAT_DTYPES.get(precision, "float32"))
    channels_last = model.is_cnn
    session_type = TorchCudaSession if device == "cuda" else TorchSession
    session = session_type(
        module=None, model=model, device=device, float_dtype=float_dtype, channels_last=channels_last,
        config={}, times=times, size_bytes=None, batch_size=batch_size,
    )
    started = time.perf_counter()
    module = module.to(device=device, dtype=float_dtype)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    quantizer = None
    recipe: dict[str, Any] = {}
    if precision == "int8":
        cpu = isa()
        reduce_range, reason = int8_reduce_range(cpu)
        module = _quantize_static_pt2e(module, model, session, batch_size, reduce_range)
        quantizer = (f"torchao PT2E X86InductorQuantizer (static, per-channel weights"
                     f"{', 7-bit activations (reduce_range)' if reduce_range else ''})")
        recipe = {"int8_kernel": cpu.int8_kernel(onednn=True), "int8_reduce_range": reduce_range,
                  "int8_7bit": reduce_range,
                  "int8_recipe_reason": reason}
    elif precision == "int8-dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(module, Int8DynamicActivationInt8WeightConfig())
        quantizer = "torchao Int8DynamicActivationInt8WeightConfig"
    times.convert_s = time.perf_counter() - started
    if quantizer is not None:
        times.quantize_s, times.convert_s = times.convert_s, None
    session.size_bytes = _state_size(module)

    compile_mode = COMPILE_MODE.get((backend.name, device))
    if compile_mode is not None:
        import torch._inductor.config as inductor_config

        # Freezing folds weights into constants so Inductor can pre-pack them (oneDNN
        # on CPU): PyTorch's documented inference setting, and needed for the int8
        # kernels of the PT2E flow.
        inductor_config.freezing = True
        session.source_module = module
        session.static_int8 = precision == "int8"
        module = torch.compile(module, mode=compile_mode, dynamic=False)
        session.module = module
        # The first call compiles; time it apart from the steady-state rounds. The code Inductor
        # generates is kept (the proof of precision reads its kernels): the capture only swaps a
        # class attribute that Inductor calls with the code (GraphLowering.save_output_code).
        try:
            from torch._inductor.utils import run_and_get_code
        except ImportError:  # another torch: compile as before, the evidence says it could not look
            run_and_get_code = None
        started = time.perf_counter()
        if run_and_get_code is None:
            session.run(model.eval_inputs(batch_size))
        else:
            _, codes = run_and_get_code(session.run, model.eval_inputs(batch_size))
            session.kernels = kernel_calls(codes)
        times.compile_s = time.perf_counter() - started
    session.module = module
    session.config = {
        "variant": "eager" if compile_mode is None else "torch.compile (inductor)",
        "compile_mode": compile_mode,
        "inductor_freezing": compile_mode is not None,
        "device": device,
        "dtype": str(float_dtype).replace("torch.", ""),
        "precision": precision,
        "tf32": bool(device == "cuda" and torch.backends.cuda.matmul.allow_tf32),
        "memory_format": "channels_last" if channels_last else "contiguous",
        "quantizer": quantizer,
        **recipe,
        "threads": torch.get_num_threads(),
        "inference_mode": True,
        "torch": torch.__version__,
    }
    if device == "cuda":
        session.config["gpu"] = torch.cuda.get_device_name()
        session.config["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return session


# ---- text generation (the generate scenario) -------------------------------------------------


@dataclasses.dataclass
class TorchGeneration:
    """transformers' ``generate`` (greedy, KV cache) with a streamer that stamps each token."""

    model: Any
    device: str
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None

    def generate(self, ids: Any, new_tokens: int) -> Any:
        import torch
        from transformers.generation.streamers import BaseStreamer

        from infermatrix.case.generation import Generated, TokenClock

        clock = TokenClock()
        stamp = clock.stamp

        class Stamps(BaseStreamer):  # type: ignore[misc]
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # the first put is the prompt itself
                    self.prompt_seen = True
                    return
                stamp()

            def end(self) -> None:
                pass

        streamer = Stamps()
        clock.start()
        inputs = torch.from_numpy(ids).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=2,
                                      streamer=streamer)
        tokens = out[:, ids.shape[1]:].cpu().tolist()  # the copy to the host waits for the device
        return Generated(tokens=tokens, token_times_s=list(clock.stamps), total_s=clock.elapsed())

    def precision_evidence(self) -> PrecisionEvidence | None:
        """The Linear modules' weights of the model ``generate`` runs (bf16 parameters, torchao's
        int8 tensors: :func:`module_evidence`), and the logits' dtype of a one-token forward."""
        import torch

        with torch.inference_mode():
            logits = self.model(torch.zeros((1, 1), dtype=torch.long, device=self.device)).logits
        tf32 = self.device == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
        return module_evidence(self.model, str(logits.dtype).replace("torch.", ""), tf32)

    def close(self) -> None:
        self.model = None


@pytest.hookimpl
def pytest_infermatrix_prepare_generation(
    backend: BackendInfo, model: ModelSpec, target: Target, context: PrepareContext
) -> TorchGeneration | None:
    if backend.name not in VARIANTS:
        return None
    return prepare_generation(model, target, context)


def prepare_generation(model: ModelSpec, target: Target, context: PrepareContext) -> TorchGeneration:
    import torch
    from transformers import AutoModelForCausalLM

    from infermatrix.case.generation import model_dir

    torch.set_num_threads(context.threads)
    times = PrepareTimes()
    started = time.perf_counter()
    folder = model_dir(model.name, model.generation, context.cache_root)
    dtype = torch.bfloat16 if target.precision == "bf16" else torch.float32
    net = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval().to(target.device)
    times.load_s = time.perf_counter() - started
    quantizer = None
    if target.precision == "int8-dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        started = time.perf_counter()
        quantize_(net, Int8DynamicActivationInt8WeightConfig())
        times.quantize_s = time.perf_counter() - started
        quantizer = "torchao Int8DynamicActivationInt8WeightConfig (Linear layers)"
    import transformers

    return TorchGeneration(
        model=net, device=target.device, times=times, size_bytes=_state_size(net),
        config={"api": "transformers generate (greedy, KV cache) + streamer", "dtype": str(dtype).replace("torch.", ""),
                "quantizer": quantizer, "threads": torch.get_num_threads(), "device": target.device,
                "transformers": transformers.__version__, "torch": torch.__version__, "model_dir": str(folder)},
    )
