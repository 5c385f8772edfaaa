"""Unstructured magnitude pruning: the smallest weights set to zero, shapes unchanged.

``sparse50`` / ``sparse90`` zero 50% / 90% of the weights of every convolution and linear
layer, chosen globally by magnitude (the mask of ``torch.nn.utils.prune.global_unstructured``,
applied for good). No fine-tune: the point of this variant is what each backend makes of zeros —
dense kernels run them at the dense speed, so expect no speed-up where a backend has no
sparse kernels; the trade-off table shows it.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import ModelSpec, VariantSpec
from infermatrix.case.variants import same_layers


def zero_smallest(module: Any, sparsity: float) -> Any:
    """Zero the ``sparsity`` share of all conv and linear weights with the smallest magnitude,
    ranked globally — the mask of ``torch.nn.utils.prune.global_unstructured`` with
    ``L1Unstructured`` (the test compares the two), found by one selection instead of its
    ``topk``: on VGG-19's 143 M weights ``topk`` of 90% of them took ~40 s, ``kthvalue`` takes
    about a second. Ties at the threshold are zeroed in layer order until the count is exact."""
    import torch

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        magnitudes = torch.cat([layer.weight.detach().abs().flatten() for layer in layers])
        count = round(sparsity * magnitudes.numel())  # as torch.nn.utils.prune counts ``amount``
        if count == 0:
            return module
        threshold = torch.kthvalue(magnitudes, count).values
        zero = magnitudes < threshold
        missing = count - int(zero.sum())  # ties at the threshold, zeroed in layer order
        if missing > 0:
            zero[(magnitudes == threshold).nonzero().squeeze(1)[:missing]] = True
        for layer, mask in zip(layers, torch.split(zero, [layer.weight.numel() for layer in layers]), strict=True):
            layer.weight.masked_fill_(mask.view_as(layer.weight), 0.0)
    return module


def _sparse(sparsity: float) -> Any:
    def transform(module: Any, model: ModelSpec, seed: int) -> Any:
        return zero_smallest(module, sparsity)

    return transform


def _original_structure(model: ModelSpec) -> Any:
    return model.build_torch()  # the shapes are unchanged: the original's definition holds the weights


VARIANTS = [
    VariantSpec(f"sparse{int(s * 100)}", f"{int(s * 100)}% of conv/linear weights zeroed by global magnitude",
                _sparse(s), skeleton=_original_structure, keras=same_layers, version="2")
    for s in (0.5, 0.9)
]


@pytest.hookimpl
def pytest_infermatrix_variants() -> list[VariantSpec]:
    return VARIANTS
