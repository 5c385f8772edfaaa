"""A small seeded CNN with a torch and a Keras form, so the ONNX, OpenVINO, torch and Keras paths are
tested in seconds."""

from __future__ import annotations

from typing import Any

from infermatrix.api.types import FORM_KERAS, FORM_TORCH, InputSpec, ModelSpec


def build() -> Any:
    from collections import OrderedDict

    from torch import nn

    # named layers: PlaidML's tile code takes Keras layer names as identifiers (no leading digit)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 16, 3, padding=1)), ("bn1", nn.BatchNorm2d(16)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1, stride=2)), ("bn2", nn.BatchNorm2d(32)), ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(32, 32, 3, padding=1)), ("bn3", nn.BatchNorm2d(32)), ("relu3", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(32, 10)),
    ]))


def build_keras(keras: Any) -> Any:
    """The same network in Keras (TensorFlow's Keras 3 or PlaidML's 2.2.4), layers named after
    the torch module's so that ``load_torch_state`` fills it from the same weights."""
    from infermatrix.forms.keras import KerasBuilder

    b = KerasBuilder(keras)
    inputs, x = b.nchw_input((3, 32, 32))
    x = b.relu(b.bn(b.conv(x, "conv1", 16, 3, padding=1, bias=True), "bn1"))
    x = b.relu(b.bn(b.conv(x, "conv2", 32, 3, stride=2, padding=1, bias=True), "bn2"))
    x = b.relu(b.bn(b.conv(x, "conv3", 32, 3, padding=1, bias=True), "bn3"))
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return b.model(inputs, b.dense(x, "fc", 10), "tinycnn")


TINY_CNN = ModelSpec(
    name="tinycnn", family="tiny", task="classification", inputs=(InputSpec("input", (3, 32, 32), "float32"),),
    output_names=("logits",), forms={FORM_TORCH: build, FORM_KERAS: build_keras}, default_batch_sizes=(1, 4),
    is_cnn=True, calibration_samples=32, version="2",
)
