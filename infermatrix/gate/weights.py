"""Seeded, framework-neutral weights for the models built in code.

torch's own initializers depend on torch's RNG and may change between releases; the
suite's weights must not, because the ONNX export, the fp32 reference and every other
framework's copy (Keras) are keyed by the model's content. So every parameter is drawn
from a numpy generator seeded per model, with the usual scaling rules (He for
convolutions, 1/sqrt(fan_in) for linear layers), and batch-norm statistics are then
estimated on seeded data so that activations stay in a trained network's range
(identity statistics let a deep ResNet's activations grow by orders of magnitude,
which would make fp16/bf16 comparisons meaningless). The finished weights are
stored as ``.npz`` in the cache, so every later build loads the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from infermatrix.cache import CacheDamaged, load_named_arrays, save_named_arrays


def seed_module(module: Any, seed: int) -> None:
    """Overwrite every parameter and buffer of ``module`` from a numpy generator."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)

    def fill(tensor: torch.Tensor, values: np.ndarray) -> None:
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(values.astype(np.float32)).reshape(tensor.shape))

    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear)):
            fan_in = int(np.prod(sub.weight.shape[1:]))
            gain = 2.0 if isinstance(sub, nn.Conv2d) else 1.0
            fill(sub.weight, rng.normal(0.0, np.sqrt(gain / fan_in), sub.weight.shape))
            if sub.bias is not None:
                fill(sub.bias, rng.normal(0.0, 0.01, sub.bias.shape))
        elif isinstance(sub, (nn.BatchNorm2d, nn.LayerNorm)):
            if sub.weight is not None:
                fill(sub.weight, rng.uniform(0.8, 1.2, sub.weight.shape))
                fill(sub.bias, rng.normal(0.0, 0.05, sub.bias.shape))
        elif isinstance(sub, nn.Embedding):
            fill(sub.weight, rng.normal(0.0, 0.5, sub.weight.shape))


def estimate_batchnorm_statistics(module: Any, batches: list[Any]) -> None:
    """Set batch-norm running statistics to the cumulative average over ``batches``."""
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: order-independent
    module.train()
    with torch.no_grad():
        for batch in batches:
            module(*batch)
    module.eval()


def save_state(module: Any, path: Path) -> None:
    """Store ``module``'s state as a sealed ``.npz``, atomically (a crash leaves no half file)."""
    save_named_arrays(path, {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})


def load_state(module: Any, path: Path) -> None:
    """Load a stored state; :class:`CacheDamaged` if the file is damaged or does not fit."""
    import torch

    arrays = load_named_arrays(path)
    try:
        module.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    except RuntimeError as exc:
        raise CacheDamaged(path, f"does not fit the model: {str(exc)[:200]}") from None
