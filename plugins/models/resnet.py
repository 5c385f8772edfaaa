"""ResNet-18 and ResNet-50: torchvision's definitions and their Keras forms, seeded weights, 224×224 RGB."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from infermatrix.api.types import FORM_KERAS, FORM_TORCH, InputSpec, ModelSpec
from infermatrix.forms.keras import KerasBuilder

IMAGE = (InputSpec("input", (3, 224, 224), "float32"),)


def _resnet18() -> Any:
    from torchvision.models import resnet18

    return resnet18(weights=None)


def _resnet50() -> Any:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def resnet(keras: Any, blocks: tuple[int, ...], bottleneck: bool, name: str, classes: int = 1000) -> Any:
    """torchvision's ResNet (v1.5: the stride sits on the 3x3 convolution of a bottleneck)."""
    b = KerasBuilder(keras)
    inputs, x = b.nchw_input((3, 224, 224))
    x = b.relu(b.bn(b.conv(x, "conv1", 64, 7, 2, 3), "bn1"))
    x = keras.layers.ZeroPadding2D(1, name=b.unique("pad"))(x)  # after ReLU: zeros act as torch's -inf padding
    x = keras.layers.MaxPooling2D(3, 2, name=b.unique("maxpool"))(x)
    channels = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        for j in range(count):
            stride = 2 if stage > 0 and j == 0 else 1
            p = f"layer{stage + 1}.{j}"
            out = planes * 4 if bottleneck else planes
            shortcut = x
            if stride != 1 or channels != out:
                shortcut = b.bn(b.conv(x, f"{p}.downsample.0", out, 1, stride), f"{p}.downsample.1")
            if bottleneck:
                y = b.relu(b.bn(b.conv(x, f"{p}.conv1", planes, 1), f"{p}.bn1"))
                y = b.relu(b.bn(b.conv(y, f"{p}.conv2", planes, 3, stride, 1), f"{p}.bn2"))
                y = b.bn(b.conv(y, f"{p}.conv3", out, 1), f"{p}.bn3")
            else:
                y = b.relu(b.bn(b.conv(x, f"{p}.conv1", planes, 3, stride, 1), f"{p}.bn1"))
                y = b.bn(b.conv(y, f"{p}.conv2", planes, 3, 1, 1), f"{p}.bn2")
            x = b.relu(b.add(y, shortcut))
            channels = out
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return b.model(inputs, b.dense(x, "fc", classes), name)


MODELS = [
    ModelSpec(
        name="resnet18",
        family="resnet",
        task="classification",
        inputs=IMAGE,
        output_names=("logits",),
        forms={FORM_TORCH: _resnet18,
               FORM_KERAS: functools.partial(resnet, blocks=(2, 2, 2, 2), bottleneck=False, name="resnet18")},
        default_batch_sizes=(1, 8),
        is_cnn=True,
    ),
    ModelSpec(
        name="resnet50",
        family="resnet",
        task="classification",
        inputs=IMAGE,
        output_names=("logits",),
        forms={FORM_TORCH: _resnet50,
               FORM_KERAS: functools.partial(resnet, blocks=(3, 4, 6, 3), bottleneck=True, name="resnet50")},
        default_batch_sizes=(1,),
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
