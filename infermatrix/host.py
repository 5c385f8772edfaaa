"""The one plugin host: how every process of infermatrix finds its plugins.

pytest's run registers the hook specs and plugins through its own plugin manager
(:mod:`infermatrix.pytest_plugin.plugin`); the worker processes and the command-line tools have no
pytest run, so they build the same set here — the hook specs, the built-in plugins of
:data:`plugins.BUILTIN_PLUGINS`, the ``infermatrix`` entry-point group, and the core's
own ``trylast`` defaults — with :func:`plugin_manager`. What the plugins announce is
flattened in one place (:func:`announced`), and hooks never receive ``pytest.Config``:
they get the frozen, picklable :class:`~infermatrix.api.types.RunOptions`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from infermatrix.api import hookspec
from infermatrix.api.types import BackendInfo, ModelSpec

#: Outside packages announce plugins under this entry-point group.
ENTRY_POINT_GROUP = "infermatrix"
#: pytest's project name: the hook specs carry pytest's markers, so the host uses it too.
PROJECT_NAME = "pytest"
#: The core's default hook implementations (``trylast``; a plugin's answer wins).
CORE_DEFAULTS = "infermatrix.defaults"


def builtin_plugins() -> tuple[str, ...]:
    """The built-in plugin modules, as ``plugins/__init__.py`` lists them."""
    return tuple(importlib.import_module("plugins").BUILTIN_PLUGINS)


@dataclasses.dataclass(frozen=True)
class PluginSpec:
    """A plugin module, as another process can import it again."""

    name: str
    file: str | None = None


def load_plugin(spec: PluginSpec) -> ModuleType:
    """Import ``spec`` by name when that finds the same file, else from its file (a test's
    conftest-registered module that is not on ``sys.path`` by that name)."""
    try:
        module = importlib.import_module(spec.name)
        if spec.file is None or Path(getattr(module, "__file__", "") or "").resolve() == Path(spec.file).resolve():
            return module
    except ImportError:
        if spec.file is None:
            raise
    assert spec.file is not None
    file_spec = importlib.util.spec_from_file_location(f"infermatrix_plugin_{Path(spec.file).stem}", spec.file)
    if file_spec is None or file_spec.loader is None:
        raise ImportError(f"cannot load plugin {spec.name} from {spec.file}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def plugin_manager(plugins: Sequence[PluginSpec] | None = None) -> pluggy.PluginManager:
    """A plugin manager with the hook specs, ``plugins`` (default: the built-in ones and
    the entry-point group) and the core's defaults.

    A worker passes the exact plugin modules of the pytest run it serves (which may
    include a test's own backends); a tool passes nothing and gets the built-in set.
    """
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspec)
    if plugins is None:
        for name in builtin_plugins():
            manager.register(importlib.import_module(name), name)
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    else:
        for spec in plugins:
            if manager.get_plugin(spec.name) is None:
                manager.register(load_plugin(spec), spec.name)
    if manager.get_plugin(CORE_DEFAULTS) is None:
        manager.register(importlib.import_module(CORE_DEFAULTS), CORE_DEFAULTS)
    return manager


def announced(hook: Any) -> tuple[list[ModelSpec], list[BackendInfo]]:
    """Every plugin's models and backends, flattened (each hook returns a list per plugin),
    and every variant of every model it applies to, after the models (``<model>.<variant>``)."""
    from infermatrix.case import variants

    models = [m for group in hook.pytest_infermatrix_models() for m in group]
    announced_variants = [v for group in hook.pytest_infermatrix_variants() for v in group]
    backends = [b for group in hook.pytest_infermatrix_backends() for b in group]
    return models + variants.expand(models, announced_variants), backends
