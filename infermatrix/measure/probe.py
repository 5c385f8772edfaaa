"""The reference probe: the machine's own level, measured beside the cases.

The verdicts must tell "the machine is slower tonight" from "this backend is slower
tonight". Inferring the machine from the cases cannot: when every case of a backend (or
every case) slows together, the cases' common shift *is* the regression. So the machine
is measured with a fixed workload no backend change can touch — a pinned-size float32
matrix product (compute, through numpy's BLAS) and a copy of a buffer larger than the
last-level cache (memory bandwidth) — timed right before every scenario test of every
case, interleaved with the cases through the whole run. A reading's *score* is the mean
of the two workloads' log median times; the verdicts take each case's machine level from
the readings around it (``infermatrix.results.verdicts``).

Where it runs: in pytest's process, right before the test's timed rounds. Under
``--isolation=process`` (the default) no backend is loaded there and the case's worker is
idle, blocked on its pipe, so the probe shares the machine with the case (its CPU clock,
memory bandwidth, other load) but not the backend's libraries, thread pools or allocator:
upgrading a backend cannot move it. Inside the worker, a backend's spinning thread pool
(ONNX Runtime's, OpenMP's) would slow the probe differently per backend and version.
Under ``--isolation=none`` the case lives in pytest's process, and the identity records it.

What could still move the probe besides the machine: numpy and its BLAS (their versions,
the BLAS's kernel choice and thread count are the probe's identity; readings of different
identities are never compared). The product runs on one thread (pinned with threadpoolctl):
a multi-threaded BLAS on a machine shared with other work stalls whenever one of its threads
is descheduled — in this project's own tests, on a 2-core machine another job kept busy, a
2-thread probe read 2.6x apart between two runs while the cases it stood for did not move.
One thread reads the core's speed and the memory system, which every case shares; what
contention does to multi-threaded cases beyond that shows as the cases' common shift after
the probe (reported) and as the noise the cases share (carried by the group verdicts).

Cost: one reading is 1 untimed + 5 timed products of 384×384 float32 (113 MFLOP each)
and 1 untimed + 3 timed copies of 32 MiB — about 15–30 ms on the project's 2-core
machines; every run records what it really cost (``seconds``, ``readings``).
``--machine-probe=off`` turns it off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import platform
import statistics
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

#: Bumped whenever the workload changes: readings of different versions are not compared.
PROBE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """The fixed workload (changing any figure changes the probe's identity)."""

    matmul_n: int = 384
    matmul_rounds: int = 5
    copy_bytes: int = 32 * 2**20
    copy_rounds: int = 3


def blas_facts() -> dict[str, Any]:
    """numpy's BLAS as numpy was built with it and as threadpoolctl finds it loaded."""
    facts: dict[str, Any] = {"numpy": np.__version__}
    with contextlib.suppress(Exception):  # show_config's dict form: numpy >= 1.26
        config: Any = np.show_config(mode="dicts")
        blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
        facts["blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration") if blas.get(k)}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        facts["threadpoolctl"] = None
        return facts
    loaded = [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "threading_layer")}
              for lib in threadpool_info() if lib.get("user_api") == "blas"]
    facts["blas_loaded"] = sorted(loaded, key=lambda lib: json.dumps(lib, sort_keys=True))
    return facts


class MachineProbe:
    """One run's probe: the buffers made once, then :meth:`measure` before each case."""

    def __init__(self, threads: int = 1, beside: str = "worker", spec: ProbeSpec | None = None) -> None:
        self.spec = spec or ProbeSpec()
        self.threads = threads
        rng = np.random.default_rng(0)
        n = self.spec.matmul_n
        self._a = rng.standard_normal((n, n), dtype=np.float32)
        self._b = rng.standard_normal((n, n), dtype=np.float32)
        self._out = np.empty((n, n), dtype=np.float32)
        self._src = rng.random(self.spec.copy_bytes // 8)
        self._dst = np.empty_like(self._src)
        self._limit = _thread_limiter(threads)
        self.identity: dict[str, Any] = {
            "probe_version": PROBE_VERSION, **dataclasses.asdict(self.spec), "threads": threads,
            "threads_pinned": self._limit is not None, "python": platform.python_version(),
            #: "worker": the case ran in a worker process, "same process": beside the probe (--isolation=none)
            "beside": beside, **blas_facts(),
        }
        self.key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        self.seconds = 0.0
        self.readings = 0

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self._limit is None:
            yield
            return
        with self._limit():
            yield

    def measure(self) -> dict[str, Any]:
        """One reading: its identity key, wall-clock time and each workload's round times (ms)."""
        started = time.perf_counter()
        matmul, copy = [], []
        with self._threads():
            np.matmul(self._a, self._b, out=self._out)  # untimed: wakes the BLAS threads
            for _ in range(self.spec.matmul_rounds):
                t0 = time.perf_counter()
                np.matmul(self._a, self._b, out=self._out)
                matmul.append((time.perf_counter() - t0) * 1e3)
        np.copyto(self._dst, self._src)  # untimed: touches the pages
        for _ in range(self.spec.copy_rounds):
            t0 = time.perf_counter()
            np.copyto(self._dst, self._src)
            copy.append((time.perf_counter() - t0) * 1e3)
        self.seconds += time.perf_counter() - started
        self.readings += 1
        return {"key": self.key, "time": time.time(), "matmul_ms": matmul, "copy_ms": copy}

    def summary(self) -> dict[str, Any]:
        """What the run JSON keeps of the probe (``infermatrix.probe``): identity, readings, cost."""
        return {"enabled": True, "key": self.key, "identity": self.identity, "readings": self.readings,
                "seconds": round(self.seconds, 4),
                "per_reading_ms": round(self.seconds / self.readings * 1e3, 2) if self.readings else None}


def _thread_limiter(threads: int) -> Any:
    """A reusable "BLAS at ``threads`` threads" context factory, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=threads, user_api="blas")


def score(reading: Mapping[str, Any]) -> float | None:
    """A reading's machine level: the mean of its workloads' log median times (log ms); None
    where the reading is not usable (no rounds, a non-positive time)."""
    logs = []
    for workload in ("matmul_ms", "copy_ms"):
        rounds = reading.get(workload)
        if not isinstance(rounds, list) or not rounds:
            return None
        median = statistics.median(float(r) for r in rounds)
        if not (median > 0 and math.isfinite(median)):
            return None
        logs.append(math.log(median))
    return sum(logs) / len(logs)
