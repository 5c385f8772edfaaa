"""The machine's measured peak for a device and precision: a large matrix product.

Efficiency is the model's achieved FLOP/s as a share of this figure. The peak is
measured, not taken from a data sheet, once per process and (device, precision),
with the same thread count the backends use.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Peak:
    flops_per_s: float
    how: str


def _best_rate(call: Any, flops: float, sync: Any = None, repeats: int = 5, min_time_s: float = 0.2) -> float:
    """Best of ``repeats`` timed batches of calls: the peak is what the unit *can* do."""
    call()
    if sync:
        sync()
    best = 0.0
    for _ in range(repeats):
        calls = 0
        started = time.perf_counter()
        while True:
            call()
            calls += 1
            if sync:
                sync()
            elapsed = time.perf_counter() - started
            if elapsed >= min_time_s:
                break
        best = max(best, calls * flops / elapsed)
    return best


@functools.cache
def measured_peak(device: str, precision: str, threads: int) -> Peak | None:
    """FLOP/s of a square matrix product in ``precision`` on ``device``; None where this
    suite has no way to measure it (e.g. int8 without torch's ``_int_mm``)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        if device != "cpu" or precision != "fp32":
            return None
        import numpy as np

        n = 2048
        matrix = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        rate = _best_rate(lambda: matrix @ matrix, 2.0 * n**3)
        return Peak(rate, f"numpy float32 matmul {n}x{n}x{n}")

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return None
    n = 8192 if device == "cuda" else 1024
    sync = torch.cuda.synchronize if device == "cuda" else None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if precision in ("int8", "int8-dynamic"):
            a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            try:
                rate = _best_rate(lambda: torch._int_mm(a, b), 2.0 * n**3, sync)
            except RuntimeError:
                return None
            return Peak(rate, f"torch._int_mm int8 {n}x{n}x{n} on {device}")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        rate = _best_rate(lambda: a @ b, 2.0 * n**3, sync)
        return Peak(rate, f"torch matmul {precision} {n}x{n}x{n} on {device}, {threads} threads")
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
