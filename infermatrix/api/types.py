"""The data that crosses module borders: models, backends, targets, cases, sessions.

Everything here is framework-neutral (numpy only) so that a backend environment without
torch can still import the core, read the matrix and check accuracy against cached
references.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: The precisions a case id may carry. ``int8`` is always a calibrated *static*
#: quantization with the backend's own tool; ``int8-dynamic`` is its own precision;
#: ``int8-weight-only`` / ``int4-weight-only`` compress a generation model's weights without
#: calibration (optimum-cli's ``--weight-format``, ONNX Runtime GenAI's builder ``-p``).
KNOWN_PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "int8", "int8-dynamic", "int8-weight-only",
                                     "int4-weight-only")
#: The precisions that compress weights only (no calibration): generation models' alone.
WEIGHT_ONLY_PRECISIONS: tuple[str, ...] = ("int8-weight-only", "int4-weight-only")

Task = Literal["classification", "embedding", "generation"]

#: The forms a model comes in, by name. A model module provides the forms it has
#: (``ModelSpec.forms``) and a backend says which it consumes (``BackendInfo.forms``):
#: "torch" builds the fp32 ``nn.Module`` (the ONNX export is made from it);
#: "keras" builds the Keras model, given the ``keras`` module (Keras 3 or 2.2.4);
#: "generation" is a ``GenerationSpec`` (a Hugging Face folder made or given);
#: "numpy" is the fp32 reference function itself (framework-free models of the tests).
FORM_TORCH, FORM_KERAS, FORM_GENERATION, FORM_NUMPY = "torch", "keras", "generation", "numpy"
Arrays = dict[str, "NDArray[Any]"]


class WeightsError(ValueError):
    """A user's weights file (``--model-weights``) cannot be used; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One named model input; ``shape`` excludes the leading batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int64"
    #: For integer inputs (token ids): values are drawn from ``[0, high)``.
    high: int = 0
    #: Images drawn at 1/``repeat`` of the size and each value repeated ``repeat``x on the
    #: last two axes (the seed benchmark's 32x32 images repeated 7x to 224x224).
    repeat: int = 1

    def __post_init__(self) -> None:
        try:
            np.dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"InputSpec {self.name!r}: unknown dtype {self.dtype!r}") from exc
        if any(d <= 0 for d in self.shape):
            raise ValueError(f"InputSpec {self.name!r}: every dimension must be > 0, got {self.shape}")
        if self.repeat < 1 or (self.repeat > 1 and (len(self.shape) < 2 or any(d % self.repeat
                                                                              for d in self.shape[-2:]))):
            raise ValueError(f"InputSpec {self.name!r}: repeat={self.repeat} must divide the last two "
                             f"dimensions of {self.shape}")
        if np.issubdtype(np.dtype(self.dtype), np.integer) and self.high <= 0:
            raise ValueError(f"InputSpec {self.name!r}: integer inputs need high > 0 (the vocabulary size)")


def make_inputs(signature: Sequence[InputSpec], batch_size: int, seed: int) -> Arrays:
    """Seeded inputs for ``signature``: the same seed gives the same arrays everywhere."""
    rng = np.random.default_rng(seed)
    arrays: Arrays = {}
    for spec in signature:
        shape = (batch_size, *spec.shape)
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            arrays[spec.name] = rng.integers(0, spec.high, size=shape).astype(spec.dtype)
        elif spec.repeat > 1:
            small = rng.standard_normal((*shape[:-2], shape[-2] // spec.repeat, shape[-1] // spec.repeat))
            arrays[spec.name] = small.repeat(spec.repeat, axis=-2).repeat(spec.repeat, axis=-1).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return arrays


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model announces itself with one of these (``pytest_infermatrix_models``).

    ``forms`` holds the model's forms by name (see ``FORM_*``); the torch form returns the
    fp32 ``torch.nn.Module`` in eval mode with its seeded (or user-provided) weights and is
    only called by code that has torch. Evaluation inputs and calibration inputs come
    from different seeds, so quantization is never calibrated on the very samples it is
    judged on.
    """

    name: str
    family: str
    task: Task
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    #: The model's forms by name (``FORM_*``); excluded from hashing (builders are callables).
    forms: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    default_batch_sizes: tuple[int, ...] = (1,)
    weight_seed: int = 0
    eval_seed: int = 1000
    calibration_seed: int = 2000
    calibration_samples: int = 16
    #: Convolutional networks run channels_last on torch CPU (0.90x of NCHW, resnet18 b1 here).
    is_cnn: bool = False
    #: Linear-heavy models are where dynamic int8 quantization pays off.
    linear_heavy: bool = False
    #: Path of user-provided weights (a torch state_dict); None = seeded weights.
    weights_path: str | None = None
    #: Changes whenever the network definition changes; part of every cache key.
    version: str = "1"
    #: A variant (``pytest_infermatrix_variants``) of another model: (the original, the
    #: variant). Its name is ``<original>.<variant>`` and its torch form the transformed
    #: module (infermatrix.case.variants); None for a model as its plugin announced it.
    variant_of: tuple[ModelSpec, VariantSpec] | None = dataclasses.field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or "-" in self.name or ("." in self.name and self.variant_of is None):
            raise ValueError(f"model name {self.name!r}: must be non-empty and contain no '-' (ids use '-') "
                             "and no '.' (a variant's name is <model>.<variant>)")
        if not self.inputs:
            raise ValueError(f"model {self.name!r}: needs at least one input")
        if not self.forms:
            raise ValueError(f"model {self.name!r}: give at least one form ({FORM_TORCH!r}, {FORM_KERAS!r}, "
                             f"{FORM_GENERATION!r} or {FORM_NUMPY!r})")
        if (self.task == "generation") != (FORM_GENERATION in self.forms):
            raise ValueError(f"model {self.name!r}: a generation model has a {FORM_GENERATION!r} form, and only it")
        if any(b <= 0 for b in self.default_batch_sizes):
            raise ValueError(f"model {self.name!r}: batch sizes must be > 0, got {self.default_batch_sizes}")

    @property
    def build_torch(self) -> Callable[[], Any] | None:
        return self.forms.get(FORM_TORCH)

    @property
    def build_keras(self) -> Callable[[Any], Any] | None:
        return self.forms.get(FORM_KERAS)

    @property
    def generation(self) -> Any:
        """The ``GenerationSpec`` of a generation model (infermatrix.case.generation), else None."""
        return self.forms.get(FORM_GENERATION)

    @property
    def reference_fn(self) -> Callable[[Arrays], list[Any]] | None:
        return self.forms.get(FORM_NUMPY)

    def with_form(self, name: str, value: Any) -> ModelSpec:
        """This model with form ``name`` replaced (a generation spec as this run's options make it)."""
        return dataclasses.replace(self, forms={**self.forms, name: value})

    def eval_inputs(self, batch_size: int) -> Arrays:
        """The timed batch: the first ``batch_size`` samples of the accuracy inputs."""
        return make_inputs(self.inputs, batch_size, self.eval_seed)

    def calibration_inputs(self, batch_size: int = 1) -> list[Arrays]:
        """``calibration_samples`` seeded batches, distinct from the evaluation inputs."""
        n_batches = max(1, self.calibration_samples // batch_size)
        return [make_inputs(self.inputs, batch_size, self.calibration_seed + i) for i in range(n_batches)]

    def cache_key(self) -> str:
        """Content key of the network: definition version, seeds, inputs and weights file."""
        weights = "seeded"
        if self.weights_path is not None:
            try:
                with open(self.weights_path, "rb") as fh:
                    weights = hashlib.sha256(fh.read()).hexdigest()
            except OSError as exc:
                raise WeightsError(f"{self.weights_path}: cannot read the weights of model {self.name!r} "
                                   f"({exc.strerror}); check the --model-weights path") from None
        blob = json.dumps(
            {
                "name": self.name,
                "version": self.version,
                "weight_seed": self.weight_seed,
                "inputs": [dataclasses.astuple(i) for i in self.inputs],
                "weights": weights,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """A model transformation beside precision (``pytest_infermatrix_variants``): pruning,
    distillation, quantization-aware training...

    ``transform(original, model, rng_seed) -> module`` receives the original fp32 torch module
    (eval mode, its weights) and returns the variant's fp32 torch module; it runs once per
    model and weights, and its result is cached (infermatrix.case.variants). Every backend
    then runs the variant as it runs a model: the ONNX export, the fp32 reference and the
    accuracy gate are the variant's own. ``applies(model)`` says which models it makes
    sense for (None: every forward model with a torch form).
    """

    name: str
    description: str
    transform: Callable[[Any, ModelSpec, int], Any] = dataclasses.field(hash=False, compare=False)
    applies: Callable[[ModelSpec], bool] | None = dataclasses.field(default=None, hash=False, compare=False)
    #: ``skeleton(model)`` builds an untrained module of the variant's structure, so the cache
    #: keeps only its weights (a state dict); None: the whole module is pickled (a structure
    #: that only the transformation itself can make, such as torch-pruning's narrowed layers).
    skeleton: Callable[[ModelSpec], Any] | None = dataclasses.field(default=None, hash=False, compare=False)
    #: ``keras(original)`` gives the variant's Keras form (a function of the ``keras`` module,
    #: as ``ModelSpec`` forms are), or None where its structure has none; the Keras backends
    #: fill it from the variant's weights and take each layer's width from them
    #: (infermatrix.forms.keras.build_from_torch_state), so a form of the original serves a
    #: variant that keeps its layers and narrows them. None: the Keras backends skip it.
    keras: Callable[[ModelSpec], Callable[[Any], Any] | None] | None = dataclasses.field(
        default=None, hash=False, compare=False)
    #: Changes whenever the transformation changes; part of the variant's cache key.
    version: str = "1"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"variant name {self.name!r}: letters, digits and '_' only (ids read "
                             "<model>.<variant>-<backend>-...)")


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """A backend announces itself with one of these (``pytest_infermatrix_backends``).

    ``devices`` and ``precisions`` are what the backend can run *somewhere*; the matrix
    lists them even when the backend is unavailable here, so a missing framework shows
    up as skipped cases with ``reason`` rather than as cases that silently vanish.
    """

    name: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    available: bool = True
    reason: str = ""
    version: str = ""
    #: The framework's import name, for timing its import in the cold-start scenario.
    framework_module: str = ""
    #: The model forms this backend consumes (``FORM_*``); a model with none of them is a skip.
    forms: tuple[str, ...] = (FORM_TORCH,)
    #: Precisions the backend generates text in (its ``generation`` form); empty: it does not.
    generation_precisions: tuple[str, ...] = ()
    #: Its session is a server (``pytest_infermatrix_prepare_server``): its cases are served
    #: cases (the ``serve`` scenario), never in-process generation.
    server: bool = False

    def __post_init__(self) -> None:
        if not self.available and not self.reason:
            raise ValueError(f"backend {self.name!r}: unavailable backends must say why (reason=...)")
        unknown = sorted(set(self.precisions) - set(KNOWN_PRECISIONS))
        if unknown:
            raise ValueError(
                f"backend {self.name!r}: unknown precisions {unknown}; valid: {', '.join(KNOWN_PRECISIONS)}"
            )


@dataclasses.dataclass(frozen=True)
class Target:
    """One device × precision of a backend on this machine; ``skip_reason`` if it cannot run."""

    device: str
    precision: str
    skip_reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Case:
    """One model × backend × device × precision × batch size."""

    model: ModelSpec
    backend: BackendInfo
    target: Target
    batch_size: int

    @property
    def id(self) -> str:
        return f"{self.model.name}-{self.backend.name}-{self.target.device}-{self.target.precision}-b{self.batch_size}"


@dataclasses.dataclass
class PrepareTimes:
    """Seconds spent in each preparation phase; None where the backend has no such phase."""

    load_s: float | None = None
    convert_s: float | None = None
    quantize_s: float | None = None
    compile_s: float | None = None
    first_inference_s: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What a hook may know of the run: frozen and picklable, so pytest, its worker
    processes and the command-line tools hand plugins the same thing (never
    ``pytest.Config``, which exists only in pytest's own process)."""

    #: The shared content-keyed cache (exported ONNX, references, weights).
    cache_root: Path
    #: CPU threads every backend uses (``--threads``, default: the physical cores).
    threads: int
    #: The devices the user asked for (``--devices``); None: no selection. A backend may
    #: offer a device it hides by default (PlaidML's experimental ones) when named here.
    devices: tuple[str, ...] | None = None
    #: Every option of the ``infermatrix`` option group by its dest, as plain values, so a
    #: plugin reads the options it added itself (``options.option("plaidml_experimental")``).
    plugin_options: tuple[tuple[str, Any], ...] = ()

    def option(self, dest: str, default: Any = None) -> Any:
        return dict(self.plugin_options).get(dest, default)


@dataclasses.dataclass(frozen=True)
class PrepareContext:
    """What a backend gets to prepare one case besides the case itself."""

    #: A fresh directory for this case's files (converted models, engines).
    workdir: Path
    options: RunOptions

    @property
    def cache_root(self) -> Path:
        return self.options.cache_root

    @property
    def threads(self) -> int:
        return self.options.threads


@runtime_checkable
class Session(Protocol):
    """What ``pytest_infermatrix_prepare`` returns: a model ready to run one case.

    ``run`` takes and returns host (numpy) arrays and must not return before the
    device has finished (GPU work synchronized), so that timing it is honest.
    ``config`` is the exact configuration used (threads, layout, precision as the
    backend reports it), recorded in the results. ``size_bytes`` is the model's size
    on disk or in memory as the backend holds it (None if unknown).

    Optionally, ``precision_evidence() -> infermatrix.gate.precision.PrecisionEvidence | None``:
    what the backend reports it compiled, read back after compilation and warm-up (the
    proof of precision; None where the backend has nothing to show). A case of a reduced
    precision without evidence fails as unverified (docs/backends.md, "Proof of precision").
    """

    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None

    def run(self, inputs: Arrays) -> list[NDArray[Any]]: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Peak memory of a case: host RSS (bytes) and device memory where there is a device."""

    host_peak_rss_bytes: int | None = None
    #: peak RSS minus RSS before the case: the case's own peak only in a fresh process
    host_peak_rss_added_bytes: int | None = None
    host_rss_delta_bytes: int | None = None
    device_peak_bytes: int | None = None
    device_process_bytes: int | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Command:
    """A command-line tool a plugin adds: ``python -m infermatrix <name> ...``."""

    name: str
    help: str
    #: called with the arguments after the name; returns the exit status
    main: Callable[[list[str]], int]
