"""Structured channel pruning: channels really removed (torch-pruning), then a short
fine-tune toward the original's outputs to recover agreement.

``pruned30`` / ``pruned50`` remove 30% / 50% of the channels of every prunable layer group
(torch-pruning's dependency graph keeps residual additions and depthwise convolutions
consistent), ranked by the L2 norm of each group's weights; the classifier's outputs are
kept. The pruned network is then distilled from the original for ``RECOVERY_STEPS`` steps
of seeded inputs (infermatrix.case.variants.distil). Convolutional networks only: the
attention of the encoder reshapes by head count, which channel removal would break.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import ModelSpec, VariantSpec
from infermatrix.case.variants import same_layers

RECOVERY_STEPS = 20


def prune_channels(module: Any, model: ModelSpec, ratio: float) -> Any:
    import copy

    import torch
    import torch_pruning as tp

    from infermatrix.api.types import make_inputs
    from infermatrix.case.variants import distil

    teacher = copy.deepcopy(module)
    example = tuple(torch.from_numpy(a) for a in make_inputs(model.inputs, 1, model.eval_seed).values())
    classifier_outputs = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=classifier_outputs, round_to=8)
    pruner.step()
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    losses = distil(module, teacher, model, RECOVERY_STEPS, lr=1e-4)
    return module, {"training": {"optimizer": "Adam lr 0.0001", **losses}}


def _pruned(ratio: float) -> Any:
    def transform(module: Any, model: ModelSpec, seed: int) -> Any:
        return prune_channels(module, model, ratio)

    return transform


def _convolutional(model: ModelSpec) -> bool:
    return model.is_cnn


VARIANTS = [
    VariantSpec(f"pruned{int(ratio * 100)}",
                f"{int(ratio * 100)}% of channels removed (torch-pruning, L2 group magnitude), "
                f"then up to {RECOVERY_STEPS} steps distilled from the original",
                _pruned(ratio), _convolutional, keras=same_layers, version="3")
    for ratio in (0.3, 0.5)
]


@pytest.hookimpl
def pytest_infermatrix_variants() -> list[VariantSpec]:
    return VARIANTS
