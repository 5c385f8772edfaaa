"""Ctrl-C and SIGTERM stop a run promptly, and no process of the run survives them.

Each test starts a real pytest run in its own process session (as a terminal would), waits
until its worker process is busy in a given phase, sends real signals, and checks how
fast pytest exits and that every process the run started is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import FAST

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend", "faulty_backend"]\n')
    shutil.copy(REPO / "suites" / "test_latency.py", tmp_path / "test_latency.py")
    return tmp_path


def start(project: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, "PYTHONPATH": path, "INFERMATRIX_CACHE_DIR": str(project / "cache"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "test_latency.py", "-p", "no:cacheprovider", "-q", "--scenarios=latency",
         f"--benchmark-json={project / 'out.json'}", *args],
        cwd=project, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own group, like a run started from a terminal
    )


def wait_for_worker(run: subprocess.Popen[str], settle_s: float, timeout_s: float = 60) -> list[psutil.Process]:
    """The run's descendants once its worker has started, after ``settle_s`` more seconds."""
    deadline = time.monotonic() + timeout_s
    parent = psutil.Process(run.pid)
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        if any("multiprocessing" in " ".join(c.cmdline()) for c in children if c.is_running()):
            time.sleep(settle_s)
            return parent.children(recursive=True)
        assert run.poll() is None, run.communicate()[0][-2000:]
        time.sleep(0.1)
    raise AssertionError("the worker process never started")


def exit_within(run: subprocess.Popen[str], seconds: float) -> tuple[int, str]:
    try:
        out, _ = run.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        out, _ = run.communicate()
        raise AssertionError(f"pytest did not exit within {seconds} s:\n{out[-2000:]}") from None
    return run.returncode, out


def assert_gone(processes: list[psutil.Process], within_s: float = 5.0) -> None:
    _, alive = psutil.wait_procs(processes, timeout=within_s)
    assert not alive, f"still running after the run ended: {[(p.pid, p.cmdline()) for p in alive]}"


def test_ctrl_c_while_preparing_stops_at_once(project: Path) -> None:
    run = start(project, "--backends=hang", "--models=tinymlp", "--batch-sizes=1", "--case-timeout=600")
    workers = wait_for_worker(run, settle_s=2)  # the worker now sleeps inside the first inference
    started = time.monotonic()
    run.send_signal(signal.SIGINT)
    status, out = exit_within(run, 20)
    assert status == pytest.ExitCode.INTERRUPTED, out[-2000:]
    assert time.monotonic() - started < 20
    assert_gone(workers)


def test_ctrl_c_while_timing_abandons_the_scenario(project: Path) -> None:
    # each timed call slowed to ~10 ms (injected), 300 s of rounds asked for
    run = start(project, "--backends=numpy", "--models=tinymlp", "--batch-sizes=1", "--precisions=fp32",
                "--devices=cpu", "--min-time=300", "--max-time=300", "--target-precision=0.000001",
                "--inject-slowdown=numpy=100000")
    workers = wait_for_worker(run, settle_s=4)  # prepared in well under a second: now in its rounds
    run.send_signal(signal.SIGINT)
    status, out = exit_within(run, 20)
    assert status == pytest.ExitCode.INTERRUPTED, out[-2000:]
    assert_gone(workers)


def test_ctrl_c_twice_exits_at_once(project: Path) -> None:
    run = start(project, "--backends=hang", "--models=tinymlp", "--batch-sizes=1", "--case-timeout=600")
    workers = wait_for_worker(run, settle_s=2)
    run.send_signal(signal.SIGINT)
    time.sleep(0.2)
    if run.poll() is None:
        run.send_signal(signal.SIGINT)
    status, out = exit_within(run, 20)
    assert status != 0, out[-2000:]
    assert_gone(workers)


def test_sigterm_to_the_group_leaves_no_worker_behind(project: Path) -> None:
    """A CI timeout: SIGTERM to pytest's process group; the worker left that group (setsid)
    and must still die with pytest."""
    run = start(project, "--backends=hang", "--models=tinymlp", "--batch-sizes=1", "--case-timeout=600")
    workers = wait_for_worker(run, settle_s=2)
    os.killpg(run.pid, signal.SIGTERM)
    exit_within(run, 20)
    assert_gone(workers, within_s=5)


def test_ctrl_c_during_a_save_keeps_every_baseline_whole(tmp_path: Path) -> None:
    """Ctrl-C while a baseline is being written (~40 MB, so the signal lands mid-write):
    the writer stops at once, its temporary file is removed, every named baseline is whole."""
    from test_faults import small_run, start_writer

    from infermatrix.results import baselines

    store = tmp_path / "baselines"
    first = baselines.accept(small_run("first"), store)
    folder, before = first.parent, first.read_bytes()
    writer = start_writer(tmp_path, store, small_run("big", size=20000), 1000, "big")
    deadline = time.monotonic() + 60
    while not list(folder.glob(".accept-*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert list(folder.glob(".accept-*.tmp")), "the save never started"
    writer.send_signal(signal.SIGINT)
    writer.wait(timeout=10)
    assert writer.returncode != 0  # interrupted, not finished
    assert first.read_bytes() == before
    assert not list(folder.glob(".accept-*.tmp"))  # the half-written file went with the interrupt
    for run in baselines.load_history(store, folder.name):
        assert run["benchmarks"][0]["extra_info"]["tag"] in ("first", "big")


def test_ctrl_c_between_cases_stops_the_idle_worker(project: Path) -> None:
    """Ctrl-C while pytest itself works between two cases (here: a hook of the project that
    sleeps after the first test), the worker idle: pytest exits, the worker goes with it."""
    (project / "conftest.py").write_text(
        'pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend", "faulty_backend"]\n'
        "import pathlib, time\n"
        "def pytest_runtest_logfinish(nodeid, location):\n"
        "    pathlib.Path('between').touch()\n"
        "    time.sleep(120)\n")
    run = start(project, "--backends=numpy", "--models=tinymlp", "--precisions=fp32", "--devices=cpu", *FAST)
    deadline = time.monotonic() + 60
    while not (project / "between").exists() and time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[0][-2000:]
        time.sleep(0.1)
    workers = psutil.Process(run.pid).children(recursive=True)
    assert workers, "no worker process to check"
    run.send_signal(signal.SIGINT)
    status, out = exit_within(run, 20)
    assert status == pytest.ExitCode.INTERRUPTED, out[-2000:]
    assert_gone(workers)
