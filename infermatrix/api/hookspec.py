"""Hook specifications of infermatrix, all in one place (registered through pytest's
plugin manager by :mod:`infermatrix.pytest_plugin.plugin`, and by :func:`infermatrix.host.plugin_manager`
in the worker processes and the command-line tools).

Implementations live in plugins: the built-in ones listed in ``plugins/__init__.py``
and outside packages registered through the ``infermatrix`` entry-point group. Every
hook name starts with ``pytest_infermatrix_`` because pytest only collects hook
implementations whose names carry the ``pytest_`` prefix. An implementation may accept
only the arguments it needs. Hooks never receive ``pytest.Config``: what a plugin may
know of the run is the frozen :class:`~infermatrix.api.types.RunOptions`, the same in every
process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from infermatrix.api.types import (
        BackendInfo,
        Command,
        MemoryReport,
        ModelSpec,
        PrepareContext,
        RunOptions,
        Session,
        Target,
        VariantSpec,
    )
    from infermatrix.case.generation import GenerationSession
    from infermatrix.serving.case import ServerSession

hookspec = pytest.hookspec

# -------------------------------------------------------------------------
# Announcing: models and backends
# -------------------------------------------------------------------------


@hookspec
def pytest_infermatrix_models() -> list[ModelSpec]:  # type: ignore[empty-body]
    """Return the models this plugin provides.

    Every plugin's list is flattened into the matrix. A model must be cheap to
    announce: build its weights only when ``ModelSpec.build_torch`` is called.
    """


@hookspec
def pytest_infermatrix_variants() -> list[VariantSpec]:  # type: ignore[empty-body]
    """Return the model variants this plugin provides (pruned, distilled, QAT...).

    Each applies to every model its ``applies`` accepts, as a model of its own named
    ``<model>.<variant>`` (``--variants`` selects them; none run by default). Announcing is
    cheap: the transformation runs when a case of the variant first needs its torch module.
    """


@hookspec
def pytest_infermatrix_backends() -> list[BackendInfo]:  # type: ignore[empty-body]
    """Return the backends this plugin provides.

    Announce a backend even when its framework is missing, with ``available=False``
    and a ``reason`` a person can act on (``"tensorrt: not installed"``); its cases
    are then listed as skipped. Never import the framework just to announce it:
    use :func:`importlib.util.find_spec`.
    """


# -------------------------------------------------------------------------
# Targets and sessions
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def pytest_infermatrix_targets(backend: BackendInfo, options: RunOptions) -> list[Target] | None:
    """Return every device × precision of ``backend`` on this machine.

    ``options`` are the run's options (the devices asked for, plugin options).
    A target this machine cannot run carries a ``skip_reason``
    (``"torch: bf16 needs a CPU with avx512_bf16 or AMX"``). Return None for a
    backend that is not yours.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def pytest_infermatrix_prepare(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> Session | None:
    """Return a ready :class:`~infermatrix.api.types.Session` for one case.

    Convert, quantize (with ``model.calibration_inputs``), compile; record the time of
    each phase in ``session.times``. Run warm-up calls here or let the core do it:
    the core always makes untimed warm-up calls before the timed rounds. ``context``
    carries the case's work directory (converted models, engines), the shared cache,
    the CPU thread count to use and the run's options. Raise
    ``pytest.skip.Exception`` (``pytest.skip(...)``) for a combination found
    unsupported only while preparing. Return None for a backend that is not yours.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def pytest_infermatrix_prepare_generation(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> GenerationSession | None:
    """Return a ready :class:`~infermatrix.case.generation.GenerationSession` for one
    generation case (a model with a ``generation`` form; the ``generate`` scenario).

    As ``pytest_infermatrix_prepare``, for text generation: export or load the model
    folder ``model.generation`` describes, in ``target.precision``; the core generates
    the sweep once untimed and checks the tokens against torch's fp32 greedy tokens.
    Return None for a backend that is not yours.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def pytest_infermatrix_prepare_server(
    backend: BackendInfo, model: ModelSpec, target: Target, batch_size: int, context: PrepareContext
) -> ServerSession | None:
    """Return a :class:`~infermatrix.serving.case.ServerSession` for one served case (a
    generation model on a backend announced with ``server=True``; the ``serve`` scenario).

    Start the server on the model folder ``model.generation`` describes, in
    ``target.precision``, through :class:`infermatrix.serving.process.ServerProcess` (free
    port, health check with a timeout, its log kept, stopped and reaped by ``close()`` and
    on any exit), or reach one the user runs. The core checks the server's greedy tokens
    against torch's fp32 tokens before any load is timed. Return None for a backend that
    is not yours.

    Stops at first non-None result.
    """


# -------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def pytest_infermatrix_memory(session: Session, baseline_rss_bytes: int) -> MemoryReport | None:
    """Return the peak memory of ``session``'s case.

    ``baseline_rss_bytes`` is the process RSS just before the case was prepared.
    The core provides a ``trylast`` default (process peak RSS via psutil/resource);
    a backend with a device overrides it to add device memory.

    Stops at first non-None result.
    """


# -------------------------------------------------------------------------
# Tools
# -------------------------------------------------------------------------


@hookspec
def pytest_infermatrix_commands() -> list[Command]:  # type: ignore[empty-body]
    """Return the command-line tools this plugin adds to ``python -m infermatrix``.

    A backend's own tools (OpenVINO's ``benchmark_app`` cross-check, say) live beside
    the backend and are announced here; import their code only when ``main`` runs.
    """
