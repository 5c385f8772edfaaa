"""Keras forms of the CNNs, for the same seeded weights as their torch forms.

One builder per architecture, written against the Keras API that Keras 3 (TensorFlow)
and Keras 2.2.4 (PlaidML) share: the ``keras`` module is passed in. Layers that carry
weights are named after torch's ``state_dict`` prefixes (``layer1.0.conv1`` ->
``layer1__0__conv1``), so :func:`load_torch_state` can fill any of these models from
the cached seeded (or user) weights.

Layout, so that every backend computes the same function on the same NCHW inputs:

- the model takes NCHW input like every other backend and transposes to NHWC in its
  first layer (``Permute``), which is part of what a Keras user pays;
- torch pads stride-2 convolutions symmetrically, Keras ``padding="same"`` does not:
  padded convolutions are ``ZeroPadding2D`` + ``padding="valid"``;
- VGG's classifier flattens NCHW feature maps in torch: the Keras model permutes back
  to channels-first before ``Flatten``, so the dense weights are used as they are;
- kernels are transposed OIHW -> HWIO (depthwise: C1HW -> HWC1), dense weights (out, in)
  -> (in, out); batch-norm epsilon is torch's 1e-5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

BN_EPSILON = 1e-5  # torch's default; Keras's is 1e-3


def layer_name(torch_prefix: str) -> str:
    return torch_prefix.replace(".", "__")


class _Builder:
    def __init__(self, keras: Any) -> None:
        self.layers = keras.layers
        self.keras = keras
        self._n = 0

    def unique(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def conv(self, x: Any, prefix: str, filters: int, kernel: int, stride: int = 1, padding: int = 0,
             bias: bool = False) -> Any:
        L = self.layers
        if padding:
            x = L.ZeroPadding2D(padding, name=self.unique("pad"))(x)
        return L.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=bias,
                        name=layer_name(prefix))(x)

    def depthwise(self, x: Any, prefix: str, kernel: int, stride: int, padding: int) -> Any:
        L = self.layers
        if padding:
            x = L.ZeroPadding2D(padding, name=self.unique("pad"))(x)
        return L.DepthwiseConv2D(kernel, strides=stride, padding="valid", use_bias=False,
                                 name=layer_name(prefix))(x)

    def bn(self, x: Any, prefix: str) -> Any:
        return self.layers.BatchNormalization(epsilon=BN_EPSILON, name=layer_name(prefix))(x)

    def relu(self, x: Any, max_value: float | None = None) -> Any:
        return self.layers.ReLU(max_value=max_value, name=self.unique("relu"))(x)

    def add(self, a: Any, b: Any) -> Any:
        return self.layers.Add(name=self.unique("add"))([a, b])

    def dense(self, x: Any, prefix: str, units: int) -> Any:
        return self.layers.Dense(units, name=layer_name(prefix))(x)

    def nchw_input(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        inputs = self.layers.Input(shape=shape, name="input")
        return inputs, self.layers.Permute((2, 3, 1), name="nchw_to_nhwc")(inputs)

    def model(self, inputs: Any, outputs: Any, name: str) -> Any:
        return self.keras.models.Model(inputs, outputs, name=name)


def resnet(keras: Any, blocks: tuple[int, ...], bottleneck: bool, name: str, classes: int = 1000) -> Any:
    """torchvision's ResNet (v1.5: the stride sits on the 3x3 convolution of a bottleneck)."""
    b = _Builder(keras)
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


VGG19_FEATURES: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                         512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19(keras: Any, name: str = "vgg19", classes: int = 1000) -> Any:
    """torchvision's VGG-19 (no batch norm); ``features.N`` indices count conv, ReLU and pool modules."""
    b = _Builder(keras)
    inputs, x = b.nchw_input((3, 224, 224))
    index = 0
    for v in VGG19_FEATURES:
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


MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(keras: Any, name: str = "mobilenet_v2", classes: int = 1000) -> Any:
    """torchvision's MobileNetV2 (width 1.0): inverted residuals, ReLU6, depthwise 3x3."""
    b = _Builder(keras)
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


def load_torch_state(model: Any, state: Mapping[str, np.ndarray], dtype: str = "float32") -> int:
    """Fill every weighted layer of ``model`` from torch's ``state`` (names as above).

    Returns the number of tensors set; a layer without its torch tensors, or a torch
    tensor no layer took, is an error (a silent partial load would give wrong logits).
    """
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise KeyError(f"keras layer needs torch tensor {key!r}, which the weights do not have")
        used.add(key)
        return np.asarray(state[key])

    count = 0
    for layer in model.layers:
        kind = type(layer).__name__
        prefix = layer.name.replace("__", ".")
        if kind == "Conv2D":
            values = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
            if layer.use_bias:
                values.append(take(f"{prefix}.bias"))
        elif kind == "DepthwiseConv2D":
            values = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        elif kind == "BatchNormalization":
            values = [take(f"{prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
        elif kind == "Dense":
            values = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        else:
            continue
        layer.set_weights([np.ascontiguousarray(v).astype(dtype) for v in values])
        count += len(values)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise KeyError(f"torch tensors no keras layer took: {unused[:5]}{' ...' if len(unused) > 5 else ''}")
    return count
