"""A small seeded CNN with a torch and a Keras form, so the ONNX, OpenVINO, torch and Keras paths are
tested in seconds."""

from __future__ import annotations

from typing import Any

from infermatrix.api.types import FORM_KERAS, FORM_TORCH, InputSpec, ModelSpec


def build() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def build_keras(keras: Any) -> Any:
    """The same network in Keras (TensorFlow's Keras 3 or PlaidML's 2.2.4), layers named after
    the torch module's indices so that ``load_torch_state`` fills it from the same weights."""
    from infermatrix.forms.keras import KerasBuilder

    b = KerasBuilder(keras)
    inputs, x = b.nchw_input((3, 32, 32))
    x = b.relu(b.bn(b.conv(x, "0", 16, 3, padding=1, bias=True), "1"))
    x = b.relu(b.bn(b.conv(x, "3", 32, 3, stride=2, padding=1, bias=True), "4"))
    x = b.relu(b.bn(b.conv(x, "6", 32, 3, padding=1, bias=True), "7"))
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return b.model(inputs, b.dense(x, "11", 10), "tinycnn")


TINY_CNN = ModelSpec(
    name="tinycnn", family="tiny", task="classification", inputs=(InputSpec("input", (3, 32, 32), "float32"),),
    output_names=("logits",), forms={FORM_TORCH: build, FORM_KERAS: build_keras}, default_batch_sizes=(1, 4),
    is_cnn=True, calibration_samples=32,
)
