"""ONNX Runtime, on the model's cached ONNX export.

The path, and why (see docs/backends.md):
- ``InferenceSession`` with ``ORT_ENABLE_ALL`` graph optimizations, sequential
  execution, intra-op threads = ``--threads`` (default: the physical cores), one
  inter-op thread; the options are recorded with every result.
- int8 is static, calibrated on the model's calibration inputs with onnxruntime's own
  tools: ``quant_pre_process`` (shape inference + optimization; without it quantization
  crashes or misses nodes) then ``quantize_static`` in QDQ format with uint8
  activations and per-channel int8 weights, the combination measured ~3× faster than
  fp32 on an AVX-512 + VNNI CPU (int8 activations gave no gain there). On a CPU
  without VNNI the weights keep to 7 bits (``reduce_range``): the u8s8 kernels then use
  VPMADDUBSW, which saturates at full range (``onnx_quant.cpu_int8_recipe`` has the
  measurements). The choice and its reason are recorded in the result.
- int8-dynamic is ``quantize_dynamic`` (int8 weights), for Linear-heavy models.
- cuda / tensorrt are targets only when the installed build offers the execution
  provider and a session really starts on it (ONNX Runtime otherwise falls back to
  the CPU without an error, which would mislabel the case).
- Proof of precision: the graph ONNX Runtime runs after its optimizations (QDQ pairs
  fused into QLinearConv, QGemm, ...), written by a second session built from the same
  file with the same options plus ``SessionOptions.optimized_model_filepath`` (the timed
  session is never touched): its compute nodes by the precision they run in
  (:func:`graph_evidence`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    Target,
)
from infermatrix.forms.onnx_export import onnx_model
from infermatrix.forms.onnx_quant import cpu_int8_recipe, quantize_dynamic_int8, quantize_static_qdq
from infermatrix.gate.precision import PrecisionEvidence
from infermatrix.machine import isa

NAME = "onnxruntime"
DEVICES = ("cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int8-weight-only")
#: Text generation (ONNX Runtime GenAI): its model builder's fp32 export, and its ``-p int8``,
#: which compresses the weights without calibration (MatMulNBits): weight-only, not ``int8``.
GENERATION_PRECISIONS = ("fp32", "int8-weight-only")
#: The GenAI model builder's ``-p`` of each generation precision.
BUILDER_PRECISION = {"fp32": "fp32", "int8-weight-only": "int8"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    info = announce_backend(NAME, "onnxruntime", "onnxruntime", DEVICES, PRECISIONS, extra="onnxruntime")
    generates = importlib.util.find_spec("onnxruntime_genai") is not None
    return [dataclasses.replace(info, forms=(FORM_TORCH, FORM_GENERATION) if generates else (FORM_TORCH,),
                                generation_precisions=GENERATION_PRECISIONS if generates else ())]


def _reason(device: str, precision: str, available: list[str]) -> str | None:
    provider = PROVIDERS[device]
    if provider not in available:
        return f"onnxruntime: {provider} is not in this build (available: {', '.join(available)})"
    if precision == "fp16" and device == "cpu":
        return "onnxruntime: fp16 has no fast CPU kernels here; fp16 is a cuda/tensorrt precision"
    if precision == "fp16" and importlib.util.find_spec("onnxconverter_common") is None:
        return "onnxruntime: the fp16 graph is made with onnxconverter-common, which is not installed"
    if precision.startswith("int8") and device != "cpu":
        return f"onnxruntime: {precision} on {device} is not a path of this suite yet; see the tensorrt backend"
    return None


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name != NAME:
        return None
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [Target(d, p, _reason(d, p, available)) for d in DEVICES for p in PRECISIONS]


def session_options(intra_op_threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return options


#: Quantized compute operators of an optimized graph. Static ones use the activation scales
#: fixed at calibration; these always quantize activations at run time.
STATIC_INT8_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearConvTranspose")
DYNAMIC_INT8_OPS = ("DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM")
#: integer kernels that are dynamic when their activations come from DynamicQuantizeLinear
#: (quantize_dynamic), static otherwise (a QDQ MatMul without a Q after it fuses to MatMulIntegerToFloat)
INTEGER_OPS = ("ConvInteger", "MatMulInteger", "MatMulIntegerToFloat")
#: Float compute operators, plain and fused (and the NCHWc convolution of the layout transformer).
FLOAT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "Attention",
             "MultiHeadAttention", "GroupQueryAttention", "LSTM", "GRU", "RNN")
#: A float compute node's weight initializer type (ONNX TensorProto) → precision.
WEIGHT_PRECISION = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


#: The child process of ``OrtSession.precision_evidence``: a session like the timed one that
#: writes its optimized graph, read back as evidence and printed as JSON.
EVIDENCE_CHILD = """
import json, sys, tempfile
from pathlib import Path
import onnx, onnxruntime as ort
from plugins.backends.onnxruntime import graph_evidence, session_options
path, threads, provider = sys.argv[1], int(sys.argv[2]), sys.argv[3]
options = session_options(threads)
options.log_severity_level = 3  # its warning that the file is specific to this machine is known
with tempfile.TemporaryDirectory(prefix="infermatrix-ort-optimized-") as folder:
    options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
    ort.InferenceSession(path, sess_options=options, providers=[provider])
    print(json.dumps(graph_evidence(onnx.load(options.optimized_model_filepath).graph).as_dict()))
"""


def graph_evidence(graph: Any) -> PrecisionEvidence:
    """The compute nodes of an (optimized) ONNX graph by the precision they run in; ``graph``
    is an ``onnx.GraphProto``."""
    producers = {out: node.op_type for node in graph.node for out in node.output}
    weight_types = {init.name: init.data_type for init in graph.initializer}
    compute: dict[str, int] = {}
    by_op: dict[str, int] = {}
    for node in graph.node:
        op = node.op_type
        if op in STATIC_INT8_OPS:
            ran = "int8"
        elif op in DYNAMIC_INT8_OPS:
            ran = "int8-dynamic"
        elif op in INTEGER_OPS:
            ran = "int8-dynamic" if producers.get(node.input[0]) == "DynamicQuantizeLinear" else "int8"
        elif op == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            ran = f"int{bits}-weight-only"
        elif op in FLOAT_OPS:
            weight = node.input[1] if len(node.input) > 1 else ""
            ran = WEIGHT_PRECISION.get(weight_types.get(weight, 1), "fp32")
        else:
            continue
        name = f"{node.domain}:{op}" if node.domain not in ("", "ai.onnx") else op
        by_op[name] = by_op.get(name, 0) + 1
        compute[ran] = compute.get(ran, 0) + 1
    quantize_nodes = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
                         for n in graph.node)
    return PrecisionEvidence(
        compute=compute, unit="optimized graph nodes",
        api="SessionOptions.optimized_model_filepath (a session built like the timed one): compute nodes by "
            "operator and weight type",
        facts={"compute_ops": by_op, "quantize_dequantize_nodes": quantize_nodes, "nodes": len(graph.node)})


@dataclasses.dataclass
class OrtSession:
    session: Any
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    path: Path | None = None
    provider: str = "CPUExecutionProvider"
    pools: list[Any] = dataclasses.field(default_factory=list)

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        # CPU provider: outputs are host arrays and the call is synchronous.
        return list(self.session.run(None, inputs))

    def precision_evidence(self) -> PrecisionEvidence | None:
        """The graph ONNX Runtime runs, after its optimizations: written by a second session made
        from the same file with the same options (the timed session is left as it is), in a
        child process — a second session and the optimized graph read back would otherwise stay
        in this process's peak RSS, which the memory scenario reports as the case's."""
        if self.path is None or self.provider == "TensorrtExecutionProvider":
            return None  # TensorRT's compiled partitions cannot be written back as a graph
        done = subprocess.run(
            [sys.executable, "-c", EVIDENCE_CHILD, str(self.path), str(self.config["intra_op_num_threads"]),
             self.provider],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"onnxruntime: reading the optimized graph of {self.path} failed "
                               f"(exit {done.returncode}): {done.stderr.strip()[-1500:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        return PrecisionEvidence(found["compute"], found["unit"], found["api"], found["facts"])

    def throughput_configs(self, inputs: Arrays, threads: int) -> list[Any]:
        """Parallel runs: ``requests`` threads share one session (``run`` is thread-safe
        and releases the GIL), each run with ``threads // requests`` intra-op threads so
        the cores are split, not oversubscribed."""
        import onnxruntime as ort

        from infermatrix.measure.throughput import ThroughputConfig

        configs = []
        requests = 2
        while requests <= threads and self.path is not None:
            intra = max(1, threads // requests)
            session = ort.InferenceSession(str(self.path), sess_options=session_options(intra),
                                           providers=[self.provider])
            pool = ThreadPoolExecutor(max_workers=requests)
            self.pools.append(pool)

            def run(calls: int, session: Any = session, pool: ThreadPoolExecutor = pool) -> None:
                for future in [pool.submit(session.run, None, inputs) for _ in range(calls)]:
                    future.result()

            configs.append(ThroughputConfig(f"{requests} parallel runs", requests, run,
                                            {"intra_op_num_threads": intra, "execution": "thread pool"}))
            requests *= 2
        return configs

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)
        self.session = None


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, context: PrepareContext
) -> OrtSession | None:
    if backend.name != NAME:
        return None
    import onnxruntime as ort

    times = PrepareTimes()
    source, export = onnx_model(model, context.cache_root)
    times.convert_s = export["export_s"]
    path = source
    quantizer = None
    recipe: dict[str, Any] = {}
    if target.precision == "fp16":
        # Precision lives in the graph: the fp16 variant, checked on the CPU first.
        from infermatrix.forms.onnx_variants import check_on_cpu, graph_variant

        variant = graph_variant(model, "fp16", context.cache_root)
        report = check_on_cpu(variant, model, context.cache_root)
        if not report.passed:
            pytest.fail(report.message(f"{model.name} fp16 graph (ONNX Runtime, CPU)"), pytrace=False)
        path, quantizer = variant.path, variant.tool
    if target.precision in ("int8", "int8-dynamic"):
        started = time.perf_counter()
        if target.precision == "int8":
            path = context.workdir / "int8-static.onnx"
            chosen = cpu_int8_recipe(isa())
            quantizer = quantize_static_qdq(source, path, model, symmetric=False, reduce_range=chosen.reduce_range)
            recipe = {"int8_kernel": chosen.kernel, "int8_reduce_range": chosen.reduce_range,
                      "int8_7bit": chosen.reduce_range,
                      "int8_recipe_reason": chosen.reason}
        else:
            path = context.workdir / "int8-dynamic.onnx"
            chosen = cpu_int8_recipe(isa())
            quantizer = quantize_dynamic_int8(source, path, reduce_range=chosen.reduce_range)
            recipe = {"int8_kernel": chosen.kernel, "int8_reduce_range": chosen.reduce_range,
                      "int8_recipe_reason": chosen.reason}
        times.quantize_s = time.perf_counter() - started

    options = session_options(context.threads)
    provider = PROVIDERS[target.device]
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
    times.compile_s = time.perf_counter() - started
    if session.get_providers()[0] != provider:
        pytest.skip(f"onnxruntime: a session did not start on {provider} (got {session.get_providers()})")
    return OrtSession(
        session=session,
        config={
            "provider": session.get_providers()[0],
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "execution_mode": "ORT_SEQUENTIAL",
            "intra_op_num_threads": context.threads,
            "inter_op_num_threads": 1,
            "precision": target.precision,
            "quantizer": quantizer,
            **recipe,
            "onnx_file": path.name,
            "onnx_exporter": export.get("exporter"),
            "onnx_export_cached": export["cached"],
            "opset": export.get("opset"),
            "onnxruntime": ort.__version__,
        },
        times=times,
        size_bytes=path.stat().st_size,
        path=path,
        provider=provider,
    )


# ---- text generation (the generate scenario): ONNX Runtime GenAI ---------------------------------


def genai_evidence(model: Any) -> PrecisionEvidence:
    """:func:`graph_evidence` of the GenAI builder's ``model.onnx`` (an ``onnx.ModelProto``,
    loaded without its external data): MatMulNBits by its ``bits`` (int8/int4 weight-only)
    against float MatMul; each MatMulNBits' attributes and the embedding's type as facts."""
    evidence = graph_evidence(model.graph)
    nbits: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute if a.name in ("bits", "block_size", "accuracy_level")}
            key = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
            nbits[key] = nbits.get(key, 0) + 1
    types = {init.name: init.data_type for init in model.graph.initializer}
    embeddings = [WEIGHT_PRECISION.get(types[n.input[0]], str(types[n.input[0]])) for n in model.graph.node
                  if n.op_type == "Gather" and n.input and n.input[0] in types]
    return dataclasses.replace(
        evidence, unit="graph nodes of the builder's model.onnx",
        api="onnx.load(model.onnx, load_external_data=False), the graph og.Model loads: compute nodes by operator "
            "and weight type (MatMulNBits by its bits attribute); onnxruntime_genai shows no optimized graph",
        facts={**evidence.facts, "matmulnbits_attributes": nbits, "embedding_gather_types": embeddings})


@dataclasses.dataclass
class GenAISession:
    """ONNX Runtime GenAI's token loop: prompt ids appended, one ``generate_next_token`` per token."""

    model: Any
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    export: Path | None = None

    def precision_evidence(self) -> PrecisionEvidence | None:
        if self.export is None:
            return None
        import onnx

        return genai_evidence(onnx.load(str(self.export / "model.onnx"), load_external_data=False))

    def generate(self, ids: np.ndarray, new_tokens: int) -> Any:
        import onnxruntime_genai as og

        from infermatrix.case.generation import Generated, TokenClock

        batch, length = ids.shape
        clock = TokenClock()  # starts here: the generator and its options are the per-request API
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=length + new_tokens, min_length=length + new_tokens,
                                  batch_size=batch)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids.astype(np.int32))
        while not generator.is_done():
            generator.generate_next_token()
            clock.stamp()
        tokens = [list(generator.get_sequence(i))[length:] for i in range(batch)]
        return Generated(tokens=tokens, token_times_s=list(clock.stamps), total_s=clock.elapsed())

    def close(self) -> None:
        self.model = None


@pytest.hookimpl
def pytest_infermatrix_prepare_generation(
    backend: BackendInfo, model: ModelSpec, target: Target, context: PrepareContext
) -> GenAISession | None:
    if backend.name != NAME:
        return None
    return prepare_generation(model, target, context)


def prepare_generation(model: ModelSpec, target: Target, context: PrepareContext) -> GenAISession:
    import json
    import sys

    import onnxruntime_genai as og

    from infermatrix.case.generation import exported, model_dir
    from infermatrix.gate.reference import ReferenceUnavailable

    folder = model_dir(model.name, model.generation, context.cache_root)
    name = f"onnxruntime-genai-{target.precision}"
    if not (folder.parent / name / ".complete").exists() and importlib.util.find_spec("transformers") is None:
        raise ReferenceUnavailable(f"{model.name}: no ONNX Runtime GenAI export in the cache and transformers is not "
                                   "installed to build it; run the torch environment once")
    times = PrepareTimes()
    started = time.perf_counter()
    builder = BUILDER_PRECISION[target.precision]
    out = exported(folder, name, [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", "{model}", "-o",
                                  "{out}", "-p", builder, "-e", "cpu", "-c", str(folder.parent / ".ogcache")],
                   "onnxruntime_genai.models.builder")
    times.convert_s = time.perf_counter() - started
    started = time.perf_counter()
    config = og.Config(str(out))
    # one request at a time, --threads intra-op threads, like the other ONNX Runtime cases
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": context.threads, "inter_op_num_threads": 1}}}}))
    loaded = og.Model(config)
    times.load_s = time.perf_counter() - started
    return GenAISession(
        model=loaded, times=times, size_bytes=sum(f.stat().st_size for f in out.glob("*.onnx*")), export=out,
        config={"api": "onnxruntime_genai Generator (append_tokens, generate_next_token per token)",
                "builder_precision": builder, "execution_provider": "cpu", "threads": context.threads,
                "export": str(out), "onnxruntime_genai": og.__version__,
                # the builder's -p int8 on CPU: MatMulNBits, 8-bit weights in blocks of 32, no calibration;
                # its default accuracy_level 4 quantizes activations to int8 inside the kernel
                "weights": None if builder == "fp32" else "int8 weight-only (MatMulNBits, blocks of 32)"},
    )
