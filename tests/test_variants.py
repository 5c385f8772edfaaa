"""The variant axis: announced variants become models of their own, run by every backend
that reads the torch form, selected with --variants, cached once made."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from infermatrix import host
from infermatrix.api.types import FORM_KERAS, BackendInfo, InputSpec, ModelSpec, Target, VariantSpec
from infermatrix.case import matrix, variants

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def fresh_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with empty per-process memos (budgets, the original's outputs)."""
    for name in ("_budgets", "_held_out", "_targets"):
        monkeypatch.setattr(variants, name, {})


@pytest.fixture(scope="module")
def announced() -> dict[str, ModelSpec]:
    return {m.name: m for m in host.announced(host.plugin_manager().hook)[0]}


def test_every_variant_applies_where_it_can_and_names_itself_model_dot_variant(announced: dict[str, ModelSpec]) -> None:
    names = set(announced)
    for model in ("resnet18", "resnet50", "mobilenet_v2", "vgg19"):
        for variant in ("pruned30", "pruned50", "sparse50", "sparse90", "distilled"):
            assert f"{model}.{variant}" in names
    # channel pruning breaks the encoder's head reshape: not offered there; generation models take none
    assert "bert_base.sparse50" in names and "bert_base.pruned30" not in names
    # QAT: torchao's QATConfig on the Linear-heavy encoder, PT2E's on the convolutional networks
    assert {"bert_base.qat", "resnet18.qat", "mobilenet_v2.qat"} <= names
    assert not any(n.startswith("tinyllama.") for n in names)


def test_variants_are_opt_in_and_selected_by_their_original_and_name(announced: dict[str, ModelSpec]) -> None:
    models = list(announced.values())
    backend = BackendInfo("b", ("cpu",), ("fp32",), forms=("torch",))

    def chosen(selection: matrix.Selection) -> set[str]:
        entries = matrix.build(selection, models, [backend], lambda b: [Target("cpu", "fp32")])
        return {e.case.model.name for e in entries}

    assert not any("." in n for n in chosen(matrix.Selection()))
    picked = chosen(matrix.Selection(models=("resnet18",), variants=("sparse50", "distilled")))
    assert picked == {"resnet18", "resnet18.sparse50", "resnet18.distilled"}
    assert "vgg19.pruned30" in chosen(matrix.Selection(variants=("all",)))
    with pytest.raises(matrix.SelectionError, match="--variants: unknown name 'pruned99'.*pruned30"):
        matrix.validate(matrix.Selection(variants=("pruned99",)), models, [backend])
    with pytest.raises(matrix.SelectionError, match="--models: unknown name 'resnet18.sparse50'"):
        matrix.validate(matrix.Selection(models=("resnet18.sparse50",)), models, [backend])


def test_a_keras_backend_runs_a_variant_with_a_keras_form_and_skips_one_without_saying_why(
        announced: dict[str, ModelSpec]) -> None:
    keras_backend = BackendInfo("tensorflow", ("cpu",), ("fp32",), forms=(FORM_KERAS,))
    fp32 = Target("cpu", "fp32")
    for name in ("resnet18", "resnet18.sparse50", "resnet18.pruned50", "resnet18.distilled", "vgg19.distilled"):
        assert matrix.model_rule(announced[name], fp32, keras_backend) is None, name
    # a variant that declares no Keras form, of a model that has one: the variant is named as the cause
    bare = variants.derive(announced["resnet18"], VariantSpec("rewired", "", lambda m, model, seed: m))
    reason = matrix.model_rule(bare, fp32, keras_backend)
    assert reason is not None and "variant 'rewired' has no keras form" in reason
    # the encoder has no Keras form at all: its variants say that, as the encoder does
    reason = matrix.model_rule(announced["bert_base.distilled"], fp32, keras_backend)
    assert reason is not None and "comes as torch" in reason


def test_a_variant_name_must_fit_an_id() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        VariantSpec("pruned-30", "", lambda m, model, seed: m)
    with pytest.raises(ValueError, match="two plugins announce a variant named 'x'"):
        variants.expand([], [VariantSpec("x", "", lambda m, model, seed: m)] * 2)


@pytest.fixture(scope="module")
def variant_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: a variant is made once and read back by the tests after."""
    return tmp_path_factory.mktemp("variant-cache")


@pytest.mark.parametrize("name, check", [
    ("resnet18.sparse90", "sparse"),
    ("resnet18.pruned50", "pruned"),
    ("resnet18.distilled", "smaller"),
    ("resnet18.qat", "qat"),
])
def test_each_variant_really_transforms_and_is_cached_with_its_agreement(
        variant_cache: Path, announced: dict[str, ModelSpec], name: str, check: str) -> None:
    from infermatrix.gate.reference import build_torch_model, run_torch

    tmp_path = variant_cache
    model = announced[name]
    original = build_torch_model(announced["resnet18"], tmp_path)
    module = build_torch_model(model, tmp_path)
    info = variants.variant_info(model, tmp_path)
    assert info is not None and info["of"] == "resnet18"
    base = variants.size_info(original)
    if check == "sparse":  # shapes kept, 90% of conv/linear weights zero
        assert info["parameters"] == base["parameters"]
        assert info["nonzero_parameters"] < 0.15 * base["parameters"]
    elif check == "pruned":  # channels removed: every conv narrower or equal, far fewer parameters
        assert info["parameters"] < 0.4 * base["parameters"]
        assert module.conv1.out_channels < original.conv1.out_channels
    elif check == "qat":  # the same network, its weights fine-tuned with int8 simulated, its statistics kept
        assert info["parameters"] == info["nonzero_parameters"] == base["parameters"]
        assert torch.equal(module.bn1.running_var, original.bn1.running_var)
        assert not torch.equal(module.conv1.weight, original.conv1.weight)
        training = info["training"]
        assert "X86InductorQuantizer" in training["scheme"]
        # what QAT is for: the int8-simulated network moved toward the original's outputs
        assert (training["int8_simulated_agreement_after"]["cosine_mean"]
                > training["int8_simulated_agreement_before"]["cosine_mean"])
    else:
        assert info["parameters"] < 0.6 * base["parameters"]
    agreement = info["agreement"]
    assert -1 <= agreement["cosine_min"] <= agreement["cosine_mean"] < 1 and 0 <= agreement["top1_agreement"] <= 1
    # cached: the second build reads the same module back, bit for bit
    inputs = model.eval_inputs(2)
    again = build_torch_model(model, tmp_path)
    assert all((a == b).all() for a, b in zip(run_torch(module, model, inputs), run_torch(again, model, inputs),
                                              strict=True))
    # a variant's outputs are its own: not the original's
    assert not all((a == b).all() for a, b in zip(run_torch(original, model, inputs), run_torch(module, model, inputs),
                                                  strict=True))


KERAS_FORWARD = """
import json, sys
from pathlib import Path
import numpy as np
import keras  # before anything imports torch: the two cannot share a process here
from infermatrix import host
from infermatrix.forms.keras import build_from_torch_state
from infermatrix.gate.reference import torch_state

root, names = Path(sys.argv[1]), sys.argv[2:]
models = {m.name: m for m in host.announced(host.plugin_manager().hook)[0]}
found = {}
for name in names:
    model = models[name]
    net, tensors = build_from_torch_state(model, keras, torch_state(model, root))
    np.save(root / f"{name}.keras.npy", np.asarray(net(model.eval_inputs(2)["input"], training=False)))
    found[name] = {"tensors": tensors, "parameters": int(net.count_params()),
                   "conv1_filters": int(net.get_layer("conv1").filters)}
print(json.dumps(found))
"""


def test_a_variants_keras_form_computes_what_its_torch_module_computes(
        variant_cache: Path, announced: dict[str, ModelSpec]) -> None:
    """Sparse (same layers), channel-pruned (same layers, narrower: widths read from the weights)
    and distilled (the student's own form): the Keras form, filled from the variant's cached
    weights alone, gives the variant's outputs — not the original's."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    from infermatrix.gate.reference import build_torch_model, run_torch

    names = ["resnet18.sparse90", "resnet18.pruned50", "resnet18.distilled"]
    expected = {}
    for name in names:
        model = announced[name]
        module = build_torch_model(model, variant_cache)
        numbers = sum(v.numel() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked"))
        expected[name] = (run_torch(module, model, model.eval_inputs(2))[0], numbers)
    proc = subprocess.run([sys.executable, "-c", KERAS_FORWARD, str(variant_cache), *names], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    original = run_torch(build_torch_model(announced["resnet18"], variant_cache), announced["resnet18"],
                         announced["resnet18"].eval_inputs(2))[0]
    for name in names:
        torch_out, parameters = expected[name]
        keras_out = np.load(variant_cache / f"{name}.keras.npy")
        scale = np.abs(torch_out).max()
        assert np.abs(keras_out - torch_out).max() < 1e-4 * scale, name
        assert np.abs(original - torch_out).max() > 1e-2 * scale, name  # the check above could tell them apart
        assert found[name]["parameters"] == parameters, name  # Keras counts batch norm's statistics too
    assert found["resnet18.pruned50"]["conv1_filters"] < 64  # the original's form, narrowed by the weights
    assert found["resnet18.sparse90"]["conv1_filters"] == 64


def test_each_case_is_compared_with_the_original_model_a_variants_case_and_the_originals_alike(
        variant_cache: Path, announced: dict[str, ModelSpec], monkeypatch: pytest.MonkeyPatch) -> None:
    """The trade-off table's agreement: a case's own outputs against the original's fp32
    reference — for the original's cases its own reference, for a variant's the original's,
    never the variant's (that is the gate's question)."""
    from infermatrix.api.types import Case
    from infermatrix.case import runner
    from infermatrix.gate import reference
    from infermatrix.gate.reference import build_torch_model, run_torch

    backend = BackendInfo("fake", ("cpu",), ("fp32",))

    def against_original(name: str) -> dict:
        model = announced[name]
        module = build_torch_model(model, variant_cache)

        class Session:
            config: dict = {}

            def run(self, inputs: dict) -> list:
                return run_torch(module, model, inputs)

        case = Case(model, backend, Target("cpu", "fp32"), 2)
        got = runner.gate_outputs(case, Session(), variant_cache, 8)
        found = runner.agreement_with_original(case, got, reference.reference_outputs(model, 8, variant_cache),
                                               variant_cache)
        assert found is not None
        return found

    assert against_original("resnet18") == {"of": "resnet18", "samples": 8, "cosine_mean": 1.0, "cosine_min": 1.0,
                                            "top1_agreement": 1.0}
    sparse = against_original("resnet18.sparse90")
    assert sparse["of"] == "resnet18" and sparse["samples"] == 8
    assert sparse["cosine_min"] <= sparse["cosine_mean"] < 0.99  # 90% of the weights gone: not the original
    # where the original's reference cannot be had, the record says why instead of a figure
    monkeypatch.setattr(reference, "reference_outputs", lambda *a: (_ for _ in ()).throw(
        reference.ReferenceUnavailable("resnet18: no cached fp32 reference")))
    case = Case(announced["resnet18.sparse90"], backend, Target("cpu", "fp32"), 2)
    assert runner.agreement_with_original(case, [np.zeros((8, 1000))], [np.ones((8, 1000))], variant_cache) == {
        "of": "resnet18", "why": "resnet18: no cached fp32 reference"}


def test_a_variant_cached_without_its_weight_arrays_gets_them_made_in_pytests_process(
        variant_cache: Path, announced: dict[str, ModelSpec]) -> None:
    """The Keras workers read a variant's weights as arrays (they cannot import torch beside
    TensorFlow); a variant cached before those were written gets them from ensure_weights_file,
    which the parent process runs for every case (runner.fill_forward_cache)."""
    from infermatrix.gate import reference

    model = announced["resnet18.pruned50"]
    module = reference.build_torch_model(model, variant_cache)
    arrays = reference.model_cache(model, variant_cache).dir / reference.WEIGHTS_FILE
    arrays.unlink()
    reference.ensure_weights_file(model, variant_cache)
    state = reference.torch_state(model, variant_cache)
    assert set(state) == set(module.state_dict())
    assert all(np.array_equal(state[k], v.numpy()) for k, v in module.state_dict().items())


def test_a_variant_inherits_its_originals_user_weights(tmp_path: Path, announced: dict[str, ModelSpec]) -> None:
    """--model-weights names the original; the variant is made from those weights (its own cache key)."""
    from infermatrix.gate.reference import build_torch_model

    original = announced["resnet18"]
    module = build_torch_model(original, tmp_path)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)
    weights = tmp_path / "w.pth"
    torch.save(module.state_dict(), weights)
    seeded = announced["resnet18.sparse50"]
    mine = dataclasses.replace(seeded, weights_path=str(weights))
    assert mine.cache_key() != seeded.cache_key()
    assert variants.original_of(mine).weights_path == str(weights)


def tiny_mlp() -> object:
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


TINY = ModelSpec(name="tinymlp", family="mlp", task="classification",
                 inputs=(InputSpec("x", (32,), "float32"),),
                 output_names=("logits",), forms={"torch": tiny_mlp}, linear_heavy=True)


def test_qat_trains_with_fake_quantization_and_leaves_a_plain_fp32_module(tmp_path: Path) -> None:
    """torchao's fake-quantized Linear layers are trained, then taken out again: the cached
    variant is the original's structure with new weights (kept as a state dict)."""
    pytest.importorskip("torchao")
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    from infermatrix.gate.reference import build_torch_model
    from plugins.variants import qat

    (variant,) = qat.VARIANTS
    assert variants.applies(TINY, variant)
    model = variants.derive(TINY, variant)
    original = build_torch_model(TINY, tmp_path)
    module = build_torch_model(model, tmp_path)
    assert not any(isinstance(m, FakeQuantizedLinear) for m in module.modules())
    assert [type(m) for m in module] == [type(m) for m in original]
    assert not torch.equal(module[0].weight, original[0].weight)  # trained
    from infermatrix.gate.reference import model_cache

    stored = model_cache(model, tmp_path).dir / variants.MODULE_FILE
    assert isinstance(torch.load(stored, weights_only=True), dict)  # a state dict, not a pickle
    again = build_torch_model(model, tmp_path)
    assert torch.equal(again[0].weight, module[0].weight)
    info = variants.variant_info(model, tmp_path)
    assert info is not None and info["name"] == "qat" and info["agreement"]["samples"] == variants.AGREEMENT_SAMPLES
    training = info["training"]  # simulated int8 against the original, before and after QAT
    assert training["steps"] == qat.STEPS and "SGD" in training["optimizer"]
    for key in ("int8_simulated_agreement_before", "int8_simulated_agreement_after"):
        assert -1 <= training[key]["cosine_mean"] <= 1


def test_a_variant_whose_outputs_no_longer_depend_on_the_input_is_refused(tmp_path: Path) -> None:
    from infermatrix.gate.reference import build_torch_model

    def flatten(module: object, model: ModelSpec, seed: int) -> object:
        with torch.no_grad():
            module[0].weight.zero_()  # every input now gives the same output
        return module

    model = variants.derive(TINY, VariantSpec("flat", "", flatten))
    with pytest.raises(variants.VariantCollapsed, match=r"tinymlp\.flat: the variant's outputs no longer depend"):
        build_torch_model(model, tmp_path)
    assert variants.variant_info(model, tmp_path) is None  # nothing cached


def test_the_centered_loss_weighs_what_tells_samples_apart() -> None:
    """A student that matches the teacher's mean but not its per-sample part scores about 1
    on the centered term: the common part cannot hide the rest."""
    target = torch.randn(8, 10) * 0.01 + 5.0
    mean_only = target.mean(0, keepdim=True).expand(8, 10)
    assert float(variants.centered_loss(mean_only, target)) == pytest.approx(1.0, rel=1e-3)
    assert float(variants.centered_loss(target, target)) == pytest.approx(0.0, abs=1e-9)


def test_a_variants_preparation_is_bounded_by_compute_not_by_counts_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, announced: dict[str, ModelSpec]) -> None:
    """The fine-tune's batch and the agreement's sample count shrink with the network's FLOPs
    (VGG-19's six variants took 8.7 minutes at ResNet-18's counts), within their minimums; the
    models up to ResNet-50 keep the full counts; what was used is recorded with the variant."""
    budgets = {name: variants.budget(announced[name], announced[name].build_torch())
               for name in ("resnet18", "resnet50", "vgg19")}
    for name in ("resnet18", "resnet50"):
        assert (budgets[name].training_batch, budgets[name].agreement_samples) == (8, 64), budgets[name]
    vgg = budgets["vgg19"]
    assert vgg.flops_per_sample > 30e9
    assert (vgg.training_batch, vgg.agreement_samples) == (variants.MIN_TRAINING_BATCH, variants.MIN_AGREEMENT_SAMPLES)

    # a limit of 3 samples' worth gives a batch of 3, and the agreement 20 samples' worth 20
    module = tiny_mlp()
    flops = variants.budget(TINY, module).flops_per_sample
    assert flops == 2 * (32 * 64 + 64 * 10)  # FlopCounterMode: a multiply-add is 2
    monkeypatch.setattr(variants, "_budgets", {})
    monkeypatch.setattr(variants, "TRAINING_STEP_FLOPS", 3 * flops + 1)
    monkeypatch.setattr(variants, "AGREEMENT_FLOPS", 20 * flops)
    assert (variants.budget(TINY, module).training_batch, variants.budget(TINY, module).agreement_samples) == (3, 20)
    teacher, student = tiny_mlp(), tiny_mlp()
    for p in student.parameters():
        p.requires_grad_(True)
    assert variants.distil(student, teacher, TINY, 2)["batch_size"] == 3
    assert variants.outputs(teacher, TINY).shape == (20, 10)

    model = variants.derive(TINY, VariantSpec("halved", "", lambda m, model, seed: m))
    from infermatrix.gate.reference import build_torch_model

    build_torch_model(model, tmp_path)
    info = variants.variant_info(model, tmp_path)
    assert info is not None and info["agreement"]["samples"] == 20
    assert info["budget"]["training_batch"] == 3 and info["budget"]["flops_per_sample"] == flops


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_magnitude_pruning_zeroes_what_torchs_global_unstructured_pruning_zeroes(sparsity: float) -> None:
    """The sparse variants find the global magnitude threshold by one selection (torch's
    ``topk`` of 90% of VGG-19's weights took ~40 s); the zeros are torch.nn.utils.prune's."""
    from torch.nn.utils import prune

    from plugins.variants.sparsity import zero_smallest

    torch.manual_seed(3)
    ours = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    theirs = copy_of(ours)
    zero_smallest(ours, sparsity)
    layers = [(m, "weight") for m in theirs.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    for layer, name in layers:
        prune.remove(layer, name)
    expected = theirs.state_dict()  # (prune.remove re-registers weight: compare by name)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, expected[name]), name
    zeros = sum(int((m.weight == 0).sum()) for m, _ in layers)
    assert zeros == round(sparsity * sum(m.weight.numel() for m, _ in layers))

    # ties at the threshold: exactly the share asked, the smaller magnitudes first
    for small in (0, 50):
        tied = torch.nn.Linear(10, 10, bias=False)
        with torch.no_grad():
            tied.weight.fill_(0.5)
            tied.weight.view(-1)[:small] = -0.1
        zero_smallest(tied, sparsity)
        assert int((tied.weight == 0).sum()) == round(sparsity * 100)
        assert bool((tied.weight.view(-1)[:small] == 0).all())  # every smaller one is among the zeros


def copy_of(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def test_a_fine_tune_takes_no_more_steps_than_its_compute_allows() -> None:
    heavy = variants.Budget(flops_per_sample=int(variants.TRAINING_FLOPS // 40), training_batch=2, agreement_samples=16)
    assert heavy.training_steps(40) == 20 and heavy.training_steps(10) == 10
    assert heavy.training_steps(40, batch_size=4) == variants.MIN_TRAINING_STEPS  # an explicit batch counts
    huge = dataclasses.replace(heavy, flops_per_sample=int(variants.TRAINING_FLOPS))
    assert huge.training_steps(40) == variants.MIN_TRAINING_STEPS
    light = dataclasses.replace(heavy, flops_per_sample=1000)
    assert light.training_steps(40) == 40


def test_a_models_variants_share_the_originals_training_outputs_and_a_foreign_teacher_gets_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    monkeypatch.setattr(variants, "_targets", {})
    torch.manual_seed(5)
    teacher = tiny_mlp()
    twin = copy.deepcopy(teacher)  # what each variant gets: a copy of the original
    calls: list[int] = []
    for module in (teacher, twin):
        module.register_forward_hook(lambda *_: calls.append(1))
    batches = variants.training_batches(TINY, 4, 2)
    first = variants.teacher_targets(teacher, TINY, batches[:2])
    assert len(calls) == 2
    again = variants.teacher_targets(twin, TINY, batches)
    assert len(calls) == 2 + 1 + 2  # one pass to recognise the original, then only the two new batches
    assert all(torch.equal(a, b) for a, b in zip(first, again[:2], strict=True))
    with torch.no_grad():
        assert all(torch.equal(t, twin(*b)) for t, b in zip(again, batches, strict=True))

    other = tiny_mlp()  # another network: its own outputs, and the original's stay kept
    theirs = variants.teacher_targets(other, TINY, batches)
    with torch.no_grad():
        assert all(torch.equal(t, other(*b)) for t, b in zip(theirs, batches, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(variants.teacher_targets(twin, TINY, batches), again, strict=True))
