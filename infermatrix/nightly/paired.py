"""The paired comparison against the last good state.

The accepted baseline's environments are re-created from their locks
(:mod:`infermatrix.nightly.refenv`); each latency case of the current run is then timed
interleaved in that reference environment (side A: its venv, the project at its commit) and
in the environment that ran it tonight (side B: the interpreter its lock names, this
checkout), with ``infermatrix.cli.ab``'s workers and randomized interleaved trials. The
verdict is the paired ratio (current / reference) with the A/B rule: a t test on the trials'
log ratios, Benjamini–Hochberg across the cases, a 5% minimum effect. Machine drift hits both
sides of a trial alike, so this sees changes of ~5–10% where history mode sees ~30–40%.

A case the paired comparison cannot judge — the reference did not run it, its environment
cannot be re-created, a side's worker fails — is judged by history mode, and the outcome says
why for each. History mode also stays the judge of changes of the machine itself (both sides
of a pair run on it), and every case's row says which mode judged it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infermatrix.cli import ab
from infermatrix.nightly import refenv
from infermatrix.nightly.lock import EnvLock, LockError, environments
from infermatrix.results import CaseResult
from infermatrix.results.verdicts import Policy, Verdict

MODE_PAIRED, MODE_HISTORY = "paired", "history"
TRIALS, CALLS = ab.TRIALS, 20
#: pairs of worker processes per case (infermatrix.cli.ab.measure_case)
PROCESSES = ab.PROCESSES


@dataclasses.dataclass(frozen=True)
class PairedCase:
    #: the benchmark's name in the current run (what the history verdicts are keyed by)
    name: str
    case_id: str
    backend: str
    #: the reference environment that ran it, and the interpreter that ran it tonight
    reference_env: str
    current_python: str


@dataclasses.dataclass
class PairedOutcome:
    #: which run the cases were paired against: its time, source, commit per environment
    reference: dict[str, Any]
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    #: per case, the trials' ratios of each pair of worker processes
    trial_ratios: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    environment_of: dict[str, str] = dataclasses.field(default_factory=dict)
    #: benchmark name -> why the paired comparison did not judge it (history mode does)
    not_judged: dict[str, str] = dataclasses.field(default_factory=dict)
    #: reference environment -> {"key", "commit", "reused", "notes", "error"}
    environments: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": MODE_PAIRED, "reference": self.reference, "environments": self.environments,
                "verdicts": {v.key: {**v.as_dict(), "mode": MODE_PAIRED, "environment": self.environment_of.get(v.key),
                                     "trial_ratios": self.trial_ratios.get(v.key, [])} for v in self.verdicts},
                "not_judged": self.not_judged}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairedOutcome:
        if data.get("mode") != MODE_PAIRED or not isinstance(data.get("verdicts"), Mapping):
            raise ValueError("not a paired outcome (python -m infermatrix nightly-paired --out writes one)")
        found = []
        for key, v in data["verdicts"].items():
            ci = v.get("ci95")
            found.append(Verdict(str(key), str(v["verdict"]), v.get("ratio"), tuple(ci) if ci else None,
                                 v.get("p_value"), v.get("q_value"), v.get("min_detectable_change"),
                                 int(v.get("history_runs") or 0), v.get("drift"), str(v.get("reason") or "")))
        return cls(dict(data.get("reference") or {}), found,
                   {k: _pairs(v.get("trial_ratios") or []) for k, v in data["verdicts"].items()},
                   {k: str(v.get("environment")) for k, v in data["verdicts"].items()},
                   dict(data.get("not_judged") or {}), dict(data.get("environments") or {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1))
        tmp.replace(path)

    def lines(self) -> list[str]:
        """What a person reads: the paired verdicts, then what was not judged and why."""
        commits = sorted({str(e.get("commit") or "?")[:12] for e in self.environments.values()})
        out = [f"Paired against the accepted baseline of {self.reference.get('datetime') or '?'} "
               f"(commit {', '.join(commits) or '?'}); ratio = tonight / reference, per case over "
               f"{max((len(r) for r in self.trial_ratios.values()), default=0)} pair(s) of worker processes, "
               f"{max((sum(len(p) for p in r) for r in self.trial_ratios.values()), default=0)} interleaved "
               "trials in all."]
        for name, env in sorted(self.environments.items()):
            if env.get("error"):
                out.append(f"- reference environment {name}: not re-created: {env['error'].splitlines()[0]}")
            for note in env.get("notes") or ():
                out.append(f"- reference environment {name}: {note}")
        if self.verdicts:
            from infermatrix.results.verdicts import table

            out += ["", *table(self.verdicts).splitlines()]
        if self.not_judged:
            out += ["", f"{len(self.not_judged)} case(s) not judged in paired mode (history mode judges them):"]
            out += [f"- `{name}`: {why.splitlines()[0] if why else why}"
                    for name, why in sorted(self.not_judged.items())]
        return out


def _pairs(stored: Any) -> list[list[float]]:
    """Stored trial ratios as pairs (an outcome written before the pairs: one flat list)."""
    if stored and not isinstance(stored[0], list):
        return [[float(r) for r in stored]]
    return [[float(r) for r in pair] for pair in stored]


def plan(reference_run: Mapping[str, Any], current_run: Mapping[str, Any]) -> tuple[list[PairedCase], dict[str, str]]:
    """The current run's latency cases that the reference ran, each with the reference
    environment that ran it and tonight's interpreter; the others with why not."""
    reference = environments(reference_run, "the reference baseline")
    ref_of = {case: name for name, lock in reference.items() for case in lock.cases}
    try:
        current = environments(current_run, "this run")
    except LockError:
        current = {}
    python_of = {case: lock.executable for lock in current.values() for case in lock.cases}
    failed = set((current_run.get("infermatrix") or {}).get("failed") or {})
    cases: list[PairedCase] = []
    not_judged: dict[str, str] = {}
    for bench in current_run.get("benchmarks") or []:
        record = CaseResult.from_benchmark(bench)
        name = str(bench["name"])
        if record.scenario != "latency" or name in failed:
            continue  # paired timing is of latency; a failed case is judged failed already
        if record.case_id not in ref_of:
            not_judged[name] = ("the reference baseline recorded no environment for this case" if reference
                                else "the reference baseline has no environment lock (accepted before locks were "
                                "recorded): accept a run again to pair against it")
            continue
        cases.append(PairedCase(name, record.case_id, record.backend, ref_of[record.case_id],
                                python_of.get(record.case_id, sys.executable)))
    return cases, not_judged


def run_paired(reference_run: Mapping[str, Any], current_run: Mapping[str, Any], repo: Path, cache_root: Path, *,
               trials: int = TRIALS, calls: int = CALLS, seed: int = 0, processes: int = PROCESSES,
               slowdowns: Mapping[str, float] | None = None, pip_args: Sequence[str] = (),
               policy: Policy | None = None, reference_source: str = "",
               ensure_env: Callable[..., refenv.RefEnv] | None = None,
               log: Callable[[str], None] = print) -> PairedOutcome:
    """Pair every case of ``plan`` (see the module); ``slowdowns`` (backend -> percent) slows
    tonight's side, to show what the paired verdict catches."""
    ensure = ensure_env or refenv.ensure
    cases, not_judged = plan(reference_run, current_run)
    locks = environments(reference_run, "the reference baseline")
    outcome = PairedOutcome({"datetime": reference_run.get("datetime"), "source": reference_source},
                            not_judged=not_judged)
    ratios: dict[str, list[list[float]]] = {}
    for env_name in sorted({c.reference_env for c in cases}):
        lock: EnvLock = locks[env_name]
        env_cases = [c for c in cases if c.reference_env == env_name]
        info: dict[str, Any] = {"key": lock.key, "commit": lock.commit, "python": lock.python}
        outcome.environments[env_name] = info
        try:
            log(f"infermatrix: reference environment {env_name} (lock {lock.key}, commit {(lock.commit or '?')[:12]})")
            env = ensure(lock, repo, cache_root, pip_args=pip_args)
        except refenv.RefEnvError as exc:
            info["error"] = str(exc)
            for case in env_cases:
                not_judged[case.name] = f"reference environment {env_name} not re-created: {exc}"
            continue
        info.update(reused=env.reused, notes=list(env.notes), path=str(env.path))
        shared = {"INFERMATRIX_CACHE_DIR": str(cache_root)}
        reference_side = ab.Side("reference", str(env.python), env.rootdir, None, 0.0, shared)
        for i, case in enumerate(env_cases):
            current_side = ab.Side("current", case.current_python, repo, None,
                                   float((slowdowns or {}).get(case.backend, 0.0)), shared)
            log(f"infermatrix: paired {case.case_id}: {processes} pair(s) of processes, {trials} trials x "
                f"{calls} calls per side")
            try:
                ratios[case.name] = ab.measure_case(case.case_id, reference_side, current_side, trials, calls,
                                                    seed + i, processes)
            except (RuntimeError, OSError, ValueError) as exc:
                not_judged[case.name] = f"paired timing failed: {exc}".replace("side A", "the reference side") \
                    .replace("side B", "tonight's side")
                continue
            outcome.environment_of[case.name] = env_name
    verdicts = ab.judge_paired(ratios, policy) if ratios else []
    outcome.verdicts = [dataclasses.replace(v, reason=v.reason.replace(": B than A", " than the reference"))
                        for v in verdicts]
    outcome.trial_ratios = ratios
    return outcome


# ---- the two modes side by side ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Judged:
    """One case's verdict and the mode that gave it; ``history`` is history mode's verdict
    where the paired one judged (a cross-check: history mode sees the machine change too)."""

    key: str
    mode: str
    verdict: Verdict
    history: Verdict | None = None


def judged(history: Sequence[Verdict], paired: PairedOutcome | None) -> list[Judged]:
    """Every case once: the paired verdict where the paired comparison judged it, else history mode's."""
    by_paired = {v.key: v for v in (paired.verdicts if paired else [])}
    by_history = {v.key: v for v in history}
    rows = [Judged(key, MODE_PAIRED, v, by_history.get(key)) for key, v in by_paired.items()]
    rows += [Judged(key, MODE_HISTORY, v) for key, v in by_history.items() if key not in by_paired]
    order = {"regressed": 0, "failed": 1, "improved": 2, "new": 3, "missing": 4, "unchanged": 5}
    return sorted(rows, key=lambda j: (order.get(j.verdict.verdict, 9), j.key))


def judged_table(rows: Sequence[Judged]) -> list[str]:
    """The verdicts with the mode that gave each (Markdown)."""
    lines = ["| verdict | mode | case | ratio | 95% CI | detectable | history mode says | note |",
             "|---|---|---|---|---|---|---|---|"]
    for j in rows:
        v = j.verdict
        ratio = f"{v.ratio:.3f}" if v.ratio is not None else "–"
        ci = f"{v.ci95[0]:.2f}–{v.ci95[1]:.2f}" if v.ci95 else "–"
        mdc = f"{v.min_detectable_change * 100:.0f}%" if v.min_detectable_change is not None else "–"
        other = "–"
        if j.history is not None:
            other = j.history.verdict + (f" ({j.history.ratio:.3f})" if j.history.ratio is not None else "")
        lines.append(f"| {v.verdict} | {j.mode} | {j.key} | {ratio} | {ci} | {mdc} | {other} | {v.reason} |")
    counts: dict[str, int] = {}
    for j in rows:
        counts[f"{j.verdict.verdict} ({j.mode})"] = counts.get(f"{j.verdict.verdict} ({j.mode})", 0) + 1
    return [*lines, "", ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))]
