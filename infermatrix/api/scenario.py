"""Scenarios and the kinds of case they drive: what the core knows of a scenario.

A scenario is one module under ``suites/``: it declares ``SCENARIO = Scenario(...)``
and marks its tests with ``pytestmark = SCENARIO.mark()`` — that marker is its one
registration: the core finds the scenarios among the collected tests, validates
``--scenarios`` against them, runs a case's scenarios back to back in their ``order``
and hands each test the case prepared the way its :class:`CaseKind` says. A scenario
measures through :meth:`Prepared.run`, the one protocol of a prepared case, the same
whether the case lives in pytest's process or in the worker (where ``Scenario``
travels by pickle: its functions must be module-level).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from infermatrix.api.types import BackendInfo, Case, ModelSpec, RunOptions

#: The marker a scenario module's tests carry (its argument: the module's ``Scenario``).
MARKER = "infermatrix_scenario"


@dataclasses.dataclass(frozen=True)
class CaseKind:
    """How a case of one kind of model is made ready, and what it is checked against.

    ``accepts`` picks the cases (a model by its forms, and the backend: a server backend's
    cases are served cases); ``fill_cache`` makes the shared
    references in pytest's process before a worker prepares the case (raising
    ``ReferenceUnavailable`` with what to do); ``prepare_hook`` names the hook that
    returns the backend's session; ``prepare`` makes, warms and checks the prepared case.
    """

    name: str
    accepts: Callable[[ModelSpec, BackendInfo], bool]
    fill_cache: Callable[[Case, RunOptions, int], None]
    prepare_hook: str
    prepare: Callable[..., Prepared]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One way of measuring a case (latency, throughput, generate, …)."""

    name: str
    kind: CaseKind
    #: measured by ``--scenarios`` when it is not given
    default: bool = True
    #: where it runs among a case's scenarios (lowest first: the first one prepares the case)
    order: int = 0
    #: ``measure(prepared, benchmark_or_sink, argument) -> result``; None for a scenario
    #: that runs its case in a fresh process of its own (cold start, memory)
    measure: Callable[[Any, Any, Any], Any] | None = None

    def mark(self) -> pytest.MarkDecorator:
        decorator: pytest.MarkDecorator = getattr(pytest.mark, MARKER)(self)
        return decorator


class Prepared(Protocol):
    """A prepared case as scenarios drive it (``runner.PreparedCase``,
    ``generation.PreparedGeneration``, and ``isolation.RemoteCase`` for one in the worker)."""

    case: Any
    accuracy: Any
    extra_info: dict[str, Any]
    slowdown: float

    def info(self) -> dict[str, Any]: ...

    def run(self, scenario: Scenario, benchmark: Any, argument: Any) -> Any: ...

    def record_memory(self, hook: Any) -> None: ...

    def close(self) -> None: ...


def of_item(item: pytest.Item) -> Scenario | None:
    """The scenario a collected test belongs to (None: not a scenario's test)."""
    marker = item.get_closest_marker(MARKER)
    if marker is None or not marker.args or not isinstance(marker.args[0], Scenario):
        return None
    return marker.args[0]
