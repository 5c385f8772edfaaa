"""The reference environment: an accepted baseline's environment, re-created from its lock.

``ensure(lock, repo, cache_root)`` gives a directory holding

- ``venv/``: ``python -m venv`` with exactly the lock's versions (``pip install --no-deps`` of
  ``name==version`` lines: the lock is the whole closure, so pip resolves nothing);
- ``src/``: the project at the lock's commit (``git archive``; the A/B worker puts it first on
  ``PYTHONPATH``, so nothing of the project is installed and the venv holds no path to it);
- ``lock.json``: the lock it was built from.

It lives in ``<cache>/reference-envs/<lock key>/`` and is reused while the baseline's lock
stays the same. It is built in ``.build-<key>-<random>/`` beside it, checked (every locked
version installed, the project importable), and renamed into place only when complete: a
directory under its final name is always whole, and a build killed halfway leaves a
``.build-*`` directory that nothing reads (removed by a later build once a day old). A venv
holds absolute paths only in its console scripts' first lines; everything here runs
``venv/bin/python -m ...``, which a rename does not break.

A step that fails raises ``RefEnvError`` naming the environment, the commit, the step, the
command and the end of its output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from infermatrix.nightly.lock import EnvLock

#: keep this many reference environments (the most recently used); each can be gigabytes
KEEP = 4
#: a ``.build-*`` directory older than this was left by a killed build
STALE_BUILD_S = 24 * 3600

#: run in the new environment: its distributions and whether the project at the commit imports
VERIFY = """
import importlib.metadata, json, re
found = {}
for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"] if dist.metadata else None
    if name:
        found.setdefault(re.sub(r"[-_.]+", "-", str(name)).lower(), dist.version)
try:
    import infermatrix
    error = None
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"packages": found, "import_error": error}))
"""


class RefEnvError(RuntimeError):
    """The reference environment could not be made; the message says which step and why."""


@dataclasses.dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str


#: runs ``argv`` (with ``env`` added to this process's, in ``cwd``): the one way out to
#: processes, so a test can stand in for venv, git or pip
Runner = Callable[[Sequence[str], Mapping[str, str], Path | None], CommandResult]


def run_command(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None) -> CommandResult:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env={**os.environ, **env},
                              timeout=3600)
    except FileNotFoundError as exc:
        return CommandResult(127, f"{argv[0]}: not found ({exc.strerror})")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "did not finish within an hour")
    return CommandResult(proc.returncode, proc.stdout + proc.stderr)


@dataclasses.dataclass(frozen=True)
class RefEnv:
    lock: EnvLock
    path: Path
    #: found complete in the cache (True) or built now (False)
    reused: bool
    #: what the environment lacks against the run it re-creates (unpinned packages, a dirty tree)
    notes: tuple[str, ...] = ()

    @property
    def python(self) -> Path:
        return self.path / "venv" / "bin" / "python"

    @property
    def rootdir(self) -> Path:
        return self.path / "src"


def envs_dir(cache_root: Path) -> Path:
    return cache_root / "reference-envs"


def find_python(lock: EnvLock) -> str:
    """An interpreter of the lock's Python minor version: this one, else ``pythonX.Y`` on PATH."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if lock.python_minor == mine:
        return sys.executable
    found = shutil.which(f"python{lock.python_minor}")
    if found is None:
        raise RefEnvError(f"reference environment {lock.name} (lock {lock.key}): it ran on Python {lock.python}, "
                          f"and no python{lock.python_minor} is on PATH (this is {platform_python()}) — install "
                          f"Python {lock.python_minor} or give one with --reference-python")
    return found


def platform_python() -> str:
    return f"Python {sys.version.split()[0]} at {sys.executable}"


def notes_of(lock: EnvLock) -> tuple[str, ...]:
    notes = []
    if lock.unpinned:
        notes.append("not re-created (installed from a folder, VCS or file, no version to install): "
                     + ", ".join(f"{name} ({origin})" for name, origin in lock.unpinned))
    if lock.dirty:
        notes.append(f"the baseline ran from a tree with uncommitted changes; re-created from commit "
                     f"{(lock.commit or '?')[:12]} without them")
    return tuple(notes)


def ensure(lock: EnvLock, repo: Path, cache_root: Path, *, runner: Runner = run_command,
           base_python: str | None = None, pip_args: Sequence[str] = (), keep: int = KEEP) -> RefEnv:
    """The reference environment of ``lock``, reused from the cache or built now (see the module)."""
    if lock.commit is None:
        raise RefEnvError(f"reference environment {lock.name} (lock {lock.key}): the baseline recorded no commit "
                          "(it ran outside a git checkout), so its project cannot be re-created")
    root = envs_dir(cache_root)
    final = root / lock.key
    notes = notes_of(lock)
    if _complete(final):
        _touch(final)
        return RefEnv(lock, final, True, notes)
    if final.exists():  # not made by a rename of a whole build: never use it
        shutil.move(str(final), str(root / f".broken-{lock.key}-{int(time.time())}"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RefEnvError(f"{root}: cannot create the reference environments' directory ({exc.strerror})") from None
    _remove_stale_builds(root)
    build = root / f".build-{lock.key}-{uuid.uuid4().hex[:8]}"
    build.mkdir()
    try:
        _build(lock, repo, build, runner, base_python or find_python(lock), pip_args)
        try:
            os.rename(build, final)
        except OSError:
            if not _complete(final):  # not another build finishing first: a real failure
                raise
            shutil.rmtree(build, ignore_errors=True)  # another build of the same lock won the rename
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    _touch(final)
    prune(root, keep, final)
    return RefEnv(lock, final, False, notes)


def _build(lock: EnvLock, repo: Path, build: Path, runner: Runner, base_python: str,
           pip_args: Sequence[str]) -> None:
    what = f"reference environment {lock.name} at commit {(lock.commit or '?')[:12]} (lock {lock.key})"

    def step(name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
        result = runner(argv, env or {}, cwd)
        if result.returncode != 0:
            tail = "\n".join(result.output.strip().splitlines()[-15:])
            raise RefEnvError(f"{what}: {name} failed (exit {result.returncode}): {' '.join(map(str, argv))}"
                              + (f"\n{tail}" if tail else ""))
        return result.output

    commit = str(lock.commit)
    step("finding the commit", ["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"])
    archive = build / "src.tar"
    step("exporting the project at the commit",
         ["git", "-C", str(repo), "archive", "--format=tar", "-o", str(archive), commit])
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(build / "src", filter="data")
            else:  # Python < 3.11.4: git's own archive of this repository
                tar.extractall(build / "src")
    except (OSError, tarfile.TarError) as exc:
        raise RefEnvError(f"{what}: unpacking git archive's {archive} failed: {exc}") from None
    archive.unlink()
    step("creating the venv", [base_python, "-m", "venv", str(build / "venv")])
    python = str(build / "venv" / "bin" / "python")
    requirements = lock.requirements()
    if requirements:
        (build / "requirements.txt").write_text("\n".join(requirements) + "\n")
        step("installing the locked versions",
             [python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--no-input", "-q",
              *pip_args, "-r", str(build / "requirements.txt")])
    out = step("checking the environment", [python, "-c", VERIFY], {"PYTHONPATH": str(build / "src")},
               build / "src")
    try:
        found = json.loads(out.strip().splitlines()[-1])
        installed, import_error = dict(found["packages"]), found["import_error"]
    except (ValueError, IndexError, KeyError, TypeError):
        raise RefEnvError(f"{what}: checking the environment gave no answer: {out[-500:]}") from None
    wrong = [f"{name}=={version} (found {installed.get(name, 'none')})" for name, version in lock.packages
             if installed.get(name) != version]
    if wrong:
        more = f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""
        raise RefEnvError(f"{what}: after pip install the environment lacks {'; '.join(wrong[:5])}{more}")
    if import_error:
        raise RefEnvError(f"{what}: the project at the commit does not import there: {import_error}")
    lock_file = build / "lock.json"
    lock_file.write_text(json.dumps(lock.as_dict(), indent=1))
    with lock_file.open("rb") as fh:
        os.fsync(fh.fileno())


def _complete(path: Path) -> bool:
    return (path / "lock.json").is_file() and (path / "venv" / "bin" / "python").exists()


def _touch(path: Path) -> None:
    stamp = path / "last-used"
    try:
        stamp.touch()
        os.utime(stamp)
    except OSError:
        pass  # a read-only cache still serves a complete environment


def _remove_stale_builds(root: Path) -> None:
    now = time.time()
    for entry in root.iterdir():
        if entry.name.startswith((".build-", ".broken-")):
            try:
                if now - entry.stat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass


def prune(root: Path, keep: int, in_use: Path) -> list[Path]:
    """Remove all but the ``keep`` most recently used complete environments (never ``in_use``)."""
    def last_used(path: Path) -> float:
        try:
            return (path / "last-used").stat().st_mtime
        except OSError:
            return 0.0

    envs = sorted((p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()), key=last_used,
                  reverse=True)
    removed = []
    for path in envs[keep:]:
        if path != in_use:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
