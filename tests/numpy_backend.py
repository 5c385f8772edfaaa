"""A tiny reference backend and models in plain numpy, for the project's own tests.

It exercises every hook without any deep-learning framework: a seeded linear
classifier (``tinymlp``) and a Linear-heavy twin (``tinylinear``), a ``numpy`` backend
that runs them in fp32, fp16 or int8-dynamic (int8 weights per column, activations
quantized per row at each call, int32 accumulation), and a ``ghost`` backend whose
library is missing. The session's ``precision_evidence`` reads the dtype of the weights
it multiplies with. ``NUMPY_BACKEND_PERTURB=<relative noise>`` makes the backend's outputs
wrong, to prove the accuracy gate fails such a case; ``NUMPY_BACKEND_SILENT_FP32=1``
skips the precision step (the session runs fp32 whatever its id says), to prove the
precision check fails it; ``NUMPY_BACKEND_NO_EVIDENCE=1`` makes the session give no
evidence (unverified). ``NUMPY_BACKEND_GENERATION_DIR=<dir>`` adds
``tinygen``, a generation model with a counting rule for weights, so the generate
scenario runs without torch or transformers (its model folder and reference tokens are
written into ``<dir>``, where the core looks for a local model's cached tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infermatrix.api.announce import announce_backend
from infermatrix.api.types import (
    FORM_GENERATION,
    FORM_NUMPY,
    Arrays,
    BackendInfo,
    InputSpec,
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    Target,
)
from infermatrix.case.generation import Generated, GenerationSpec, prompt_ids, reference_store, sweep
from infermatrix.gate.precision import PrecisionEvidence

FEATURES, CLASSES = 64, 10


def weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((FEATURES, CLASSES)) / np.sqrt(FEATURES)


def reference(seed: int):
    def fn(inputs: Arrays) -> list[np.ndarray]:
        return [(inputs["x"].astype(np.float64) @ weights(seed)).astype(np.float32)]

    return fn


MODELS = [
    ModelSpec(
        name="tinymlp", family="tiny", task="classification", inputs=(InputSpec("x", (FEATURES,), "float32"),),
        output_names=("logits",), forms={FORM_NUMPY: reference(7)}, default_batch_sizes=(1, 4),
        weight_seed=7,
    ),
    ModelSpec(
        name="tinylinear", family="tiny", task="embedding", inputs=(InputSpec("x", (FEATURES,), "float32"),),
        output_names=("y",), forms={FORM_NUMPY: reference(8)}, default_batch_sizes=(2,),
        weight_seed=8, linear_heavy=True,
    ),
]


GENERATION_VOCAB = 64


def next_tokens(sequences: np.ndarray) -> np.ndarray:
    """tinygen's "model": each row's next token from its last token and its length (greedy, deterministic)."""
    return (31 * sequences[:, -1] + 7 * sequences.shape[1] + 3) % GENERATION_VOCAB


def generate_tokens(ids: np.ndarray, new_tokens: int) -> list[list[int]]:
    sequences = np.asarray(ids, dtype=np.int64)
    for _ in range(new_tokens):
        sequences = np.concatenate([sequences, next_tokens(sequences)[:, None]], axis=1)
    return sequences[:, ids.shape[1]:].tolist()


def generation_model(folder: Path) -> ModelSpec:
    """tinygen, its folder (``hf/config.json``) and its reference tokens made in ``folder``."""
    spec = GenerationSpec(config={"vocab_size": GENERATION_VOCAB}, prompt_lengths=(4,), new_tokens=(3,),
                          local_dir=str(folder / "hf"))
    (folder / "hf").mkdir(parents=True, exist_ok=True)
    (folder / "hf" / "config.json").write_text(json.dumps({"model_type": "numpy-tinygen", **spec.config}))
    reference = {f"{p}x{n}": generate_tokens(prompt_ids(p, 1, spec.seed, GENERATION_VOCAB), n) for p, n in sweep(spec)}
    reference_store(folder / "hf", 1).write_text(json.dumps(reference))
    return ModelSpec(
        name="tinygen", family="tiny", task="generation",
        inputs=(InputSpec("input_ids", (4,), "int64", high=GENERATION_VOCAB),), output_names=("token_ids",),
        forms={FORM_GENERATION: spec}, default_batch_sizes=(1,),
    )


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    folder = os.environ.get("NUMPY_BACKEND_GENERATION_DIR")
    return [*MODELS, generation_model(Path(folder))] if folder else MODELS


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    return [
        BackendInfo(name="numpy", devices=("cpu", "fakegpu"), precisions=("fp32", "fp16", "int8", "int8-dynamic"),
                    version=np.__version__, forms=(FORM_NUMPY, FORM_GENERATION), generation_precisions=("fp32",)),
        announce_backend("ghost", "ghostlib_that_is_not_installed", "ghostlib", ("cpu",), ("fp32",), extra="ghost"),
    ]


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name != "numpy":
        return None
    return [
        Target("cpu", "fp32"),
        Target("cpu", "fp16"),
        Target("cpu", "int8", "numpy: int8 needs a quantizer this backend does not have"),
        Target("cpu", "int8-dynamic"),
        Target("fakegpu", "fp32", "numpy: no fake GPU on this machine"),
    ]


def quantize_int8(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 along ``axis`` (one scale per row or column): the int8 values and their scales."""
    scale = np.abs(values).max(axis=axis, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(values / scale), -127, 127).astype(np.int8), scale


@dataclasses.dataclass
class NumpySession:
    matrix: np.ndarray
    dtype: Any
    perturb: float
    config: dict[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    #: the int8 matrix's per-column scales (int8-dynamic), else None
    scales: np.ndarray | None = None
    gives_evidence: bool = True
    closed: bool = False

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        if self.scales is not None:  # int8-dynamic: activations quantized per row at each call
            qx, x_scale = quantize_int8(inputs["x"].astype(np.float32), axis=1)
            out = (qx.astype(np.int32) @ self.matrix.astype(np.int32)) * x_scale * self.scales
        else:
            out = (inputs["x"].astype(self.dtype) @ self.matrix).astype(np.float32)
        if self.perturb:
            out = out + self.perturb * np.abs(out).mean() * np.random.default_rng(0).standard_normal(out.shape)
        return [out.astype(np.float32)]

    def precision_evidence(self) -> PrecisionEvidence | None:
        """The one matmul, by the dtype of the weights it really multiplies with."""
        if not self.gives_evidence:
            return None
        ran = {"int8": "int8-dynamic" if self.scales is not None else "int8", "float16": "fp16",
               "float32": "fp32"}[self.matrix.dtype.name]
        return PrecisionEvidence(compute={ran: 1}, unit="matmuls", api="numpy: the weight matrix's dtype",
                                 facts={"weight_dtype": self.matrix.dtype.name,
                                        "activations": "int8 per row, at each call" if self.scales is not None
                                        else self.matrix.dtype.name})

    def close(self) -> None:
        self.closed = True


@dataclasses.dataclass
class NumpyGenerator:
    """tinygen's session: the generation interface (``infermatrix.case.generation.GenerationSession``)."""

    config: dict[str, Any]
    times: PrepareTimes
    size_bytes: int | None = None

    def generate(self, ids: np.ndarray, new_tokens: int) -> Generated:
        started = time.perf_counter()
        sequences = np.asarray(ids, dtype=np.int64)
        stamps = []
        for _ in range(new_tokens):
            sequences = np.concatenate([sequences, next_tokens(sequences)[:, None]], axis=1)
            stamps.append(time.perf_counter() - started)
        return Generated(sequences[:, ids.shape[1]:].tolist(), stamps, time.perf_counter() - started)

    def close(self) -> None:
        pass


@pytest.hookimpl
def pytest_infermatrix_prepare_generation(backend: BackendInfo, context: PrepareContext) -> NumpyGenerator | None:
    if backend.name != "numpy":
        return None
    return NumpyGenerator(config={"rule": "counting", "threads": context.threads}, times=PrepareTimes())


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, context: PrepareContext
) -> NumpySession | None:
    if backend.name != "numpy":
        return None
    log = os.environ.get("NUMPY_BACKEND_PREPARE_LOG")
    if log:  # lets tests count how often a case is prepared
        with open(log, "a") as fh:
            fh.write(f"{model.name}-{target.device}-{target.precision}\n")
    precision = "fp32" if os.environ.get("NUMPY_BACKEND_SILENT_FP32") else target.precision
    dtype = np.float16 if precision == "fp16" else np.float32
    matrix, scales = weights(model.weight_seed).astype(dtype), None
    if precision == "int8-dynamic":
        matrix, scales = quantize_int8(matrix, axis=0)
    return NumpySession(
        matrix=matrix, dtype=dtype, perturb=float(os.environ.get("NUMPY_BACKEND_PERTURB", "0")),
        config={"dtype": matrix.dtype.name, "threads": context.threads}, times=PrepareTimes(convert_s=0.0),
        size_bytes=matrix.nbytes, scales=scales, gives_evidence=not os.environ.get("NUMPY_BACKEND_NO_EVIDENCE"),
    )
