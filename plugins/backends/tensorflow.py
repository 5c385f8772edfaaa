"""TensorFlow with Keras 3: ``tensorflow`` (graph via ``tf.function``) and ``tensorflow-xla``.

The path, and why (see docs/backends.md):
- The model is the Keras form of the network (its ``keras`` form, ``plugins/models/*.py``) filled with
  the same weights as the torch form (the cached seeded ``state_dict``), taking the same
  NCHW inputs.
- Timed calls go through a ``tf.function`` with a fixed input signature — never
  ``model.predict()`` or eager ``model(x)``, which cost ~80 ms per call here and would
  make TensorFlow look 3-4x slower than it is. ``tensorflow-xla`` compiles the same
  function with XLA (``jit_compile=True``). The first call (tracing, Grappler or XLA
  compilation) is timed as ``compile_s``, outside the timed rounds.
- ``Session.run`` returns ``.numpy()`` of the result, which waits for the device.
- Threads: intra-op = ``--threads``, inter-op = 1 (one request at a time), set before
  TensorFlow starts its runtime; a process whose runtime already runs with other
  settings refuses the case instead of timing it with the wrong threads.
- Precisions: fp32; bf16 (Keras ``mixed_bfloat16``) on CPUs with avx512_bf16/AMX and on
  GPUs of compute capability 8.0+; fp16 (``mixed_float16``) on GPUs only. The policy
  is set while the model is built and reset afterwards.
- Proof of precision: the graph the ``tf.function`` traced (``ConcreteFunction.graph.as_graph_def()``,
  nested functions included), its convolutions and matrix multiplications by their ``T``
  dtype — under a mixed policy the variables stay float32 and only the compute is cast —
  with each layer's dtype policy and compute dtype beside them (:func:`graph_evidence`);
  with XLA, the HLO XLA optimized for the device
  (``experimental_get_compiler_ir(...)(stage="optimized_hlo")``, :func:`hlo_evidence`),
  since XLA may compute in another type than the graph asks: XLA:CPU runs bf16
  convolutions and dots in f32 (measured, TensorFlow 2.21), so tensorflow-xla cpu bf16 is
  a skip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from infermatrix.api.announce import announce_backend, installed_version
from infermatrix.api.types import FORM_KERAS, Arrays, BackendInfo, ModelSpec, PrepareContext, PrepareTimes, Target
from infermatrix.gate.precision import PrecisionEvidence

NAMES = ("tensorflow", "tensorflow-xla")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
POLICY = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    found = []
    for name in NAMES:
        info = announce_backend(name, "tensorflow", "tensorflow", DEVICES, PRECISIONS, extra="tensorflow")
        if info.available:  # the CPU wheel is another distribution of the same module
            version = installed_version("tensorflow") or installed_version("tensorflow-cpu") or "unknown"
            info = dataclasses.replace(info, version=version)
        found.append(dataclasses.replace(info, forms=(FORM_KERAS,)))
    return found


def _keras3_problem() -> str | None:
    version = installed_version("keras")
    if version is None or int(version.split(".")[0]) < 3:
        return f"tensorflow: needs Keras 3 (found keras {version}); pip install 'infermatrix[tensorflow]'"
    return None


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name not in NAMES:
        return None
    from infermatrix.machine import cpu_supports_bf16, isa

    problem = _keras3_problem()
    if problem:
        return [Target(d, p, problem) for d in DEVICES for p in PRECISIONS]
    bf16 = None if cpu_supports_bf16() else "tensorflow: bf16 on CPU needs avx512_bf16 or AMX"
    if bf16 is None and not isa().onednn_bf16:  # TensorFlow's CPU convolutions are oneDNN's
        bf16 = f"tensorflow: its oneDNN kernels are capped below bf16 (ONEDNN_MAX_CPU_ISA={isa().onednn_max_cpu_isa})"
    if backend.name == "tensorflow-xla":
        bf16 = ("tensorflow-xla: XLA:CPU computes bf16 convolutions and matrix multiplications in f32 (its "
                "optimized HLO converts the bf16 operands to f32; measured with TensorFlow 2.21): not a bf16 case")
    targets = [
        Target("cpu", "fp32"),
        Target("cpu", "bf16", bf16),
        Target("cpu", "fp16", "tensorflow: fp16 on CPU is emulated (no fast kernels); use bf16 or a GPU"),
    ]
    if installed_version("tensorflow") is None:
        reason = "tensorflow: the tensorflow-cpu build has no GPU support (pip install 'tensorflow[and-cuda]')"
        return targets + [Target("cuda", p, reason) for p in PRECISIONS]
    gpus = _visible_gpus()
    if not gpus:
        reason = "tensorflow: no GPU visible to TensorFlow (tf.config.list_physical_devices('GPU') is empty)"
        return targets + [Target("cuda", p, reason) for p in PRECISIONS]
    capability = tuple(gpus[0].get("compute_capability") or (0, 0))
    bf16 = None if capability >= (8, 0) else f"tensorflow: bf16 needs compute capability 8.0+, GPU has {capability}"
    return targets + [Target("cuda", "fp32"), Target("cuda", "fp16"), Target("cuda", "bf16", bf16)]


def _visible_gpus() -> list[dict[str, Any]]:
    """TensorFlow's GPUs, asked in a child process: importing TensorFlow into pytest's own
    process next to torch crashed it here (a segfault when triton loaded after it)."""
    code = ("import json, tensorflow as tf; print(json.dumps([tf.config.experimental.get_device_details(g) "
            "for g in tf.config.list_physical_devices('GPU')]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise ImportError(f"tensorflow fails to start: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    found: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


#: TensorFlow ops that compute (convolutions, matrix multiplications), plain and fused.
COMPUTE_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul", "BatchMatMul",
               "BatchMatMulV2", "BatchMatMulV3", "Einsum", "_FusedConv2D", "_FusedMatMul")
#: A TensorFlow dtype name → the matrix's precision.
TF_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "qint8": "int8"}


def graph_evidence(graph_def: Any, layers: Mapping[str, int]) -> PrecisionEvidence:
    """The compute ops of a traced ``GraphDef`` (its function library too) by their ``T``
    dtype; ``layers`` counts the model's weighted layers by "class: policy -> compute dtype"."""
    import tensorflow as tf

    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    compute: dict[str, int] = {}
    by_op: dict[str, int] = {}
    for node in nodes:
        if node.op in COMPUTE_OPS and "T" in node.attr:
            dtype = tf.dtypes.as_dtype(node.attr["T"].type).name
            ran = TF_PRECISION.get(dtype, dtype)
            compute[ran] = compute.get(ran, 0) + 1
            by_op[f"{node.op} {dtype}"] = by_op.get(f"{node.op} {dtype}", 0) + 1
    return PrecisionEvidence(
        compute=compute, unit="traced graph ops",
        api="tf.function's ConcreteFunction.graph.as_graph_def(): compute ops by their T attribute; each "
            "layer's dtype_policy and compute_dtype",
        facts={"compute_ops": by_op, "weighted_layers": dict(layers)})


#: An HLO instruction that computes: its (first) result type and its opcode; a custom call
#: computes when its target is a library's convolution or matmul (oneDNN, cuDNN, cuBLAS).
HLO_COMPUTE = re.compile(r"=\s*\(?(?P<type>[a-z]\w*)\[.*?\s(?P<op>convolution|dot|custom-call)\((?P<rest>.*)$")
HLO_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "f64": "fp64", "s8": "int8", "u8": "int8"}


def hlo_evidence(hlo: str, layers: Mapping[str, int]) -> PrecisionEvidence:
    """The compute instructions of XLA's optimized HLO by their result type."""
    compute: dict[str, int] = {}
    by_op: dict[str, int] = {}
    for line in hlo.splitlines():
        found = HLO_COMPUTE.search(line)
        if found is None:
            continue
        op = found["op"]
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]*)"', found["rest"])
            if target is None or not re.search(r"conv|matmul|gemm", target[1], re.IGNORECASE):
                continue
            op = target[1]
        ran = HLO_PRECISION.get(found["type"], found["type"])
        compute[ran] = compute.get(ran, 0) + 1
        by_op[f"{op} {found['type']}"] = by_op.get(f"{op} {found['type']}", 0) + 1
    return PrecisionEvidence(
        compute=compute, unit="optimized HLO instructions",
        api='tf.function(jit_compile=True).experimental_get_compiler_ir(...)(stage="optimized_hlo"): convolution, '
            "dot and library custom-call instructions by result type; each layer's dtype_policy and compute_dtype",
        facts={"compute_ops": by_op, "weighted_layers": dict(layers)})


@dataclasses.dataclass
class TensorFlowSession:
    function: Any
    device: str
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    model: Any = None
    #: compiled with XLA (jit_compile=True): the evidence is XLA's optimized HLO
    xla: bool = False

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        import tensorflow as tf

        with tf.device(self.device):
            out = self.function(tf.constant(inputs["input"]))
        return [np.asarray(out.numpy(), dtype=np.float32)]  # .numpy() waits for the device

    def precision_evidence(self) -> PrecisionEvidence:
        """The traced graph's compute ops by dtype (the function was traced at the first call);
        with XLA, the instructions of the HLO it compiled for this device."""
        import tensorflow as tf

        layers: dict[str, int] = {}
        for layer in self.model.layers:
            if layer.weights:
                kind = f"{type(layer).__name__}: {layer.dtype_policy.name} -> {layer.compute_dtype}"
                layers[kind] = layers.get(kind, 0) + 1
        if self.xla:
            (spec,) = self.function.input_signature
            with tf.device(self.device):
                ir = self.function.experimental_get_compiler_ir(tf.zeros(spec.shape, spec.dtype))
                return hlo_evidence(ir(stage="optimized_hlo"), layers)
        return graph_evidence(self.function.get_concrete_function().graph.as_graph_def(), layers)

    def close(self) -> None:
        self.function = None
        self.model = None
        import keras

        keras.backend.clear_session()


def _set_threads(tf: Any, threads: int) -> dict[str, int]:
    """Intra-op = ``threads``, inter-op = 1; refuse a runtime already started otherwise."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # the runtime already runs: fine if it runs with these settings, checked below
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    if (intra, inter) != (threads, 1):
        raise RuntimeError(f"tensorflow: this process's runtime already runs with intra-op {intra}, inter-op {inter} "
                           f"threads; the case wants {threads} and 1 (run it in a fresh process)")
    return {"intra_op_threads": intra, "inter_op_threads": inter}


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> TensorFlowSession | None:
    if backend.name not in NAMES:
        return None
    assert model.build_keras is not None  # the matrix skips models without one (forms=(FORM_KERAS,))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from infermatrix.forms.keras import build_from_torch_state
    from infermatrix.gate.reference import torch_state

    started = time.perf_counter()
    import keras
    import tensorflow as tf

    threads = _set_threads(tf, context.threads)
    state = torch_state(model, context.cache_root)
    times = PrepareTimes(load_s=time.perf_counter() - started)

    started = time.perf_counter()
    device = "/GPU:0" if target.device == "cuda" else "/CPU:0"
    policy = POLICY[target.precision]
    keras.config.set_dtype_policy(policy)
    try:
        with tf.device(device):
            net, tensors = build_from_torch_state(model, keras, state)
    finally:
        keras.config.set_dtype_policy("float32")
    times.convert_s = time.perf_counter() - started

    xla = backend.name == "tensorflow-xla"
    (spec,) = model.inputs
    signature = [tf.TensorSpec((batch_size, *spec.shape), tf.as_dtype(spec.dtype), name=spec.name)]
    function = tf.function(lambda x: net(x, training=False), input_signature=signature, jit_compile=xla)
    session = TensorFlowSession(
        function=function, device=device, model=net, times=times, xla=xla,
        size_bytes=int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize for w in net.weights)),
        config={
            "api": "tf.function" + (" (jit_compile=True, XLA)" if xla else " (graph, Grappler)"),
            "keras": keras.__version__, "tensorflow": tf.__version__,
            "dtype_policy": policy, "compute_dtype": net.layers[-1].compute_dtype,
            "device": device, "input_layout": "NCHW (transposed to NHWC inside the model)",
            "weights_from": "torch state_dict", "weight_tensors": tensors, **threads,
        },
    )
    # The first call traces the function and compiles it (Grappler, or XLA): timed apart.
    started = time.perf_counter()
    session.run(model.eval_inputs(batch_size))
    times.compile_s = time.perf_counter() - started
    return session
