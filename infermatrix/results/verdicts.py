"""Regression verdicts that survive a noisy machine.

What the machine does (docs/measurements.md): within one run a case's
median is known to ~2%, but between runs it moves by ~17% (often between two levels),
and the whole machine drifts by ~10% between time windows. A test on the rounds of two
runs is therefore useless (thousands of rounds make every drift "significant"). The
verdict here works on *run medians*:

1. the current run's median of a case (or the median of its ``--repeats`` processes)
   against the medians of the same case in the stored history, on a log scale;
2. the machine-wide drift — the median over all cases of their log ratios — is taken
   out (it moves every case alike, so it is the machine, not the code);
3. the case's between-run spread is the standard deviation of its history's log
   medians, shrunk toward the matrix-wide median spread when the history is short, and
   never below a noise floor;
4. a t-test gives a p-value per case; Benjamini–Hochberg (scipy) controls the false
   discovery rate across the whole matrix; a case is regressed only if its q-value is
   below ``alpha`` *and* its drift-corrected slowdown is at least ``min_effect``;
5. every case reports its minimum detectable change: the smallest slowdown that would
   have been flagged at this confidence given its spread and history length.

An accuracy drop (the current run's case failed its gate, or its cosine similarity fell
below the history's by more than ``accuracy_drop``) is a regression too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from infermatrix.results import CaseResult

VERDICTS = ("regressed", "improved", "unchanged", "new", "missing", "failed")


@dataclasses.dataclass(frozen=True)
class CaseRun:
    key: str
    #: the run's median: the geometric mean of its --repeats processes' medians if it has them
    median_s: float
    cosine: float | None
    #: log medians of the run's --repeats processes (empty without --repeats)
    repeat_logs: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Verdict:
    key: str
    verdict: str
    ratio: float | None  # drift-corrected current / history median
    ci95: tuple[float, float] | None
    p_value: float | None
    q_value: float | None
    min_detectable_change: float | None  # e.g. 0.12 = a 12% slowdown would have been flagged
    history_runs: int
    drift: float | None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data


@dataclasses.dataclass(frozen=True)
class Policy:
    alpha: float = 0.05
    min_effect: float = 0.05
    #: between-run spread (log scale) assumed at least: within-run precision is ~2%
    noise_floor: float = 0.02
    #: pseudo-runs of the matrix-wide spread mixed into a case's own (shrinkage)
    prior_weight: float = 3.0
    accuracy_drop: float = 0.005


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One case's change as a log ratio (new / old) with its standard error and degrees of freedom."""

    key: str
    log_ratio: float
    scale: float
    df: int


@dataclasses.dataclass(frozen=True)
class Decision:
    key: str
    verdict: str
    ratio: float
    ci95: tuple[float, float]
    p_value: float
    q_value: float
    min_detectable_change: float
    reason: str


def decide(estimates: Sequence[Estimate], policy: Policy) -> list[Decision]:
    """The one verdict rule, for the history verdicts and the paired A/B alike: a t test per
    case, Benjamini–Hochberg across them, and a change is called only when q < alpha *and*
    it is at least ``min_effect``. The detectable change is the CI half-width as a ratio."""
    if not estimates:
        return []
    from scipy import stats  # slow to import: only when there is something to judge

    p_values = np.array([2 * stats.t.sf(abs(e.log_ratio / e.scale), e.df) for e in estimates])
    q_values = stats.false_discovery_control(p_values, method="bh")
    decisions = []
    for e, p, q in zip(estimates, p_values, q_values, strict=True):
        ratio = math.exp(e.log_ratio)
        t_crit = float(stats.t.ppf(1 - policy.alpha / 2, e.df))
        half = t_crit * e.scale
        verdict, reason = "unchanged", ""
        if q < policy.alpha and ratio >= 1 + policy.min_effect:
            verdict, reason = "regressed", f"{(ratio - 1) * 100:.1f}% slower (q={q:.3g})"
        elif q < policy.alpha and ratio <= 1 / (1 + policy.min_effect):
            verdict, reason = "improved", f"{(1 - ratio) * 100:.1f}% faster (q={q:.3g})"
        decisions.append(Decision(e.key, verdict, ratio, (math.exp(e.log_ratio - half), math.exp(e.log_ratio + half)),
                                  float(p), float(q), max(math.exp(half) - 1, policy.min_effect), reason))
    return decisions


def summarize(run: dict[str, Any]) -> tuple[dict[str, CaseRun], dict[str, str]]:
    """Per benchmark name: its median (repeats' median if recorded) and cosine; and the
    failed cases the run recorded (``infermatrix.failed``)."""
    cases: dict[str, CaseRun] = {}
    for bench in run["benchmarks"]:
        result = CaseResult.from_benchmark(bench)
        logs = tuple(math.log(m / 1e3) for m in result.repeat_medians_ms or () if m > 0)
        median = math.exp(float(np.mean(logs))) if logs else float(bench["stats"]["median"])
        cases[bench["name"]] = CaseRun(bench["name"], median, result.cosine_similarity, logs)
    failed = dict((run.get("infermatrix") or {}).get("failed", {}))
    return cases, failed


def judge(history_runs: Sequence[dict[str, Any]], current_run: dict[str, Any],
          policy: Policy | None = None) -> list[Verdict]:
    """Verdicts for every case of the current run and of the history (oldest first)."""

    policy = policy or Policy()
    history = [summarize(run)[0] for run in history_runs]
    current, failed = summarize(current_run)
    keys = sorted(set(current) | {k for run in history for k in run} | set(failed))

    # Each history run has its own machine level too: estimate it (the median over cases of
    # their deviation from their own mean) and take it out before measuring each case's spread.
    run_offsets = []
    for run in history:
        deviations = []
        for key, case in run.items():
            medians = [r[key].median_s for r in history if key in r]
            if len(medians) >= 2:
                deviations.append(math.log(case.median_s) - float(np.mean(np.log(medians))))
        run_offsets.append(float(np.median(deviations)) if len(deviations) >= 5 else 0.0)

    log_ratio: dict[str, float] = {}
    spread: dict[str, float] = {}
    count: dict[str, int] = {}
    for key in keys:
        logs = np.array([math.log(run[key].median_s) - offset for run, offset in zip(history, run_offsets, strict=True)
                         if key in run])
        if key in current and len(logs):
            log_ratio[key] = math.log(current[key].median_s) - float(np.mean(logs))
            count[key] = len(logs)
            if len(logs) >= 2:
                spread[key] = float(np.std(logs, ddof=1))
    pooled = float(np.median(list(spread.values()))) if spread else policy.noise_floor * 5
    drift = 0.0
    if len(log_ratio) >= 5:
        # The machine-wide drift moves every case alike. A median is robust, but real
        # regressions in many cases pull it; so it is re-estimated without the cases far
        # (> 3 between-run spreads) from the first estimate.
        values = np.array(list(log_ratio.values()))
        drift = float(np.median(values))
        bulk = values[np.abs(values - drift) <= 3 * max(pooled, policy.noise_floor)]
        if len(bulk) >= 5:
            drift = float(np.median(bulk))
    # When much of the matrix really changed together, "drift" is ambiguous: say so when the
    # shift taken out is larger than any the machine showed between the history's runs.
    seen = max((abs(o) for o in run_offsets), default=0.0)
    drift_note = ""
    if len(run_offsets) >= 3 and abs(drift) > seen + policy.noise_floor:
        drift_note = (f"machine-wide shift {math.exp(drift):.2f}x taken out exceeds any between history runs "
                      f"({math.exp(seen):.2f}x): the machine, or a change that moved most cases")

    verdicts: list[Verdict] = []
    pending: list[Estimate] = []
    for key in keys:
        if key in failed:
            verdicts.append(Verdict(key, "failed", None, None, None, None, None, count.get(key, 0), drift,
                                    failed[key][:300]))
            continue
        if key not in current:
            verdicts.append(Verdict(key, "missing", None, None, None, None, None, count.get(key, 0), drift,
                                    "in the history, not in this run"))
            continue
        if key not in log_ratio:
            verdicts.append(Verdict(key, "new", None, None, None, None, None, 0, drift, "no history for this case"))
            continue
        k = count[key]
        own = spread.get(key)
        # shrink a short history's spread toward the matrix-wide one; never below the floor
        weight, variance = policy.prior_weight, policy.prior_weight * pooled**2
        if own is not None:
            weight, variance = weight + k - 1, variance + (k - 1) * own**2
        # the current run's own repeated processes are more evidence of the same spread,
        # and their mean is a better estimate of its level (variance / n, not variance)
        repeats = current[key].repeat_logs
        if len(repeats) >= 2:
            weight, variance = weight + len(repeats) - 1, variance + (len(repeats) - 1) * float(np.var(repeats, ddof=1))
        sigma = max(math.sqrt(variance / weight), policy.noise_floor)
        scale = sigma * math.sqrt(1 / max(1, len(repeats)) + 1 / k)
        df = max(1, int(round(weight)))
        pending.append(Estimate(key, log_ratio[key] - drift, scale, df))

    for estimate, decision in zip(pending, decide(pending, policy), strict=True):
        key = estimate.key
        verdict, reason = decision.verdict, decision.reason or drift_note
        baseline_cos = [c for run in history if key in run and (c := run[key].cosine) is not None]
        cos_now = current[key].cosine
        if cos_now is not None and baseline_cos and cos_now < min(baseline_cos) - policy.accuracy_drop:
            verdict, reason = "regressed", f"accuracy dropped: cosine {cos_now:.5f} < {min(baseline_cos):.5f}"
        verdicts.append(Verdict(key, verdict, decision.ratio, decision.ci95, decision.p_value, decision.q_value,
                                decision.min_detectable_change, count[key], drift, reason))
    order = {v: i for i, v in enumerate(VERDICTS)}
    verdicts.sort(key=lambda v: (order[v.verdict], v.key))
    return verdicts


def table(verdicts: Sequence[Verdict]) -> str:
    """The verdict table, regressions first, as plain text (and valid Markdown)."""
    lines = ["| verdict | case | ratio | 95% CI | q | detectable | runs | note |", "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        ratio = f"{v.ratio:.3f}" if v.ratio is not None else "–"
        ci = f"{v.ci95[0]:.2f}–{v.ci95[1]:.2f}" if v.ci95 else "–"
        q = f"{v.q_value:.3g}" if v.q_value is not None else "–"
        mdc = f"{v.min_detectable_change * 100:.0f}%" if v.min_detectable_change is not None else "–"
        lines.append(f"| {v.verdict} | {v.key} | {ratio} | {ci} | {q} | {mdc} | {v.history_runs} | {v.reason} |")
    counts = {name: sum(v.verdict == name for v in verdicts) for name in VERDICTS}
    drift = next((v.drift for v in verdicts if v.drift is not None), None)
    footer = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    if drift:
        footer += f"; machine-wide drift taken out: {math.exp(drift):.3f}x"
    return "\n".join(lines + ["", footer])
