"""One night: every benchmark environment one after another, judged, recorded.

``python -m infermatrix nightly`` (what ``make nightly``, ``tox -e nightly`` and the GitHub
workflow run) does, in order:

1. opens the results store (:mod:`infermatrix.nightly.store`): the history is there;
2. fills the shared cache (``tox -e export``), then runs **every** environment of the labels,
   one after another (never two timed at once), each writing ``<results>/<env>.json``; an
   environment that fails does not stop the next;
3. merges the results, judges them against the stored history (history mode) and, where the
   newest accepted baseline recorded its environments, pairs every latency case against a
   re-creation of that environment (paired mode, :mod:`infermatrix.nightly.paired`);
4. writes the report (``report/summary.md``, ``index.html``) and ``report/night.md``;
5. commits the night to the store — its results always, and the merged run as the newest
   baseline only when the night passed — and pushes it when a remote is given.

The night **fails** (exit 1) when an environment failed (its tox/pytest exit status is
other than 0 and 5 — 5 is pytest's "no tests collected" — or it wrote no readable results),
a case failed, or a case regressed in the mode that judged it. A night that could not be
judged or stored at all (bad store, history that does not read) exits 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infermatrix.nightly import paired as paired_mode
from infermatrix.nightly.lock import LockError, environments
from infermatrix.nightly.store import ResultsStore, StoreError
from infermatrix.results import baselines, verdicts

#: pytest's "no tests collected": every case skipped or deselected on this machine is not a failure
NOTHING_COLLECTED = 5
PASSING = (0, NOTHING_COLLECTED)
EXIT_MEANING = {1: "tests failed", 2: "interrupted", 3: "internal error", 4: "usage error",
                -2: "tox: the environment could not be set up", 127: "command not found"}

#: runs one environment: (name, pytest arguments, variables to add) -> exit status
EnvRunner = Callable[[str, Sequence[str], Mapping[str, str]], int]


def tox_command() -> list[str]:
    return [sys.executable, "-m", "tox"]


def tox_runner(repo: Path, tox: Sequence[str] | None = None) -> EnvRunner:
    """``tox -e NAME -- ARGS`` in ``repo``, its output passed through as it comes."""
    command = list(tox or tox_command())

    def run(name: str, pytest_args: Sequence[str], env: Mapping[str, str]) -> int:
        argv = [*command, "-c", str(repo / "tox.ini"), "-e", name, "--", *pytest_args]
        print(f"infermatrix nightly: {' '.join(argv)}", flush=True)
        try:
            return subprocess.run(argv, cwd=repo, env={**os.environ, **env}).returncode
        except FileNotFoundError as exc:
            print(f"infermatrix nightly: {argv[0]}: {exc.strerror}", flush=True)
            return 127

    return run


def list_envs(repo: Path, labels: Sequence[str], tox: Sequence[str] | None = None) -> list[str]:
    """The environments carrying ``labels``, as tox selects them (reads tox.ini, installs nothing)."""
    proc = subprocess.run([*(tox or tox_command()), "-c", str(repo / "tox.ini"), "list", "-q", "--no-desc", "-m",
                           *labels], cwd=repo, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise NightError(f"tox list -m {' '.join(labels)} failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout.split()


def default_labels() -> list[str]:
    """The CPU backends, and the GPU ones where an NVIDIA driver is."""
    return ["cpu-backends", *(["gpu-backends"] if shutil.which("nvidia-smi") else [])]


class NightError(RuntimeError):
    """The night could not run at all (exit 2); the message says why."""


@dataclasses.dataclass(frozen=True)
class EnvOutcome:
    name: str
    returncode: int
    #: its result file, where it wrote one that reads
    result: Path | None
    #: why it counts as failed; None when it did not fail
    problem: str | None = None

    @property
    def failed(self) -> bool:
        return self.problem is not None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "returncode": self.returncode, "result": self.result.name if self.result else None,
                "failed": self.failed, "problem": self.problem}


def classify(name: str, returncode: int, result: Path) -> EnvOutcome:
    """Whether an environment failed: an exit status other than 0 and 5, or results that are
    missing (where pytest ran cases) or do not read."""
    found: Path | None = result if result.is_file() else None
    problem = None
    if found is not None:
        try:
            baselines.check_run(baselines.load_run(found), found, "its results cannot be judged")
        except baselines.BaselineError as exc:
            problem, found = f"its results do not read: {exc}", None
    if returncode not in PASSING:
        meaning = EXIT_MEANING.get(returncode, "failed")
        problem = f"exited {returncode} ({meaning})" + (f"; {problem}" if problem else "")
    elif problem is None and found is None and returncode == 0:
        problem = f"exited 0 but wrote no results ({result.name})"
    return EnvOutcome(name, returncode, found, problem)


@dataclasses.dataclass(frozen=True)
class NightStatus:
    """What decides the night: failed environments, failed cases, regressions (by the mode that
    judged each case), and problems judging or storing it."""

    failed_envs: tuple[str, ...] = ()
    failed_cases: tuple[str, ...] = ()
    regressed: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not (self.failed_envs or self.failed_cases or self.regressed or self.problems)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def reasons(self) -> list[str]:
        return ([f"environment {e}" for e in self.failed_envs] + [f"failed case {c}" for c in self.failed_cases]
                + [f"regressed {r}" for r in self.regressed] + list(self.problems))

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed_envs": list(self.failed_envs), "failed_cases": list(self.failed_cases),
                "regressed": list(self.regressed), "problems": list(self.problems), "reasons": self.reasons()}


def night_status(envs: Sequence[EnvOutcome], run: Mapping[str, Any] | None, rows: Sequence[paired_mode.Judged],
                 problems: Sequence[str] = (), regressed_groups: Sequence[str] = ()) -> NightStatus:
    """The night's status from its parts (see the module); a regressed group counts as a regression."""
    failed_cases = sorted(set((run or {}).get("infermatrix", {}).get("failed") or {})
                          | {j.key for j in rows if j.verdict.verdict == "failed"})
    regressed = sorted(f"{j.key} ({j.mode}: {j.verdict.reason or 'slower'})" for j in rows
                       if j.verdict.verdict == "regressed") + list(regressed_groups)
    return NightStatus(tuple(f"{e.name}: {e.problem}" for e in envs if e.failed), tuple(failed_cases),
                       tuple(regressed), tuple(problems))


@dataclasses.dataclass
class NightConfig:
    repo: Path
    envs: list[str]
    pytest_args: list[str]
    results_dir: Path
    report_dir: Path
    store: ResultsStore
    cache_root: Path
    #: fill the shared cache first (``tox -e export``)
    export: bool = True
    paired: bool = True
    trials: int = paired_mode.TRIALS
    calls: int = paired_mode.CALLS
    processes: int = paired_mode.PROCESSES
    pip_args: list[str] = dataclasses.field(default_factory=list)
    slowdowns: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the UTC time that names the night in the store
    stamp: str = dataclasses.field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))


@dataclasses.dataclass
class NightResult:
    status: NightStatus
    envs: list[EnvOutcome]
    rows: list[paired_mode.Judged]
    paired: paired_mode.PairedOutcome | None
    commit: str | None = None
    accepted: Path | None = None
    stored: bool = False
    store_error: str | None = None

    @property
    def exit_code(self) -> int:
        return 2 if self.store_error else self.status.exit_code


def run_night(config: NightConfig, runner: EnvRunner, *, ensure_env: Callable[..., Any] | None = None,
              log: Callable[[str], None] = print) -> NightResult:
    """One night (see the module). Raises ``NightError`` only before anything ran."""
    try:
        config.store.open()
    except StoreError as exc:
        raise NightError(f"the results store cannot be opened: {exc}") from None
    config.results_dir.mkdir(parents=True, exist_ok=True)
    for stale in config.results_dir.glob("*.json"):
        stale.unlink()  # a file of an earlier night must never pass for tonight's
    variables = {"INFERMATRIX_RESULTS": str(config.results_dir), "INFERMATRIX_CACHE_DIR": str(config.cache_root)}
    outcomes: list[EnvOutcome] = []
    if config.export:
        outcomes.append(_run_env("export", config, runner, variables, log, writes_results=False))
    for name in config.envs:
        outcomes.append(_run_env(name, config, runner, variables, log))

    problems: list[str] = []
    files = [o.result for o in outcomes if o.result is not None]
    run: dict[str, Any] | None = None
    history_verdicts: list[verdicts.Verdict] = []
    regressed_groups: list[str] = []
    history: list[dict[str, Any]] = []
    if files:
        from infermatrix.report.data import ReportError, merge_runs

        try:
            run = merge_runs(files)
        except (ReportError, baselines.BaselineError) as exc:
            problems.append(f"the environments' results do not merge: {exc}")
    if run is not None:
        machine = baselines.fingerprint(run["machine_info"])
        try:
            history = config.store.history(machine)
        except baselines.BaselineError as exc:
            problems.append(f"the stored history does not read: {exc}")
        judgement = verdicts.assess(history, run)
        history_verdicts = list(judgement.cases)
        # a group regressed (every case of a backend a little slower) fails the night like a case
        regressed_groups = [f"group {g.key} (history: {g.reason or 'slower'})" for g in judgement.regressed_groups]
    outcome = None
    if run is not None and history and config.paired:
        try:
            outcome = _paired(config, history[-1], run, ensure_env, log)
        except Exception as exc:  # a fault of the harness: the night fails, and is still stored
            problems.append(f"paired mode failed: {type(exc).__name__}: {exc}")
            log(f"infermatrix nightly: paired mode failed: {type(exc).__name__}: {exc}")
    rows = paired_mode.judged(history_verdicts, outcome)
    config.report_dir.mkdir(parents=True, exist_ok=True)
    for leftover in ("summary.md", "index.html", "night.md", "paired.json"):
        (config.report_dir / leftover).unlink(missing_ok=True)
    if run is not None:
        _report(config, files, outcome, problems, log)
    status = night_status(outcomes, run, rows, problems, regressed_groups)
    result = NightResult(status, outcomes, rows, outcome)
    accept = run if status.passed and run is not None and run["benchmarks"] else None
    night_md = "\n".join(night_lines(config, result, history, accept is not None)) + "\n"
    (config.report_dir / "night.md").write_text(night_md)
    if outcome is not None:
        outcome.save(config.report_dir / "paired.json")

    stored: dict[str, bytes] = {"night.md": night_md.encode()}
    for o in outcomes:
        raw = config.results_dir / f"{o.name}.json"
        if raw.is_file():  # for the record, readable or not
            stored[f"{o.name}.json" if o.result is not None else f"{o.name}.unreadable.json.txt"] = raw.read_bytes()
    if outcome is not None:
        stored["paired.json"] = json.dumps(outcome.as_dict(), indent=1).encode()
    summary = config.report_dir / "summary.md"
    if summary.is_file():
        stored["summary.md"] = summary.read_bytes()
    record = {**status.as_dict(), "night": config.stamp, "environments": [o.as_dict() for o in outcomes],
              "commit": _commit_of(run), "modes": {j.key: j.mode for j in rows},
              "verdicts": {j.key: {**j.verdict.as_dict(), "mode": j.mode} for j in rows}}
    try:
        result.commit, result.accepted = config.store.record(config.stamp, stored, record, accept)
        result.stored = True
        config.store.push()
    except StoreError as exc:
        result.store_error = str(exc)
    return result


def _run_env(name: str, config: NightConfig, runner: EnvRunner, variables: Mapping[str, str],
             log: Callable[[str], None], writes_results: bool = True) -> EnvOutcome:
    log(f"infermatrix nightly: environment {name}")
    args = list(config.pytest_args)
    if writes_results:
        for backend, percent in config.slowdowns.items():
            args.append(f"--inject-slowdown={backend}={percent:g}")
    try:
        code = runner(name, args, variables)
    except Exception as exc:  # a runner that cannot start the environment: that environment failed
        return EnvOutcome(name, -1, None, f"could not be run: {type(exc).__name__}: {exc}")
    if not writes_results:
        return EnvOutcome(name, code, None, None if code in PASSING else
                          f"exited {code} ({EXIT_MEANING.get(code, 'failed')})")
    outcome = classify(name, code, config.results_dir / f"{name}.json")
    log(f"infermatrix nightly: environment {name}: exit {code}" + (f" — FAILED: {outcome.problem}"
                                                                    if outcome.failed else ""))
    return outcome


def _paired(config: NightConfig, reference: dict[str, Any], run: dict[str, Any],
            ensure_env: Callable[..., Any] | None, log: Callable[[str], None]) -> paired_mode.PairedOutcome | None:
    try:
        if not environments(reference, "the newest baseline"):
            log("infermatrix nightly: the newest baseline recorded no environments: history mode only tonight")
            return None
    except LockError as exc:
        log(f"infermatrix nightly: paired mode off tonight: {exc}")
        return None
    return paired_mode.run_paired(reference, run, config.repo, config.cache_root, trials=config.trials,
                                  calls=config.calls, processes=config.processes, slowdowns=config.slowdowns,
                                  pip_args=config.pip_args,
                                  reference_source="the newest accepted baseline", ensure_env=ensure_env, log=log)


def _report(config: NightConfig, files: Sequence[Path], outcome: paired_mode.PairedOutcome | None,
            problems: list[str], log: Callable[[str], None]) -> None:
    from infermatrix.report.data import ReportError
    from infermatrix.report.write import build

    try:
        build(files, config.report_dir, config.store.baselines_dir, paired=outcome)
    except (ReportError, baselines.BaselineError, OSError) as exc:
        problems.append(f"the report could not be written: {exc}")
        log(f"infermatrix nightly: the report could not be written: {exc}")
    except Exception as exc:  # a fault of the report itself: the night fails, and is still stored
        problems.append(f"the report could not be written: {type(exc).__name__}: {exc}")
        log(f"infermatrix nightly: the report could not be written: {exc}")


def _commit_of(run: Mapping[str, Any] | None) -> str | None:
    if run is None:
        return None
    try:
        commits = {lock.commit for lock in environments(run).values() if lock.commit}
    except LockError:
        return None
    return ", ".join(sorted(commits)) or None


def night_lines(config: NightConfig, result: NightResult, history: Sequence[Mapping[str, Any]],
                accepting: bool) -> list[str]:
    """``night.md``: the status first, then each environment, then the verdicts with their modes."""
    status = result.status
    head = "PASSED" if status.passed else "FAILED"
    lines = [f"# infermatrix nightly {config.stamp}: {head}", ""]
    if status.passed:
        lines.append("No failed environment, no failed case, no regression: "
                     + ("accepted as the newest baseline." if accepting else "but nothing was timed, so nothing "
                        "to accept."))
    else:
        lines.append("Not accepted as a baseline, because of:")
        lines += [f"- {reason}" for reason in status.reasons()]
    lines += ["", "## Environments (one after another)", "", "| environment | exit | status |", "|---|---|---|"]
    lines += [f"| {o.name} | {o.returncode} | {'FAILED: ' + (o.problem or '') if o.failed else 'ok'} |"
              for o in result.envs]
    lines += ["", "## Verdicts", ""]
    if not result.rows:
        lines.append("Nothing judged.")
    else:
        lines.append(f"History mode: against {len(history)} accepted run(s) in the results store. "
                     + ("Paired mode: see below." if result.paired else "Paired mode: off tonight (no reference "
                                                                         "environment recorded, or --no-paired)."))
        lines += ["", *paired_mode.judged_table(result.rows)]
        machine = [j.key for j in result.rows if j.mode == paired_mode.MODE_PAIRED and j.history is not None
                   and j.history.verdict == "regressed" and j.verdict.verdict != "regressed"]
        if machine:
            lines += ["", f"History mode flags {len(machine)} case(s) that paired mode found not regressed "
                      f"({', '.join(machine[:5])}{', …' if len(machine) > 5 else ''}): both sides of a pair ran "
                      "on tonight's machine, so the machine (or its load) changed, not the software."]
    if result.paired is not None:
        lines += ["", "## Paired mode", "", *result.paired.lines()]
    return lines
