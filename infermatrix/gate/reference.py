"""The model's reference side: its torch build, fp32 reference outputs, FLOP count.

All three need torch the first time and are cached by content, so an environment
without torch (the onnxruntime or openvino tox environment) can still check accuracy
and report efficiency once the cache is warm.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infermatrix.api.types import Arrays, ModelSpec, WeightsError, make_inputs
from infermatrix.cache import CacheDamaged, ModelCache, load_arrays, quarantine, save_arrays

if TYPE_CHECKING:
    from numpy.typing import NDArray

WEIGHTS_FILE = "weights.npz"
#: Batch-norm statistics are estimated on this many seeded samples (see weights.py).
BATCHNORM_SAMPLES = 16


class ReferenceUnavailable(RuntimeError):
    """The cache lacks something only torch can produce, and torch is not installed."""


def model_cache(model: ModelSpec, cache_root: Path) -> ModelCache:
    return ModelCache(cache_root, model.name, model.cache_key())


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def build_torch_model(model: ModelSpec, cache_root: Path) -> Any:
    """The fp32 torch module in eval mode with the model's weights.

    User weights (``--model-weights``) win; otherwise the seeded weights stored in the
    cache, created on first use.
    """
    import torch

    from infermatrix.gate import weights

    if model.variant_of is not None:
        from infermatrix.case.variants import build_variant

        return build_variant(model, cache_root)
    if model.build_torch is None:
        raise ValueError(f"model {model.name!r} has no torch form")
    module = model.build_torch()
    if model.weights_path is not None:
        try:
            state = torch.load(model.weights_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise WeightsError(f"{model.weights_path}: no such file (--model-weights {model.name}=...)") from None
        except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
            raise WeightsError(
                f"{model.weights_path}: not a readable torch state_dict — truncated, or not a torch file "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); save one "
                f"with torch.save(model.state_dict(), path)"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WeightsError(f"{model.weights_path}: holds a {type(state).__name__}, not a state_dict; save one "
                               "with torch.save(model.state_dict(), path)")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"{model.weights_path}: these weights do not fit model {model.name!r} "
                f"(expected a state_dict of torch's definition): {str(exc)[:400]}"
            ) from exc
        return module.eval()

    cache = model_cache(model, cache_root)
    stored = cache.dir / WEIGHTS_FILE
    if stored.exists():
        try:
            weights.load_state(module, stored)
            return module.eval()
        except CacheDamaged as damage:
            quarantine(damage)  # then rebuilt from the seed below: the same numbers
    weights.seed_module(module, model.weight_seed)
    stat_batches = [
        tuple(torch.from_numpy(a) for a in make_inputs(model.inputs, 4, model.weight_seed + 1 + i).values())
        for i in range(BATCHNORM_SAMPLES // 4)
    ]
    weights.estimate_batchnorm_statistics(module, stat_batches)
    weights.save_state(module, cache.path(WEIGHTS_FILE))
    return module.eval()


def accuracy_sample_count(batch_size: int, minimum: int) -> int:
    """Samples in the accuracy check: at least ``minimum``, a whole number of batches."""
    return math.ceil(max(minimum, batch_size) / batch_size) * batch_size


def accuracy_inputs(model: ModelSpec, n_samples: int) -> Arrays:
    return model.eval_inputs(n_samples)


def run_torch(module: Any, model: ModelSpec, inputs: Arrays) -> list[NDArray[Any]]:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(inputs[spec.name]) for spec in model.inputs))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.float().cpu().numpy() for o in outs]


def reference_outputs(model: ModelSpec, n_samples: int, cache_root: Path) -> list[NDArray[Any]]:
    """fp32 outputs of the torch model on the first ``n_samples`` accuracy inputs, cached."""
    cache = model_cache(model, cache_root)
    path = cache.dir / f"reference-n{n_samples}.npz"
    if path.exists():
        try:
            return load_arrays(path)
        except CacheDamaged as damage:
            quarantine(damage)  # then recomputed below
    if model.reference_fn is not None:
        outputs = [np.asarray(o, dtype=np.float32) for o in model.reference_fn(accuracy_inputs(model, n_samples))]
        save_arrays(cache.path(path.name), outputs)
        return outputs
    if not torch_available():
        raise ReferenceUnavailable(
            f"{model.name}: no cached fp32 reference in {cache.dir} and torch is not installed to "
            "compute one; run the torch environment once (tox -e torch) or install infermatrix[torch]"
        )
    import torch

    module = build_torch_model(model, cache_root)
    with torch.inference_mode():
        outputs = run_torch(module, model, accuracy_inputs(model, n_samples))
    save_arrays(cache.path(path.name), outputs)
    return outputs


def flops_per_sample(model: ModelSpec, cache_root: Path) -> int | None:
    """Floating-point operations of one sample's forward pass (torch's FlopCounterMode,
    which counts a multiply-add as 2), cached; None without torch and without a cache."""
    cache = model_cache(model, cache_root)
    stored = cache.read_json("flops.json")
    if stored is not None:
        return int(stored["flops_per_sample"])
    if model.build_torch is None or not torch_available():
        return None
    import torch

    module = build_torch_model(model, cache_root)
    started = time.perf_counter()
    flops = count_flops(module, model)
    cache.write_json(
        "flops.json",
        {"flops_per_sample": flops, "counted_by": "torch.utils.flop_counter.FlopCounterMode",
         "seconds": time.perf_counter() - started, "torch": torch.__version__},
    )
    return flops


def count_flops(module: Any, model: ModelSpec) -> int:
    """Floating-point operations of ``module``'s forward pass on one seeded sample of ``model``
    (torch's FlopCounterMode, a multiply-add counted as 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    sample = make_inputs(model.inputs, 1, model.eval_seed)
    with torch.inference_mode(), counter:
        module(*(torch.from_numpy(sample[s.name]) for s in model.inputs))
    return int(counter.get_total_flops())


def ensure_weights_file(model: ModelSpec, cache_root: Path) -> None:
    """Make the cached weights file (:func:`torch_state` reads it) where torch is here and it
    is missing; building the torch module writes it."""
    if model.weights_path is None and not (model_cache(model, cache_root).dir / WEIGHTS_FILE).exists() \
            and torch_available():
        build_torch_model(model, cache_root)


def torch_state(model: ModelSpec, cache_root: Path) -> dict[str, NDArray[Any]]:
    """The model's weights as torch names them (``state_dict``), as numpy arrays.

    What the other frameworks' forms (Keras) load, so that every backend computes with
    the same numbers: the seeded weights stored in the cache (no torch needed once it is
    warm), or the user's ``--model-weights`` (read with torch).
    """
    from infermatrix.cache import load_named_arrays

    if model.weights_path is None:
        stored = model_cache(model, cache_root).dir / WEIGHTS_FILE
        if stored.exists():
            try:
                return load_named_arrays(stored)
            except CacheDamaged as damage:
                quarantine(damage)  # rebuilt below where torch is here, else the error says how
    if not torch_available():
        raise ReferenceUnavailable(
            f"{model.name}: no cached weights in {model_cache(model, cache_root).dir} and torch is not installed to "
            "make them; run tox -e export (or the torch environment) once, or install infermatrix[torch]"
        )
    module = build_torch_model(model, cache_root)
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
