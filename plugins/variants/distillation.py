"""A distilled student: a smaller network of the same family trained against the
original's outputs (soft targets) for ``STEPS`` steps of seeded inputs.

Students: ResNet → a ResNet of one block per stage (torchvision's ``ResNet``); MobileNetV2 →
width 0.5; VGG-19 → VGG-11; the BERT-style encoder → half its layers. They start from seeded
weights (the originals are seeded too, so nothing better exists to start from) and see
only noise inputs: the agreement with the original that the report shows is what a
bounded distillation on such inputs reaches, not what one on data would.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import ModelSpec, VariantSpec

STEPS = 40
#: Adam from seeded weights; at 1e-3 the encoder student collapsed to one output for every input
LEARNING_RATE = 1e-4


def student_of(model: ModelSpec) -> Any:
    if model.family == "resnet":
        from torchvision.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, [1, 1, 1, 1])
    if model.family == "mobilenet":
        from torchvision.models import mobilenet_v2

        return mobilenet_v2(weights=None, width_mult=0.5)
    if model.family == "vgg":
        from torchvision.models import vgg11

        return vgg11(weights=None)
    if model.family == "bert":
        from plugins.models.bert import LAYERS, build_encoder

        return build_encoder(layers=max(1, LAYERS // 2))
    raise ValueError(f"no student for family {model.family!r}")


def student_keras(model: ModelSpec) -> Any:
    """The student's Keras form, written as the family's models write theirs (widths from the
    student's weights: MobileNetV2 at width 0.5 is the original's form, narrower); the encoder
    has none."""
    import functools

    if model.family == "resnet":
        from plugins.models.resnet import resnet

        return functools.partial(resnet, blocks=(1, 1, 1, 1), bottleneck=False, name=f"{model.name}_distilled")
    if model.family == "mobilenet":
        return model.build_keras
    if model.family == "vgg":
        from plugins.models.vgg import VGG11_FEATURES, vgg_keras

        return functools.partial(vgg_keras, features=VGG11_FEATURES, name=f"{model.name}_distilled")
    return None


def distilled(module: Any, model: ModelSpec, seed: int) -> Any:
    import torch

    from infermatrix.api.types import make_inputs
    from infermatrix.case.variants import distil
    from infermatrix.gate import weights

    student = student_of(model)
    weights.seed_module(student, model.weight_seed + 7)
    stat_batches = [tuple(torch.from_numpy(a) for a in make_inputs(model.inputs, 4, model.weight_seed + 1 + i).values())
                    for i in range(4)]
    weights.estimate_batchnorm_statistics(student, stat_batches)
    losses = distil(student, module, model, STEPS, lr=LEARNING_RATE)
    return student, {"training": {"optimizer": f"Adam lr {LEARNING_RATE:g}", **losses}}


def _has_student(model: ModelSpec) -> bool:
    return model.family in ("resnet", "mobilenet", "vgg", "bert")


VARIANTS = [VariantSpec("distilled", f"a smaller student of the family distilled for up to {STEPS} steps "
                        "(fewer where the compute budget says)",
                        distilled, _has_student, skeleton=student_of, keras=student_keras, version="3")]


@pytest.hookimpl
def pytest_infermatrix_variants() -> list[VariantSpec]:
    return VARIANTS
