"""The on-disk cache: exported models, seeded weights, fp32 references, FLOP counts.

Everything is keyed by content (see ``ModelSpec.cache_key``) and written atomically
(temporary file in the same directory, fsync, rename), so two runs sharing a cache
never read a half-written file, and a run killed mid-write leaves the old file.

Entries are also *sealed*: their size and SHA-256 are recorded beside them
(``<name>.sha256``) once complete, and checked when read (once per process per file;
a file of its sealed size and modification time is not hashed again).
A damaged entry — truncated, overwritten, or failing its loader — is moved aside
(``<name>.damaged-<time>``, never read again), named in a warning, and rebuilt by its
caller where the inputs are at hand; where they are not, the caller fails naming the
file and the command that rebuilds it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ENV_CACHE_DIR = "INFERMATRIX_CACHE_DIR"
DEFAULT_CACHE_DIRNAME = ".infermatrix-cache"


def resolve_cache_dir(option: str | None, rootdir: Path) -> Path:
    """``--infermatrix-cache`` wins, then ``$INFERMATRIX_CACHE_DIR``, then ``<rootdir>/.infermatrix-cache``."""
    raw = option or os.environ.get(ENV_CACHE_DIR)
    return Path(raw).expanduser().resolve() if raw else rootdir / DEFAULT_CACHE_DIRNAME


class CacheError(RuntimeError):
    """A cache entry that cannot be written or used; the message names the file and what to do."""


class CacheDamaged(CacheError):
    """A cache entry that does not match its seal or that its loader refuses."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: damaged cache entry ({reason})")
        self.path = path
        self.reason = reason


class CacheWarning(UserWarning):
    """A damaged cache entry was moved aside and is being rebuilt."""


SEAL_SUFFIX = ".sha256"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal_path(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def seal(*paths: Path) -> None:
    """Record each complete file's size, modification time and SHA-256 beside it."""
    for path in paths:
        stat = path.stat()
        record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256(path)}
        atomic_write_bytes(seal_path(path), json.dumps(record).encode())


def unseal(path: Path) -> None:
    """Before an entry is rewritten: a reader must never pair new data with the old seal
    (it would take a good file for a damaged one)."""
    seal_path(path).unlink(missing_ok=True)


@functools.lru_cache(maxsize=256)
def _matches_seal(path: Path, size: int, mtime_ns: int) -> str | None:
    """None when ``path`` matches its seal (or has none), else what is wrong.

    A file still of its sealed size and modification time is taken as written (no
    hashing: this runs inside timed preparation, and any write moves the time); a file
    whose time moved is hashed. Cached per process by size and time."""
    try:
        record = json.loads(seal_path(path).read_text())
    except FileNotFoundError:
        return None  # written before entries were sealed: its loader is the check
    except (OSError, ValueError):
        return "its seal is unreadable"
    if record.get("size") != size:
        return f"{size} bytes, sealed at {record.get('size')}"
    if record.get("mtime_ns") == mtime_ns:
        return None
    if record.get("sha256") != sha256(path):
        return "content differs from its seal (SHA-256)"
    return None


def check(path: Path) -> None:
    """Raise :class:`CacheDamaged` if ``path`` does not match its seal."""
    stat = path.stat()
    problem = _matches_seal(path, stat.st_size, stat.st_mtime_ns)
    if problem is not None:
        raise CacheDamaged(path, problem)


def quarantine(damage: CacheDamaged, *companions: Path) -> Path:
    """Move a damaged entry (and its seal and companion files) aside, so it is never read
    again, and say so. Returns where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = damage.path.with_name(f"{damage.path.name}.damaged-{stamp}")
    for path in (damage.path, seal_path(damage.path), *companions):
        try:
            path.replace(path.with_name(f"{path.name}.damaged-{stamp}"))
        except FileNotFoundError:
            pass  # another run sharing the cache moved it first
    warnings.warn(f"infermatrix: {damage} — moved to {aside}; rebuilding it", CacheWarning, stacklevel=2)
    return aside


def atomic_write_bytes(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CacheError(f"{path}: cannot write this cache entry ({exc.strerror}); make room there or point "
                         "--infermatrix-cache / $INFERMATRIX_CACHE_DIR elsewhere") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CacheError(f"{path}: cannot write this cache entry ({exc.strerror}); make room there or point "
                         "--infermatrix-cache / $INFERMATRIX_CACHE_DIR elsewhere") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode())


#: What numpy raises for a damaged ``.npz`` (truncated: BadZipFile; garbage: ValueError/OSError).
NPZ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError)


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    unseal(path)
    atomic_write_bytes(path, buffer.getvalue())
    seal(path)


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays of a sealed ``.npz``; :class:`CacheDamaged` if it is not what was written."""
    check(path)
    try:
        with np.load(path) as data:
            return [np.array(data[f"arr_{i}"]) for i in range(len(data.files))]
    except NPZ_ERRORS as exc:
        raise CacheDamaged(path, f"{type(exc).__name__}: {exc}") from None


class ModelCache:
    """The cache directory of one model: ``<root>/<model name>-<content key>/``."""

    def __init__(self, root: Path, model_name: str, key: str) -> None:
        self.dir = root / f"{model_name}-{key}"

    def path(self, name: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / name

    def read_json(self, name: str) -> Any | None:
        path = self.dir / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged cache entry is recomputed, never trusted

    def write_json(self, name: str, payload: Any) -> None:
        atomic_write_json(self.path(name), payload)


def save_named_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy types allow_pickle like an array name
    unseal(path)
    atomic_write_bytes(path, buffer.getvalue())
    seal(path)


def load_named_arrays(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of a sealed ``.npz``; :class:`CacheDamaged` if it is not what was written."""
    check(path)
    try:
        with np.load(path) as data:
            return {name: np.array(data[name]) for name in data.files}
    except NPZ_ERRORS as exc:
        raise CacheDamaged(path, f"{type(exc).__name__}: {exc}") from None
