"""One bad case never costs the run: cases run in a worker process (``--isolation``).

Native inference libraries crash (segfault, abort), hang, and run out of memory. With
``--isolation=process`` (the default) pytest itself never runs a case: a worker process,
started fresh with multiprocessing's *spawn* method, prepares, checks and times it
(``infermatrix.isolation.worker``), and pytest records the rounds it sends back. The worker is
reused from case to case of one backend and device (cases run grouped by backend) — the
timed loops are the same code an in-process run uses, and pytest waits idle in a
blocking read meanwhile — and replaced for the next backend, or when something goes
wrong:

- the worker dies (a signal, an exit): the case fails naming the signal and the step,
  a new worker serves the next case;
- a step (prepare, or one scenario) gives no answer within ``--case-timeout`` seconds:
  the worker's whole process group is killed, the case fails as hung;
- out of memory (``MemoryError``, a framework's device OOM): the case fails with the
  framework's message (which names the size asked for) and the worker is replaced, so
  the next case starts with clean memory;
- Ctrl-C or any exit of pytest: the worker is killed, never waited for — while pytest
  waits on it (the step in flight is abandoned), from ``pytest_keyboard_interrupt``, and
  at interpreter exit (``atexit``: a worker left alive would otherwise make
  multiprocessing wait for it forever); and the worker dies with pytest even when pytest
  is killed (``PR_SET_PDEATHSIG``, set in the worker).

``--isolation=none`` runs cases inside pytest (for debuggers and profilers).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from types import ModuleType
from typing import Any

import pytest

from infermatrix.api.scenario import Scenario
from infermatrix.api.types import Case
from infermatrix.case.generation import TokenReport
from infermatrix.gate.accuracy import AccuracyReport
from infermatrix.gate.precision import PrecisionReport
from infermatrix.host import PluginSpec
from infermatrix.isolation.worker import PrepareRequest, serve
from infermatrix.measure.timing import benchmark_recorder

#: A step (prepare, or one scenario) that takes longer than this is taken as hung. The
#: longest steps measured here: 82 s (torch-compile max-autotune on an H100), ~40 s
#: (vgg19 int8 preparation, vgg19 throughput on a 2-core CPU).
DEFAULT_CASE_TIMEOUT_S = 900.0


class CaseAborted(Exception):
    """A case the worker could not finish; the message says what happened and where."""


def describe_exit(exitcode: int | None) -> str:
    """``-11`` -> "died from signal SIGSEGV (Segmentation fault)"."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"died from signal {-exitcode}"
        text = f"died from signal {sig.name} ({signal.strsignal(sig) or 'no description'})"
        if sig == signal.SIGKILL:
            text += " — not sent by infermatrix: usually the kernel's out-of-memory killer (see dmesg)"
        return text
    return f"exited with status {exitcode}"


def plugin_specs(config: pytest.Config) -> list[PluginSpec]:
    """The run's plugin modules that implement infermatrix hooks, for the worker to load."""
    specs, refused = [], []
    for name, plugin in config.pluginmanager.list_name_plugin():
        hooks = [attr for attr in dir(plugin) if attr.startswith("pytest_infermatrix_")]
        if not hooks:
            continue
        if isinstance(plugin, ModuleType):
            specs.append(PluginSpec(plugin.__name__, getattr(plugin, "__file__", None)))
        else:
            refused.append(name)
    if refused:
        raise pytest.UsageError(
            f"--isolation=process: plugins {', '.join(refused)} are objects, not modules, and cannot be loaded "
            "in the worker process; register them as modules or run with --isolation=none"
        )
    return specs


class WorkerPool:
    """The current worker process; a new one whenever the last was lost or replaced."""

    def __init__(self, specs: list[PluginSpec], timeout_s: float) -> None:
        self.specs = specs
        self.timeout_s = timeout_s
        self.process: Any = None
        self.conn: multiprocessing.connection.Connection | None = None
        self.started = 0  # workers started in this run
        self.home: str | None = None
        # Runs before multiprocessing's own exit handler (registered earlier, atexit is LIFO),
        # which would join a live non-daemon worker forever.
        atexit.register(self.kill_now)

    def _ensure(self) -> multiprocessing.connection.Connection:
        if self.process is None or not self.process.is_alive() or self.conn is None:
            self.stop()
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            # Not a daemon: backends start processes of their own (torch inductor's compile workers).
            self.process = context.Process(target=serve, args=(child, self.specs, os.getpid()),
                                           name="infermatrix-worker")
            self.process.start()
            child.close()
            self.conn = parent
            self.started += 1
        return self.conn

    def stop(self, grace_s: float = 10.0) -> None:
        """Ask the worker to quit; kill its process group if it does not. The references are
        dropped only once it is gone, so a Ctrl-C during the wait still finds it to kill."""
        process, conn = self.process, self.conn
        if process is None:
            self.conn = None
            return
        if conn is not None:
            try:
                if process.is_alive():
                    conn.send(("quit", None))
            except (OSError, ValueError):
                pass
        process.join(grace_s)
        if process.is_alive():
            self.kill(process)
        if conn is not None:
            conn.close()
        self.process, self.conn = None, None

    def kill_now(self) -> None:
        """Kill the worker and everything it started, at once (Ctrl-C, interpreter exit)."""
        process, conn = self.process, self.conn
        self.process, self.conn = None, None
        if conn is not None:
            conn.close()
        if process is not None and process.is_alive():
            self.kill(process)

    @staticmethod
    def kill(process: Any) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the worker leads its own group (os.setsid)
        except (ProcessLookupError, PermissionError):
            process.kill()
        process.join(10)

    def request(self, case_id: str, step: str, kind: str, payload: Any, home: str | None = None) -> Any:
        """Send one request; its answer, or CaseAborted saying how the worker failed.

        ``home`` (on prepare: backend and device) keeps one framework per worker process:
        a case of another backend or device starts a new worker, so no framework's
        thread pools or device context linger under another's timings, and process-wide
        settings (TensorFlow's threads, PlaidML's device) are set once per process.
        """
        if home is not None and home != self.home:
            self.stop()
            self.home = home
        conn = self._ensure()
        process = self.process
        started = time.monotonic()
        try:
            conn.send((kind, payload))
            answered = conn.poll(self.timeout_s)
        except (OSError, EOFError):
            answered = True  # a closed pipe: the worker died, recv below says so
        except KeyboardInterrupt:
            self.kill_now()  # abandon the step: pytest exits now, not when the worker is done
            raise
        if not answered:
            self.kill(process)
            self.process, self.conn = None, None
            raise CaseAborted(
                f"{case_id}: hung — no answer within {self.timeout_s:g} s during {step}; the worker process "
                f"(pid {process.pid}) was killed and the next case starts in a new one (--case-timeout sets the limit)"
            )
        try:
            status, body = conn.recv()
        except (EOFError, OSError):
            process.join(10)
            exitcode = process.exitcode
            self.process, self.conn = None, None
            raise CaseAborted(
                f"{case_id}: the worker process (pid {process.pid}) {describe_exit(exitcode)} during {step} "
                f"after {time.monotonic() - started:.1f} s; its output is above, the other cases run on in a "
                "new worker"
            ) from None
        if status == "skip":
            pytest.skip(body)
        if status == "error":
            if body["out_of_memory"]:
                self.stop()  # the next case starts with clean memory
                raise CaseAborted(f"{case_id}: out of memory during {step}: {body['type']}: {body['message']} "
                                  f"(worker pid {process.pid}, replaced: the next case starts with clean memory)")
            if body.get("plain"):
                raise CaseAborted(f"{case_id}: {body['message']}")
            raise CaseAborted(f"{case_id}: {body['type']} during {step}: {body['message']}\n"
                              f"--- in the worker process ---\n{body['traceback']}")
        return body


class RemoteCase:
    """A case prepared in the worker: the interface of ``runner.PreparedCase`` for pytest."""

    def __init__(self, case: Case, pool: WorkerPool, request: PrepareRequest) -> None:
        self.case = case
        self.pool = pool
        self.extra_info: dict[str, Any] = {}
        self.slowdown = 0.0
        #: why the case could not be prepared (a crash, hang, OOM); scenarios then fail with it
        self.failure: str | None = None
        self.accuracy: AccuracyReport | TokenReport | None = None
        #: the proof of precision made in the worker (None: a kind of case that does not prove it)
        self.precision: PrecisionReport | None = None
        self._info: dict[str, Any] = {}
        try:
            reply = pool.request(case.id, "prepare", "prepare", request,
                                 home=f"{case.backend.name}/{case.target.device}")
        except CaseAborted as exc:
            self.failure = str(exc)
            return
        self.accuracy = reply["accuracy"]
        self.precision = reply.get("precision")
        self._info = reply["info"]

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def run(self, scenario: Scenario, benchmark: Any, argument: Any) -> Any:
        """Run ``scenario`` on the case in the worker (the same ``Scenario.measure`` an
        in-process case runs); its rounds are recorded here, into pytest-benchmark."""
        disabled = bool(getattr(benchmark, "disabled", False))
        try:
            reply = self.pool.request(self.case.id, f"the {scenario.name} scenario", "scenario",
                                      {"scenario": scenario, "disabled": disabled, "slowdown": self.slowdown,
                                       "argument": argument})
        except CaseAborted as exc:
            self.failure = str(exc)  # the case's later scenarios fail with it, without a new attempt
        if self.failure is not None:
            pytest.fail(self.failure, pytrace=False)
        if not disabled:
            record = benchmark_recorder(benchmark, f"infermatrix {scenario.name} (worker process)")
            for sample in reply["samples"]:
                record(sample)
        self.extra_info.update(reply["extra_info"])
        return reply["result"]

    def record_memory(self, hook: Any) -> None:
        """Nothing to do: the worker measured memory with its own hooks after each scenario."""

    def close(self) -> None:
        if self.failure is None and self.pool.process is not None:
            try:
                self.pool.request(self.case.id, "close", "close", None)
            except (CaseAborted, pytest.skip.Exception):
                pass
