"""MobileNetV2 (torchvision's definition and its Keras form, seeded weights, 224×224 RGB)."""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import FORM_KERAS, FORM_TORCH, InputSpec, ModelSpec
from infermatrix.forms.keras import KerasBuilder


def _mobilenet_v2() -> Any:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None)


MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2_keras(keras: Any, name: str = "mobilenet_v2", classes: int = 1000) -> Any:
    """torchvision's MobileNetV2 (width 1.0): inverted residuals, ReLU6, depthwise 3x3."""
    b = KerasBuilder(keras)
    inputs, x = b.nchw_input((3, 224, 224))
    x = b.relu(b.bn(b.conv(x, "features.0.0", 32, 3, 2, 1), "features.0.1"), 6.0)
    channels, index = 32, 1
    for expand, out, repeat, first_stride in MOBILENET_V2_SETTINGS:
        for i in range(repeat):
            stride = first_stride if i == 0 else 1
            p = f"features.{index}.conv"
            y, k = x, 0
            if expand != 1:
                y = b.relu(b.bn(b.conv(y, f"{p}.0.0", channels * expand, 1), f"{p}.0.1"), 6.0)
                k = 1
            y = b.relu(b.bn(b.depthwise(y, f"{p}.{k}.0", 3, stride, 1), f"{p}.{k}.1"), 6.0)
            y = b.bn(b.conv(y, f"{p}.{k + 1}", out, 1), f"{p}.{k + 2}")
            x = b.add(x, y) if stride == 1 and channels == out else y
            channels, index = out, index + 1
    x = b.relu(b.bn(b.conv(x, f"features.{index}.0", 1280, 1), f"features.{index}.1"), 6.0)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return b.model(inputs, b.dense(x, "classifier.1", classes), name)


MODELS = [
    ModelSpec(
        name="mobilenet_v2",
        family="mobilenet",
        task="classification",
        inputs=(InputSpec("input", (3, 224, 224), "float32"),),
        output_names=("logits",),
        forms={FORM_TORCH: _mobilenet_v2, FORM_KERAS: mobilenet_v2_keras},
        default_batch_sizes=(1, 8),
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
