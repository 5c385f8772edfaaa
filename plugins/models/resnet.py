"""ResNet-18 and ResNet-50 (torchvision's definitions, seeded weights, 224×224 RGB)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from infermatrix.keras_models import resnet
from infermatrix.types import InputSpec, ModelSpec

IMAGE = (InputSpec("input", (3, 224, 224), "float32"),)


def _resnet18() -> Any:
    from torchvision.models import resnet18

    return resnet18(weights=None)


def _resnet50() -> Any:
    from torchvision.models import resnet50

    return resnet50(weights=None)


MODELS = [
    ModelSpec(
        name="resnet18",
        family="resnet",
        task="classification",
        inputs=IMAGE,
        output_names=("logits",),
        build_torch=_resnet18,
        default_batch_sizes=(1, 8),
        build_keras=functools.partial(resnet, blocks=(2, 2, 2, 2), bottleneck=False, name="resnet18"),
        is_cnn=True,
    ),
    ModelSpec(
        name="resnet50",
        family="resnet",
        task="classification",
        inputs=IMAGE,
        output_names=("logits",),
        build_torch=_resnet50,
        default_batch_sizes=(1,),
        build_keras=functools.partial(resnet, blocks=(3, 4, 6, 3), bottleneck=True, name="resnet50"),
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
