"""``pytest suites/ --benchmark-compare``: this run against the machine's baselines.

Runs after pytest-benchmark has finished the session: builds this run's JSON through
pytest-benchmark's own hooks (so it is exactly what ``--benchmark-json`` would write),
judges it against ``baselines/<fingerprint>/`` (infermatrix.results.verdicts), prints the table,
fails the session on a regression (``--regression-fails``), and with
``--accept-baseline`` files the run as the newest baseline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from infermatrix.results import baselines, verdicts

outcome_key = pytest.StashKey["CompareOutcome"]()


@dataclasses.dataclass
class CompareOutcome:
    lines: list[str]


def _current_run(config: pytest.Config) -> dict[str, Any] | None:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return None
    machine_info = bs.get_machine_info()
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    output = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=bs.benchmarks, include_data=True,
                                                        machine_info=machine_info, commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=bs.benchmarks, output_json=output)
    return dict(output)


def baselines_dir(config: pytest.Config) -> Path:
    raw = config.getoption("--infermatrix-baselines")
    return Path(raw).resolve() if raw else config.rootpath / "baselines"


def finish(session: pytest.Session) -> None:
    config = session.config
    compare = config.getoption("benchmark_compare", default=False)
    accept = config.getoption("--accept-baseline", default=False)
    if not compare and not accept:
        return
    lines: list[str] = []
    config.stash[outcome_key] = CompareOutcome(lines)
    run = _current_run(config)
    if run is None:
        lines.append("infermatrix: no case was timed; nothing to compare or accept")
        return
    directory = baselines_dir(config)
    machine = baselines.fingerprint(run["machine_info"])
    if compare:
        wanted = config.getoption("--baseline-machine") or machine
        paths = baselines.history(directory, wanted)
        history: list[dict[str, Any]] = []
        if not paths:
            lines.append(f"infermatrix: no baseline for machine {wanted} in {directory}; nothing to compare "
                         "(run with --accept-baseline to start one)")
        else:
            try:
                history = baselines.load_history(directory, wanted)
            except baselines.BaselineError as exc:
                lines.append(f"infermatrix: cannot compare: {exc}")
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
                history = []
        if history:
            results = verdicts.judge(history, run)
            lines.append(f"infermatrix verdicts against {len(paths)} baseline run(s) of {wanted}:")
            changes = baselines.version_changes(history[-1], run)
            if changes:
                lines.append("versions differ from the newest baseline: " + "; ".join(changes))
            lines.extend(verdicts.table(results).splitlines())
            regressed = [v for v in results if v.verdict == "regressed"]
            if regressed and config.getoption("--regression-fails") == "yes":
                lines.append(f"infermatrix: {len(regressed)} case(s) regressed: failing the session")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if accept:
        try:
            path = baselines.accept(run, directory)
            lines.append(f"infermatrix: accepted this run as a baseline: {path}")
        except baselines.BaselineError as exc:
            lines.append(f"infermatrix: {exc}")
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def report(terminalreporter: Any, config: pytest.Config) -> None:
    outcome = config.stash.get(outcome_key, None)
    if outcome is None or not outcome.lines:
        return
    terminalreporter.section("infermatrix")
    for line in outcome.lines:
        terminalreporter.write_line(line)
