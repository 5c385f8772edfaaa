"""The case matrix: every model × backend × device × precision × batch size, filtered by
the user's options, each case either runnable or carrying a skip reason.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

from infermatrix.api.types import WEIGHT_ONLY_PRECISIONS, BackendInfo, Case, ModelSpec, Target


class SelectionError(ValueError):
    """An option named something that does not exist; the message lists what does."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the user asked for; None means "everything"."""

    models: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    #: variants (``<model>.<variant>``) to run beside the models; None: none (they are opt-in),
    #: ``("all",)``: every announced one
    variants: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class MatrixEntry:
    case: Case
    skip_reason: str | None


def parse_list(option: str, raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not names:
        raise SelectionError(f"{option}: empty list; give comma-separated names")
    return names


def parse_batch_sizes(raw: str | None) -> tuple[int, ...] | None:
    names = parse_list("--batch-sizes", raw)
    if names is None:
        return None
    sizes = []
    for name in names:
        try:
            size = int(name)
        except ValueError:
            size = 0
        if size <= 0:
            raise SelectionError(f"--batch-sizes: {name!r} is not a positive integer (e.g. --batch-sizes 1,8)")
        sizes.append(size)
    return tuple(sizes)


def _check_names(option: str, asked: tuple[str, ...] | None, valid: Sequence[str]) -> None:
    if asked is None:
        return
    unknown = [name for name in asked if name not in valid]
    if unknown:
        raise SelectionError(
            f"{option}: unknown name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(valid))}"
        )


def validate(selection: Selection, models: Sequence[ModelSpec], backends: Sequence[BackendInfo]) -> None:
    originals = [m.name for m in models if m.variant_of is None]
    _check_names("--models", selection.models, originals)
    variants = sorted({m.variant_of[1].name for m in models if m.variant_of is not None})
    if selection.variants is not None and selection.variants != ("all",):
        _check_names("--variants", selection.variants, variants + ["all"])
    _check_names("--backends", selection.backends, [b.name for b in backends])
    _check_names("--devices", selection.devices, sorted({d for b in backends for d in b.devices}))
    _check_names("--precisions", selection.precisions, sorted({p for b in backends for p in b.precisions}))


def check_unique(kind: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SelectionError(f"two plugins announce a {kind} named {name!r}; rename one of them")
        seen.add(name)


def model_rule(model: ModelSpec, target: Target, backend: BackendInfo | None = None) -> str | None:
    """Skips that follow from the model (and the form of it the backend consumes)."""
    if backend is not None and not set(backend.forms) & set(model.forms):
        forms = " or ".join(backend.forms)
        of = model.variant_of
        why = (f"the variant {of[1].name!r} has no {forms} form (VariantSpec.keras): its structure is not one "
               "the original's form can take, and no other is written for it"
               if of is not None and set(backend.forms) & set(of[0].forms)
               else f"{model.name} comes as {', '.join(model.forms)}")
        return f"{backend.name}: runs the {forms} form of a model; {why}"
    if model.task == "generation":
        if backend is not None and target.precision not in backend.generation_precisions:
            return f"{backend.name}: generates in {', '.join(backend.generation_precisions)}"
        return None
    if target.precision in WEIGHT_ONLY_PRECISIONS:
        return (f"{target.precision} is weight-only compression for generation models; {model.name} takes int8 "
                "(calibrated static) or int8-dynamic")
    if target.precision == "int8-dynamic" and not model.linear_heavy:
        return (
            f"int8-dynamic quantizes only Linear/MatMul layers and {model.name} is not Linear-heavy "
            "(on convolutional networks it measured slower than fp32); use int8 (static) for it"
        )
    return None


def wanted(selection: Selection, model: ModelSpec) -> bool:
    """A model is chosen by its name; a variant by its original's name and ``--variants``."""
    original = model.variant_of[0].name if model.variant_of is not None else model.name
    if selection.models is not None and original not in selection.models:
        return False
    if model.variant_of is None:
        return True
    return selection.variants is not None and (selection.variants == ("all",)
                                               or model.variant_of[1].name in selection.variants)


def build(
    selection: Selection,
    models: Sequence[ModelSpec],
    backends: Sequence[BackendInfo],
    targets_of: Callable[[BackendInfo], Sequence[Target] | None],
) -> list[MatrixEntry]:
    """Every selected case, runnable ones with ``skip_reason=None``."""
    check_unique("model", [m.name for m in models])
    check_unique("backend", [b.name for b in backends])
    validate(selection, models, backends)

    chosen_models = [m for m in models if wanted(selection, m)]
    chosen_backends = [b for b in backends if selection.backends is None or b.name in selection.backends]
    entries: list[MatrixEntry] = []
    for backend in chosen_backends:
        if backend.available:
            try:
                targets = list(targets_of(backend) or [])
            except (ImportError, OSError) as exc:
                # Installed but broken (a missing shared library, an ABI mismatch): its
                # cases skip with the import error instead of ending the whole run.
                broken = f"{backend.name}: {backend.framework_module or 'its framework'} is installed but fails to " \
                         f"import: {type(exc).__name__}: {exc}"
                targets = [Target(d, p, broken) for d, p in itertools.product(backend.devices, backend.precisions)]
            if not targets:
                targets = [
                    Target(d, p, f"{backend.name}: no plugin states its targets on this machine")
                    for d, p in itertools.product(backend.devices, backend.precisions)
                ]
        else:
            targets = [Target(d, p, backend.reason) for d, p in itertools.product(backend.devices, backend.precisions)]
        for target in targets:
            if selection.devices is not None and target.device not in selection.devices:
                continue
            if selection.precisions is not None and target.precision not in selection.precisions:
                continue
            for model in chosen_models:
                reason = target.skip_reason or model_rule(model, target, backend)
                for batch_size in selection.batch_sizes or model.default_batch_sizes:
                    case = Case(model=model, backend=backend, target=target, batch_size=batch_size)
                    entries.append(MatrixEntry(case, reason))
    entries.sort(key=lambda e: (e.case.model.name, e.case.backend.name, e.case.target.device,
                                e.case.target.precision, e.case.batch_size))
    return entries
