"""Backends that fail for real, for the fault-injection tests (``test_faults.py``).

Each backend is one fault, so a case id says which fault it carries:

- ``segfault``: reads address 0 through ctypes (SIGSEGV, as a native library crash);
- ``abort``: ``os.abort()`` (SIGABRT, as a native assertion);
- ``hang``: sleeps for a day (a deadlocked runtime);
- ``oom``: allocates 4 TiB on the host under an address-space limit (numpy raises
  MemoryError naming the size, whatever the machine's overcommit policy);
- ``nan``: returns NaN outputs;
- ``cudaoom``: allocates 256 TiB on the GPU through torch (needs CUDA);
- ``broken``: installed but its native library is missing (ImportError on import).

The fault strikes from call ``FAULTY_AFTER_CALLS`` + 1 on (default: the first call, i.e.
during preparation); a larger number makes it strike while the case is being timed.
``FAULTY_MODELS`` (comma list) limits the fault to those models' cases.
The models are the numpy backend's, and so is the arithmetic before the fault strikes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from typing import Any

import numpy as np
import pytest
from numpy_backend import weights

from infermatrix.api.types import FORM_NUMPY, Arrays, BackendInfo, ModelSpec, PrepareContext, PrepareTimes, Target

FAULTS = ("segfault", "abort", "hang", "oom", "nan", "cudaoom")


@pytest.hookimpl
def pytest_infermatrix_backends() -> list[BackendInfo]:
    return [
        *(BackendInfo(name=f, devices=("cuda",) if f == "cudaoom" else ("cpu",), precisions=("fp32",),
                      version="0", forms=(FORM_NUMPY,)) for f in FAULTS),
        BackendInfo(name="broken", devices=("cpu",), precisions=("fp32",), version="0",
                    framework_module="broken_native_lib", forms=(FORM_NUMPY,)),
    ]


@pytest.hookimpl
def pytest_infermatrix_targets(backend: BackendInfo) -> list[Target] | None:
    if backend.name == "broken":
        import broken_native_lib  # noqa: F401 - raises, as a package whose shared library is missing

        return [Target("cpu", "fp32")]
    if backend.name == "cudaoom":
        import torch

        return [Target("cuda", "fp32", None if torch.cuda.is_available() else "cudaoom: no CUDA device")]
    if backend.name in FAULTS:
        return [Target("cpu", "fp32")]
    return None


def strike(fault: str) -> None:
    if fault == "segfault":
        ctypes.string_at(0)
    elif fault == "abort":
        os.abort()
    elif fault == "hang":
        time.sleep(86400)
    elif fault == "oom":
        # Cap this worker's address space first (it is replaced after an OOM anyway): with the
        # kernel's overcommit on, 4 TiB would otherwise be granted and the page faults end in
        # the OOM killer's SIGKILL instead of a MemoryError, depending on the machine.
        import resource

        vm_bytes = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm_bytes + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        np.ones(1 << 42, dtype=np.uint8)
    elif fault == "cudaoom":
        import torch

        torch.empty(1 << 48, dtype=torch.uint8, device="cuda")


@dataclasses.dataclass
class FaultySession:
    fault: str
    matrix: np.ndarray
    after_calls: int
    config: dict[str, Any]
    times: PrepareTimes
    size_bytes: int | None = None
    strikes: bool = True
    calls: int = 0

    def run(self, inputs: Arrays) -> list[np.ndarray]:
        self.calls += 1
        out = (inputs["x"] @ self.matrix).astype(np.float32)
        if self.calls > self.after_calls and self.strikes:
            if self.fault == "nan":
                return [np.full_like(out, np.nan)]
            strike(self.fault)
        return [out]

    def close(self) -> None:
        pass


@pytest.hookimpl
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, context: PrepareContext
) -> FaultySession | None:
    if backend.name not in FAULTS:
        return None
    return FaultySession(
        fault=backend.name, matrix=weights(model.weight_seed).astype(np.float32),
        after_calls=int(os.environ.get("FAULTY_AFTER_CALLS", "0")), config={"fault": backend.name},
        times=PrepareTimes(), strikes=model.name in os.environ.get("FAULTY_MODELS", model.name).split(","),
    )
