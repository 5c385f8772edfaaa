"""Quantization-aware training: a bounded fine-tune with int8 fake quantization in the loop
(torchao's QAT), measured next to post-training int8 of the original.

``qat`` applies torchao's ``QATConfig`` to every ``nn.Linear`` — int8 per-token asymmetric
activations and int8 per-channel symmetric weights, the scheme of the backends'
``int8-dynamic`` (ONNX Runtime's ``quantize_dynamic``, torchao's dynamic int8) — trains it
toward the original's outputs for ``STEPS`` steps of seeded inputs (SGD,
infermatrix.case.variants.distil), then takes the fake quantizers out again
(``FakeQuantizedLinear.to_linear``). What is left is an fp32 module whose weights have
learnt int8's rounding: its ``int8-dynamic`` cases are QAT + each backend's own int8 tool,
beside the original's ``int8-dynamic`` cases (post-training int8 alone). The variant's
``variant.json`` (and each case's record) keeps the fake-quantized model's agreement with the
original before and after the training: simulated int8 without and with QAT.

torchao's QAT covers Linear and Embedding layers only, so the variant applies to the
Linear-heavy models (the BERT-style encoder); the convolutional networks' QAT (NNCF's, or
PT2E's ``prepare_qat_pt2e``) is not written yet.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import ModelSpec, VariantSpec
from infermatrix.case.variants import same_layers

STEPS = 10
LEARNING_RATE = 1e-4


def quantization_aware(module: Any, model: ModelSpec, seed: int) -> Any:
    import copy

    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    from infermatrix.case.variants import agreement, distil

    teacher = copy.deepcopy(module)
    config = QATConfig(activation_config=IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
                       weight_config=IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True),
                       step="prepare")
    quantize_(module, config)
    fake = [m for m in module.modules() if isinstance(m, FakeQuantizedLinear)]
    if not fake:
        raise RuntimeError(f"{model.name}: torchao's QAT found no Linear layer to fake-quantize")
    before = agreement(teacher, module, model)  # int8 simulated, as post-training quantization leaves it
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    # SGD: steps in proportion to the gradient (Adam's ~lr on every parameter of this
    # nearly right network threw it off: centered agreement 0.76 after 10 steps at 1e-5)
    losses = distil(module, teacher, model, STEPS, lr=LEARNING_RATE, sgd=True)
    after = agreement(teacher, module, model)  # int8 simulated, after QAT

    def unfake(parent: Any) -> None:
        for name, child in parent.named_children():
            if isinstance(child, FakeQuantizedLinear):
                setattr(parent, name, child.to_linear())
            else:
                unfake(child)

    unfake(module)
    assert not any(isinstance(m, FakeQuantizedLinear) for m in module.modules())
    return module, {"training": {"steps": STEPS, "optimizer": f"SGD lr {LEARNING_RATE:g}", **losses,
                                 "int8_simulated_agreement_before": before, "int8_simulated_agreement_after": after}}


def _linear_heavy(model: ModelSpec) -> bool:
    return model.linear_heavy


def _original_structure(model: ModelSpec) -> Any:
    return model.build_torch()  # the shapes are unchanged: the original's definition holds the weights


VARIANTS = [VariantSpec("qat", f"{STEPS} steps of torchao QAT (int8 per-token activations, int8 per-channel "
                        "weights on every Linear) distilled from the original, fake quantizers removed",
                        quantization_aware, _linear_heavy, skeleton=_original_structure, keras=same_layers,
                        version="2")]


@pytest.hookimpl
def pytest_infermatrix_variants() -> list[VariantSpec]:
    return VARIANTS
