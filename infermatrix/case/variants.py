"""The variant axis: a model transformed (pruned, distilled, quantization-aware trained)
measured as a model of its own.

A plugin announces :class:`~infermatrix.api.types.VariantSpec` objects
(``pytest_infermatrix_variants``); :func:`expand` makes, for every model a variant applies
to, a :class:`~infermatrix.api.types.ModelSpec` named ``<model>.<variant>`` whose torch form
is the transformed module. Everything downstream — the ONNX export, the fp32 reference, the
accuracy gate, every backend — reads that module through
:func:`infermatrix.gate.reference.build_torch_model`, so a variant runs wherever its
model's torch form runs. A Keras form is written layer by layer, so a variant has one only
where it says which (``VariantSpec.keras``): the original's for a variant that keeps its
layers and at most narrows them (:func:`same_layers`: sparsity, channel pruning), a
student's own for a distilled student; the Keras backends fill it from the variant's
weights. A variant without one is skipped there, with the reason.

The transformation runs once per (model, weights, variant) and is cached: as a state dict
where the variant can build an empty module of its structure (``VariantSpec.skeleton``),
else as the whole pickled module (torch-pruning's narrowed layers exist only as made).
Two accuracy questions stay apart: the gate compares each backend with the *variant's*
fp32 reference, and :func:`compare` (stored beside the cached module) says how far the
variant moved from the original model.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infermatrix.api.types import FORM_KERAS, FORM_TORCH, ModelSpec, VariantSpec, make_inputs

MODULE_FILE = "variant-module.pt"
INFO_FILE = "variant.json"
#: Seeded inputs the original and the variant are compared on: the evaluation seed's own
#: samples (never used to train a variant; training draws from ``TRAIN_SEED`` up).
AGREEMENT_SAMPLES = 64
TRAIN_SEED = 50_000
#: A variant's preparation is bounded by compute, not by counts alone: its fine-tune steps and
#: its agreement check cost in proportion to the network, and at a batch of 8 and 64 held-out
#: samples VGG-19 (39 GFLOP a sample, 11x ResNet-18) took 8.7 minutes for its six variants on
#: 2 cores. So each training step's batch may send at most ``TRAINING_STEP_FLOPS`` through the
#: original, a whole fine-tune at most ``TRAINING_FLOPS``, and the agreement check at most
#: ``AGREEMENT_FLOPS`` (forward FLOPs, torch's FlopCounterMode, a multiply-add counted as 2).
#: ResNet-18 and MobileNetV2 keep every count; ResNet-50 keeps the batch of 8 and the 64
#: samples; the larger ones get smaller batches, fewer samples and, for the 40-step students,
#: fewer steps — never fewer than the minimums.
TRAINING_BATCH = 8
TRAINING_STEP_FLOPS = 70e9
TRAINING_FLOPS = 1.6e12
AGREEMENT_FLOPS = 600e9
MIN_TRAINING_BATCH = 2  # the centered loss needs two samples to have something to tell apart
MIN_TRAINING_STEPS = 10
MIN_AGREEMENT_SAMPLES = 16
#: How ``agreement`` is computed; a cached variant whose figures came another way is made again.
AGREEMENT_METHOD = "centered-by-original-mean"


def variant_name(model: ModelSpec, variant: VariantSpec) -> str:
    return f"{model.name}.{variant.name}"


def applies(model: ModelSpec, variant: VariantSpec) -> bool:
    """Forward models with a torch form (a variant transforms the torch module), and what the
    variant itself accepts."""
    if model.variant_of is not None or model.build_torch is None or model.generation is not None:
        return False
    return variant.applies is None or bool(variant.applies(model))


def expand(models: Sequence[ModelSpec], announced: Sequence[VariantSpec]) -> list[ModelSpec]:
    """A model per (model, variant) the variant applies to, in the announced order."""
    seen: set[str] = set()
    for variant in announced:
        if variant.name in seen:
            raise ValueError(f"two plugins announce a variant named {variant.name!r}; rename one of them")
        seen.add(variant.name)
    return [derive(model, variant) for model in models for variant in announced if applies(model, variant)]


def derive(model: ModelSpec, variant: VariantSpec) -> ModelSpec:
    # The torch form marks that one exists (code asks that); the module itself is built by
    # build_variant, which needs the cache and the original's weights.
    forms: dict[str, Any] = {FORM_TORCH: _built_by_the_cache}
    keras_form = variant.keras(model) if variant.keras is not None else None
    if keras_form is not None:
        forms[FORM_KERAS] = keras_form
    return dataclasses.replace(model, name=variant_name(model, variant), forms=forms,
                               version=f"{model.version}+{variant.name}.{variant.version}",
                               variant_of=(model, variant))


def same_layers(model: ModelSpec) -> Any:
    """``VariantSpec.keras`` for a variant with the original's layers, some narrower (the
    builder reads their widths from the variant's weights): the original's Keras form."""
    return model.build_keras


def _built_by_the_cache() -> Any:
    raise RuntimeError("a variant's torch module comes from infermatrix.gate.reference.build_torch_model "
                       "(it needs the cache and the original's weights), not from its form")


def original_of(model: ModelSpec) -> ModelSpec:
    """The model a variant was made from, with the variant's user weights (``--model-weights``
    names the original; a variant inherits them)."""
    assert model.variant_of is not None
    return dataclasses.replace(model.variant_of[0], weights_path=model.weights_path)


def build_variant(model: ModelSpec, cache_root: Path) -> Any:
    """The variant's fp32 torch module in eval mode: from the cache, else transformed now."""
    import torch

    from infermatrix.cache import atomic_write_bytes
    from infermatrix.gate import weights
    from infermatrix.gate.reference import WEIGHTS_FILE, build_torch_model, model_cache

    assert model.variant_of is not None
    original, variant = original_of(model), model.variant_of[1]
    cache = model_cache(model, cache_root)
    stored = cache.dir / MODULE_FILE
    known = cache.read_json(INFO_FILE)
    if stored.exists() and isinstance(known, dict) and known.get("agreement_method") == AGREEMENT_METHOD:
        try:
            if variant.skeleton is None:
                module = torch.load(stored, map_location="cpu", weights_only=False).eval()
            else:
                module = variant.skeleton(original)
                module.load_state_dict(torch.load(stored, map_location="cpu", weights_only=True), strict=True)
        except Exception:  # a damaged or foreign file: made again below, never trusted
            stored.unlink(missing_ok=True)
        else:
            if not (cache.dir / WEIGHTS_FILE).exists():  # cached before the Keras forms read it
                weights.save_state(module, cache.path(WEIGHTS_FILE))
            return module.eval()
    teacher = build_torch_model(original, cache_root)
    # the original's held-out outputs first: a transformation that reports agreement (QAT) reads them
    theirs = original_outputs(teacher, original, cache_root)
    started = time.perf_counter()
    torch.manual_seed(variant.seed)
    # a copy: transformations change modules in place, and the original is compared below
    made = variant.transform(copy.deepcopy(teacher), original, variant.seed)
    # a transformation may say what its training did: (module, {"training": ...})
    module, training = (made if isinstance(made, tuple) else (made, {}))
    module = module.eval()
    seconds = time.perf_counter() - started
    # the original's and the variant's outputs on the held-out inputs, once for both checks
    ours = outputs(module, original, budget(original, teacher).agreement_samples)
    check_not_collapsed(theirs, ours, model.name)
    info = {"name": variant.name, "description": variant.description, "of": original.name,
            "agreement_method": AGREEMENT_METHOD, "budget": budget(original, teacher).as_dict(),
            "prepare_s": round(seconds, 2), **size_info(module), "original": size_info(teacher),
            "agreement": compare(theirs, ours, original.task), **training}
    buffer = io.BytesIO()
    torch.save(module if variant.skeleton is None else module.state_dict(), buffer)
    atomic_write_bytes(cache.path(MODULE_FILE), buffer.getvalue())
    # as named arrays too, as a model's seeded weights are: what the torch-less Keras backends load
    weights.save_state(module, cache.path(WEIGHTS_FILE))
    cache.write_json(INFO_FILE, info)  # written last: a module without it is made again
    return module


@dataclasses.dataclass(frozen=True)
class Budget:
    """What one model's variants may spend: see ``TRAINING_STEP_FLOPS``."""

    flops_per_sample: int
    training_batch: int
    agreement_samples: int

    def training_steps(self, steps: int, batch_size: int | None = None) -> int:
        """``steps``, or as many as ``TRAINING_FLOPS`` allows at ``batch_size`` (the budget's
        batch unless given), at least the minimum."""
        allowed = int(TRAINING_FLOPS // ((batch_size or self.training_batch) * self.flops_per_sample))
        return min(steps, max(MIN_TRAINING_STEPS, allowed))

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "training_step_flops_limit": TRAINING_STEP_FLOPS,
                "training_flops_limit": TRAINING_FLOPS, "agreement_flops_limit": AGREEMENT_FLOPS}


_budgets: dict[tuple[Any, ...], Budget] = {}


def budget(model: ModelSpec, module: Any) -> Budget:
    """The batch and held-out sample count for ``model``'s variants, from the forward FLOPs of
    ``module`` (the original: its structure, whatever its weights) on one sample; counted once
    per model and process. The limits bound what goes through the original; a student's own
    passes come on top, and the minimums may exceed the limits (VGG-19: 79 GFLOP a step)."""
    key = (model.name, model.version, tuple((s.name, s.shape) for s in model.inputs))
    if key not in _budgets:
        from infermatrix.gate.reference import count_flops

        flops = max(count_flops(module, model), 1)
        _budgets[key] = Budget(
            flops_per_sample=flops,
            training_batch=max(MIN_TRAINING_BATCH, min(TRAINING_BATCH, int(TRAINING_STEP_FLOPS // flops))),
            agreement_samples=max(MIN_AGREEMENT_SAMPLES, min(AGREEMENT_SAMPLES, int(AGREEMENT_FLOPS // flops))))
    return _budgets[key]


class VariantCollapsed(RuntimeError):
    """A variant whose outputs no longer depend on its input: nothing to measure."""


def outputs(module: Any, model: ModelSpec, samples: int | None = None) -> Any:
    """The module's first output on the held-out seeded inputs, one row per sample (as many as
    the model's :func:`budget` allows, unless ``samples`` says)."""
    import torch

    from infermatrix.gate.reference import run_torch

    if samples is None:
        samples = budget(model, module).agreement_samples
    found = run_torch(module, model, make_inputs(model.inputs, samples, model.eval_seed))[0]
    return torch.from_numpy(found).reshape(samples, -1)


_held_out: dict[tuple[str, int], Any] = {}


def original_outputs(teacher: Any, original: ModelSpec, cache_root: Path | None = None) -> Any:
    """:func:`outputs` of the original (``teacher`` must be it), kept for the process and, with
    ``cache_root``, in its cache: every variant of a model compares with the same held-out
    outputs (on VGG-19 each computation is ~5 s of a preparation), and QAT's figures too."""
    import torch

    from infermatrix.cache import CacheDamaged, load_arrays, save_arrays
    from infermatrix.gate.reference import model_cache

    samples = budget(original, teacher).agreement_samples
    key = (original.cache_key(), samples)
    if key in _held_out:
        return _held_out[key]
    path = model_cache(original, cache_root).path(f"held-out-outputs-n{samples}.npz") if cache_root else None
    if path is not None and path.exists():
        try:
            _held_out[key] = torch.from_numpy(load_arrays(path)[0])
            return _held_out[key]
        except CacheDamaged:
            path.unlink(missing_ok=True)  # made again below
    found = outputs(teacher, original, samples)
    if path is not None:
        save_arrays(path, [found.numpy()])
    _held_out[key] = found
    return found


def spread(out: Any) -> float:
    """What tells samples apart in ``out`` (rows: samples), relative to its size."""
    return float((out - out.mean(0, keepdim=True)).norm() / (out.norm() + 1e-30))


def check_not_collapsed(original_out: Any, variant_out: Any, name: str) -> None:
    """Refuse a variant whose training made every input give the same output (seen: a BERT
    student distilled from scratch on noise tokens kept 1e-7 of its teacher's per-sample
    spread); cached, it would reach the accuracy gate as a model with nothing to check."""
    ours, theirs = spread(original_out), spread(variant_out)
    if theirs < 1e-3 * ours:
        raise VariantCollapsed(f"{name}: the variant's outputs no longer depend on its input (per-sample spread "
                               f"{theirs:.1e} of the outputs' size, the original's {ours:.1e}); its training "
                               "collapsed it, so it is not measured — change the variant's steps or learning rate")


def variant_info(model: ModelSpec, cache_root: Path) -> dict[str, Any] | None:
    """What :func:`build_variant` stored: sizes, preparation time, agreement with the original."""
    from infermatrix.gate.reference import model_cache

    if model.variant_of is None:
        return None
    found = model_cache(model, cache_root).read_json(INFO_FILE)
    return found if isinstance(found, dict) else None


def size_info(module: Any) -> dict[str, Any]:
    """Parameters in all, and those that are zero (unstructured pruning keeps the shapes
    and zeroes weights: only the count of non-zeros shows it)."""
    total = nonzero = 0
    for parameter in module.parameters():
        total += parameter.numel()
        nonzero += int((parameter != 0).sum())
    return {"parameters": total, "nonzero_parameters": nonzero, "fp32_bytes": 4 * total}


def compare(original_out: Any, variant_out: Any, task: str) -> dict[str, Any]:
    """Top-1 agreement (classifiers) and the mean and worst per-sample cosine of the outputs,
    both centered by the original's mean over the samples — as the accuracy gate centers
    them (infermatrix.gate.accuracy.agreement_figures, which also gives each case's own
    outputs against the original)."""
    from infermatrix.gate.accuracy import agreement_figures

    return agreement_figures(original_out.numpy(), variant_out.numpy(), task == "classification")


def training_batches(model: ModelSpec, steps: int, batch_size: int) -> list[tuple[Any, ...]]:
    """Seeded training inputs, disjoint from the evaluation and calibration seeds."""
    import torch

    return [tuple(torch.from_numpy(a) for a in make_inputs(model.inputs, batch_size, TRAIN_SEED + step).values())
            for step in range(steps)]


def centered_loss(out: Any, target: Any) -> Any:
    """The teacher's outputs split as the accuracy gate splits them: the part common to the
    batch (its mean) and what tells the samples apart (the rest), each error relative to the
    size of its part, so that the small sample-specific part weighs as much as the large
    common one. (Plain MSE or soft-target KL against a seeded network is spent on the common
    part: students trained so matched its mean and told no two samples apart — centered
    cosine ~0, top-1 agreement 0.)"""
    import torch

    out, target = out.reshape(out.shape[0], -1), target.reshape(target.shape[0], -1)
    mean_t, mean_o = target.mean(0, keepdim=True), out.mean(0, keepdim=True)
    spread = ((target - mean_t) ** 2).mean() + 1e-12
    level = (mean_t ** 2).mean() + 1e-12
    return (torch.nn.functional.mse_loss(out - mean_o, target - mean_t) / spread
            + torch.nn.functional.mse_loss(mean_o, mean_t) / level)


_targets: dict[tuple[str, int], list[Any]] = {}


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def teacher_targets(teacher: Any, model: ModelSpec, batches: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``teacher``'s outputs on :func:`training_batches` ``batches``, kept for the process: a
    model's variants distil from the same original on the same seeded batches (pruned30,
    pruned50, distilled and qat of VGG-19: 70 teacher passes of ~0.65 s, 20 of them distinct).
    A teacher whose first output differs from the one kept is not the original: its own are
    computed, and not kept."""
    import torch

    if not batches:
        return []
    key = (model.cache_key(), int(batches[0][0].shape[0]))
    with torch.no_grad():
        first = _first(teacher(*batches[0])).float()
        kept = _targets.get(key)
        if kept is None:
            kept = _targets[key] = [first]
        elif not torch.equal(kept[0], first):
            kept = [first]  # another teacher than the one kept: its own outputs, not kept
        for batch in batches[len(kept):]:
            kept.append(_first(teacher(*batch)).float())
    return kept[:len(batches)]


def distil(student: Any, teacher: Any, model: ModelSpec, steps: int, batch_size: int | None = None,
           lr: float = 1e-3, sgd: bool = False) -> dict[str, Any]:
    """Train ``student`` toward ``teacher``'s outputs for ``steps`` steps of seeded inputs
    (:func:`centered_loss`; Adam, or SGD with ``sgd``), each a batch of the model's
    :func:`budget` unless ``batch_size`` says, and no more steps than the budget allows.
    Batch-norm statistics stay as they are (eval mode): these inputs are noise, not data whose
    statistics a deployed model should learn. Returns the first and last loss, the batch size
    and the steps taken."""
    import torch

    teacher.eval()
    student.eval()
    if batch_size is None:
        batch_size = budget(model, teacher).training_batch
    steps = budget(model, teacher).training_steps(steps, batch_size)
    batches = training_batches(model, steps, batch_size)
    targets = teacher_targets(teacher, model, batches)
    trained = [p for p in student.parameters() if p.requires_grad]
    # Adam moves every parameter by about ``lr`` whatever its gradient: a fine-tune of a
    # nearly right network (QAT) wants steps in proportion to the gradient, so SGD there
    # Adam fused: its step touches every parameter several times, and on VGG's 133-143 M
    # parameters the per-parameter loop took 1.1 s a step against 0.14 s fused, at a batch of 2
    # more than the student's whole forward pass
    optimizer = torch.optim.SGD(trained, lr=lr) if sgd else torch.optim.Adam(trained, lr=lr, fused=True)
    losses = []
    for batch, target in zip(batches, targets, strict=True):
        out = _first(student(*batch)).float()
        loss = centered_loss(out, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    return {"first_loss": losses[0] if losses else 0.0, "last_loss": losses[-1] if losses else 0.0,
            "batch_size": batch_size, "steps": steps}
