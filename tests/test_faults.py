"""Fault injection: every fault is real (a plugin backend that segfaults through ctypes,
aborts, sleeps past the timeout, allocates 4 TiB or returns NaN; files really truncated
or of the wrong kind; a baseline writer really killed with SIGKILL; real read-only and
full filesystems where this machine lets us mount them). Each test states what must
survive. The README quotes how many faults this module tries (one per test id).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FAST

from infermatrix.results import baselines

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
QUICK = [*FAST, "--throughput-time=0.05", "--batch-sizes=1"]


@pytest.fixture
def faulty(suite: pytest.Pytester) -> pytest.Pytester:
    """The numpy test backend, the faulty backends, latency and throughput scenarios."""
    suite.makeconftest('pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend", "faulty_backend"]\n')
    shutil.copy(REPO / "suites" / "test_throughput.py", suite.path / "test_throughput.py")
    return suite


def results(path: Path) -> dict[str, dict]:
    return {b["name"]: b["extra_info"] for b in json.loads(path.read_text())["benchmarks"]}


# ---- isolation: one bad case never costs the run --------------------------------------------

EXPECTED = {
    "segfault": "*the worker process (pid *) died from signal SIGSEGV (Segmentation fault) during prepare*",
    "abort": "*the worker process (pid *) died from signal SIGABRT (Aborted) during prepare*",
    "hang": "*hung — no answer within 2 s during prepare; the worker process (pid *) was killed*",
    "oom": "*out of memory during prepare: MemoryError: Unable to allocate 4.00 TiB*",
    "nan": "*accuracy check failed (320 of 320 output values are NaN or Inf;*",
}


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_a_faulty_case_fails_alone_and_every_other_case_is_saved(
    faulty: pytest.Pytester, tmp_path: Path, fault: str
) -> None:
    out = tmp_path / "out.json"
    result = faulty.runpytest("--backends", f"numpy,{fault}", "--precisions=fp32", "--devices=cpu",
                              "--case-timeout=2", f"--benchmark-json={out}", *QUICK)
    outcomes = result.parseoutcomes()
    # two models: each faulty case fails in both scenarios, each numpy case passes both
    assert outcomes.get("failed") == 4 and outcomes.get("passed") == 4, result.outlines[-20:]
    result.stdout.fnmatch_lines([EXPECTED[fault].replace("[", "[[]")])
    saved = results(out)
    assert sorted(saved) == sorted(f"test_{s}[{m}-numpy-cpu-fp32-b1]" for s in ("latency", "throughput")
                                   for m in ("tinylinear", "tinymlp"))
    assert all(info["accuracy"]["passed"] and info["isolation"] == "process" for info in saved.values())
    failed = json.loads(out.read_text())["infermatrix"]["failed"]
    assert sorted(failed) == sorted(f"test_{s}[{m}-{fault}-cpu-fp32-b1]" for s in ("latency", "throughput")
                                    for m in ("tinylinear", "tinymlp"))


@pytest.mark.parametrize("fault", ["segfault", "oom", "hang"])
def test_after_a_fault_the_next_case_of_the_backend_runs_in_a_new_worker(
    faulty: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    import re

    monkeypatch.setenv("FAULTY_MODELS", "tinylinear")  # tinylinear (first in id order) faults, tinymlp does not
    out = tmp_path / "out.json"
    result = faulty.runpytest(f"--backends={fault}", "--models=tinylinear,tinymlp", "--case-timeout=2",
                              f"--benchmark-json={out}", *QUICK)
    assert result.parseoutcomes().get("passed") == 2, result.outlines[-20:]
    (line,) = {line for line in result.outlines if "tinylinear" in line and "pid" in line and "Failed" not in line}
    faulted_pid = int(re.search(r"pid (\d+)", line).group(1))  # type: ignore[union-attr]
    assert results(out)[f"test_latency[tinymlp-{fault}-cpu-fp32-b1]"]["worker_pid"] != faulted_pid


def test_a_crash_while_timing_names_the_scenario_and_keeps_the_other_results(
    faulty: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # past preparation, warm-up (at most 1000 calls) and the accuracy check: inside the timed rounds
    monkeypatch.setenv("FAULTY_AFTER_CALLS", "1100")
    out = tmp_path / "out.json"
    result = faulty.runpytest("--backends=numpy,segfault", "--precisions=fp32", "--devices=cpu", "--models=tinymlp",
                              f"--benchmark-json={out}", *QUICK)
    result.stdout.fnmatch_lines(["*tinymlp-segfault-cpu-fp32-b1: the worker process (pid *) died from signal SIGSEGV "
                                 "(Segmentation fault) during the latency scenario*"])
    assert result.parseoutcomes() == {"failed": 2, "passed": 2, "warnings": result.parseoutcomes().get("warnings", 0)}
    assert set(results(out)) == {"test_latency[tinymlp-numpy-cpu-fp32-b1]",
                                 "test_throughput[tinymlp-numpy-cpu-fp32-b1]"}


def test_cuda_out_of_memory_fails_the_case_with_the_size_asked_for(faulty: pytest.Pytester) -> None:
    result = faulty.runpytest("--backends=numpy,cudaoom", "--precisions=fp32", "--models=tinymlp", "-rs", *QUICK)
    if any("cudaoom: no CUDA device" in line for line in result.outlines):
        pytest.skip("needs a CUDA device")
    result.stdout.fnmatch_lines(["*tinymlp-cudaoom-cuda-fp32-b1: out of memory during prepare: OutOfMemoryError: "
                                 "CUDA out of memory. Tried to allocate 262144.00 GiB*"])
    assert result.parseoutcomes()["passed"] == 2


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--models", "resnet9000", "*--models: unknown name 'resnet9000'; valid: tinylinear, tinymlp*"),
    ("--backends", "tensorflowz", "*--backends: unknown name 'tensorflowz'; valid: *numpy*"),
    ("--devices", "tpu", "*--devices: unknown name 'tpu'; valid: *cpu*"),
    ("--precisions", "fp7", "*--precisions: unknown name 'fp7'; valid: *fp32*"),
], ids=["model", "backend", "device", "precision"])
def test_unknown_names_are_usage_errors_listing_the_valid_ones(
    faulty: pytest.Pytester, option: str, value: str, message: str
) -> None:
    result = faulty.runpytest(option, value, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_missing_backend_and_a_broken_one_are_skips_with_the_reason(faulty: pytest.Pytester) -> None:
    result = faulty.runpytest("--backends=ghost,broken,numpy", "--precisions=fp32", "--devices=cpu", "-rs",
                              "--models=tinymlp", *QUICK)
    result.stdout.fnmatch_lines([
        "*ghost: ghostlib is not installed (pip install 'infermatrix[[]ghost]' or tox -e ghost)*",
        "*broken: broken_native_lib is installed but fails to import: ImportError: libbroken_native.so.3: "
        "cannot open shared object file*",
    ])
    assert result.parseoutcomes()["passed"] == 2


@pytest.mark.parametrize("damage", ["missing", "truncated", "not-a-model", "not-a-state-dict"])
def test_a_bad_weights_file_is_an_error_naming_it(tmp_path: Path, damage: str) -> None:
    torch = pytest.importorskip("torch")
    import dataclasses

    from tiny_torch_model import TINY_CNN

    from infermatrix.api.types import WeightsError
    from infermatrix.gate.reference import build_torch_model

    path = tmp_path / "weights.pt"
    torch.save(TINY_CNN.build_torch().state_dict(), path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not-a-model":
        path.write_text("this is a README, not weights\n")
    else:
        torch.save([1, 2, 3], path)
    expected = {"missing": "no such file", "truncated": "not a readable torch state_dict",
                "not-a-model": "not a readable torch state_dict", "not-a-state-dict": "holds a list, not a state_dict"}
    model = dataclasses.replace(TINY_CNN, weights_path=str(path))
    with pytest.raises(WeightsError, match=expected[damage]) as info:
        build_torch_model(model, tmp_path / "cache")
    assert str(path) in str(info.value)


def test_a_weights_file_that_does_not_exist_is_a_usage_error(faulty: pytest.Pytester, tmp_path: Path) -> None:
    result = faulty.runpytest(f"--model-weights=tinymlp={tmp_path / 'absent.pt'}", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--model-weights tinymlp: file {tmp_path / 'absent.pt'} does not exist*"])


def plaidml_python() -> str:
    python = os.environ.get("INFERMATRIX_PLAIDML_PYTHON", str(REPO / ".venv-plaidml" / "bin" / "python"))
    if not Path(python).exists():
        pytest.skip("no PlaidML environment (make test creates .venv-plaidml; or set INFERMATRIX_PLAIDML_PYTHON)")
    return python


def run_plaidml(python: str, cache: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PLAIDML_")}
    return subprocess.run([python, "-m", "pytest", "suites/test_latency.py", "-q", "-p", "no:cacheprovider",
                           "--backends=plaidml", f"--infermatrix-cache={cache}", *FAST, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**clean, "HOME": str(home), **env})


def test_plaidml_never_set_up_runs_without_touching_the_users_configuration(tmp_path: Path) -> None:
    python = plaidml_python()
    pytest.importorskip("torch")  # makes the weights and reference the PlaidML environment reads
    import sys as _sys

    _sys.path.insert(0, str(REPO))
    from infermatrix.gate.accuracy import DEFAULT_SAMPLES
    from infermatrix.gate.reference import reference_outputs
    from plugins.models.resnet import MODELS

    cache, home = tmp_path / "cache", tmp_path / "home"
    home.mkdir()
    reference_outputs(MODELS[0], DEFAULT_SAMPLES, cache)
    # no plaidml-setup ever ran, ~ is empty, and a stale setting points at a file that is not there
    proc = run_plaidml(python, cache, home, "--models=resnet18", "--batch-sizes=1", "--precisions=fp32",
                       PLAIDML_SETTINGS=str(tmp_path / "gone.json"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout
    assert list(home.iterdir()) == []  # no ~/.plaidml written


def test_plaidml_asked_for_a_device_it_does_not_have_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_plaidml(plaidml_python(), tmp_path, tmp_path, "--devices=opencl_imaginary.0", "--collect-only")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--devices: unknown name 'opencl_imaginary.0'; valid: " in proc.stderr and "llvm_cpu.0" in proc.stderr


def corrupt(path: Path, damage: str) -> None:
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif damage == "not-json":
        path.write_text("<html>502 Bad Gateway</html>\n")
    elif damage == "wrong-schema":
        path.write_text(json.dumps({"version": 2, "results": []}))
    elif damage == "other-machine":
        run = json.loads(path.read_text())
        run["machine_info"]["infermatrix"]["cpu_model"] = "Some Other CPU"
        path.write_text(json.dumps(run))


@pytest.mark.parametrize(("damage", "message"), ids=lambda v: v if "*" not in v else "", argvalues=[
    ("truncated", "*not valid JSON*the file is truncated or not a result*"),
    ("not-json", "*not valid JSON*"),
    ("wrong-schema", "*not a pytest-benchmark result*"),
    ("other-machine", "*recorded on machine some-other-cpu-*, but filed under *move it to*"),
])
def test_a_bad_stored_baseline_stops_the_compare_naming_the_file_and_nothing_is_lost(
    suite: pytest.Pytester, tmp_path: Path, damage: str, message: str
) -> None:
    store = tmp_path / "baselines"
    common = ["-k", "tinymlp-numpy-cpu-fp32", f"--infermatrix-baselines={store}", *FAST]
    assert suite.runpytest(*common, "--accept-baseline").ret == 0
    (stored,) = store.glob("*/*.json")
    corrupt(stored, damage)
    before = stored.read_bytes()
    result = suite.runpytest(*common, "--benchmark-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*cannot compare: {stored}:{message}"])
    assert stored.read_bytes() == before  # the user's file is never rewritten or removed


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    """A real, small filesystem at ``path`` (needs mount rights, e.g. root in a container)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or proc.returncode})")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def small_run(tag: str, size: int = 1) -> dict:
    # case ids of the record's form: only runs that read as records enter a history
    return {
        "machine_info": {"infermatrix": {"cpu_model": "Test CPU", "cpu_physical_cores": 2, "gpus": [], "os": "Linux",
                                         "arch": "x86_64"}},
        "benchmarks": [{"name": f"case{i}", "stats": {"median": 1.0, "data": [1.0] * 100},
                        "extra_info": {"case_id": f"case{i}-numpy-cpu-fp32-b1", "tag": tag}} for i in range(size)],
    }


def test_a_read_only_baselines_directory_is_a_clear_error_and_the_earlier_baseline_stays(tmp_path: Path) -> None:
    store = tmp_path / "ro"
    if os.geteuid() != 0:
        first = baselines.accept(small_run("first"), store)
        first.parent.chmod(0o555)
        cleanup: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:  # root ignores permissions: a really read-only filesystem instead
        cleanup = tmpfs(store, "1m")
    with cleanup:
        if os.geteuid() == 0:
            first = baselines.accept(small_run("first"), store)
            subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        with pytest.raises(baselines.BaselineError, match="(Read-only file system|Permission denied).*earlier "
                           "baselines are untouched"):
            baselines.accept(small_run("second"), store)
        assert baselines.load_run(first)["benchmarks"][0]["extra_info"]["tag"] == "first"
        assert [p.name for p in first.parent.iterdir()] == [first.name]
        if os.geteuid() != 0:
            first.parent.chmod(0o755)


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_file(tmp_path: Path) -> None:
    store = tmp_path / "full"
    with tmpfs(store, "256k"):
        first = baselines.accept(small_run("first"), store)
        # fill what is left, then try to save a run bigger than nothing
        with contextlib.suppress(OSError), open(store / "filler", "wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)
        with pytest.raises(baselines.BaselineError, match="No space left on device.*earlier baselines are untouched"):
            baselines.accept(small_run("second", size=50), store)
        assert baselines.load_run(first)["benchmarks"][0]["extra_info"]["tag"] == "first"
        assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind


WRITER = """
import json, sys
from pathlib import Path
from infermatrix.results import baselines
run = json.loads(Path(sys.argv[1]).read_text())
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    baselines.accept(run, Path(sys.argv[2]))
"""


def start_writer(tmp_path: Path, store: Path, run: dict, times: int, name: str) -> subprocess.Popen[str]:
    source = tmp_path / f"{name}.json"
    source.write_text(json.dumps(run))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(source), str(store), str(times)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_writer_killed_during_the_save_leaves_every_baseline_intact(tmp_path: Path) -> None:
    store = tmp_path / "baselines"
    first = baselines.accept(small_run("first"), store)
    folder, before = first.parent, first.read_bytes()
    big = small_run("big", size=20000)  # ~40 MB of JSON: each save spends long in write() and fsync()
    killed_mid_write = 0
    for _ in range(5):
        writer = start_writer(tmp_path, store, big, 1000, "big")
        deadline = time.monotonic() + 60
        while not list(folder.glob(".accept-*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.0005)  # wait until the writer has its temporary file open, then kill it
        killed_mid_write += bool(list(folder.glob(".accept-*.tmp")))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL
        assert first.read_bytes() == before
        for run in baselines.load_history(store, folder.name):  # every named baseline is complete
            assert run["benchmarks"][0]["extra_info"]["tag"] in ("first", "big")
    assert killed_mid_write == 5


def test_two_runs_saving_at_once_both_keep_their_baselines(tmp_path: Path) -> None:
    store = tmp_path / "baselines"
    writers = [start_writer(tmp_path, store, small_run(tag, size=200), 15, tag) for tag in ("a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    (folder,) = store.iterdir()
    tags = [run["benchmarks"][0]["extra_info"]["tag"] for run in baselines.load_history(store, folder.name)]
    assert sorted(tags) == ["a"] * 15 + ["b"] * 15


# ---- history: only finite timings above 0 (issue #20) ------------------------------------------

MACHINE = {"infermatrix": {"cpu_model": "Test CPU", "cpu_physical_cores": 2, "gpus": [], "os": "Linux",
                           "arch": "x86_64"}}


def timed_run(medians: dict[str, float]) -> dict:
    """A run as pytest-benchmark writes one: median, mean, min and the rounds of each case."""
    return {"machine_info": MACHINE, "infermatrix": {"failed": {}}, "benchmarks": [
        {"name": f"test_latency[{model}-numpy-cpu-fp32-b1]",
         "stats": {"median": m, "mean": m, "min": m * 0.9, "data": [m * 0.9, m, m * 1.1]},
         "extra_info": {"case_id": f"{model}-numpy-cpu-fp32-b1"}} for model, m in medians.items()]}


#: (what is broken, how, what the refusal must say)
IMPOSSIBLE = {
    "median-nan": (lambda b: b["stats"].update(median=float("nan")), "stats.median = nan"),
    "median-zero": (lambda b: b["stats"].update(median=0.0), "stats.median = 0.0"),
    "median-negative": (lambda b: b["stats"].update(median=-0.001), "stats.median = -0.001"),
    "mean-inf": (lambda b: b["stats"].update(mean=float("inf")), "stats.mean = inf"),
    "min-null": (lambda b: b["stats"].update(min=None), "stats.min = None"),
    "round-zero": (lambda b: b["stats"]["data"].__setitem__(1, 0.0), "stats.data[1] = 0.0 (a round)"),
    "no-median": (lambda b: b["stats"].pop("median"), "stats.median is missing"),
    "record": (lambda b: b["extra_info"].update(batch_size="four"), "field 'batch_size' = 'four' is not a int"),
}


def broken_run(damage: str) -> dict:
    run = timed_run({"tinymlp": 0.002, "tinylinear": 0.001})
    IMPOSSIBLE[damage][0](run["benchmarks"][1])
    return run


@pytest.mark.parametrize("damage", sorted(IMPOSSIBLE))
def test_accept_refuses_a_run_with_impossible_timings_naming_file_benchmark_field_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    from infermatrix.cli import main as cli

    result, store = tmp_path / "run.json", tmp_path / "baselines"
    result.write_text(json.dumps(broken_run(damage)))  # json writes NaN and Infinity as pytest-benchmark does
    assert cli(["accept", str(result), "--baselines", str(store)]) == 2
    err = capsys.readouterr().err
    assert f"{result}: benchmark test_latency[tinylinear-numpy-cpu-fp32-b1]: " in err
    assert IMPOSSIBLE[damage][1] in err and "refusing to store it" in err
    assert not list(store.rglob("*.json"))  # nothing entered the history
    # the same run from a pytest session (--accept-baseline) is refused by the same check
    with pytest.raises(baselines.BaselineError, match="this run: benchmark test_latency"):
        baselines.accept(broken_run(damage), store)


@pytest.mark.parametrize("damage", ["median-nan", "median-zero", "median-negative", "round-zero"])
def test_compare_and_report_name_a_stored_run_with_impossible_timings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    from infermatrix.cli import main as cli

    store = tmp_path / "baselines"
    good = baselines.accept(timed_run({"tinymlp": 0.002, "tinylinear": 0.001}), store)
    # a file stored before accept checked timings (or edited since): written past accept
    stored = good.parent / "20200101T000000.json"
    stored.write_text(json.dumps(broken_run(damage)))
    current = tmp_path / "current.json"
    current.write_text(json.dumps(timed_run({"tinymlp": 0.0021, "tinylinear": 0.001})))

    assert cli(["compare", str(stored), str(good), str(current)]) == 2
    err = capsys.readouterr().err
    assert f"{stored}: benchmark test_latency[tinylinear-numpy-cpu-fp32-b1]: {IMPOSSIBLE[damage][1]}" in err
    assert "Traceback" not in err

    assert cli(["report", str(current), "--baseline", str(store), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"error: {stored}: benchmark test_latency[tinylinear-numpy-cpu-fp32-b1]: " in err
    assert f"move it out of {stored.parent}" in err


@pytest.mark.parametrize("damage", ["nan", "zero", "negative"])
def test_a_stored_run_with_impossible_timings_stops_the_compare_and_the_new_run_is_still_accepted(
    suite: pytest.Pytester, tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "baselines"
    common = ["-k", "tinymlp-numpy-cpu-fp32", f"--infermatrix-baselines={store}", *FAST]
    assert suite.runpytest(*common, "--accept-baseline").ret == 0
    (stored,) = store.glob("*/*.json")
    run = json.loads(stored.read_text())
    run["benchmarks"][0]["stats"]["median"] = {"nan": float("nan"), "zero": 0, "negative": -1.5}[damage]
    stored.write_text(json.dumps(run))
    before = stored.read_bytes()
    result = suite.runpytest(*common, "--benchmark-compare", "--accept-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*cannot compare: {stored}: benchmark test_latency[[]tinymlp-numpy-cpu-fp32-b1]: "
                                 "stats.median = *move it out of*", "*accepted this run as a baseline: *"])
    assert "Traceback" not in result.stdout.str()
    assert stored.read_bytes() == before
    assert len(list(stored.parent.glob("*.json"))) == 2  # the new run is stored, as documented


def test_accept_baseline_refuses_a_new_run_with_impossible_timings(suite: pytest.Pytester, tmp_path: Path) -> None:
    # a plugin that spoils the run's JSON: the run itself is what must not enter the history
    suite.makeconftest("""
        pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend"]

        def pytest_benchmark_update_json(config, benchmarks, output_json):
            for bench in output_json["benchmarks"]:
                bench["stats"]["median"] = float("nan")
    """)
    store = tmp_path / "baselines"
    result = suite.runpytest("-k", "tinymlp-numpy-cpu-fp32", f"--infermatrix-baselines={store}",
                             "--accept-baseline", *FAST)
    result.stdout.fnmatch_lines(["*not accepted: this run: benchmark test_latency[[]tinymlp-numpy-cpu-fp32-b1]: "
                                 "stats.median = nan*refusing to store it*"])
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert not list(store.rglob("*.json"))


# ---- results are never stale (issue #20) --------------------------------------------------------


def test_when_every_case_fails_the_json_is_still_written_with_the_failures(
    faulty: pytest.Pytester, tmp_path: Path
) -> None:
    from infermatrix.cli import main as cli

    out = tmp_path / "out.json"
    out.write_text(json.dumps(timed_run({"tinymlp": 0.002})))  # the previous run's file
    result = faulty.runpytest("--backends=nan", "--precisions=fp32", "--devices=cpu", "--models=tinymlp",
                              f"--benchmark-json={out}", *QUICK)
    assert result.parseoutcomes().get("failed") == 2 and "passed" not in result.parseoutcomes()
    result.stdout.fnmatch_lines([f"*no case was timed; wrote {out} all the same (no benchmarks, 2 failed case(s)*"])
    written = json.loads(out.read_text())
    assert written["benchmarks"] == []
    assert sorted(written["infermatrix"]["failed"]) == ["test_latency[tinymlp-nan-cpu-fp32-b1]",
                                                         "test_throughput[tinymlp-nan-cpu-fp32-b1]"]
    assert "NaN or Inf" in written["infermatrix"]["failed"]["test_latency[tinymlp-nan-cpu-fp32-b1]"]
    assert written["machine_info"]["infermatrix"]["backends"]["nan"]  # a complete result file
    # a report step that runs anyway shows the failures, not an earlier run's numbers, and fails
    # the night: a failed case is a regression (docs/verdicts.md), judged against baselines or not
    assert cli(["report", str(out), "--out", str(tmp_path / "report")]) == 1
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "test_latency[tinymlp-nan-cpu-fp32-b1]" in summary and "0.002" not in summary


# ---- every option value checked at configure time (issue #20) -----------------------------------


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--threads", "0", "--threads 0: give a positive number of threads"),
    ("--threads", "-1", "--threads -1: give a positive number of threads"),
    ("--repeats", "-2", "--repeats -2: give 0 (off) or a number of fresh processes"),
    ("--max-time", "-1", "--max-time -1: give a number of seconds above 0"),
    ("--max-time", "nan", "--max-time nan: give a number of seconds above 0"),
    ("--min-time", "-1", "--min-time -1: give a number of seconds, 0 or more"),
    ("--min-rounds", "0", "--min-rounds 0: give 3 rounds or more*"),
    ("--target-precision", "2", "--target-precision 2: give a fraction between 0 and 1*"),
    ("--target-precision", "0", "--target-precision 0: give a fraction between 0 and 1*"),
    ("--throughput-time", "0", "--throughput-time 0: give a number of seconds above 0"),
    ("--case-timeout", "0", "--case-timeout 0: give a number of seconds above 0"),
    ("--accuracy-samples", "4", "--accuracy-samples 4: give 8 samples or more"),
], ids=lambda v: v if not v.startswith("--") or " " not in v else "")
def test_a_nonsense_option_value_is_a_usage_error_naming_the_option(
    suite: pytest.Pytester, option: str, value: str, message: str
) -> None:
    result = suite.runpytest(option, value, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "_s=" not in result.stderr.str()  # no dataclass field names the user never typed


def test_a_time_budget_below_the_minimum_time_names_both_options(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--min-time=2", "--max-time=1", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--max-time 1 is below --min-time 2: give a time budget of at least --min-time*"])


@pytest.mark.parametrize("place", ["file", "under-a-file", "read-only"])
def test_a_cache_that_cannot_be_a_writable_directory_is_a_usage_error_naming_it(
    suite: pytest.Pytester, tmp_path: Path, place: str
) -> None:
    target = tmp_path / "cache"
    cleanup: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if place == "file":
        target.write_text("not a directory\n")
        message = f"*--infermatrix-cache {target}: a file, not a directory*"
    elif place == "under-a-file":
        (tmp_path / "plain").write_text("")
        target = tmp_path / "plain" / "cache"
        message = f"*--infermatrix-cache {target}: {tmp_path / 'plain'} is a file*"
    else:
        message = f"*--infermatrix-cache {target}: the cache directory cannot be written; give a writable directory*"
        if os.geteuid() == 0:  # root writes anywhere a permission allows: a really read-only filesystem
            cleanup = tmpfs(target, "1m")
    with cleanup:
        if place == "read-only":
            if os.geteuid() == 0:
                subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
            else:
                target.mkdir()
                target.chmod(0o555)
        result = suite.runpytest(f"--infermatrix-cache={target}", "--collect-only")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])


TORCHY = """
import dataclasses

import pytest
from numpy_backend import MODELS

from infermatrix.api.types import FORM_TORCH


def build():
    from torch import nn

    return nn.Linear(4, 4)


@pytest.hookimpl
def pytest_infermatrix_models():
    # the numpy test model with a torch form too: --model-weights reads a torch file for it
    return [dataclasses.replace(MODELS[0], name="tinytorch", forms={**MODELS[0].forms, FORM_TORCH: build})]
"""


@pytest.fixture
def torchy(suite: pytest.Pytester) -> pytest.Pytester:
    suite.makepyfile(torchy=TORCHY)
    suite.makeconftest('pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend", "torchy"]\n')
    return suite


@pytest.mark.parametrize("damage", ["readme", "truncated", "folder", "passwd"])
def test_a_weights_file_torch_cannot_read_is_a_usage_error_naming_it(
    torchy: pytest.Pytester, tmp_path: Path, damage: str
) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    if damage == "readme":
        path.write_text("this is a README, not weights\n")
    elif damage == "truncated":
        torch.save(torch.nn.Linear(4, 4).state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "folder":
        path.mkdir()
    else:
        path = Path("/etc/passwd")
    result = torchy.runpytest(f"--model-weights=tinytorch={path}", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = "is not a file" if damage == "folder" else "is not a torch file"
    result.stderr.fnmatch_lines([f"*--model-weights tinytorch: {path} {expected}*"])
    assert "Traceback" not in result.stderr.str()


def test_a_weights_file_that_is_not_a_state_dict_fails_its_case_without_a_traceback(
    torchy: pytest.Pytester, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    torch.save([1, 2, 3], path)  # a torch file, but only torch can tell it holds no state_dict
    out = tmp_path / "out.json"
    result = torchy.runpytest(f"--model-weights=tinytorch={path}", "--models=tinytorch", "--precisions=fp32",
                              "--devices=cpu", "--batch-sizes=1", f"--benchmark-json={out}", *FAST)
    assert result.parseoutcomes().get("failed") == 1 and "errors" not in result.parseoutcomes()
    result.stdout.fnmatch_lines([f"*{path}: holds a list, not a state_dict; save one with torch.save(*"])
    assert "Traceback" not in result.stdout.str() and "reference.py" not in result.stdout.str()
    assert list(json.loads(out.read_text())["infermatrix"]["failed"]) == ["test_latency[tinytorch-numpy-cpu-fp32-b1]"]


@pytest.mark.parametrize("value", ["inf", "nan", "-5"])
def test_an_injected_slowdown_must_be_a_finite_share(suite: pytest.Pytester, value: str) -> None:
    result = suite.runpytest(f"--inject-slowdown=numpy={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--inject-slowdown*expected BACKEND=PERCENT*"])
