"""What this machine is: CPU model and flags, cores, GPUs (py-cpuinfo, psutil, nvidia-ml-py).

Machines of one kind differ in CPU generation while naming themselves alike ("AMD EPYC"
on a Zen 3 with AVX2 only and on a Zen 4 with AVX-512, VNNI and bf16), so the CPU is
described by what changes the numbers: vendor, family/model/stepping, the instruction
sets the backends dispatch on (:class:`Isa`) and the cache sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from pathlib import Path
from typing import Any

#: The flags (as Linux names them) that the backends' kernels dispatch on, and so change
#: speed or int8 arithmetic; recorded with every result and part of the fingerprint.
DISPATCH_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                  "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "amx_fp16", "asimd", "asimddp", "sve")

#: oneDNN's ISA levels (the values of ``ONEDNN_MAX_CPU_ISA``), lowest first; aliases share a level.
ONEDNN_ISA_LEVEL = {
    "SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4, "AVX512_CORE": 5,
    "AVX512_CORE_VNNI": 6, "AVX512_CORE_BF16": 7, "AVX512_CORE_FP16": 8, "AVX10_1_512": 8,
    "AVX512_CORE_AMX": 9, "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX_FP16": 10, "AVX10_1_512_AMX_FP16": 10,
    "DEFAULT": 99, "ALL": 99,
}


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


@dataclasses.dataclass(frozen=True)
class Isa:
    """The instruction sets that decide a backend's kernels, from the CPU's flags and the
    ``ONEDNN_MAX_CPU_ISA`` cap (which oneDNN — inside torch and OpenVINO's CPU plugin —
    obeys, and ONNX Runtime's own MLAS kernels ignore)."""

    flags: frozenset[str]
    onednn_max_cpu_isa: str | None = None

    @property
    def int8_vnni(self) -> bool:
        """An int8 dot product that accumulates u8×s8 in 32 bits (VPDPBUSD, or AMX tiles).
        Without it, x86 int8 kernels use VPMADDUBSW, whose int16 sums of two products
        saturate unless the weights (or activations) keep to 7 bits."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def onednn_int8_vnni(self) -> bool:
        """The same for oneDNN's kernels, under ``ONEDNN_MAX_CPU_ISA`` when it is set."""
        cap = ONEDNN_ISA_LEVEL.get((self.onednn_max_cpu_isa or "DEFAULT").upper(), 99)
        if cap >= ONEDNN_ISA_LEVEL["AVX512_CORE_VNNI"]:
            return self.int8_vnni
        if cap >= ONEDNN_ISA_LEVEL["AVX2_VNNI"] and cap < ONEDNN_ISA_LEVEL["AVX512_CORE"]:
            return "avx_vnni" in self.flags
        return False

    @property
    def onednn_bf16(self) -> bool:
        """Native bf16 arithmetic for oneDNN's kernels: the CPU has it (AVX512-BF16, AMX-BF16, or
        Arm's BF16) and ``ONEDNN_MAX_CPU_ISA``, when set, does not cap oneDNN below it (under
        the cap OpenVINO still reports BF16 from CPUID, then cannot build a bf16 kernel)."""
        cap = ONEDNN_ISA_LEVEL.get((self.onednn_max_cpu_isa or "DEFAULT").upper(), 99)
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & self.flags) and cap >= ONEDNN_ISA_LEVEL["AVX512_CORE_BF16"]

    def int8_kernel(self, onednn: bool = False) -> str:
        """The int8 dot product a backend's kernels will use, for its recorded config."""
        if self.onednn_int8_vnni if onednn else self.int8_vnni:
            return "VNNI/AMX (u8 x s8 accumulated in 32 bits)"
        return "VPMADDUBSW (int16 sums of two u8 x s8 products can saturate)"

    def summary(self) -> dict[str, Any]:
        return {
            **{flag: flag in self.flags for flag in DISPATCH_FLAGS if not flag.startswith(("asimd", "sve"))
               or flag in self.flags},
            "int8_vnni": self.int8_vnni,
            "onednn_max_cpu_isa": self.onednn_max_cpu_isa,
        }


def isa() -> Isa:
    """This process's instruction sets (``ONEDNN_MAX_CPU_ISA`` read now: tests set it)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None
    return Isa(cpu_flags(), cap)


def cache_sizes() -> dict[str, int]:
    """Per-core L1d/L2 and shared L3 in bytes, from sysfs (py-cpuinfo misreads them on
    some AMD parts); py-cpuinfo's figures where sysfs has none."""
    sizes: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        units = {"K": 1024, "M": 1024**2, "G": 1024**3}
        value = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text or 0)
        sizes[f"l{level}{'d' if level == '1' else ''}"] = value
    if not sizes:
        info = cpu_info()
        for key, name in (("l1_data_cache_size", "l1d"), ("l2_cache_size", "l2"), ("l3_cache_size", "l3")):
            if isinstance(info.get(key), int):
                sizes[name] = int(info[key])
    return sizes


def cpu_identity() -> dict[str, Any]:
    """Vendor and family/model/stepping: what tells two CPUs of one brand name apart."""
    info = cpu_info()
    identity: dict[str, Any] = {
        "vendor": info.get("vendor_id_raw"), "family": info.get("family"),
        "model": info.get("model"), "stepping": info.get("stepping"),
    }
    if identity["family"] is None:
        try:
            with open("/proc/cpuinfo") as fh:
                fields = dict(line.split(":", 1) for line in fh.read().split("\n\n")[0].splitlines() if ":" in line)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            identity = {"vendor": fields.get("vendor_id"), "family": _int(fields.get("cpu family")),
                        "model": _int(fields.get("model")), "stepping": _int(fields.get("stepping"))}
        except OSError:
            pass
    return identity


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


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
    identity = cpu_identity()
    return {
        "cpu_model": cpu_model(),
        "cpu_vendor": identity["vendor"],
        "cpu_family": identity["family"],
        "cpu_model_number": identity["model"],
        "cpu_stepping": identity["stepping"],
        "cpu_cache_bytes": cache_sizes(),
        "isa": isa().summary(),
        "cpu_physical_cores": physical_cores(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_flags": interesting,
        "gpus": gpus(),
        "os": platform.system(),
        "os_release": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }
