"""Plugins: the hook specifications, and an outside package joining through an entry point."""

from __future__ import annotations

import inspect
import os
import textwrap
from pathlib import Path

import pytest

from infermatrix.api import hookspec

TESTS = Path(__file__).resolve().parent


def test_every_hook_is_named_and_documented() -> None:
    hooks = [name for name, _ in inspect.getmembers(hookspec, inspect.isfunction) if name.startswith("pytest_")]
    assert set(hooks) == {
        "pytest_infermatrix_models", "pytest_infermatrix_variants", "pytest_infermatrix_backends",
        "pytest_infermatrix_targets",
        "pytest_infermatrix_prepare", "pytest_infermatrix_prepare_generation", "pytest_infermatrix_prepare_server",
        "pytest_infermatrix_memory",
        "pytest_infermatrix_commands",
    }
    for name in hooks:
        assert (getattr(hookspec, name).__doc__ or "").strip(), f"{name} has no docstring"


def write_outside_package(root) -> None:
    """A package installed the way pip installs one: module + dist-info with entry_points.txt."""
    (root / "toy_infermatrix_backend.py").write_text(textwrap.dedent('''
        import numpy as np
        import pytest
        from infermatrix.api.types import BackendInfo, PrepareTimes, Target

        @pytest.hookimpl
        def pytest_infermatrix_backends():
            return [BackendInfo(name="toy", devices=("cpu",), precisions=("fp32",), version="0.0.1", forms=("numpy",))]

        @pytest.hookimpl
        def pytest_infermatrix_targets(backend):
            return [Target("cpu", "fp32")] if backend.name == "toy" else None

        class Session:
            config = {"toy": True}
            size_bytes = None
            def __init__(self, model):
                self.times = PrepareTimes()
                self.fn = model.reference_fn
            def run(self, inputs):
                return self.fn(inputs)
            def close(self):
                pass

        @pytest.hookimpl
        def pytest_infermatrix_prepare(backend, model):
            return Session(model) if backend.name == "toy" else None
    '''))
    dist = root / "toy_infermatrix_backend-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-infermatrix-backend\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text("[infermatrix]\ntoy = toy_infermatrix_backend\n")
    (dist / "RECORD").write_text("")


def test_outside_backend_joins_the_matrix_through_the_entry_point_group(
    suite: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path_factory.mktemp("site")
    write_outside_package(site)
    # The subprocess sees the outside package only as pip would leave it: on sys.path, with dist-info.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    result = suite.runpytest_subprocess("-q", "--backends", "toy", "--min-rounds=3", "--min-time=0", "--max-time=0.05")
    result.stdout.fnmatch_lines(["*3 passed*"])
    collected = suite.runpytest_subprocess("--collect-only", "-q", "--backends", "toy")
    collected.stdout.fnmatch_lines_random(
        ["*tinymlp-toy-cpu-fp32-b1*", "*tinymlp-toy-cpu-fp32-b4*", "*tinylinear-toy-cpu-fp32-b2*"]
    )
