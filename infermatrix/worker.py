"""The process a case runs in under ``--isolation=process`` (the default).

Started by ``infermatrix.isolation`` with multiprocessing's *spawn* method (a fresh
interpreter: no inherited thread pools or CUDA context), it registers the same plugin
modules as the pytest run, then serves requests one at a time over a pipe: prepare a
case, time a scenario, close. The timed loops are the ones an in-process run uses
(``runner.PreparedCase``); only the recorded rounds travel back to pytest.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib
import importlib.util
import os
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import pytest

from infermatrix import hookspec, runner
from infermatrix.reference import ReferenceUnavailable
from infermatrix.timing import RecordedRounds
from infermatrix.types import BackendInfo, Case, ModelSpec, PrepareContext, Target


@dataclasses.dataclass(frozen=True)
class PluginSpec:
    """A plugin module of the pytest run, as the worker can import it again."""

    name: str
    file: str | None


def load_plugin(spec: PluginSpec) -> ModuleType:
    """Import ``spec`` by name when that finds the same file, else from its file (conftest modules)."""
    try:
        module = importlib.import_module(spec.name)
        if spec.file is None or Path(getattr(module, "__file__", "") or "").resolve() == Path(spec.file).resolve():
            return module
    except ImportError:
        if spec.file is None:
            raise
    assert spec.file is not None
    file_spec = importlib.util.spec_from_file_location(f"infermatrix_worker_{Path(spec.file).stem}", spec.file)
    if file_spec is None or file_spec.loader is None:
        raise ImportError(f"cannot load plugin {spec.name} from {spec.file}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def plugin_manager(specs: list[PluginSpec]) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("pytest")
    manager.add_hookspecs(hookspec)
    for spec in specs:
        manager.register(load_plugin(spec), spec.name)
    return manager


@dataclasses.dataclass(frozen=True)
class PrepareRequest:
    model: str
    weights_path: str | None
    backend: BackendInfo
    target: Target
    batch_size: int
    workdir: str
    cache_root: str
    threads: int
    policy: Any
    accuracy_samples: int
    #: the generation spec as the run's options made it (generation models only)
    generation: Any = None


def is_out_of_memory(exc: BaseException) -> bool:
    """Host MemoryError or a framework's device OOM (torch.OutOfMemoryError, "out of memory" errors)."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return "outofmemory" in text.replace(" ", "") or "out of memory" in text


class Worker:
    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self.models: dict[str, ModelSpec] = {
            m.name: m for group in manager.hook.pytest_infermatrix_models() for m in group
        }
        self.current: Any = None  # runner.PreparedCase or generation.PreparedGeneration

    def close_current(self) -> None:
        if self.current is not None:
            current, self.current = self.current, None
            current.close()

    def prepare(self, request: PrepareRequest) -> dict[str, Any]:
        self.close_current()
        model = self.models[request.model]
        if request.weights_path is not None:
            model = dataclasses.replace(model, weights_path=request.weights_path)
        if request.generation is not None:
            model = dataclasses.replace(model, generation=request.generation)
        case = Case(model, request.backend, request.target, request.batch_size)
        context = PrepareContext(workdir=Path(request.workdir), cache_root=Path(request.cache_root),
                                 threads=request.threads, config=None)
        if model.task == "generation":
            from infermatrix import generation

            self.current = generation.prepare(
                case,
                lambda: self.manager.hook.pytest_infermatrix_prepare(
                    backend=case.backend, model=case.model, target=case.target, batch_size=case.batch_size,
                    context=context),
                Path(request.cache_root),
            )
            return {"accuracy": self.current.accuracy, "info": self.current.info()}
        self.current = runner.prepare(
            case,
            lambda: self.manager.hook.pytest_infermatrix_prepare(
                backend=case.backend, model=case.model, target=case.target, batch_size=case.batch_size,
                context=context),
            Path(request.cache_root), request.policy, request.accuracy_samples, request.threads,
        )
        return {"accuracy": self.current.accuracy, "info": self.current.info()}

    def scenario(self, name: str, disabled: bool, slowdown: float, argument: Any) -> dict[str, Any]:
        if self.current is None:
            raise RuntimeError(f"scenario {name!r} asked for before any case was prepared")
        prepared = self.current
        prepared.extra_info = {}
        prepared.slowdown = slowdown
        sink = RecordedRounds(disabled=disabled)
        if name not in ("latency", "throughput", "generate"):
            raise ValueError(f"unknown scenario {name!r}")
        result: Any = getattr(prepared, name)(sink, argument)
        prepared.record_memory(self.manager.hook)
        prepared.extra_info["worker_pid"] = os.getpid()
        return {"result": result, "samples": sink.samples, "extra_info": prepared.extra_info}


def serve(conn: Connection, specs: list[PluginSpec]) -> None:
    """The worker's main loop; exits when the pipe closes or on ``quit``."""
    # Its own process group, so the parent can stop it and anything it started
    # (compiler helpers) at once, and a terminal's Ctrl-C reaches only pytest.
    os.setsid()
    faulthandler.enable()  # a native crash prints the Python stack of the worker to stderr, into pytest's output
    worker = Worker(plugin_manager(specs))
    with tempfile.TemporaryDirectory(prefix="infermatrix-worker-"):
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "quit":
                break
            try:
                if kind == "prepare":
                    reply: tuple[str, Any] = ("ok", worker.prepare(payload))
                elif kind == "scenario":
                    reply = ("ok", worker.scenario(**payload))
                elif kind == "close":
                    worker.close_current()
                    reply = ("ok", None)
                else:
                    reply = ("error", {"type": "ValueError", "message": f"unknown request {kind!r}",
                                       "traceback": "", "out_of_memory": False})
            except (ReferenceUnavailable, pytest.skip.Exception) as exc:
                reply = ("skip", str(exc.msg if isinstance(exc, pytest.skip.Exception) else exc))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to pytest, named
                reply = ("error", {"type": type(exc).__name__, "message": str(exc),
                                   "traceback": traceback.format_exc(), "out_of_memory": is_out_of_memory(exc)})
                if reply[1]["out_of_memory"]:
                    worker.current = None  # the parent replaces this process; do not touch the session
            sys.stdout.flush()
            sys.stderr.flush()
            conn.send(reply)
    worker.close_current()
