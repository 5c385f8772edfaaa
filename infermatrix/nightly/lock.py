"""An environment lock: what re-creates the environment a run came from.

Every run's JSON records one under ``infermatrix.environment`` (``pytest_benchmark_update_json``):
the exact version of every installed distribution (``pip freeze``'s facts, read through
``importlib.metadata``, no pip needed), the Python it ran on, the interpreter, the commit of
the checkout and whether it had uncommitted changes, and the case ids it ran. A nightly's
merged run keeps one lock per environment under ``infermatrix.environments`` (one per tox
environment), so an accepted baseline says how to re-create each backend's environment
(:mod:`infermatrix.nightly.refenv`) and which cases ran in it.

The project itself is not in the lock: it comes from the commit. Distributions installed from
a folder, a VCS or a file (an editable install, a local wheel) have no version an index can
give back; they are listed apart (``unpinned``) and the re-created environment goes without
them, saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LOCK_VERSION = 1
#: the project: re-created from the commit, never from an index
PROJECT = "infermatrix"


class LockError(ValueError):
    """A recorded lock that cannot be read; the message names what is wrong."""


def canonical_name(name: str) -> str:
    """PEP 503's normalized name (``Foo_Bar`` and ``foo-bar`` are one distribution)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclasses.dataclass(frozen=True)
class EnvLock:
    #: the environment's name: the tox environment (``$TOX_ENV_NAME``), else ``local``
    name: str
    #: the full Python version that ran (``3.11.9``); a re-created environment needs the same minor
    python: str
    implementation: str
    #: ``linux-x86_64``: wheels differ across platforms, so the lock's key includes it
    platform: str
    #: the interpreter that ran the cases: the current side of a paired comparison
    executable: str
    #: (canonical name, exact version), sorted; the project itself excluded
    packages: tuple[tuple[str, str], ...]
    #: the checkout's commit (``git rev-parse HEAD``), None outside a git checkout
    commit: str | None
    #: the checkout had uncommitted changes: the commit alone does not re-create it
    dirty: bool
    #: the case ids this environment ran (timed or failed)
    cases: tuple[str, ...] = ()
    #: distributions installed from a folder, VCS or file: name -> where from (not re-creatable)
    unpinned: tuple[tuple[str, str], ...] = ()

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    @property
    def key(self) -> str:
        """The cache key of the re-created environment: what decides its contents, nothing else
        (not the name, the interpreter's path or the cases)."""
        facts = {"python": self.python_minor, "implementation": self.implementation, "platform": self.platform,
                 "packages": [list(p) for p in self.packages], "commit": self.commit}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    def requirements(self) -> list[str]:
        """``name==version`` lines, as ``pip install -r`` reads them."""
        return [f"{name}=={version}" for name, version in self.packages]

    def as_dict(self) -> dict[str, Any]:
        return {"lock_version": LOCK_VERSION, "name": self.name, "python": self.python,
                "implementation": self.implementation, "platform": self.platform, "executable": self.executable,
                "commit": self.commit, "dirty": self.dirty, "key": self.key,
                "packages": dict(self.packages), "unpinned": dict(self.unpinned), "cases": list(self.cases)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the lock") -> EnvLock:
        if not isinstance(data, Mapping):
            raise LockError(f"{where}: not an object")
        version = data.get("lock_version")
        if not isinstance(version, int) or version > LOCK_VERSION:
            raise LockError(f"{where}: lock_version {version!r} is not one this infermatrix reads (<= {LOCK_VERSION})")
        missing = [k for k in ("name", "python", "implementation", "platform", "executable", "packages")
                   if k not in data]
        if missing:
            raise LockError(f"{where}: missing {', '.join(missing)}")
        packages = data["packages"]
        if not isinstance(packages, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in packages.items()):
            raise LockError(f"{where}: packages must map each name to its exact version")
        commit = data.get("commit")
        if commit is not None and not (isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{7,64}", commit)):
            raise LockError(f"{where}: commit {commit!r} is not a git commit id")
        return cls(name=str(data["name"]), python=str(data["python"]), implementation=str(data["implementation"]),
                   platform=str(data["platform"]), executable=str(data["executable"]),
                   packages=tuple(sorted((canonical_name(k), v) for k, v in packages.items())),
                   commit=commit, dirty=bool(data.get("dirty", False)),
                   cases=tuple(str(c) for c in data.get("cases") or ()),
                   unpinned=tuple(sorted((str(k), str(v)) for k, v in (data.get("unpinned") or {}).items())))


def installed_packages() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """This interpreter's distributions as (name, version), and those installed from a folder,
    VCS or file as (name, where from). The first of a name on ``sys.path`` is the one imported."""
    pinned: dict[str, str] = {}
    unpinned: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        raw = dist.metadata["Name"] if dist.metadata else None
        if not raw:
            continue
        name = canonical_name(str(raw))
        if name in pinned or name in unpinned or name == PROJECT:
            continue
        origin = _direct_origin(dist)
        if origin is not None:
            unpinned[name] = origin
        else:
            pinned[name] = dist.version
    return sorted(pinned.items()), sorted(unpinned.items())


def _direct_origin(dist: importlib.metadata.Distribution) -> str | None:
    """Where a distribution installed from a URL came from (PEP 610's direct_url.json); None for
    one from an index."""
    try:
        text = dist.read_text("direct_url.json")
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return "an unreadable direct_url.json"
    return str(data.get("url") or "a direct URL") if isinstance(data, dict) else None


def git_state(rootdir: Path) -> tuple[str | None, bool]:
    """The checkout's commit and whether it has uncommitted changes to tracked files; (None,
    False) outside git. Untracked files (results, caches) do not count."""
    try:
        head = subprocess.run(["git", "-C", str(rootdir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "-C", str(rootdir), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else False


def capture(rootdir: Path, cases: Iterable[str] = (), name: str | None = None) -> EnvLock:
    """The lock of the environment this process runs in, for a run from the checkout ``rootdir``."""
    pinned, unpinned = installed_packages()
    commit, dirty = git_state(rootdir)
    return EnvLock(name=name or os.environ.get("TOX_ENV_NAME") or "local", python=platform.python_version(),
                   implementation=sys.implementation.name, platform=f"{sys.platform}-{platform.machine()}",
                   executable=sys.executable, packages=tuple(pinned), commit=commit, dirty=dirty,
                   cases=tuple(sorted(set(cases))), unpinned=tuple(unpinned))


_CASE_IN_NAME = re.compile(r"\[([^\[\]]+)\]$")


def run_case_ids(output_json: Mapping[str, Any]) -> list[str]:
    """The case ids a run's JSON holds: its benchmarks' and its failed cases' (by test name)."""
    found = []
    for bench in output_json.get("benchmarks") or []:
        case_id = (bench.get("extra_info") or {}).get("case_id") if isinstance(bench, Mapping) else None
        if case_id:
            found.append(str(case_id))
    for name in ((output_json.get("infermatrix") or {}).get("failed") or {}):
        match = _CASE_IN_NAME.search(str(name))
        if match:
            found.append(match.group(1))
    return found


def environments(run: Mapping[str, Any], source: str = "the run") -> dict[str, EnvLock]:
    """The locks a run recorded: one per environment of a merged nightly run
    (``infermatrix.environments``), or the one of a single pytest run (``infermatrix.environment``).
    Empty for a run recorded before locks were."""
    section = run.get("infermatrix") or {}
    found: dict[str, EnvLock] = {}
    many = section.get("environments")
    if isinstance(many, Mapping):
        for name, data in many.items():
            found[str(name)] = EnvLock.from_dict(data, f"{source}: environment {name}")
    elif section.get("environment") is not None:
        lock = EnvLock.from_dict(section["environment"], f"{source}: environment")
        found[lock.name] = lock
    return found


def merge_environments(runs: Iterable[tuple[Path, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One lock per environment for a merged run. Environments of one name in several files
    (two runs outside tox are both ``local``) are told apart by their file's name."""
    merged: dict[str, dict[str, Any]] = {}
    for path, run in runs:
        try:
            locks = environments(run, str(path))
        except LockError:
            continue  # a damaged lock costs the paired comparison of that environment, not the report
        for name, lock in locks.items():
            key = name if name not in merged else f"{name}:{path.stem}"
            merged[key] = {**lock.as_dict(), "name": key}
    return merged
