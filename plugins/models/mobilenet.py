"""MobileNetV2 (torchvision's definition, seeded weights, 224×224 RGB)."""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.keras_models import mobilenet_v2
from infermatrix.types import InputSpec, ModelSpec


def _mobilenet_v2() -> Any:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None)


MODELS = [
    ModelSpec(
        name="mobilenet_v2",
        family="mobilenet",
        task="classification",
        inputs=(InputSpec("input", (3, 224, 224), "float32"),),
        output_names=("logits",),
        build_torch=_mobilenet_v2,
        default_batch_sizes=(1, 8),
        build_keras=mobilenet_v2,
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
