"""A small seeded CNN with a torch form, so ONNX/OpenVINO paths are tested in seconds."""

from __future__ import annotations

from typing import Any

from infermatrix.api.types import FORM_TORCH, InputSpec, ModelSpec


def build() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


TINY_CNN = ModelSpec(
    name="tinycnn", family="tiny", task="classification", inputs=(InputSpec("input", (3, 32, 32), "float32"),),
    output_names=("logits",), forms={FORM_TORCH: build}, default_batch_sizes=(1, 4), is_cnn=True,
    calibration_samples=32,
)
