"""Quantization-aware training: a bounded fine-tune with int8 fake quantization in the loop
(torchao's QAT), measured next to post-training int8 of the original.

One variant, ``qat``, two of torchao's QAT flows, each simulating the int8 scheme the
backends then apply:

- **Linear-heavy models** (the BERT-style encoder): torchao's ``QATConfig`` on every
  ``nn.Linear`` — int8 per-token asymmetric activations and int8 per-channel symmetric
  weights, the scheme of the backends' ``int8-dynamic`` (ONNX Runtime's ``quantize_dynamic``,
  torchao's dynamic int8); the fake quantizers are taken out again with
  ``FakeQuantizedLinear.to_linear``.
- **Convolutional networks**: PT2E's ``prepare_qat_pt2e`` with ``X86InductorQuantizer``'s QAT
  configuration — static int8, per-channel symmetric weights and per-tensor activations,
  convolution and batch norm fused as at inference: the scheme of the torch backend's
  ``int8`` and close to ONNX Runtime's and OpenVINO's static int8. The module is exported,
  prepared, trained, and its trained weights are loaded back into the original structure.

Both train toward the original's outputs for ``STEPS`` steps of seeded inputs (SGD,
infermatrix.case.variants.distil) with batch-norm statistics frozen (the inputs are noise).
What is left is an fp32 module whose weights have learnt int8's rounding: its int8 cases are
QAT + each backend's own int8 tool, beside the original's int8 cases (post-training int8
alone) — each case's ``agreement_with_original`` answers which is closer to the original.
``variant.json`` (and each case's record) also keeps the fake-quantized model's agreement
with the original before and after the training: simulated int8 without and with QAT.
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

    from infermatrix.case.variants import compare, distil, original_outputs, outputs

    teacher = copy.deepcopy(module)
    config = QATConfig(activation_config=IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
                       weight_config=IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True),
                       step="prepare")
    quantize_(module, config)
    fake = [m for m in module.modules() if isinstance(m, FakeQuantizedLinear)]
    if not fake:
        raise RuntimeError(f"{model.name}: torchao's QAT found no Linear layer to fake-quantize")
    theirs = original_outputs(teacher, model)  # the original's held-out outputs, for both figures
    # int8 simulated, as post-training int8 leaves it
    before = compare(theirs, outputs(module, model, len(theirs)), model.task)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    # SGD: steps in proportion to the gradient (Adam's ~lr on every parameter of this
    # nearly right network threw it off: centered agreement 0.76 after 10 steps at 1e-5)
    losses = distil(module, teacher, model, STEPS, lr=LEARNING_RATE, sgd=True)
    after = compare(theirs, outputs(module, model, len(theirs)), model.task)  # int8 simulated, after QAT

    def unfake(parent: Any) -> None:
        for name, child in parent.named_children():
            if isinstance(child, FakeQuantizedLinear):
                setattr(parent, name, child.to_linear())
            else:
                unfake(child)

    unfake(module)
    assert not any(isinstance(m, FakeQuantizedLinear) for m in module.modules())
    return module, {"training": {"optimizer": f"SGD lr {LEARNING_RATE:g}", **losses,
                                 "int8_simulated_agreement_before": before, "int8_simulated_agreement_after": after}}


def quantization_aware_convolutional(module: Any, model: ModelSpec, seed: int) -> Any:
    """PT2E QAT (X86InductorQuantizer, static int8) of a convolutional network."""
    import copy

    import torch
    from torchao.quantization.pt2e import allow_exported_model_train_eval, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from infermatrix.api.types import make_inputs
    from infermatrix.case.variants import compare, distil, original_outputs, outputs

    teacher = copy.deepcopy(module)
    example = tuple(torch.from_numpy(a) for a in make_inputs(model.inputs, 2, model.eval_seed).values())
    batch = torch.export.Dim("batch", min=1, max=4096)
    # QAT wants the training graph (batch norm as in training, so that it can be fused with
    # the convolution); it is put back to inference behaviour right after preparing
    graph = torch.export.export(module.train(), example, dynamic_shapes=tuple({0: batch} for _ in example)).module()
    separate_reused_activations(graph)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = prepare_qat_pt2e(graph, quantizer)
    move_exported_model_to_eval(prepared)  # batch norm keeps its statistics, dropout is off
    allow_exported_model_train_eval(prepared)  # distil() calls eval(): torchao's own switch, not nn.Module's
    theirs = original_outputs(teacher, model)  # the original's held-out outputs, for both figures
    before = compare(theirs, outputs(prepared, model, len(theirs)), model.task)
    for parameter in prepared.parameters():
        parameter.requires_grad_(True)
    losses = distil(prepared, teacher, model, STEPS, lr=LEARNING_RATE, sgd=True)
    after = compare(theirs, outputs(prepared, model, len(theirs)), model.task)
    # the trained weights, back in the original's structure (the exported graph keeps their names)
    names = set(teacher.state_dict())
    trained = {k: v.detach().clone() for k, v in prepared.state_dict().items() if k in names}
    result = copy.deepcopy(teacher)
    result.load_state_dict(trained, strict=True)
    for name, value in result.named_buffers():
        if "running_" in name and not torch.equal(value, teacher.get_buffer(name)):
            raise RuntimeError(f"{model.name}: QAT changed batch-norm statistics {name}: it trained in training "
                               "mode on noise inputs, which would make the variant's statistics the noise's")
    return result, {"training": {"optimizer": f"SGD lr {LEARNING_RATE:g}", **losses,
                                 "scheme": "PT2E X86InductorQuantizer QAT: static int8, per-channel weights",
                                 "int8_simulated_agreement_before": before, "int8_simulated_agreement_after": after}}


def separate_reused_activations(graph: Any) -> None:
    """Give each call of a reused ReLU module its own source in the exported graph.

    torchvision's residual blocks call one ``self.relu`` twice; the quantizer's fusion
    patterns group nodes by the module they came from, find two outputs in one group and
    refuse ("Input partition has more than one output node", pytorch/ao#4478). The calls
    are separate operations, so each is named as one.
    """
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (path, kind) = list(stack.items())[-1]
        if "ReLU" not in str(kind):
            continue
        calls[path] = calls.get(path, 0) + 1
        if calls[path] > 1:
            node.meta["nn_module_stack"] = {**stack, key: (f"{path}@call{calls[path]}", kind)}


def quantization_aware_any(module: Any, model: ModelSpec, seed: int) -> Any:
    if model.linear_heavy:
        return quantization_aware(module, model, seed)
    return quantization_aware_convolutional(module, model, seed)


def _quantizable(model: ModelSpec) -> bool:
    return model.linear_heavy or model.is_cnn


def _original_structure(model: ModelSpec) -> Any:
    return model.build_torch()  # the shapes are unchanged: the original's definition holds the weights


VARIANTS = [VariantSpec("qat", f"{STEPS} steps of torchao QAT distilled from the original, fake quantizers removed: "
                        "int8-dynamic's scheme on every Linear (Linear-heavy models), static int8 by PT2E's "
                        "X86InductorQuantizer (convolutional networks)",
                        quantization_aware_any, _quantizable, skeleton=_original_structure, keras=same_layers,
                        version="3")]


@pytest.hookimpl
def pytest_infermatrix_variants() -> list[VariantSpec]:
    return VARIANTS
