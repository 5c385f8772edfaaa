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
import subprocess
import sys
import tarfile
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
