"""What every Keras form of a model shares: the layer builder and the weight transfer.

A model module (``plugins/models/*.py``) writes its Keras form with :class:`KerasBuilder`
against the Keras API that Keras 3 (TensorFlow) and Keras 2.2.4 (PlaidML) share: the
``keras`` module is passed in. Layers that carry weights are named after torch's
``state_dict`` prefixes (``layer1.0.conv1`` -> ``layer1__0__conv1``), so
:func:`load_torch_state` can fill any of these models from the cached seeded (or user)
weights.

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

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from infermatrix.api.types import ModelSpec

BN_EPSILON = 1e-5  # torch's default; Keras's is 1e-3

#: The torch weights a variant's Keras form is being built for (:func:`build_from_torch_state`).
#: A model module writes its form with its definition's widths and the builder's signature
#: is only ``keras``; a channel-pruned variant has the same layers, narrower, so while this
#: is set each weighted layer takes its width from the weights it will be given.
_WIDTHS_FROM: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "infermatrix_keras_widths_from", default=None)


def layer_name(torch_prefix: str) -> str:
    return torch_prefix.replace(".", "__")


class KerasBuilder:
    def __init__(self, keras: Any) -> None:
        self.layers = keras.layers
        self.keras = keras
        self._n = 0
        self._state = _WIDTHS_FROM.get()

    def width(self, prefix: str, written: int) -> int:
        """The layer's output width: as written, or (a variant's form) that of its weights."""
        if self._state is None or f"{prefix}.weight" not in self._state:
            return written
        return int(np.shape(self._state[f"{prefix}.weight"])[0])

    def unique(self, kind: str) -> str:
        self._n += 1
        return f"{kind}_{self._n}"

    def conv(self, x: Any, prefix: str, filters: int, kernel: int, stride: int = 1, padding: int = 0,
             bias: bool = False) -> Any:
        L = self.layers
        if padding:
            x = L.ZeroPadding2D(padding, name=self.unique("pad"))(x)
        return L.Conv2D(self.width(prefix, filters), kernel, strides=stride, padding="valid", use_bias=bias,
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
        return self.layers.Dense(self.width(prefix, units), name=layer_name(prefix))(x)

    def nchw_input(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        inputs = self.layers.Input(shape=shape, name="input")
        return inputs, self.layers.Permute((2, 3, 1), name="nchw_to_nhwc")(inputs)

    def model(self, inputs: Any, outputs: Any, name: str) -> Any:
        return self.keras.models.Model(inputs, outputs, name=name)


def build_from_torch_state(model: ModelSpec, keras: Any, state: Mapping[str, Any],
                           dtype: str = "float32") -> tuple[Any, int]:
    """``model``'s Keras form built and filled from torch's ``state``: the network and the
    number of tensors set.

    A variant's form takes each layer's width from ``state`` (see ``_WIDTHS_FROM``); a
    model's own form keeps the widths it is written with, so weights of another shape stay
    an error rather than a different network.
    """
    assert model.build_keras is not None  # the matrix skips models without one
    token = _WIDTHS_FROM.set(state if model.variant_of is not None else None)
    try:
        net = model.build_keras(keras)
    finally:
        _WIDTHS_FROM.reset(token)
    return net, load_torch_state(net, state, dtype)


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
