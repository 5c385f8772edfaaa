"""Unstructured magnitude pruning: the smallest weights set to zero, shapes unchanged.

``sparse50`` / ``sparse90`` zero 50% / 90% of the weights of every convolution and linear
layer, chosen globally by magnitude (``torch.nn.utils.prune.global_unstructured``, then made
permanent). No fine-tune: the point of this variant is what each backend makes of zeros —
dense kernels run them at the dense speed, so expect no speed-up where a backend has no
sparse kernels; the trade-off table shows it.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import ModelSpec, VariantSpec
from infermatrix.case.variants import same_layers


def zero_smallest(module: Any, sparsity: float) -> Any:
    import torch
    from torch.nn.utils import prune

    layers = [(m, "weight") for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    for layer, name in layers:
        prune.remove(layer, name)  # the mask applied for good: a plain module with zeros
    return module


def _sparse(sparsity: float) -> Any:
    def transform(module: Any, model: ModelSpec, seed: int) -> Any:
        return zero_smallest(module, sparsity)

    return transform


def _original_structure(model: ModelSpec) -> Any:
    return model.build_torch()  # the shapes are unchanged: the original's definition holds the weights


VARIANTS = [
    VariantSpec(f"sparse{int(s * 100)}", f"{int(s * 100)}% of conv/linear weights zeroed by global magnitude",
                _sparse(s), skeleton=_original_structure, keras=same_layers)
    for s in (0.5, 0.9)
]


@pytest.hookimpl
def pytest_infermatrix_variants() -> list[VariantSpec]:
    return VARIANTS
