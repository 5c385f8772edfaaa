"""VGG-19, the network of the seed benchmark (Keras VGG19, batch 8): its default batch is 8, and
its inputs are the seed's — 32x32 images, each pixel repeated 7x on both axes to 224x224."""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.keras_models import vgg19
from infermatrix.types import InputSpec, ModelSpec


def _vgg19() -> Any:
    from torchvision.models import vgg19

    return vgg19(weights=None)


MODELS = [
    ModelSpec(
        name="vgg19",
        family="vgg",
        task="classification",
        inputs=(InputSpec("input", (3, 224, 224), "float32", repeat=7),),
        output_names=("logits",),
        build_torch=_vgg19,
        default_batch_sizes=(8,),
        build_keras=vgg19,
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
