"""A server process the suite starts, waits for and always stops (see ``guard`` for the why).

``ServerProcess.start`` picks a free port, starts the command through the guard with the
server's output in a log file, and polls a health URL until it answers 200, the server
exits, or the start-up timeout passes (then the log's tail is in the error). ``stop``
ends the server's whole process tree and reaps the guard; it is idempotent, registered
with ``atexit``, and runs on any exception of the caller's ``with`` block.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server did not become healthy; the message holds why and the log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (bound to port 0, then released).

    The server binds it a moment later; another process could take it in between, which
    the health check then reports (the server's log says "address already in use").
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-chars:]


class ServerProcess:
    """One server started through the guard. Use as a context manager, or call ``stop``."""

    def __init__(self, guard: subprocess.Popen[bytes], log_path: Path, base_url: str, started_s: float) -> None:
        self.guard = guard
        self.log_path = log_path
        self.base_url = base_url
        self.start_s = started_s
        self._stopped = False
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """The guard's pid (the server's own process group is the guard's child's)."""
        return self.guard.pid

    @classmethod
    def start(cls, command: Sequence[str], log_path: Path, base_url: str, health_path: str = "/health",
              timeout_s: float = 600.0, env: dict[str, str] | None = None) -> ServerProcess:
        """Start ``command`` (which must serve ``base_url``) and wait until ``health_path`` answers 200."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        guard = subprocess.Popen([sys.executable, "-m", "infermatrix.serving.guard", str(os.getpid()), str(log_path),
                                  "--", *command], env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        started = time.perf_counter()
        server = cls(guard, log_path, base_url, 0.0)
        try:
            server.wait_healthy(health_path, timeout_s)
        except BaseException:
            server.stop()
            raise
        server.start_s = time.perf_counter() - started
        return server

    def wait_healthy(self, health_path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = self.base_url.rstrip("/") + health_path
        while True:
            code = self.guard.poll()
            if code is not None:
                raise ServerStartError(f"the server exited (status {code}) before {url} answered; its log "
                                       f"({self.log_path}) ends:\n{log_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"{url} did not answer within {timeout_s:.0f} s (raise --server-timeout "
                                       f"if start-up is this slow here); the log ({self.log_path}) ends:\n"
                                       f"{log_tail(self.log_path)}")
            time.sleep(0.5)

    def stop(self) -> None:
        """End the server and its whole process tree; reap the guard. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ProcessLookupError):
            self.guard.terminate()
        try:
            self.guard.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.guard.pid, 9)
            self.guard.wait()
        atexit.unregister(self.stop)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
