"""ONNX Runtime's quantization tools, as the suite uses them (one place for both the
onnxruntime backend's int8 and the symmetric Q/DQ graphs made for TensorRT)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from infermatrix.api.announce import installed_version
from infermatrix.api.types import Arrays, ModelSpec
from infermatrix.machine import Isa


class CalibrationReader:
    """onnxruntime's CalibrationDataReader over the model's calibration inputs."""

    def __init__(self, batches: list[Arrays]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> Arrays | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # part of the reader protocol in newer onnxruntime
        pass


def _preprocess(source: Path, folder: Path) -> Path:
    """``quant_pre_process``: shape inference and graph optimization; without it the
    quantizer misses nodes or, in QOperator format, crashes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    preprocessed = folder / "preprocessed.onnx"
    quant_pre_process(str(source), str(preprocessed), skip_symbolic_shape=False)
    return preprocessed


@dataclasses.dataclass(frozen=True)
class OrtInt8Recipe:
    """How the onnxruntime backend quantizes for the CPU at hand, and why."""

    reduce_range: bool
    kernel: str
    reason: str


def cpu_int8_recipe(isa: Isa) -> OrtInt8Recipe:
    """uint8 activations × int8 per-channel weights (the fast MLAS kernels) everywhere;
    without VNNI the weights keep to 7 bits.

    Without VNNI, MLAS's u8s8 kernels multiply with VPMADDUBSW, which adds two
    u8×s8 products in int16 and saturates; onnxruntime's quantization docs name
    ``reduce_range`` (7-bit weights: 255·63·2 < 2^15) or U8U8 as the remedies.
    Measured on mobilenet_v2 (the model that showed it), with MLAS's real AVX2 kernels
    run under QEMU's Zen 3 CPU model: cosine to fp32 0.946 full range, 0.971 with
    reduce_range, 0.975 with U8U8; on this VNNI CPU 0.973 full range. reduce_range keeps
    the u8s8 kernels (the issue measured them 1.67× faster than fp32 on a real Zen 3);
    U8U8's AVX2 kernels widen to int16 first, and their speed could not be measured
    on a real AVX2 CPU here. MLAS picks its kernels by CPUID and ignores
    ``ONEDNN_MAX_CPU_ISA``, so the CPU's own flags decide.
    """
    if isa.int8_vnni:
        return OrtInt8Recipe(False, isa.int8_kernel(),
                             "VNNI accumulates u8 x s8 in 32 bits: full 8-bit weights cannot saturate")
    return OrtInt8Recipe(True, isa.int8_kernel(),
                         "no VNNI (avx512_vnni/avx_vnni/amx_int8): MLAS's u8s8 kernels use VPMADDUBSW, whose int16 "
                         "pair sums saturate; 7-bit weights (reduce_range) keep them exact, as onnxruntime's "
                         "quantization docs advise")


def quantize_static_qdq(source: Path, target: Path, model: ModelSpec, symmetric: bool,
                        reduce_range: bool = False) -> str:
    """Static int8 in QDQ format, per-channel int8 weights, MinMax calibration on the
    model's calibration inputs. ``symmetric=False``: uint8 activations (the fast
    combination on x86); ``symmetric=True``: int8 activations with zero points of 0, as
    TensorRT requires. ``reduce_range``: 7-bit weights, for CPUs without VNNI (see
    :func:`cpu_int8_recipe`). Written atomically (rename in ``target``'s directory).
    Returns a description of the tool and settings, for the results."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        written = Path(tmp) / target.name
        quantize_static(
            str(_preprocess(source, Path(tmp))),
            str(written),
            CalibrationReader(model.calibration_inputs(batch_size=1)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {},
        )
        written.replace(target)
    activations = "symmetric int8 activations" if symmetric else "uint8 activations"
    weights = "7-bit (reduce_range) int8 per-channel weights" if reduce_range else "int8 per-channel weights"
    return (f"onnxruntime {installed_version('onnxruntime')} quant_pre_process + quantize_static QDQ, "
            f"{activations}, {weights}, MinMax calibration")


def quantize_dynamic_int8(source: Path, target: Path, reduce_range: bool = False) -> str:
    """Dynamic int8 (int8 weights, u8 activations quantized per call). ``reduce_range``: 7-bit
    weights for CPUs without VNNI — the same u8s8 MLAS kernels as static int8, so the same
    remedy (onnxruntime's docs name it for both); not measured on an AVX2 CPU here."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        written = Path(tmp) / target.name
        quantize_dynamic(str(_preprocess(source, Path(tmp))), str(written), weight_type=QuantType.QInt8,
                         reduce_range=reduce_range)
        written.replace(target)
    weights = "7-bit (reduce_range) int8 weights" if reduce_range else "int8 weights"
    return f"onnxruntime {installed_version('onnxruntime')} quant_pre_process + quantize_dynamic, {weights}"
