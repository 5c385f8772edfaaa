"""ONNX Runtime's quantization tools, as the suite uses them (one place for both the
onnxruntime backend's int8 and the symmetric Q/DQ graphs made for TensorRT)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from infermatrix.announce import installed_version
from infermatrix.types import Arrays, ModelSpec


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


def quantize_static_qdq(source: Path, target: Path, model: ModelSpec, symmetric: bool) -> str:
    """Static int8 in QDQ format, per-channel int8 weights, MinMax calibration on the
    model's calibration inputs. ``symmetric=False``: uint8 activations (the fast
    combination on x86 with VNNI); ``symmetric=True``: int8 activations with zero points
    of 0, as TensorRT requires. Written atomically (rename in ``target``'s directory).
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
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {},
        )
        written.replace(target)
    activations = "symmetric int8 activations" if symmetric else "uint8 activations"
    return (f"onnxruntime {installed_version('onnxruntime')} quant_pre_process + quantize_static QDQ, "
            f"{activations}, int8 per-channel weights, MinMax calibration")


def quantize_dynamic_int8(source: Path, target: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        written = Path(tmp) / target.name
        quantize_dynamic(str(_preprocess(source, Path(tmp))), str(written), weight_type=QuantType.QInt8)
        written.replace(target)
    return f"onnxruntime {installed_version('onnxruntime')} quant_pre_process + quantize_dynamic, int8 weights"
