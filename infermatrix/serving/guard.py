"""``python -m infermatrix.serving.guard PARENT_PID LOG -- COMMAND...``: a server that never outlives the suite.

A server such as vLLM's is a tree of processes (its API server, an engine core, workers).
Killing its first process is not enough, and the process that starts it (a case's worker)
may itself be killed — by the case timeout (its whole process group), by pytest's exit, by
Ctrl-C — before it can stop anything. So the suite starts this small guard instead, in a
session of its own (the worker's group kill does not reach it), and the guard

- starts COMMAND in a further new session, so the server's whole tree is one process group;
- asks the kernel to signal it when its parent dies (``PR_SET_PDEATHSIG``), and also polls
  its parent's pid (the portable fallback);
- on SIGTERM, SIGINT, SIGHUP or its parent's death: SIGTERM to the server's group, SIGKILL
  to the group after a grace period, then exits;
- exits with the server's status when the server exits on its own.

The server's output goes to LOG (kept with the case's result).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

#: seconds a server gets between SIGTERM and SIGKILL
GRACE_S = 10.0


def _die_with_parent() -> None:
    """Linux: SIGTERM to this process when the process that started it exits."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent poll below still notices


def stop_group(leader: subprocess.Popen[bytes], grace_s: float = GRACE_S) -> None:
    """SIGTERM to the leader's process group; SIGKILL to whatever of it is left after ``grace_s``.
    The leader is reaped as it goes (an unreaped zombie would keep its group "alive")."""
    pgid = leader.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        leader.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    parent, log_path, command = int(argv[0]), argv[1], argv[3:]
    _die_with_parent()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 1
    with open(log_path, "ab", buffering=0) as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            while not stopping:
                code = server.poll()
                if code is not None:
                    return code
                if os.getppid() != parent:
                    break
                time.sleep(0.1)
        finally:
            stop_group(server)
            server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
