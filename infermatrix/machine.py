"""What this machine is: CPU model and flags, cores, GPUs (py-cpuinfo, psutil, nvidia-ml-py)."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """py-cpuinfo's answer (it takes ~1 s, so it is asked once per process)."""
    try:
        import cpuinfo

        return dict(cpuinfo.get_cpu_info())
    except Exception:  # py-cpuinfo fails on some exotic platforms; flags then come from /proc
        return {}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    flags = cpu_info().get("flags")
    if flags:
        return frozenset(flags)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic: AVX512-BF16 or AMX-BF16 (x86), or BF16 on Arm."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_model() -> str:
    return str(cpu_info().get("brand_raw") or platform.processor() or platform.machine())


def gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs as NVML reports them; [] without a driver or without nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_total_bytes": int(memory.total),
                    "driver": str(pynvml.nvmlSystemGetDriverVersion()),
                }
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def nvml_process_memory_bytes(pid: int | None = None) -> int | None:
    """GPU memory NVML attributes to this process (all GPUs); None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        total = 0
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    total += int(proc.usedGpuMemory)
        return total
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def machine_summary() -> dict[str, Any]:
    """The hardware and OS facts recorded with every result."""
    interesting = sorted(
        f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4", "f16c", "vnni", "bf16", "asimd", "sve"))
    )
    return {
        "cpu_model": cpu_model(),
        "cpu_physical_cores": physical_cores(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_flags": interesting,
        "gpus": gpus(),
        "os": platform.system(),
        "os_release": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }
