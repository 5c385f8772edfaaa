"""A case outside pytest: found in the same matrix and prepared through the same hooks.

The command-line tools (side by side, A/B workers, OpenVINO's fidelity check) use the one
plugin host (:func:`infermatrix.host.plugin_manager`) and prepare, warm and check a case
exactly as the pytest fixture does.
"""

from __future__ import annotations

from pathlib import Path

import pluggy

from infermatrix import host
from infermatrix.api.types import Case, PrepareContext, RunOptions
from infermatrix.case import matrix, runner
from infermatrix.gate import accuracy
from infermatrix.measure.timing import TimingPolicy


class OfflineError(RuntimeError):
    """A case that cannot be prepared outside pytest; the message says why."""


def matrix_here(manager: pluggy.PluginManager, selection: matrix.Selection,
                options: RunOptions) -> list[matrix.MatrixEntry]:
    """The matrix a pytest run with ``selection`` builds on this machine, skips included."""
    models, backends = host.announced(manager.hook)
    return matrix.build(selection, models, backends,
                        lambda b: manager.hook.pytest_infermatrix_targets(backend=b, options=options))


def find_case(manager: pluggy.PluginManager, case_id: str, options: RunOptions) -> Case:
    """The case named by ``case_id``, from the same matrix a pytest run builds (any batch size)."""
    _, _, batch = case_id.rpartition("-b")
    if not batch.isdigit() or int(batch) < 1:
        raise OfflineError(f"unknown case {case_id!r}: ids read model-backend-device-precision-bN")
    entries = matrix_here(manager, matrix.Selection(batch_sizes=(int(batch),), variants=("all",)), options)
    entry = next((e for e in entries if e.case.id == case_id), None)
    if entry is None:
        models, backends = host.announced(manager.hook)
        raise OfflineError(f"unknown case {case_id!r}; models: {', '.join(m.name for m in models)}; "
                           f"backends: {', '.join(b.name for b in backends)}")
    if entry.skip_reason:
        raise OfflineError(f"{case_id}: {entry.skip_reason}")
    return entry.case


def prepare_offline(manager: pluggy.PluginManager, case: Case, options: RunOptions,
                    workdir: Path) -> runner.PreparedCase:
    """Prepare, warm and check ``case`` through the hooks, as the pytest fixture does."""
    context = PrepareContext(workdir=workdir, options=options)
    prepared = runner.prepare(
        case,
        lambda: manager.hook.pytest_infermatrix_prepare(backend=case.backend, model=case.model, target=case.target,
                                                        batch_size=case.batch_size, context=context),
        options.cache_root, TimingPolicy(), accuracy_samples=accuracy.DEFAULT_SAMPLES, threads=options.threads,
    )
    for report in (prepared.accuracy, prepared.precision):
        if report is not None and not report.passed:
            prepared.session.close()
            raise OfflineError(report.message(case.id))
    return prepared


def prepare_side(manager: pluggy.PluginManager, model_name: str, side: str, batch_size: int, options: RunOptions,
                 workdir: Path) -> runner.PreparedCase:
    """``side`` is ``backend:precision`` (cpu) or ``backend:device@precision``, either after
    ``model/`` for another model than ``model_name`` (a variant beside its original)."""
    if "/" in side:
        model_name, _, side = side.partition("/")
    backend_name, _, spec = side.partition(":")
    device, _, precision = spec.rpartition("@") if "@" in spec else ("cpu", "", spec)
    try:
        case = find_case(manager, f"{model_name}-{backend_name}-{device}-{precision}-b{batch_size}", options)
        return prepare_offline(manager, case, options, workdir)
    except OfflineError as exc:
        raise SystemExit(str(exc)) from None
