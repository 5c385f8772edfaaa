"""The project's own code stays clean: ruff on everything, mypy --strict on the core."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff() -> None:
    if shutil.which("ruff", path=str(Path(sys.executable).parent)) is None and shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install 'infermatrix[test]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "infermatrix", "plugins", "suites", "tests",
                           "conftest.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy_strict_core() -> None:
    pytest.importorskip("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy", "infermatrix"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
