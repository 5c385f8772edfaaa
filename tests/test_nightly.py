"""The nightly (issue #16): environment locks, reference environments, paired mode, the results
store and one night's pipeline and status.

Nothing here times anything that is judged for real: environments are stood in for by a runner
that writes result files of known medians (and exit statuses), pip by a fake where the test is
about the manager's logic (one test builds a real venv with nothing to download), and the paired
tests use the numpy test backend in real A/B worker processes with a few short trials.
"""

from __future__ import annotations

import dataclasses
import ensurepip
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FAST

from infermatrix.cli import main as cli
from infermatrix.nightly import lock, night, paired, refenv
from infermatrix.nightly.store import ResultsStore, StoreError
from infermatrix.results import baselines

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
MACHINE = {"infermatrix": {"cpu_model": "Test CPU", "cpu_physical_cores": 2, "gpus": [], "os": "Linux",
                           "arch": "x86_64"}}
#: the numpy test backend's cases: real ones, so the A/B workers can run them
MLP, LINEAR = "tinymlp-numpy-cpu-fp32-b4", "tinylinear-numpy-cpu-fp32-b2"
COMMIT = "a" * 40


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def make_repo(path: Path, files: Mapping[str, str] | None = None) -> str:
    """A git repository with one commit on main; returns the commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "project\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "start")
    return git(path, "rev-parse", "HEAD")


def fake_checkout(root: Path) -> Path:
    """A checkout whose plugin list names only the numpy test backend (as in test_ab.py)."""
    (root / "plugins").mkdir(parents=True, exist_ok=True)
    (root / "plugins" / "__init__.py").write_text('BUILTIN_PLUGINS = ("numpy_backend",)\n')
    return root


def a_lock(name: str = "alpha", cases: Sequence[str] = (), commit: str | None = COMMIT,
           packages: Sequence[tuple[str, str]] = (("numpy", np.__version__),)) -> lock.EnvLock:
    return lock.EnvLock(name=name, python=platform.python_version(), implementation=sys.implementation.name,
                        platform=f"{sys.platform}-{platform.machine()}", executable=sys.executable,
                        packages=tuple(packages), commit=commit, dirty=False, cases=tuple(cases))


def a_run(medians: Mapping[str, float], env: str = "alpha", failed: Mapping[str, str] | None = None,
          commit: str | None = COMMIT) -> dict[str, Any]:
    """One environment's result JSON: latency benchmarks of known medians (seconds) and its lock."""
    cases = [*medians, *(name.split("[")[-1].rstrip("]") for name in failed or {})]
    return {
        "machine_info": MACHINE, "datetime": "2026-11-24T02:17:00",
        "benchmarks": [{"name": f"test_latency[{case}]",
                        "stats": {"median": m, "mean": m, "min": m, "data": [m, m]},
                        "extra_info": {"case_id": case, "accuracy": {"cosine_similarity": 0.999}}}
                       for case, m in medians.items()],
        "infermatrix": {"failed": dict(failed or {}), "environment": a_lock(env, cases, commit).as_dict()},
    }


# ---- the lock ----------------------------------------------------------------------------------


def test_a_lock_round_trips_and_its_key_is_what_decides_the_environment() -> None:
    base = a_lock(cases=[MLP])
    again = lock.EnvLock.from_dict(json.loads(json.dumps(base.as_dict())))
    assert again == base and again.key == base.key
    # the name, the interpreter's path and the cases do not change what would be installed
    assert dataclasses.replace(base, name="beta", executable="/elsewhere/python", cases=()).key == base.key
    assert dataclasses.replace(base, commit="b" * 40).key != base.key
    assert dataclasses.replace(base, packages=(("numpy", "0.0.1"),)).key != base.key
    assert base.requirements() == [f"numpy=={np.__version__}"]
    for broken, says in [({**base.as_dict(), "packages": {"numpy": ""}}, "exact version"),
                         ({**base.as_dict(), "commit": "HEAD; rm -rf /"}, "not a git commit id"),
                         ({**base.as_dict(), "lock_version": 99}, "lock_version 99"),
                         ({"lock_version": 1}, "missing name")]:
        with pytest.raises(lock.LockError, match=says):
            lock.EnvLock.from_dict(broken)


def test_the_lock_of_this_environment_has_exact_versions_and_the_commit(tmp_path: Path) -> None:
    commit = make_repo(tmp_path / "repo")
    found = lock.capture(tmp_path / "repo", [MLP])
    packages = dict(found.packages)
    assert packages["numpy"] == np.__version__ and packages["pytest"] == pytest.__version__
    assert "infermatrix" not in packages  # the project comes from the commit
    assert found.commit == commit and not found.dirty and found.cases == (MLP,)
    (tmp_path / "repo" / "README.md").write_text("changed\n")
    assert lock.capture(tmp_path / "repo").dirty
    assert lock.capture(tmp_path / "not-a-checkout").commit is None


def test_a_merged_run_keeps_one_lock_per_environment(tmp_path: Path) -> None:
    from infermatrix.report.data import merge_runs

    paths = []
    for env, case in (("alpha", MLP), ("beta", LINEAR)):
        paths.append(tmp_path / f"{env}.json")
        paths[-1].write_text(json.dumps(a_run({case: 0.001}, env)))
    merged = merge_runs(paths)
    locks = lock.environments(merged)
    assert set(locks) == {"alpha", "beta"} and locks["beta"].cases == (LINEAR,)
    # accepted, the merged run still says how to re-create each environment
    stored = baselines.accept(merged, tmp_path / "baselines")
    assert set(lock.environments(baselines.load_run(stored))) == {"alpha", "beta"}


def test_a_pytest_run_and_its_accepted_baseline_record_the_environment(suite: pytest.Pytester,
                                                                       tmp_path: Path) -> None:
    commit = make_repo(suite.path, {"marker.txt": "x\n"})
    out = tmp_path / "run.json"
    result = suite.runpytest(*FAST, "--precisions=fp32", "--devices=cpu", f"--benchmark-json={out}",
                             "--accept-baseline", f"--infermatrix-baselines={tmp_path / 'baselines'}")
    assert result.ret == 0, result.stdout.str()[-2000:]
    recorded = json.loads(out.read_text())["infermatrix"]["environment"]
    assert recorded["commit"] == commit and recorded["packages"]["numpy"] == np.__version__
    assert recorded["executable"] == sys.executable
    assert MLP in recorded["cases"] and LINEAR in recorded["cases"]
    (stored,) = (tmp_path / "baselines").rglob("*.json")
    assert lock.environments(json.loads(stored.read_text()))["local"].commit == commit


# ---- the reference environment ---------------------------------------------------------------


class FakeTools:
    """venv and pip as a test stands in for them (git is real): what was asked, and what they answer."""

    def __init__(self, pip_rc: int = 0, installed: Mapping[str, str] | None = None,
                 import_error: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.pip_rc, self.import_error = pip_rc, import_error
        self.installed = dict(installed) if installed is not None else {"numpy": np.__version__}

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> refenv.CommandResult:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        if argv[0] == "git":
            return refenv.run_command(argv, env, cwd)
        if argv[1:3] == ["-m", "venv"]:
            (Path(argv[3]) / "bin").mkdir(parents=True)
            (Path(argv[3]) / "bin" / "python").write_text("")
            return refenv.CommandResult(0, "")
        if argv[1:4] == ["-m", "pip", "install"]:
            return refenv.CommandResult(self.pip_rc, "ERROR: No matching distribution found for numpy==0.0.1"
                                        if self.pip_rc else "")
        assert argv[1] == "-c", argv
        return refenv.CommandResult(0, json.dumps({"packages": self.installed, "import_error": self.import_error}))

    def asked(self, word: str) -> list[list[str]]:
        return [c for c in self.calls if word in " ".join(c)]


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, str]:
    """A repository holding a project named infermatrix, and its commit."""
    repo = tmp_path / "project"
    return repo, make_repo(repo, {"infermatrix/__init__.py": "VERSION = 'reference'\n"})


def test_a_reference_environment_is_built_once_from_the_lock_and_then_reused(tmp_path: Path,
                                                                              project: tuple[Path, str]) -> None:
    repo, commit = project
    tools = FakeTools()
    wanted = a_lock(commit=commit)
    env = refenv.ensure(wanted, repo, tmp_path / "cache", runner=tools, pip_args=["--no-index"])
    assert env.path == tmp_path / "cache" / "reference-envs" / wanted.key and not env.reused
    assert (env.rootdir / "infermatrix" / "__init__.py").read_text() == "VERSION = 'reference'\n"  # at the commit
    (install,) = tools.asked("pip install")
    assert "--no-deps" in install and "--no-index" in install  # the lock is the whole closure
    assert json.loads((env.path / "lock.json").read_text())["key"] == wanted.key
    assert not [p for p in env.path.parent.iterdir() if p.name.startswith(".build-")]
    # the same lock again: nothing is run, the complete environment is reused
    again = FakeTools()
    reused = refenv.ensure(dataclasses.replace(wanted, name="beta", cases=(MLP,)), repo, tmp_path / "cache",
                           runner=again)
    assert reused.reused and reused.path == env.path and again.calls == []


def test_a_failed_build_names_the_step_and_leaves_nothing_that_could_be_reused(tmp_path: Path,
                                                                               project: tuple[Path, str]) -> None:
    repo, commit = project
    cache = tmp_path / "cache"
    with pytest.raises(refenv.RefEnvError, match=r"(?s)installing the locked versions failed \(exit 1\).*"
                                                 r"No matching distribution found for numpy==0\.0\.1"):
        refenv.ensure(a_lock(commit=commit, packages=[("numpy", "0.0.1")]), repo, cache, runner=FakeTools(pip_rc=1))
    with pytest.raises(refenv.RefEnvError, match=r"lacks numpy==.* \(found 0\.0\.2\)"):
        refenv.ensure(a_lock(commit=commit), repo, cache, runner=FakeTools(installed={"numpy": "0.0.2"}))
    with pytest.raises(refenv.RefEnvError, match="does not import there: ImportError: nope"):
        refenv.ensure(a_lock(commit=commit), repo, cache, runner=FakeTools(import_error="ImportError: nope"))
    with pytest.raises(refenv.RefEnvError, match=f"finding the commit failed.*{'b' * 12}"):
        refenv.ensure(a_lock(commit="b" * 40), repo, cache, runner=FakeTools())
    with pytest.raises(refenv.RefEnvError, match="recorded no commit"):
        refenv.ensure(a_lock(commit=None), repo, cache, runner=FakeTools())
    with pytest.raises(refenv.RefEnvError, match=r"ran on Python 3\.99\.0, and no python3\.99 is on PATH"):
        refenv.ensure(dataclasses.replace(a_lock(commit=commit), python="3.99.0"), repo, cache, runner=FakeTools())
    assert [p.name for p in (cache / "reference-envs").iterdir()] == []  # no half-built environment anywhere


def test_a_half_built_environment_is_never_reused(tmp_path: Path, project: tuple[Path, str]) -> None:
    repo, commit = project
    wanted = a_lock(commit=commit)
    root = tmp_path / "cache" / "reference-envs"
    # a build killed halfway (its temporary directory), and a directory under the final name that
    # no complete build made (someone copied half of one there)
    (root / f".build-{wanted.key}-dead" / "venv" / "bin").mkdir(parents=True)
    (root / wanted.key / "venv").mkdir(parents=True)
    tools = FakeTools()
    env = refenv.ensure(wanted, repo, tmp_path / "cache", runner=tools)
    assert not env.reused and tools.asked("pip install") and (env.path / "lock.json").is_file()
    assert any(p.name.startswith(f".broken-{wanted.key}") for p in root.iterdir())


def test_only_the_most_recently_used_reference_environments_are_kept(tmp_path: Path,
                                                                     project: tuple[Path, str]) -> None:
    repo, commit = project
    made = []
    for version in ("1.0", "1.1", "1.2"):
        made.append(refenv.ensure(a_lock(commit=commit, packages=[("numpy", version)]), repo, tmp_path / "cache",
                                  runner=FakeTools(installed={"numpy": version}), keep=2))
        os.utime(made[-1].path / "last-used", (1000 + len(made), 1000 + len(made)))
    kept = sorted(p.name for p in (tmp_path / "cache" / "reference-envs").iterdir())
    assert kept == sorted([made[1].lock.key, made[2].lock.key])


def test_a_real_reference_environment_from_a_lock_with_nothing_to_download(tmp_path: Path,
                                                                           project: tuple[Path, str]) -> None:
    """venv, git archive and pip for real: the lock holds only the pip a new venv already has, and
    pip may not reach an index — the environment is checked, renamed into place and still runs."""
    repo, commit = project
    wanted = a_lock(commit=commit, packages=[("pip", ensurepip.version())])
    env = refenv.ensure(wanted, repo, tmp_path / "cache", pip_args=["--no-index"])
    probe = subprocess.run([str(env.python), "-c", "import sys, infermatrix; print(sys.prefix, infermatrix.VERSION)"],
                           env={**os.environ, "PYTHONPATH": str(env.rootdir)}, cwd=env.rootdir, capture_output=True,
                           text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(env.path / "venv"), "reference"]  # the renamed venv is whole
    assert refenv.ensure(wanted, repo, tmp_path / "cache").reused


# ---- the results store -------------------------------------------------------------------------


def a_store(tmp_path: Path, remote: str | None = None, name: str = "repo") -> ResultsStore:
    repo = tmp_path / name
    if not repo.exists():
        make_repo(repo)
    return ResultsStore(repo, repo / ".infermatrix-results", remote=remote)


def test_the_store_is_a_results_branch_and_a_night_is_one_commit(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    store.open()
    assert git(store.repo, "log", "--format=%s", "results") == "results store: nights and accepted baselines"
    assert git(store.repo, "branch", "--show-current") == "main"  # the checkout itself is untouched
    run = a_run({MLP: 0.001})
    commit, accepted = store.record("20261124T021700Z", {"alpha.json": json.dumps(run).encode()},
                                    {"passed": True, "reasons": []}, run)
    assert accepted is not None and accepted.parent.name == baselines.fingerprint(MACHINE)
    assert git(store.repo, "rev-parse", "results") == commit
    files = git(store.repo, "ls-tree", "-r", "--name-only", "results").splitlines()
    assert {"README.md", "nights/20261124T021700Z/alpha.json", "nights/20261124T021700Z/status.json",
            f"baselines/{baselines.fingerprint(MACHINE)}/{accepted.name}"} == set(files)
    assert len(store.history(baselines.fingerprint(MACHINE))) == 1


def test_a_night_that_fails_to_store_leaves_the_branch_as_it_was(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    store.open()
    before = git(store.repo, "rev-parse", "results")
    broken = a_run({MLP: 0.001})
    broken["benchmarks"][0]["stats"]["median"] = float("nan")  # refused as a baseline
    with pytest.raises(StoreError, match="was not stored .*stats.median = nan.* unchanged at"):
        store.record("20261124T021700Z", {"alpha.json": b"{}"}, {"passed": True}, broken)
    assert git(store.repo, "rev-parse", "results") == before
    assert git(store.path, "status", "--porcelain", "--ignored") == ""  # nothing half-written left behind


def test_what_a_killed_night_left_uncommitted_is_gone_when_the_next_night_opens(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    store.open()
    half = store.nights_dir / ".20261124T021700Z.tmp"
    half.mkdir(parents=True)
    (half / "alpha.json").write_text('{"trunc')
    (store.path / "README.md").write_text("scribbled\n")
    store.open()
    assert not half.exists() and "scribbled" not in (store.path / "README.md").read_text()


def test_the_next_night_on_another_runner_finds_the_history_through_the_remote(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    first = a_store(tmp_path, "origin", "runner1")
    git(first.repo, "remote", "add", "origin", str(remote))
    first.open()  # the remote has no results branch yet: a new one
    run = a_run({MLP: 0.001})
    first.record("20261124T021700Z", {"alpha.json": json.dumps(run).encode()}, {"passed": True}, run)
    first.push()
    second = a_store(tmp_path, "origin", "runner2")
    git(second.repo, "remote", "add", "origin", str(remote))
    second.open()
    assert len(second.history(baselines.fingerprint(MACHINE))) == 1
    second.record("20261125T021700Z", {"alpha.json": json.dumps(run).encode()}, {"passed": True}, run)
    second.push()
    first.open()  # behind the remote now: brought up to it
    assert len(first.history(baselines.fingerprint(MACHINE))) == 2


# ---- one night ---------------------------------------------------------------------------------


class FakeEnvironments:
    """Benchmark environments as the night's runner sees them: each writes its result file (or
    not) and answers an exit status; the order they ran in is kept."""

    def __init__(self, script: Mapping[str, tuple[int, dict[str, Any] | None]]) -> None:
        self.script = dict(script)
        self.ran: list[str] = []
        self.args: list[list[str]] = []

    def __call__(self, name: str, pytest_args: Sequence[str], env: Mapping[str, str]) -> int:
        self.ran.append(name)
        self.args.append(list(pytest_args))
        if name not in self.script:
            raise FileNotFoundError(2, "No such file or directory", "tox")
        code, run = self.script[name]
        if run is not None:
            Path(env["INFERMATRIX_RESULTS"], f"{name}.json").write_text(json.dumps(run))
        return code


def a_night(store: ResultsStore, tmp_path: Path, envs: Sequence[str], **options: Any) -> night.NightConfig:
    return night.NightConfig(repo=store.repo, envs=list(envs), pytest_args=["--max-time=0.05"],
                             results_dir=tmp_path / "results", report_dir=tmp_path / "report", store=store,
                             cache_root=tmp_path / "cache", **options)


def status_of(store: ResultsStore) -> dict[str, Any]:
    """The newest night's status.json as committed on the results branch."""
    names = git(store.repo, "ls-tree", "-r", "--name-only", "results", "nights").splitlines()
    newest = sorted(n for n in names if n.endswith("/status.json"))[-1]
    return dict(json.loads(git(store.repo, "show", f"results:{newest}")))


def accepted(store: ResultsStore) -> int:
    return len(git(store.repo, "ls-tree", "-r", "--name-only", "results", "baselines").split())


def test_every_environment_runs_and_a_failed_one_fails_the_night_which_is_stored_but_not_accepted(
        tmp_path: Path) -> None:
    store = a_store(tmp_path)
    envs = FakeEnvironments({"export": (0, None), "alpha": (3, None), "beta": (0, a_run({LINEAR: 0.001}, "beta"))})
    result = night.run_night(a_night(store, tmp_path, ["alpha", "gamma", "beta"], stamp="n1"), envs, log=print)
    assert envs.ran == ["export", "alpha", "gamma", "beta"]  # one after another, none skipped after a failure
    assert result.exit_code == 1 and not result.status.passed
    assert result.status.failed_envs == ("alpha: exited 3 (internal error)",
                                         "gamma: could not be run: FileNotFoundError: [Errno 2] No such file or "
                                         "directory: 'tox'")
    recorded = status_of(store)
    assert recorded["passed"] is False and recorded["environments"][3]["name"] == "beta"
    assert "nights/n1/beta.json" in git(store.repo, "ls-tree", "-r", "--name-only", "results")  # for the record
    assert accepted(store) == 0  # a failed night never becomes the baseline
    assert "FAILED" in (tmp_path / "report" / "night.md").read_text().splitlines()[0]


@pytest.mark.parametrize(("code", "run", "failed"), [
    (1, a_run({"m9-numpy-cpu-fp32-b1": 0.001}, "beta", failed={f"test_latency[{LINEAR}]": "accuracy check failed"}),
     True),
    (0, None, True),  # exit 0 and no results: something went wrong that pytest did not count
    (4, None, True),  # a usage error
    (5, None, False),  # pytest's "no tests collected": every case skips on this machine
    (0, {"machine_info": MACHINE, "benchmarks": "truncated"}, True),
])
def test_which_environment_outcomes_fail_the_night(tmp_path: Path, code: int, run: dict[str, Any] | None,
                                                   failed: bool) -> None:
    store = a_store(tmp_path)
    envs = FakeEnvironments({"export": (0, None), "alpha": (0, a_run({MLP: 0.001, "m1-numpy-cpu-fp32-b1": 0.002})),
                             "beta": (code, run)})
    result = night.run_night(a_night(store, tmp_path, ["alpha", "beta"]), envs, log=print)
    assert result.status.passed is not failed and result.exit_code == int(failed)
    assert accepted(store) == int(not failed)
    if code == 1:
        assert result.status.failed_cases == (f"test_latency[{LINEAR}]",)


def test_a_failed_cache_fill_fails_the_night(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    result = night.run_night(a_night(store, tmp_path, ["alpha"]),
                             FakeEnvironments({"export": (2, None), "alpha": (0, a_run({MLP: 0.001}))}), log=print)
    assert result.status.failed_envs == ("export: exited 2 (interrupted)",) and accepted(store) == 0


def noisy(rng: np.random.Generator, cases: int = 8, slow: Mapping[int, float] | None = None) -> dict[str, float]:
    return {f"m{i}-numpy-cpu-fp32-b1": 0.001 * (i + 1) * float(np.exp(rng.normal(0, 0.02))) * (slow or {}).get(i, 1)
            for i in range(cases)}


def test_nights_without_regressions_grow_the_history_and_a_regression_is_never_accepted(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    rng = np.random.default_rng(0)
    for n in range(4):
        result = night.run_night(a_night(store, tmp_path, ["alpha"], stamp=f"n{n}", paired=False),
                                 FakeEnvironments({"export": (0, None), "alpha": (0, a_run(noisy(rng)))}), log=print)
        assert result.exit_code == 0, result.status.reasons()
        assert accepted(store) == n + 1  # accepted automatically: the next night finds it
    slowed = night.run_night(a_night(store, tmp_path, ["alpha"], stamp="n4", paired=False),
                             FakeEnvironments({"export": (0, None), "alpha": (0, a_run(noisy(rng, slow={3: 3.0})))}),
                             log=print)
    assert slowed.exit_code == 1 and accepted(store) == 4
    (regressed,) = slowed.status.regressed
    assert regressed.startswith("test_latency[m3-numpy-cpu-fp32-b1] (history: ")
    assert status_of(store)["modes"]["test_latency[m3-numpy-cpu-fp32-b1]"] == "history"
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "regressed" in summary and "test_latency[m3-numpy-cpu-fp32-b1]" in summary


def test_the_nightly_command_lists_the_environments_tox_selects(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["nightly", "--repo", str(REPO), "--labels", "cpu-backends", "--list-envs"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"torch", "onnxruntime", "openvino", "tensorflow", "plaidml"} <= set(listed) and "cuda" not in listed


# ---- paired mode -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StandInEnv:
    """A reference environment without a build: this interpreter and a checkout of the numpy test
    backend (what ``refenv.ensure`` hands the paired comparison)."""

    lock: lock.EnvLock
    path: Path
    python: str = sys.executable
    reused: bool = True
    notes: tuple[str, ...] = ()

    @property
    def rootdir(self) -> Path:
        return self.path


@pytest.fixture
def numpy_sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stand-in ``refenv.ensure`` (its reference checkout names only the numpy backend), and the
    test backend on every worker's path."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    reference = fake_checkout(tmp_path / "reference-checkout")
    asked: list[lock.EnvLock] = []

    def ensure(wanted: lock.EnvLock, repo: Path, cache_root: Path, **options: Any) -> StandInEnv:
        asked.append(wanted)
        return StandInEnv(wanted, reference)

    ensure.asked = asked  # type: ignore[attr-defined]
    return ensure


def test_paired_mode_finds_a_slowdown_through_real_worker_processes(tmp_path: Path, numpy_sides: Any) -> None:
    current = fake_checkout(tmp_path / "current")
    reference_run, current_run = a_run({MLP: 0.001, LINEAR: 0.001}), a_run({MLP: 0.001, LINEAR: 0.001})
    outcome = paired.run_paired(reference_run, current_run, current, tmp_path / "cache", trials=4, calls=50,
                                slowdowns={"numpy": 400}, ensure_env=numpy_sides, log=print)
    assert [w.commit for w in numpy_sides.asked] == [COMMIT]
    by_case = {v.key: v for v in outcome.verdicts}
    assert set(by_case) == {f"test_latency[{MLP}]", f"test_latency[{LINEAR}]"}
    for verdict in by_case.values():
        assert verdict.verdict == "regressed" and verdict.ratio is not None and verdict.ratio > 2
        assert "than the reference" in verdict.reason
    saved = tmp_path / "paired.json"
    outcome.save(saved)
    again = paired.PairedOutcome.from_dict(json.loads(saved.read_text()))
    assert {v.key: v.verdict for v in again.verdicts} == {k: v.verdict for k, v in by_case.items()}
    assert all(entry["mode"] == "paired" for entry in json.loads(saved.read_text())["verdicts"].values())


def test_cases_paired_mode_cannot_judge_fall_back_to_history_mode_and_say_why(tmp_path: Path) -> None:
    def cannot(wanted: lock.EnvLock, repo: Path, cache_root: Path, **options: Any) -> Any:
        raise refenv.RefEnvError("reference environment alpha: installing the locked versions failed (exit 1)")

    reference_run = a_run({MLP: 0.001})
    current_run = a_run({MLP: 0.001, LINEAR: 0.002})
    outcome = paired.run_paired(reference_run, current_run, tmp_path, tmp_path / "cache", ensure_env=cannot,
                                log=print)
    assert outcome.verdicts == []
    assert "installing the locked versions failed" in outcome.not_judged[f"test_latency[{MLP}]"]
    assert "recorded no environment for this case" in outcome.not_judged[f"test_latency[{LINEAR}]"]
    history = [baselines_verdict(f"test_latency[{MLP}]", "unchanged")]
    (row,) = paired.judged(history, outcome)
    assert row.mode == "history" and row.verdict.verdict == "unchanged"
    older = a_run({MLP: 0.001})
    del older["infermatrix"]["environment"]  # accepted before locks were recorded
    _, why = paired.plan(older, current_run)
    assert "accepted before locks were recorded" in why[f"test_latency[{MLP}]"]


def baselines_verdict(key: str, verdict: str) -> Any:
    from infermatrix.results.verdicts import Verdict

    return Verdict(key, verdict, 1.0, (0.9, 1.1), 0.5, 0.5, 0.3, 5, 0.0)


def test_a_night_judged_in_paired_mode_fails_on_a_paired_regression_and_says_which_mode_judged(
        tmp_path: Path, numpy_sides: Any) -> None:
    store = a_store(tmp_path)
    fake_checkout(store.repo)  # tonight's side runs from the checkout: the numpy backend only
    cases = {MLP: 0.001, LINEAR: 0.001}
    first = night.run_night(a_night(store, tmp_path, ["alpha"], stamp="n1"),
                            FakeEnvironments({"export": (0, None), "alpha": (0, a_run(cases))}), log=print)
    assert first.exit_code == 0 and first.paired is None  # nothing to pair against yet
    envs = FakeEnvironments({"export": (0, None), "alpha": (0, a_run(cases))})
    slowed = night.run_night(a_night(store, tmp_path, ["alpha"], stamp="n2", trials=4, calls=50,
                                     slowdowns={"numpy": 400}),
                             envs, ensure_env=numpy_sides, log=print)
    assert envs.args[1][-1] == "--inject-slowdown=numpy=400"  # the environment's own pytest is slowed too
    # the timings in the result files are unchanged: history mode sees nothing, paired mode the slowdown
    modes = {row.key: (row.mode, row.verdict.verdict, row.history.verdict if row.history else None)
             for row in slowed.rows}
    assert modes == {f"test_latency[{MLP}]": ("paired", "regressed", "unchanged"),
                     f"test_latency[{LINEAR}]": ("paired", "regressed", "unchanged")}
    assert slowed.exit_code == 1 and accepted(store) == 1
    assert all("(paired: " in r for r in slowed.status.regressed)
    stored = status_of(store)
    assert set(stored["modes"].values()) == {"paired"} and stored["passed"] is False
    assert "paired.json" in git(store.repo, "ls-tree", "-r", "--name-only", "results", "nights/n2")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Verdicts by the mode that judged each case" in summary and "| regressed | paired |" in summary
    assert "**By the mode that judged each case: 2 regressed** (2 judged in paired mode" in summary.split("##")[0]
    assert "By the mode that judged each case: 2 regressed" in (tmp_path / "report" / "index.html").read_text()
    assert "| regressed | paired |" in (tmp_path / "report" / "night.md").read_text()


def test_benchmark_compare_paired_judges_a_pytest_run_on_the_paired_ratio(
        suite: pytest.Pytester, tmp_path: Path, numpy_sides: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    make_repo(suite.path, {"marker.txt": "x\n"})
    fake_checkout(suite.path)  # tonight's side: this checkout, whose plugin list names the numpy backend
    monkeypatch.setattr(refenv, "ensure", numpy_sides)
    store = f"--infermatrix-baselines={tmp_path / 'baselines'}"
    common = [*FAST, "--precisions=fp32", "--devices=cpu", store]
    assert suite.runpytest(*common, "--accept-baseline").ret == 0
    result = suite.runpytest(*common, "--benchmark-compare", "--benchmark-compare-paired", "--paired-trials=3",
                             "--paired-calls=30", "--inject-slowdown=numpy=400")
    output = result.stdout.str()
    assert result.ret == 1, output[-3000:]
    assert "infermatrix: paired mode against" in output and "ratio = tonight / reference" in output
    assert f"| regressed | paired | test_latency[{MLP}] |" in output
    assert [w.name for w in numpy_sides.asked] == ["local"]
    # without a lock in the newest baseline (accepted before locks were recorded) it says so
    (baseline,) = (tmp_path / "baselines").rglob("*.json")
    older = json.loads(baseline.read_text())
    del older["infermatrix"]["environment"]
    baseline.write_text(json.dumps(older))
    result = suite.runpytest(*common, "--benchmark-compare", "--benchmark-compare-paired")
    result.stdout.fnmatch_lines(["*paired mode not possible: *recorded no environment (accepted before locks were "
                                 "recorded)*history mode judged every case"])


def test_a_runner_without_a_git_identity_still_records_the_night(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = a_store(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    store.open()
    store.record("n1", {}, {"passed": False, "reasons": ["environment alpha: exited 3"]}, None)
    log = subprocess.run(["git", "log", "-1", "--format=%an|%s%n%b", "results"], cwd=store.repo, capture_output=True,
                         text=True).stdout
    assert log.startswith("infermatrix nightly|night n1: failed, not accepted")
    assert "- environment alpha: exited 3" in log


# ---- the workflow and make ---------------------------------------------------------------------


def workflow_jobs() -> dict[str, str]:
    """The nightly workflow's jobs, each as its text."""
    text = (REPO / ".github" / "workflows" / "nightly.yml").read_text()
    body = text[text.index("\njobs:\n") + len("\njobs:\n"):]
    parts = re.split(r"^  ([A-Za-z0-9_-]+):\n", body, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_workflow_times_every_environment_on_one_benchmark_runner_and_hosted_runners_judge_nothing() -> None:
    jobs = workflow_jobs()
    assert [name for name, job in jobs.items() if "infermatrix nightly --labels" in job] == ["bench"]
    bench = jobs["bench"]
    assert "runs-on: [self-hosted, linux, infermatrix-bench]" in bench
    assert re.search(r"concurrency:\n\s+group: infermatrix-bench\n\s+cancel-in-progress: false", bench)
    assert "strategy:" not in bench and "matrix:" not in bench  # not spread over runners
    assert "--remote origin" in bench and "contents: write" in bench and "fetch-depth: 0" in bench
    for name, job in jobs.items():
        if name != "bench":
            assert "self-hosted" not in job and "ubuntu-latest" in job
            for judging in ("--benchmark-compare", "--accept-baseline", "infermatrix report", "infermatrix nightly"):
                assert judging not in job, (name, judging)
    assert "infermatrix-bench" in (REPO / ".github" / "actionlint.yaml").read_text()


def test_make_nightly_and_tox_nightly_run_the_python_entry_point() -> None:
    make = subprocess.run(["make", "-n", "nightly", f"PY={sys.executable}", "NIGHTLY_ARGS=--models resnet18"],
                          cwd=REPO, capture_output=True, text=True)
    assert make.returncode == 0, make.stderr
    assert re.search(rf"{re.escape(sys.executable)} -m infermatrix nightly --labels cpu-backends(,gpu-backends)? +"
                     r"-- --models resnet18$", make.stdout, re.MULTILINE), make.stdout
    tox_ini = (REPO / "tox.ini").read_text()
    section = tox_ini[tox_ini.index("[testenv:nightly]"):tox_ini.index("[testenv:test]")]
    assert "python -m infermatrix nightly --repo {tox_root} --labels cpu-backends -- {posargs}" in section
    assert "\n    - " not in section  # no command whose failure is ignored


NIGHT_TOX_INI = """
[tox]
requires = tox>=4
[testenv]
skip_install = true
pass_env = *
allowlist_externals = {env:NIGHT_PYTHON}
[testenv:export]
commands = {env:NIGHT_PYTHON} -c "pass"
[testenv:good]
labels = cpu-backends
commands = {env:NIGHT_PYTHON} -m pytest test_latency.py -p no:cacheprovider --min-rounds=3 --min-time=0.01 \
    --max-time=0.05 --precisions=fp32 --benchmark-json={env:INFERMATRIX_RESULTS}{/}good.json {posargs}
[testenv:broken]
labels = cpu-backends
commands = {env:NIGHT_PYTHON} -c "import sys; sys.exit(3)"
"""


@pytest.mark.skipif(subprocess.run([sys.executable, "-m", "tox", "--version"], capture_output=True).returncode != 0,
                    reason="tox is not installed (pip install 'infermatrix[test]')")
def test_the_nightly_command_runs_real_tox_environments_and_its_exit_status_is_the_nights(tmp_path: Path) -> None:
    """``python -m infermatrix nightly`` as make and the workflow call it, on real tox environments
    of a small project (the numpy test backend; the environments reuse this interpreter)."""
    repo = fake_checkout(tmp_path / "project")
    (repo / "tox.ini").write_text(NIGHT_TOX_INI)
    (repo / "conftest.py").write_text('pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend"]\n')
    (repo / "test_latency.py").write_text((REPO / "suites" / "test_latency.py").read_text())
    (repo / ".gitignore").write_text(".tox/\nresults/\nreport/\n.infermatrix-results/\n.infermatrix-cache/\n")
    make_repo(repo, {"README.md": "project\n"})
    env = {**os.environ, "NIGHT_PYTHON": sys.executable, "INFERMATRIX_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}

    def nightly(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "infermatrix", "nightly", "--labels", "cpu-backends", *args],
                              cwd=repo, env=env, capture_output=True, text=True, timeout=600)

    failed = nightly()
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "| broken | 3 | FAILED: exited 3 (internal error) |" in failed.stdout
    assert "| good | 0 | ok |" in failed.stdout  # ran after the broken one
    assert "not accepted as a baseline" in failed.stdout
    passed = nightly("--envs", "good")
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    assert "accepted as baselines/" in passed.stdout
    log = git(repo, "log", "--format=%s", "refs/heads/results").splitlines()
    assert log[0].endswith(": passed, accepted as the newest baseline") and log[1].endswith(": failed, not accepted")
    (baseline,) = git(repo, "ls-tree", "-r", "--name-only", "refs/heads/results", "baselines").split()
    stored = json.loads(git(repo, "show", f"refs/heads/results:{baseline}"))
    good = lock.environments(stored)["good"]
    assert good.commit == git(repo, "rev-parse", "HEAD") and good.executable == sys.executable
    assert (repo / "report" / "index.html").is_file() and (repo / "report" / "night.md").is_file()


def test_a_fault_of_paired_mode_fails_the_night_but_the_night_is_still_stored(tmp_path: Path) -> None:
    store = a_store(tmp_path)
    envs = {"export": (0, None), "alpha": (0, a_run({MLP: 0.001}))}
    assert night.run_night(a_night(store, tmp_path, ["alpha"], stamp="n1"), FakeEnvironments(envs),
                           log=print).exit_code == 0

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    result = night.run_night(a_night(store, tmp_path, ["alpha"], stamp="n2"), FakeEnvironments(envs),
                             ensure_env=broken, log=print)
    assert result.exit_code == 1 and result.stored and accepted(store) == 1
    assert result.status.problems == ("paired mode failed: KeyError: 'a bug'",)
