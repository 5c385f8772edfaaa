"""ResNet-18 and ResNet-50 (torchvision's definitions, seeded weights, 224×224 RGB)."""

from __future__ import annotations

from typing import Any

import pytest

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
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
