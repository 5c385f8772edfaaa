"""VGG-19 (torch and Keras forms), the network of the seed benchmark (Keras VGG19, batch 8): its default batch is 8, and
its inputs are the seed's — 32x32 images, each pixel repeated 7x on both axes to 224x224."""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import FORM_KERAS, FORM_TORCH, InputSpec, ModelSpec
from infermatrix.forms.keras import KerasBuilder


def _vgg19() -> Any:
    from torchvision.models import vgg19

    return vgg19(weights=None)


VGG19_FEATURES: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                         512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
#: torchvision's VGG-11 (configuration "A"): the distilled student's structure
VGG11_FEATURES: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg_keras(keras: Any, features: tuple[int | str, ...] = VGG19_FEATURES, name: str = "vgg19",
              classes: int = 1000) -> Any:
    """torchvision's VGG (no batch norm); ``features.N`` indices count conv, ReLU and pool modules."""
    b = KerasBuilder(keras)
    inputs, x = b.nchw_input((3, 224, 224))
    index = 0
    for v in features:
        if v == "M":
            x = keras.layers.MaxPooling2D(2, 2, name=b.unique("maxpool"))(x)
            index += 1
        else:
            x = b.relu(b.conv(x, f"features.{index}", int(v), 3, 1, 1, bias=True))
            index += 2
    # 7x7 maps at 224x224 (torch's adaptive pool is the identity there); flatten channels-first like torch
    x = keras.layers.Permute((3, 1, 2), name="nhwc_to_nchw")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = b.relu(b.dense(x, "classifier.0", 4096))
    x = b.relu(b.dense(x, "classifier.3", 4096))  # dropout (classifier.2/.5) is the identity at inference
    return b.model(inputs, b.dense(x, "classifier.6", classes), name)


MODELS = [
    ModelSpec(
        name="vgg19",
        family="vgg",
        task="classification",
        inputs=(InputSpec("input", (3, 224, 224), "float32", repeat=7),),
        output_names=("logits",),
        forms={FORM_TORCH: _vgg19, FORM_KERAS: vgg_keras},
        default_batch_sizes=(8,),
        is_cnn=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
