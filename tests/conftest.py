from __future__ import annotations

# pytester's in-process runs forget modules first imported inside them, and numpy's C
# modules (numpy.fft, pulled in by scipy.stats) refuse a second import: load them here.
import contextlib
import shutil
from pathlib import Path

import cpuinfo  # noqa: F401
import psutil  # noqa: F401
import pytest
import scipy.stats  # noqa: F401

# torch too, where installed: a test that imports it after an in-process pytester run
# (which drops the modules that run imported lazily) crashed the interpreter.
with contextlib.suppress(ImportError):
    import torch  # noqa: F401

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project with the core plugin, the numpy test backend and the latency suite."""
    pytester.syspathinsert(TESTS)
    pytester.makeconftest('pytest_plugins = ["infermatrix.pytest_plugin.plugin", "numpy_backend"]\n')
    shutil.copy(REPO / "suites" / "test_latency.py", pytester.path / "test_latency.py")
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    return pytester

