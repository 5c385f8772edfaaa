"""The process a case runs in under ``--isolation=process`` (the default).

Started by ``infermatrix.isolation.pool`` with multiprocessing's *spawn* method (a fresh
interpreter: no inherited thread pools or CUDA context), it builds the one plugin host
(:func:`infermatrix.host.plugin_manager`) with the same plugin modules as the pytest
run, then serves requests one at a time over a pipe: prepare a
case, time a scenario, close. The timed loops are the ones an in-process run uses
(``runner.PreparedCase``); only the recorded rounds travel back to pytest.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pluggy
import pytest

from infermatrix import host
from infermatrix.api.scenario import CaseKind, Prepared, Scenario
from infermatrix.api.types import FORM_GENERATION, BackendInfo, Case, ModelSpec, PrepareContext, RunOptions, Target
from infermatrix.cache import CacheError
from infermatrix.gate.reference import ReferenceUnavailable
from infermatrix.host import PluginSpec
from infermatrix.measure.timing import RecordedRounds


@dataclasses.dataclass(frozen=True)
class PrepareRequest:
    model: str
    weights_path: str | None
    backend: BackendInfo
    target: Target
    batch_size: int
    workdir: str
    options: RunOptions
    #: how the case is prepared (the scenario's kind: forward or generation)
    kind: CaseKind
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
        self.models: dict[str, ModelSpec] = {m.name: m for m in host.announced(manager.hook)[0]}
        self.current: Prepared | None = None

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
            model = model.with_form(FORM_GENERATION, request.generation)
        case = Case(model, request.backend, request.target, request.batch_size)
        context = PrepareContext(workdir=Path(request.workdir), options=request.options)
        hook = getattr(self.manager.hook, request.kind.prepare_hook)
        self.current = request.kind.prepare(
            case,
            lambda: hook(backend=case.backend, model=case.model, target=case.target, batch_size=case.batch_size,
                         context=context),
            request.options, request.policy, request.accuracy_samples,
        )
        return {"accuracy": self.current.accuracy, "precision": getattr(self.current, "precision", None),
                "info": self.current.info()}

    def scenario(self, scenario: Scenario, disabled: bool, slowdown: float, argument: Any) -> dict[str, Any]:
        if self.current is None:
            raise RuntimeError(f"scenario {scenario.name!r} asked for before any case was prepared")
        prepared = self.current
        prepared.extra_info = {}
        prepared.slowdown = slowdown
        sink = RecordedRounds(disabled=disabled)
        result = prepared.run(scenario, sink, argument)
        prepared.record_memory(self.manager.hook)
        prepared.extra_info["worker_pid"] = os.getpid()
        return {"result": result, "samples": sink.samples, "extra_info": prepared.extra_info}


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when pytest dies (SIGKILL, a CI timeout's SIGTERM to
    pytest's group, which the worker left with ``setsid``): no worker outlives its run.
    Elsewhere the parent's ``atexit`` kill is all there is."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect (pytest may be PID 1)
        os._exit(1)


def serve(conn: Connection, specs: list[PluginSpec], parent_pid: int) -> None:
    """The worker's main loop; exits when the pipe closes or on ``quit``."""
    # Its own process group, so the parent can stop it and anything it started
    # (compiler helpers) at once, and a terminal's Ctrl-C reaches only pytest.
    os.setsid()
    die_with_parent(parent_pid)
    faulthandler.enable()  # a native crash prints the Python stack of the worker to stderr, into pytest's output
    worker = Worker(host.plugin_manager(specs))
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
                                   "traceback": traceback.format_exc(), "out_of_memory": is_out_of_memory(exc),
                                   # its message names the file and what to do: no traceback needed
                                   "plain": isinstance(exc, CacheError)})
                if reply[1]["out_of_memory"]:
                    worker.current = None  # the parent replaces this process; do not touch the session
            sys.stdout.flush()
            sys.stderr.flush()
            conn.send(reply)
    worker.close_current()
