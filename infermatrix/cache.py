"""The on-disk cache: exported models, seeded weights, fp32 references, FLOP counts.

Everything is keyed by content (see ``ModelSpec.cache_key``) and written atomically
(temporary file in the same directory, fsync, rename), so two runs sharing a cache
never read a half-written file, and a run killed mid-write leaves the old file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ENV_CACHE_DIR = "INFERMATRIX_CACHE_DIR"
DEFAULT_CACHE_DIRNAME = ".infermatrix-cache"


def resolve_cache_dir(option: str | None, rootdir: Path) -> Path:
    """``--infermatrix-cache`` wins, then ``$INFERMATRIX_CACHE_DIR``, then ``<rootdir>/.infermatrix-cache``."""
    raw = option or os.environ.get(ENV_CACHE_DIR)
    return Path(raw).expanduser().resolve() if raw else rootdir / DEFAULT_CACHE_DIRNAME


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [np.array(data[f"arr_{i}"]) for i in range(len(data.files))]


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


def load_named_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: np.array(data[name]) for name in data.files}
