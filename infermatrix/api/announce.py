"""Helpers for plugins announcing a backend without importing its framework."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from infermatrix.api.types import BackendInfo


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def announce_backend(
    name: str,
    module: str,
    distribution: str,
    devices: tuple[str, ...],
    precisions: tuple[str, ...],
    extra: str,
) -> BackendInfo:
    """A :class:`BackendInfo` whose availability is "``module`` can be found".

    ``extra`` is the pyproject extra that installs it, named in the skip reason so
    the user knows what to do.
    """
    if importlib.util.find_spec(module) is None:
        return BackendInfo(
            name=name,
            devices=devices,
            precisions=precisions,
            available=False,
            reason=f"{name}: {distribution} is not installed (pip install 'infermatrix[{extra}]' or tox -e {extra})",
            framework_module=module,
        )
    return BackendInfo(
        name=name, devices=devices, precisions=precisions, version=installed_version(distribution) or "unknown",
        framework_module=module,
    )
