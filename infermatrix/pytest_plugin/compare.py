"""``pytest suites/ --benchmark-compare``: this run against the machine's baselines.

Runs after pytest-benchmark has finished the session: builds this run's JSON through
pytest-benchmark's own hooks (so it is exactly what ``--benchmark-json`` would write),
judges it against ``baselines/<fingerprint>/`` (infermatrix.results.verdicts), prints the tables
(groups, then cases), fails the session on a case's or a group's regression (``--regression-fails``;
a failed case fails it in any case), keeps the judgement in ``config.stash[outcome_key].summary``
for other plugins, and with
``--accept-baseline`` files the run as the newest baseline. It also writes
``--benchmark-json`` where pytest-benchmark would not (no case timed), so a stale file
never passes for this run.
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
    #: the judgement of this run against the baselines (None: nothing was compared); other
    #: plugins read it from ``config.stash[outcome_key]`` after the session
    summary: verdicts.Summary | None = None


def run_json(config: pytest.Config, benchmarks: list[Any]) -> dict[str, Any]:
    """This run's result as ``--benchmark-json`` writes it, built through pytest-benchmark's own hooks
    (our ``pytest_benchmark_update_json`` adds the failed cases)."""
    bs = config._benchmarksession  # type: ignore[attr-defined]
    machine_info = bs.get_machine_info()
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    output = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=benchmarks, include_data=True,
                                                        machine_info=machine_info, commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=benchmarks, output_json=output)
    return dict(output)


def _current_run(config: pytest.Config) -> dict[str, Any] | None:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return None
    return run_json(config, bs.benchmarks)


def write_json_when_nothing_was_timed(session: pytest.Session) -> tuple[Path, int] | None:
    """Write ``--benchmark-json`` when pytest-benchmark did not: it skips saving when no
    benchmark ran (every case failed, or none was selected), which left the previous run's
    file in place for a report step to publish as current. The file says what happened: no
    benchmarks, and the failed cases in ``infermatrix.failed``. Returns the path written and
    how many failed cases it lists."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    path = config.getoption("benchmark_json", default=None)
    if bs is None or path is None or bs.benchmarks or config.getoption("collectonly", default=False):
        return None  # pytest-benchmark wrote it, or nothing ran (--collect-only leaves the last run's file)
    output = run_json(config, [])
    bs.save_json(output)
    return Path(path), len((output.get("infermatrix") or {}).get("failed") or {})


def baselines_dir(config: pytest.Config) -> Path:
    raw = config.getoption("--infermatrix-baselines")
    return Path(raw).resolve() if raw else config.rootpath / "baselines"


def finish(session: pytest.Session) -> None:
    config = session.config
    lines: list[str] = []
    config.stash[outcome_key] = CompareOutcome(lines)
    written = write_json_when_nothing_was_timed(session)
    if written is not None:
        lines.append(f"infermatrix: no case was timed; wrote {written[0]} all the same (no benchmarks, "
                     f"{written[1]} failed case(s) under infermatrix.failed), so no earlier run's file passes for "
                     "this one")
    compare = config.getoption("benchmark_compare", default=False)
    accept = config.getoption("--accept-baseline", default=False)
    if not compare and not accept:
        return
    run = _current_run(config)
    if run is None:
        lines.append("infermatrix: no case was timed; nothing to compare or accept")
        return
    directory = baselines_dir(config)
    machine = baselines.fingerprint(run["machine_info"])
    try:
        if compare:
            _compare(session, run, directory, machine, lines)
    finally:
        # Stored as documented whatever is wrong with the stored history (even if judging it
        # raised): the new run is checked on its own (baselines.accept refuses an invalid one).
        if accept:
            try:
                path = baselines.accept(run, directory)
                lines.append(f"infermatrix: accepted this run as a baseline: {path}")
            except baselines.BaselineError as exc:
                lines.append(f"infermatrix: not accepted: {exc}")
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def _compare(session: pytest.Session, run: dict[str, Any], directory: Path, machine: str, lines: list[str]) -> None:
    config = session.config
    wanted = config.getoption("--baseline-machine") or machine
    paths = baselines.history(directory, wanted)
    if not paths:
        lines.append(f"infermatrix: no baseline for machine {wanted} in {directory}; nothing to compare "
                     "(run with --accept-baseline to start one)")
        return
    try:
        history = baselines.load_history(directory, wanted)
    except baselines.BaselineError as exc:
        lines.append(f"infermatrix: cannot compare: {exc}")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        return
    summary = verdicts.assess(history, run)
    config.stash[outcome_key].summary = summary
    lines.append(f"infermatrix verdicts against {len(paths)} baseline run(s) of {wanted}:")
    changes = baselines.version_changes(history[-1], run)
    if changes:
        lines.append("versions differ from the newest baseline: " + "; ".join(changes))
    lines.extend(summary.table().splitlines())
    regressed, groups, failed = summary.regressed, summary.regressed_groups, summary.failed
    if config.getoption("--benchmark-compare-paired", default=False):
        # each case by the mode that judged it: paired where the paired comparison could
        by_mode = _compare_paired(config, history[-1], paths[-1], run, list(summary.cases), lines)
        regressed = [v for v in by_mode if v.verdict == "regressed"]
    if (regressed or groups) and config.getoption("--regression-fails") == "yes":
        what = [f"{len(regressed)} case(s)"] * bool(regressed) + [f"{len(groups)} group(s)"] * bool(groups)
        lines.append(f"infermatrix: {' and '.join(what)} regressed: failing the session")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if failed:
        # their tests failed already, so the session fails; said here so the verdicts read whole
        lines.append(f"infermatrix: {len(failed)} case(s) failed: a failed case is a regression")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _compare_paired(config: pytest.Config, reference: dict[str, Any], source: Path, run: dict[str, Any],
                    history_verdicts: list[verdicts.Verdict], lines: list[str]) -> list[verdicts.Verdict]:
    """``--benchmark-compare-paired``: this run's latency cases timed interleaved against a
    re-creation of the newest baseline's environment (infermatrix.nightly.paired). Returns every
    case's verdict by the mode that judged it."""
    from infermatrix.nightly import lock, paired
    from infermatrix.pytest_plugin.plugin import matrix_key

    try:
        recorded = lock.environments(reference, str(source))
    except lock.LockError as exc:
        recorded, why = {}, str(exc)
    else:
        why = f"{source} recorded no environment (accepted before locks were recorded): accept a run again"
    if not recorded:
        lines.append(f"infermatrix: paired mode not possible: {why}; history mode judged every case")
        return history_verdicts
    state = config.stash[matrix_key]
    lines.append(f"infermatrix: paired mode against {source} (re-creating its environment: the first time this "
                 "installs its packages)")
    outcome = paired.run_paired(reference, run, config.rootpath, state.cache_root,
                                trials=config.getoption("--paired-trials"), calls=config.getoption("--paired-calls"),
                                slowdowns={b: f * 100 for b, f in state.slowdowns.items()},
                                reference_source=str(source), log=lambda line: None)
    rows = paired.judged(history_verdicts, outcome)
    lines.extend(outcome.lines())
    lines.append("infermatrix verdicts by the mode that judged each case:")
    lines.extend(paired.judged_table(rows))
    return [row.verdict for row in rows]


def report(terminalreporter: Any, config: pytest.Config) -> None:
    outcome = config.stash.get(outcome_key, None)
    if outcome is None or not outcome.lines:
        return
    terminalreporter.section("infermatrix")
    for line in outcome.lines:
        terminalreporter.write_line(line)
