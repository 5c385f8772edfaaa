"""A damaged cache heals itself: every cached artefact is checked when read, a damaged one
is named, moved aside and rebuilt in the same run — or, where it cannot be rebuilt here,
the case says which file and which command rebuilds it. Never a traceback, never twice."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST

from infermatrix import cache as cache_module
from infermatrix.cache import CacheError, CacheWarning, save_arrays

TESTS = Path(__file__).resolve().parent


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero_region(path: Path) -> None:
    """Same size, a run of bytes zeroed in the middle: only a content check sees it."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = bytes(256)
    path.write_bytes(bytes(data))
    os.utime(path)


def damaged_copies(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if ".damaged-" in p.name)


@pytest.mark.parametrize("damage", [truncate, zero_region])
def test_a_damaged_reference_is_moved_aside_and_rebuilt(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(TESTS))
    from numpy_backend import MODELS

    from infermatrix.gate.reference import model_cache, reference_outputs

    model = MODELS[0]
    first = reference_outputs(model, 8, tmp_path)
    stored = model_cache(model, tmp_path).dir / "reference-n8.npz"
    damage(stored)
    with pytest.warns(CacheWarning, match=f"{stored}: damaged cache entry"):
        again = reference_outputs(model, 8, tmp_path)
    np.testing.assert_array_equal(again[0], first[0])
    assert any(p.name.startswith("reference-n8.npz.damaged-") for p in damaged_copies(tmp_path))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # healed: read cleanly from now on
        np.testing.assert_array_equal(reference_outputs(model, 8, tmp_path)[0], first[0])


def test_damaged_seeded_weights_are_rebuilt_to_the_same_numbers(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tiny_torch_model import TINY_CNN

    from infermatrix.gate.reference import WEIGHTS_FILE, model_cache, torch_state

    before = torch_state(TINY_CNN, tmp_path)
    stored = model_cache(TINY_CNN, tmp_path).dir / WEIGHTS_FILE
    truncate(stored)
    with pytest.warns(CacheWarning, match="weights.npz: damaged cache entry"):
        after = torch_state(TINY_CNN, tmp_path)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("damage", [truncate, zero_region])
def test_a_damaged_onnx_export_is_exported_again(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from tiny_torch_model import TINY_CNN

    from infermatrix.forms.onnx_export import onnx_model

    path, first = onnx_model(TINY_CNN, tmp_path)
    assert first["cached"] is False
    original = path.read_bytes()
    damage(path)
    with pytest.warns(CacheWarning, match="damaged cache entry"):
        again, info = onnx_model(TINY_CNN, tmp_path)
    assert again == path and info["cached"] is False  # exported again, in this run
    import onnx

    onnx.checker.check_model(str(path))
    assert len(path.read_bytes()) == len(original)


def test_without_torch_a_damaged_export_names_the_file_and_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from tiny_torch_model import TINY_CNN

    from infermatrix.forms import onnx_export

    path, _ = onnx_export.onnx_model(TINY_CNN, tmp_path)
    truncate(path)
    monkeypatch.setattr(onnx_export, "torch_available", lambda: False)
    with pytest.warns(CacheWarning), pytest.raises(onnx_export.OnnxUnavailable) as info:
        onnx_export.onnx_model(TINY_CNN, tmp_path)
    assert str(path) in str(info.value) and "tox -e export" in str(info.value)
    assert not path.exists()  # moved aside: never read again


def test_a_damaged_generation_export_is_made_again(tmp_path: Path) -> None:
    from infermatrix.case.generation import exported

    folder = tmp_path / "model"
    folder.mkdir()
    make = [sys.executable, "-c", "import pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir(); "
            "(out / 'model.onnx.data').write_bytes(b'w' * 4096); (out / 'genai_config.json').write_text('{}')",
            "{out}"]
    target = exported(folder, "export", make, "a test exporter")
    manifest = json.loads((target / ".complete").read_text())
    assert set(manifest["files"]) == {"model.onnx.data", "genai_config.json"}
    truncate(target / "model.onnx.data")
    with pytest.warns(CacheWarning, match="model.onnx.data has 2048 bytes, 4096 when made"):
        again = exported(folder, "export", make, "a test exporter")
    assert (again / "model.onnx.data").stat().st_size == 4096
    assert damaged_copies(tmp_path)  # the damaged export kept aside, not deleted


def test_a_full_disk_names_the_cache_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.os, "fsync", full)
    target = tmp_path / "cache" / "model-x" / "reference-n8.npz"
    with pytest.raises(CacheError, match="No space left on device") as info:
        save_arrays(target, [np.zeros(3)])
    assert str(target) in str(info.value) and "--infermatrix-cache" in str(info.value)
    assert not any(p.name.endswith(".tmp") for p in target.parent.iterdir())  # nothing half-written left


def test_a_run_heals_a_damaged_reference_and_passes(suite: pytest.Pytester, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["-k", "tinymlp-numpy-cpu-fp32-b1", f"--infermatrix-cache={cache}", *FAST]
    suite.runpytest(*args).assert_outcomes(passed=1)
    (stored,) = cache.rglob("reference-n32.npz")
    truncate(stored)
    result = suite.runpytest(*args, "-W", "default")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{stored}: damaged cache entry*moved to*rebuilding it*"])


def test_a_damaged_export_manifest_is_not_taken_for_an_old_one(tmp_path: Path) -> None:
    from infermatrix.case.generation import exported

    folder = tmp_path / "model"
    folder.mkdir()
    make = [sys.executable, "-c", "import pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir(); "
            "(out / 'model.onnx.data').write_bytes(b'w' * 64)", "{out}"]
    target = exported(folder, "export", make, "a test exporter")
    (target / ".complete").write_text('{"files": ')  # truncated JSON
    with pytest.warns(CacheWarning, match="manifest .* is damaged"):
        exported(folder, "export", make, "a test exporter")
    assert json.loads((target / ".complete").read_text())["files"]
