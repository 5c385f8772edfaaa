"""Regression verdicts that survive a noisy machine: per case, per group, with honest
detectable changes. The method, and the simulation figures behind it, are in docs/verdicts.md.

What the machine does (docs/measurements.md): within one run a case's median is known to
~2%, but between runs it moves by ~17% (often between two levels), and the whole machine
drifts by ~10% between time windows. So the unit of evidence is a *run median*, not a round.

1. **The machine's level is measured, not inferred** (``infermatrix.measure.probe``): each
   case's median is divided by the reference probe's level around it, in this run and in
   each history run (only readings of the same probe identity are compared). A uniform
   slowdown of one backend, or of all of them, then stays in the cases' log ratios: it is
   a regression, not drift. The cases' common shift after the probe is reported as a
   cross-check. Where the probe is missing (runs recorded before it, ``--machine-probe=off``,
   another numpy/BLAS), the machine level is inferred from the cases as before — each row
   says which (``drift_source``) — and a uniform change of every case is then taken out.
2. **Each case** (``mode="history"``): its log ratio to the mean of its history, with a
   standard error from its own between-run spread, moderated toward the matrix's
   (empirical Bayes, as limma's ``squeezeVar``: the prior's degrees of freedom are
   estimated from how much the cases' spreads differ), never below a 2% floor. A t test per
   case; Benjamini–Hochberg across cases (q < ``alpha``) and at least ``min_effect``.
3. **Each group** — every backend, precision, model and device, per scenario — pooled over
   its cases: a random-effects mean of their log ratios (DerSimonian–Laird between-case
   variance), whose variance also carries the part of the noise every case of a run
   shares (the machine's level as the probe left it, estimated from the history's runs).
   Groups are their own family: Benjamini–Hochberg across groups at ``group_alpha``.
4. **Honest detectable change**: BH flags any test whose p-value is below alpha/m (m tests in
   its family), whatever the others do; so the change a case (or group) states is the one
   whose t statistic exceeds the two-sided alpha/m critical value with probability
   ``power`` (0.95), from the noncentral t distribution with the test's degrees of freedom,
   and at least big enough to clear ``min_effect`` with that probability. The tests check
   it by simulation (tests/test_verdicts.py).

A failed case (``infermatrix.failed`` of the run) and an accuracy drop are regressions
too; :class:`Summary` is what callers act on (``exit_status``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infermatrix.results import CaseResult

VERDICTS = ("regressed", "failed", "improved", "new", "missing", "unchanged")
#: The dimensions a group is formed by (each value with at least two judged cases).
GROUP_DIMENSIONS = ("backend", "precision", "model", "device")
MODES = ("history", "paired")


# ---- what callers get -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One case's verdict."""

    key: str
    verdict: str
    ratio: float | None  # current / reference median, the machine's level taken out
    ci95: tuple[float, float] | None
    p_value: float | None
    q_value: float | None
    #: e.g. 0.12: a 12% slowdown of this case alone is flagged with >= 95% probability
    min_detectable_change: float | None
    history_runs: int
    #: the machine's log shift taken out (probe level now vs history, or the cases' inferred drift)
    drift: float | None
    reason: str = ""
    #: which comparison judged the case: "history" (against stored runs) or "paired" (A/B interleaved)
    mode: str = "history"
    #: how the machine's level was taken out: "probe", "cases" (inferred from the cases), "" (paired: not needed)
    drift_source: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data


@dataclasses.dataclass(frozen=True)
class GroupVerdict:
    """A group's verdict: all its judged cases pooled (``dimension`` = ``value``)."""

    key: str
    dimension: str
    value: str
    scenario: str
    verdict: str
    cases: tuple[str, ...]
    ratio: float
    ci95: tuple[float, float]
    p_value: float
    q_value: float
    #: the change of every case of the group together that is flagged with >= 95% probability
    min_detectable_change: float
    #: between-case spread of the cases' true changes (DerSimonian–Laird), as a ratio: 0.03 = ±3%
    between_case_sd: float
    history_runs: int
    mode: str = "history"
    reason: str = ""
    #: other groups with exactly these cases (e.g. "device=cpu" when every case runs on the CPU)
    same_as: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ci95"] = list(self.ci95)
        data["cases"] = list(self.cases)
        data["same_as"] = list(self.same_as)
        return data


@dataclasses.dataclass(frozen=True)
class MachineLevel:
    """How the machine's level was taken out of this judgement, for the reader to check."""

    #: cases whose level came from the reference probe / was inferred from the cases
    probe_cases: int
    inferred_cases: int
    #: median over probe-judged cases of the probe's log level now minus in their history
    probe_shift: float | None
    #: cross-check: the cases' common log shift left after the probe (median of their log ratios)
    common_shift: float | None
    #: the log drift taken out of the cases judged without the probe
    inferred_drift: float | None
    #: the run-wide noise all cases share after the machine's level is taken out (log-scale sd)
    shared_sd: float
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        return data


@dataclasses.dataclass(frozen=True)
class Summary:
    """Everything a night's judgement says: groups, cases, the machine, and the exit status.

    ``regressed``/``failed``/``regressed_groups`` are what a nightly acts on; ``exit_status()``
    is 1 when any case or group regressed or any case failed (a failed case is a regression),
    else 0. Verdicts of several modes (history, paired) may sit side by side (:func:`combine`).
    """

    cases: tuple[Verdict, ...]
    groups: tuple[GroupVerdict, ...] = ()
    machine: MachineLevel | None = None

    @property
    def regressed(self) -> list[Verdict]:
        return [v for v in self.cases if v.verdict == "regressed"]

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.cases if v.verdict == "failed"]

    @property
    def missing(self) -> list[Verdict]:
        return [v for v in self.cases if v.verdict == "missing"]

    @property
    def regressed_groups(self) -> list[GroupVerdict]:
        return [g for g in self.groups if g.verdict == "regressed"]

    @property
    def passed(self) -> bool:
        return self.exit_status() == 0

    def exit_status(self, missing_fails: bool = False) -> int:
        """1 when a case or group regressed or a case failed (or, asked, a case is missing), else 0."""
        bad = self.regressed or self.failed or self.regressed_groups or (missing_fails and self.missing)
        return 1 if bad else 0

    def counts(self) -> dict[str, int]:
        return {name: n for name in VERDICTS if (n := sum(v.verdict == name for v in self.cases))}

    def as_dict(self) -> dict[str, Any]:
        return {"exit_status": self.exit_status(), "counts": self.counts(),
                "groups": [g.as_dict() for g in self.groups], "cases": [v.as_dict() for v in self.cases],
                "machine": self.machine.as_dict() if self.machine else None}

    def table(self) -> str:
        return table(self.cases, self.groups, self.machine)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        """A Summary back from :meth:`as_dict`'s JSON (e.g. a paired judgement saved by the nightly)."""
        def fields(kind: Any, item: Mapping[str, Any]) -> dict[str, Any]:
            names = {f.name for f in dataclasses.fields(kind)}
            return {k: v for k, v in item.items() if k in names}

        cases = tuple(Verdict(**{**fields(Verdict, v), "ci95": tuple(v["ci95"]) if v.get("ci95") else None})
                      for v in data.get("cases") or [])
        groups = tuple(GroupVerdict(**{**fields(GroupVerdict, g), "ci95": tuple(g["ci95"]), "cases": tuple(g["cases"]),
                                       "same_as": tuple(g.get("same_as") or ())})
                       for g in data.get("groups") or [])
        machine = data.get("machine")
        level = MachineLevel(**{**fields(MachineLevel, machine), "notes": tuple(machine.get("notes") or ())}) \
            if machine else None
        return cls(cases, groups, level)


def combine(*summaries: Summary) -> Summary:
    """Several judgements of one night side by side (e.g. history and paired): every row keeps
    its ``mode``; the exit status fails on any mode's regression or failed case."""
    machine = next((s.machine for s in summaries if s.machine is not None), None)
    cases = sorted((v for s in summaries for v in s.cases), key=_case_order)
    groups = sorted((g for s in summaries for g in s.groups), key=_group_order)
    return Summary(tuple(cases), tuple(groups), machine)


def _case_order(v: Verdict) -> tuple[int, str, str]:
    return (VERDICTS.index(v.verdict) if v.verdict in VERDICTS else len(VERDICTS), v.key, v.mode)


def _group_order(g: GroupVerdict) -> tuple[int, str, int, str, str]:
    return (VERDICTS.index(g.verdict), g.scenario, GROUP_DIMENSIONS.index(g.dimension)
            if g.dimension in GROUP_DIMENSIONS else 9, g.value, g.mode)


# ---- the rule -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Policy:
    #: false discovery rate across the cases (Benjamini–Hochberg)
    alpha: float = 0.05
    #: ... and across the groups, their own family: a group flag speaks for many cases, so it is
    #: held to a stricter rate (an A/A night flags a group in <= 1% of nights)
    group_alpha: float = 0.01
    #: the probability with which the stated detectable change is flagged
    power: float = 0.95
    min_effect: float = 0.05
    #: between-run spread (log scale) assumed at least: within-run precision is ~2%
    noise_floor: float = 0.02
    #: the prior's pseudo-runs when too few cases tell how alike their spreads are
    prior_weight: float = 3.0
    #: the most degrees of freedom the cases' common spread may lend one case
    max_prior_df: float = 1000.0
    accuracy_drop: float = 0.005
    #: a case's machine level: the median probe reading within this many seconds of its own
    probe_window_s: float = 600.0
    #: history runs with the same probe a case needs to be judged by the probe
    min_probe_history: int = 2


@dataclasses.dataclass(frozen=True, eq=False)
class Spread:
    """The standard error of an estimate whose variance has parts estimated with few degrees of
    freedom: plausible standard errors (``sd``) with their probabilities (``weight``). The
    estimate's null distribution is the mixture of normals they make: Student's t when one part
    estimated with df degrees of freedom is all there is, the normal when the variance is known."""

    sd: np.ndarray
    weight: np.ndarray

    def sf(self, x: float) -> float:
        """P(estimate > x) when the true change is 0."""
        from scipy.special import ndtr

        return float(np.dot(self.weight, ndtr(-x / self.sd)))

    def upper(self, tail: float) -> float:
        """x with P(estimate > x) = ``tail`` when the true change is 0."""
        from scipy import optimize, stats

        z = float(stats.norm.isf(tail))
        # between the normal quantiles of the smallest and the largest plausible sd
        low, high = z * float(np.min(self.sd)), z * float(np.max(self.sd))
        if high - low < 1e-12:
            return low
        return float(optimize.brentq(lambda x: math.log(max(self.sf(x), 1e-300)) - math.log(tail), low, high,
                                     rtol=1e-6))


@functools.lru_cache(maxsize=256)
def inverse_chi2_grid(df: float, points: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """How far a variance estimated with ``df`` degrees of freedom may be from the true one:
    multipliers (true / estimated, a scaled-inverse-chi-squared posterior) and their weights, on
    a grid that reaches far into both tails (mixtures over it match Student's t to ~1%)."""
    from scipy import special, stats

    if not math.isfinite(df) or df > 300:  # as good as known: t(300) and the normal differ by < 2% at 1e-4
        return np.ones(1), np.ones(1)
    edges = np.linspace(-14.0, 14.0, points + 1)
    cdf = special.expit(edges)
    cdf[0], cdf[-1] = 0.0, 1.0
    middle = special.expit((edges[:-1] + edges[1:]) / 2)
    return df / stats.chi2.ppf(middle, df), np.diff(cdf)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One change as a log ratio (new / old) with its standard error and degrees of freedom.

    ``shared_var`` is the part of ``scale**2`` every case of the run shares (the machine's level
    as far as it was not taken out), ``shared_factor`` the multiple of the run-shared variance in
    it; ``labels`` are the case's group values (backend, ...). ``spread``, where given, replaces
    Student's t with ``df`` (a group's variance: see :class:`Spread`)."""

    key: str
    log_ratio: float
    scale: float
    df: float
    shared_var: float = 0.0
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    shared_factor: float = 0.0
    spread: Spread | None = None


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


@functools.lru_cache(maxsize=4096)
def _t_isf(tail: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.isf(tail, df))


@functools.lru_cache(maxsize=4096)
def _noncentrality(df: float, crit: float, power: float) -> float:
    """The change, in standard errors, whose t statistic (``df`` degrees of freedom) exceeds
    ``crit`` with probability ``power``: the noncentral t distribution, which counts that the
    future test's own standard error is an estimate too (for few degrees of freedom it asks
    more than t(1 - alpha/2m) + t(power), which reaches 95% only on average over histories)."""
    from scipy import optimize, stats

    if not math.isfinite(df) or df > 1e5:
        return crit + float(stats.norm.ppf(power))
    return float(optimize.brentq(lambda ncp: float(stats.nct.sf(crit, df, ncp)) - power, crit - 1, crit + 80))


def _tails(e: Estimate, tests: int, alpha: float, power: float, min_effect: float) -> tuple[float, float, float]:
    """p-value, 95% half-width and the detectable change, all on the log scale. The change must
    pass two bars with probability ``power``: the flagging threshold (two-sided alpha/tests)
    and ``min_effect``. For the threshold, whose test divides by the estimated standard error,
    a t estimate needs the noncentral t; for ``min_effect``, a fixed bar, Student's t quantile."""
    if e.spread is None:  # the p-value is computed by decide for all such estimates at once
        crit = _t_isf(alpha / (2 * tests), e.df)
        detect = max(_noncentrality(e.df, crit, power), math.log1p(min_effect) / e.scale + _t_isf(1 - power, e.df))
        return math.nan, _t_isf(0.025, e.df) * e.scale, detect * e.scale
    spread = e.spread
    shift = spread.upper(1 - power)
    detect = max(spread.upper(alpha / (2 * tests)), math.log1p(min_effect)) + shift
    return min(1.0, 2 * spread.sf(abs(e.log_ratio))), spread.upper(0.025), detect


def detectable_change(scale: float, df: float, tests: int, alpha: float, power: float, min_effect: float) -> float:
    """The slowdown (as a share: 0.12 = 12%) flagged with probability ``power`` when it is the
    only change among ``tests`` judged by Benjamini–Hochberg at ``alpha`` (see :func:`decide`)."""
    return math.expm1(_tails(Estimate("", 0.0, scale, df), tests, alpha, power, min_effect)[2])


def decide(estimates: Sequence[Estimate], policy: Policy, alpha: float | None = None) -> list[Decision]:
    """The one verdict rule, for the history verdicts, the paired A/B and the groups alike: a
    test per estimate, Benjamini–Hochberg across them, and a change is called only when
    q < alpha *and* it is at least ``min_effect``.

    Each states its honest detectable change. BH flags every test whose p-value is at most
    alpha/m (m tests), whatever the others do — with one true change among nulls that is all it
    flags — so the stated change is the one whose estimate passes the two-sided alpha/m threshold,
    and ``min_effect``, with probability ``power``: for a t test from the noncentral t
    distribution; for a group (a :class:`Spread`) the threshold plus the spread's ``power``
    quantile, the uncertainty of its variance included either way."""
    if not estimates:
        return []
    from scipy import stats  # slow to import: only when there is something to judge

    alpha = policy.alpha if alpha is None else alpha
    tails = [_tails(e, len(estimates), alpha, policy.power, policy.min_effect) for e in estimates]
    plain = [i for i, e in enumerate(estimates) if e.spread is None]
    p_values = np.array([t[0] for t in tails])
    if plain:  # Student's t for all of them at once (scipy's per-call cost dominates otherwise)
        chosen = [estimates[i] for i in plain]
        p_values[plain] = 2 * stats.t.sf(np.abs([e.log_ratio / e.scale for e in chosen]), [e.df for e in chosen])
    q_values = stats.false_discovery_control(p_values, method="bh")
    decisions = []
    for e, (_, half, detect), p, q in zip(estimates, tails, p_values, q_values, strict=True):
        ratio = math.exp(e.log_ratio)
        verdict, reason = "unchanged", ""
        if q < alpha and ratio >= 1 + policy.min_effect:
            verdict, reason = "regressed", f"{(ratio - 1) * 100:.1f}% slower (q={q:.3g})"
        elif q < alpha and ratio <= 1 / (1 + policy.min_effect):
            verdict, reason = "improved", f"{(1 - ratio) * 100:.1f}% faster (q={q:.3g})"
        mdc = math.expm1(detect)
        decisions.append(Decision(e.key, verdict, ratio, (math.exp(e.log_ratio - half), math.exp(e.log_ratio + half)),
                                  float(p), float(q), mdc, reason))
    return decisions


# ---- reading runs ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaseRun:
    key: str
    #: the run's median: the geometric mean of its --repeats processes' medians if it has them
    median_s: float
    cosine: float | None
    #: log medians of the run's --repeats processes (empty without --repeats)
    repeat_logs: tuple[float, ...] = ()
    #: the group values of the case: backend, precision, model, device, scenario
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the reference probe's reading right before the case (None: not probed)
    probe: Mapping[str, Any] | None = None


def case_labels(result: CaseResult) -> dict[str, str]:
    return {"backend": result.backend, "precision": result.precision, "model": result.model,
            "device": result.device, "scenario": result.scenario}


def summarize(run: Mapping[str, Any]) -> tuple[dict[str, CaseRun], dict[str, str]]:
    """Per benchmark name: its median (repeats' median if recorded), cosine, groups and probe
    reading; and the failed cases the run recorded (``infermatrix.failed``)."""
    cases: dict[str, CaseRun] = {}
    for bench in run["benchmarks"]:
        result = CaseResult.from_benchmark(bench)
        logs = tuple(math.log(m / 1e3) for m in result.repeat_medians_ms or () if m > 0)
        median = math.exp(float(np.mean(logs))) if logs else float(bench["stats"]["median"])
        cases[bench["name"]] = CaseRun(bench["name"], median, result.cosine_similarity, logs, case_labels(result),
                                       result.machine_probe)
    failed = dict((run.get("infermatrix") or {}).get("failed", {}))
    return cases, failed


def probe_levels(cases: Mapping[str, CaseRun], window_s: float) -> dict[str, tuple[str, float]]:
    """Each probed case's machine level: (probe identity, the median score of the readings of that
    identity within ``window_s`` of its own). Readings around it, not only its own: one reading is
    a few ms of work, the median of its neighbours is steadier and still follows slow drift."""
    from infermatrix.measure.probe import score

    readings: dict[str, list[tuple[float, float]]] = {}
    own: dict[str, tuple[str, float, float]] = {}
    for key, case in cases.items():
        if not case.probe:
            continue
        value = score(case.probe)
        when = case.probe.get("time")
        if value is None or not isinstance(when, int | float):
            continue
        identity = str(case.probe.get("key", ""))
        readings.setdefault(identity, []).append((float(when), value))
        own[key] = (identity, float(when), value)
    levels = {}
    for key, (identity, when, _) in own.items():
        near = [v for t, v in readings[identity] if abs(t - when) <= window_s]
        levels[key] = (identity, statistics.median(near))
    return levels


# ---- the spread of a case: moderated (empirical Bayes) ---------------------------------------


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's method, as limma's trigammaInverse)."""
    from scipy.special import polygamma

    if x > 1e7:
        return 1 / math.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def prior_spread(variances: Sequence[float], dfs: Sequence[float], policy: Policy) -> tuple[float, float]:
    """The matrix's common between-run variance and how many degrees of freedom it is worth to a
    case (limma's ``fitFDist``, by moments of the log variances): when the cases' spreads differ
    no more than sampling explains, the common one is worth many runs; when they differ, few."""
    from scipy.special import digamma, polygamma

    s2 = np.asarray(variances, dtype=float)
    d = np.asarray(dfs, dtype=float)
    keep = (s2 > 0) & (d > 0)
    s2, d = s2[keep], d[keep]
    if len(s2) < 3:
        fallback = float(np.median(s2)) if len(s2) else (policy.noise_floor * 5) ** 2
        return fallback, policy.prior_weight
    e = np.log(s2) - digamma(d / 2) + np.log(d / 2)
    e_mean = float(np.mean(e))
    e_var = float(np.var(e, ddof=1) - np.mean(polygamma(1, d / 2)))
    d0 = 2 * _trigamma_inverse(e_var) if e_var > 0 else math.inf
    # the common spread cannot be worth more runs than the cases it was estimated from hold
    d0 = min(d0, policy.max_prior_df, float(np.sum(d)))
    s0 = math.exp(e_mean + float(digamma(d0 / 2)) - math.log(d0 / 2))
    return s0, d0


# ---- judging a run against its history -------------------------------------------------------


@dataclasses.dataclass
class _Series:
    """One case's machine-corrected log medians: history run index -> value, and now."""

    key: str
    source: str  # "probe" or "cases"
    history: dict[int, float]
    now: float
    drift: float
    repeats: tuple[float, ...]
    #: how many fresh processes each history run's value averages (0: the in-process median alone)
    history_processes: tuple[int, ...] = ()

    @property
    def like_history(self) -> bool:
        """Every history run's value averages as many fresh processes as this run's (``--repeats``
        the same every night, 0 included): then each run's value has the same variance."""
        return all(n == len(self.repeats) for n in self.history_processes)


def judge(history_runs: Sequence[Mapping[str, Any]], current_run: Mapping[str, Any],
          policy: Policy | None = None) -> list[Verdict]:
    """Case verdicts of the current run against the history (oldest first); see :func:`assess`."""
    return list(assess(history_runs, current_run, policy).cases)


def assess(history_runs: Sequence[Mapping[str, Any]], current_run: Mapping[str, Any],
           policy: Policy | None = None) -> Summary:
    """The current run judged against the history (oldest first): group and case verdicts."""
    current, failed = summarize(current_run)
    return assess_cases([summarize(run)[0] for run in history_runs], current, failed, policy)


def assess_cases(history: Sequence[Mapping[str, CaseRun]], current: Mapping[str, CaseRun],
                 failed: Mapping[str, str] | None = None, policy: Policy | None = None) -> Summary:
    """:func:`assess` on runs already read (:func:`summarize`): history oldest first, the
    current run's cases and its failed ones (benchmark name -> why)."""
    policy = policy or Policy()
    failed = failed or {}
    keys = sorted(set(current) | {k for run in history for k in run} | set(failed))
    offsets = _inferred_offsets(history)
    levels_now = probe_levels(current, policy.probe_window_s)
    levels_then = [probe_levels(run, policy.probe_window_s) for run in history]

    series: dict[str, _Series] = {}
    #: every judged case's log ratio with the history's levels inferred from the cases (the fallback's view)
    inferred_ratio: dict[str, float] = {}
    for key in keys:
        if key not in current or key in failed:
            continue
        present = [i for i, run in enumerate(history) if key in run]
        if not present:
            continue
        log_now = math.log(current[key].median_s)
        inferred_ratio[key] = log_now - statistics.fmean(math.log(history[i][key].median_s) - offsets[i]
                                                         for i in present)
        probed = [i for i in present if key in levels_now and levels_then[i].get(key, ("", 0.0))[0]
                  == levels_now[key][0]]
        if key in levels_now and len(probed) >= policy.min_probe_history:
            then = {i: math.log(history[i][key].median_s) - levels_then[i][key][1] for i in probed}
            level_now = levels_now[key][1]
            drift = level_now - float(np.mean([levels_then[i][key][1] for i in probed]))
            series[key] = _Series(key, "probe", then, log_now - level_now, drift, current[key].repeat_logs,
                                  tuple(len(history[i][key].repeat_logs) for i in probed))
        else:
            then = {i: math.log(history[i][key].median_s) - offsets[i] for i in present}
            series[key] = _Series(key, "cases", then, log_now, 0.0, current[key].repeat_logs,
                                  tuple(len(history[i][key].repeat_logs) for i in present))

    # The cases judged without the probe: the machine's drift is inferred from the cases (the
    # median log ratio of every judged case, re-estimated without the cases far from it, so that
    # real regressions in many cases do not pull it), as before the probe existed.
    inferred = [s for s in series.values() if s.source == "cases"]
    spreads = [float(np.std(list(s.history.values()), ddof=1)) for s in series.values() if len(s.history) >= 2]
    pooled = float(np.median(spreads)) if spreads else policy.noise_floor * 5
    inferred_drift = 0.0
    drift_cases = len(inferred_ratio) if inferred and len(inferred_ratio) >= 5 else 0
    if drift_cases:
        values = np.array(list(inferred_ratio.values()))
        inferred_drift = float(np.median(values))
        bulk = values[np.abs(values - inferred_drift) <= 3 * max(pooled, policy.noise_floor)]
        if len(bulk) >= 5:
            inferred_drift = float(np.median(bulk))
    for s in inferred:
        s.now -= inferred_drift
        s.drift = inferred_drift

    estimates, history_count, noise = _estimates(series, current, policy, drift_cases)
    probe_cases = [s for s in series.values() if s.source == "probe"]
    machine = _machine_level(estimates, probe_cases, inferred, inferred_drift, offsets, math.sqrt(noise.variance),
                             policy, len(levels_now))

    verdicts: list[Verdict] = []
    for key in keys:
        if key in failed:
            verdicts.append(Verdict(key, "failed", None, None, None, None, None, 0, None, failed[key][:300]))
        elif key not in current:
            verdicts.append(Verdict(key, "missing", None, None, None, None, None, 0, None,
                                    "in the history, not in this run"))
        elif key not in series:
            verdicts.append(Verdict(key, "new", None, None, None, None, None, 0, None, "no history for this case"))
    for estimate, decision in zip(estimates, decide(estimates, policy), strict=True):
        key = estimate.key
        verdict, reason = decision.verdict, decision.reason
        baseline_cos = [c for run in history if key in run and (c := run[key].cosine) is not None]
        cos_now = current[key].cosine
        if cos_now is not None and baseline_cos and cos_now < min(baseline_cos) - policy.accuracy_drop:
            verdict, reason = "regressed", f"accuracy dropped: cosine {cos_now:.5f} < {min(baseline_cos):.5f}"
        verdicts.append(Verdict(key, verdict, decision.ratio, decision.ci95, decision.p_value, decision.q_value,
                                decision.min_detectable_change, history_count[key], series[key].drift, reason,
                                "history", series[key].source))
    verdicts.sort(key=_case_order)
    groups = judge_groups(estimates, policy, noise, history_runs=len(history),
                          failed={k: current[k].labels if k in current else _labels_of_key(k) for k in failed},
                          skip_everything=not probe_cases)
    return Summary(tuple(verdicts), tuple(groups), machine)


def _inferred_offsets(history: Sequence[Mapping[str, CaseRun]]) -> list[float]:
    """Each history run's machine level as the cases tell it: the median over cases of their
    deviation from their own mean (the fallback where no probe was recorded)."""
    logs: dict[str, list[float]] = {}
    for run in history:
        for key, case in run.items():
            logs.setdefault(key, []).append(math.log(case.median_s))
    means = {key: statistics.fmean(values) for key, values in logs.items() if len(values) >= 2}
    offsets = []
    for run in history:
        deviations = [math.log(case.median_s) - means[key] for key, case in run.items() if key in means]
        offsets.append(statistics.median(deviations) if len(deviations) >= 5 else 0.0)
    return offsets


@dataclasses.dataclass(frozen=True)
class SharedNoise:
    """What every case of a run shares once its machine level is taken out (the machine's level as
    far as the probe did not capture it), as the history's runs tell it: the between-run variance
    of the runs' mean residual over ``cases`` cases (``run_var``, estimated with ``df`` degrees of
    freedom), of which ``case_part`` is the cases' own noise averaged over them."""

    run_var: float = 0.0
    case_part: float = 0.0
    cases: float = 1.0
    df: float = math.inf

    @property
    def variance(self) -> float:
        """The shared variance itself (method of moments: what the cases' own noise does not explain)."""
        if self.cases < 2:
            return 0.0
        return max(0.0, (self.run_var - self.case_part) / (1 - 1 / self.cases))

    def draws(self) -> tuple[np.ndarray, np.ndarray]:
        """Plausible values of the shared variance and their weights: ``run_var`` was estimated
        from a few runs, so the truth may be several times larger (scaled-inverse-chi-squared)."""
        if self.cases < 2 or self.run_var <= 0:
            return np.zeros(1), np.ones(1)
        multipliers, weights = inverse_chi2_grid(self.df)
        return np.maximum(0.0, self.run_var * multipliers - self.case_part) / (1 - 1 / self.cases), weights


def _estimates(series: Mapping[str, _Series], current: Mapping[str, CaseRun], policy: Policy,
               inferred_count: int) -> tuple[list[Estimate], dict[str, int], SharedNoise]:
    """Each case's log ratio, standard error (moderated spread) and degrees of freedom; the
    history runs behind each; and the run-wide shared noise. ``inferred_count``: the cases the
    inferred drift is a median of (0: none was taken out)."""
    variances, dfs = {}, {}
    for key, s in series.items():
        values = list(s.history.values())
        ss, df = 0.0, 0
        if len(values) >= 2:
            ss, df = float(np.var(values, ddof=1)) * (len(values) - 1), len(values) - 1
        # A history of single-process values beside a current run of several processes: the
        # current run's processes are more evidence of the single-process spread. Where every
        # run averages the same number of processes, the history's values alone tell the
        # spread of such an average (the processes' own spread is only part of it).
        if len(s.repeats) >= 2 and not s.like_history:
            ss += float(np.var(s.repeats, ddof=1)) * (len(s.repeats) - 1)
            df += len(s.repeats) - 1
        if df:
            variances[key], dfs[key] = ss / df, df
    s0, d0 = prior_spread(list(variances.values()), list(dfs.values()), policy)
    sigma2: dict[str, float] = {}
    df_of: dict[str, float] = {}
    for key in series:
        own, df = variances.get(key, 0.0), dfs.get(key, 0)
        moderated = s0 if not math.isfinite(d0) else (d0 * s0 + df * own) / (d0 + df)
        sigma2[key] = max(moderated, policy.noise_floor**2)
        df_of[key] = d0 + df

    noise = _shared_noise(series, sigma2)
    estimates, count = [], {}
    for key, s in series.items():
        k = len(s.history)
        # each history value and the current one: the same variance when alike, else the current
        # run averages len(repeats) single-process values
        factor = (1.0 if s.like_history else 1 / max(1, len(s.repeats))) + 1 / k
        # The case's spread already holds the shared noise of its history's runs; the drift
        # inferred from the cases (a median over them) adds an error they all share.
        drift_error = (math.pi / 2 * sigma2[key] * factor / inferred_count
                       if s.source == "cases" and inferred_count else 0.0)
        scale = math.sqrt(sigma2[key] * factor + drift_error)
        log_ratio = s.now - float(np.mean(list(s.history.values())))
        estimates.append(Estimate(key, log_ratio, scale, df_of[key], noise.variance * factor + drift_error,
                                  current[key].labels, factor))
        count[key] = k
    return estimates, count, noise


def _shared_noise(series: Mapping[str, _Series], sigma2: Mapping[str, float]) -> SharedNoise:
    """The between-run variance of the history runs' mean residual over the cases."""
    runs: dict[int, list[float]] = {}
    for s in series.values():
        if len(s.history) < 2:
            continue
        mean = float(np.mean(list(s.history.values())))
        for i, value in s.history.items():
            runs.setdefault(i, []).append(value - mean)
    if len(runs) < 3:
        return SharedNoise()
    means = [float(np.mean(v)) for v in runs.values()]
    n = float(np.mean([len(v) for v in runs.values()]))
    if n < 2:
        return SharedNoise()
    noise = float(np.mean([sigma2[k] for k, s in series.items() if len(s.history) >= 2]))
    return SharedNoise(float(np.sum(np.square(means))) / (len(means) - 1), noise / n, n, float(len(means) - 1))


def _machine_level(estimates: Sequence[Estimate], probe_cases: Sequence[_Series],
                   inferred: Sequence[_Series], inferred_drift: float, offsets: Sequence[float], shared_sd: float,
                   policy: Policy, probed_now: int) -> MachineLevel:
    notes = []
    by_key = {e.key: e for e in estimates}
    probe_shift = common_shift = None
    if probe_cases:
        probe_shift = float(np.median([s.drift for s in probe_cases]))
        common_shift = float(np.median([by_key[s.key].log_ratio for s in probe_cases]))
        notes.append(f"machine level from the reference probe: {math.exp(probe_shift):.3f}x the history's; "
                     f"the cases' common shift after it (cross-check, not taken out): {math.exp(common_shift):.3f}x")
    if inferred:
        why = (f"{len(inferred)} case(s) without probe readings of the same identity in this run and at least "
               f"{policy.min_probe_history} history runs" if probed_now else
               "no probe recorded in this run")
        notes.append(f"machine drift inferred from the cases ({why}): {math.exp(inferred_drift):.3f}x taken out — "
                     "a change that moves every one of those cases alike is taken out with it")
        seen = max((abs(o) for o in offsets), default=0.0)
        if len(offsets) >= 3 and abs(inferred_drift) > seen + policy.noise_floor:
            notes.append(f"the drift taken out ({math.exp(inferred_drift):.2f}x) exceeds any between history runs "
                         f"({math.exp(seen):.2f}x): the machine, or a change that moved most cases")
    return MachineLevel(len(probe_cases), len(inferred), probe_shift, common_shift,
                        inferred_drift if inferred else None, shared_sd, tuple(notes))


# ---- groups ---------------------------------------------------------------------------------


def _labels_of_key(key: str) -> dict[str, str]:
    """Group values from a benchmark name ``test_<scenario>[<case id>]`` or a bare case id."""
    from infermatrix.pytest_plugin.plugin import case_id_pattern

    named = re.match(r"^test_(?P<scenario>\w+)\[(?P<case_id>.+)\]$", key)
    case_id = named["case_id"] if named else key
    parsed = case_id_pattern().match(case_id)
    if parsed is None:
        return {}
    labels = {d: parsed[d] for d in GROUP_DIMENSIONS}
    labels["scenario"] = named["scenario"].replace("_", "-") if named else "latency"
    return labels


def judge_groups(estimates: Sequence[Estimate], policy: Policy, noise: SharedNoise | None = None,
                 history_runs: int = 0, mode: str = "history", failed: Mapping[str, Mapping[str, str]] | None = None,
                 skip_everything: bool = False) -> list[GroupVerdict]:
    """Every backend, precision, model and device (per scenario) with at least two judged cases,
    pooled: a random-effects mean of its cases' log ratios, tested as its own family.

    ``noise``: what every case of a run shares after its machine level was taken out; it does
    not shrink by pooling, so it enters a group's variance whole, with the uncertainty of its
    estimate from a few history runs. ``skip_everything``: leave out a group of every judged
    case (when the machine's drift was inferred from the cases, their common shift is zero by
    construction). ``failed``: failed cases' group values, named in their groups' notes."""
    noise = noise or SharedNoise()
    by_group: dict[tuple[str, str, str], list[Estimate]] = {}
    for e in estimates:
        labels = e.labels or _labels_of_key(e.key)
        for dimension in GROUP_DIMENSIONS:
            if labels.get(dimension):
                by_group.setdefault((labels.get("scenario", ""), dimension, labels[dimension]), []).append(e)
    scenarios = {scenario for scenario, _, _ in by_group}
    per_scenario = {scenario: sum(1 for e in estimates if (e.labels or _labels_of_key(e.key)).get("scenario", "")
                                  == scenario) for scenario in scenarios}
    names: dict[tuple[str, frozenset[str]], list[str]] = {}
    chosen: dict[tuple[str, frozenset[str]], tuple[str, str, list[Estimate]]] = {}
    for (scenario, dimension, value), members in sorted(by_group.items(), key=lambda item: (
            item[0][0], GROUP_DIMENSIONS.index(item[0][1]), item[0][2])):
        if len(members) < 2 or (skip_everything and len(members) == per_scenario[scenario]):
            continue
        name = f"{dimension}={value}" if len(scenarios) < 2 else f"{scenario}: {dimension}={value}"
        cases = (scenario, frozenset(e.key for e in members))
        names.setdefault(cases, []).append(name)
        chosen.setdefault(cases, (dimension, value, members))
    pooled = [_pooled(names[cases][0], members, noise) for cases, (_, _, members) in chosen.items()]
    results = []
    for (cases, (dimension, value, members)), (estimate, tau), decision in zip(
            chosen.items(), pooled, decide([p[0] for p in pooled], policy, alpha=policy.group_alpha), strict=True):
        scenario = cases[0]
        reason = decision.reason
        broken = [k for k, labels in (failed or {}).items() if labels.get(dimension) == value
                  and labels.get("scenario", scenario) == scenario]
        if broken:
            reason = (reason + "; " if reason else "") + f"{len(broken)} failed case(s) not pooled"
        results.append(GroupVerdict(estimate.key, dimension, value, scenario, decision.verdict,
                                    tuple(sorted(e.key for e in members)), decision.ratio, decision.ci95,
                                    decision.p_value, decision.q_value, decision.min_detectable_change,
                                    math.expm1(tau), history_runs, mode, reason, tuple(names[cases][1:])))
    results.sort(key=_group_order)
    return results


def _pooled(name: str, members: Sequence[Estimate], noise: SharedNoise) -> tuple[Estimate, float]:
    """DerSimonian–Laird random-effects mean of the members' log ratios; its variance is the
    cases' own part (1 / sum of weights, estimated with the cases' degrees of freedom) plus the
    shared noise whole (estimated from the history's runs); both uncertainties are carried in
    the estimate's :class:`Spread`. Returns the estimate and the between-case sd (log scale)."""
    d = np.array([e.log_ratio for e in members])
    shared = np.array([e.shared_var for e in members])
    own = np.maximum(np.array([e.scale**2 for e in members]) - shared, 1e-12)
    v = 1 / own
    mean_fixed = float(np.sum(v * d) / np.sum(v))
    q = float(np.sum(v * (d - mean_fixed) ** 2))
    tau2 = max(0.0, (q - (len(d) - 1)) / float(np.sum(v) - np.sum(v**2) / np.sum(v)))
    w = 1 / (own + tau2)
    theta = float(np.sum(w * d) / np.sum(w))
    own_part = 1 / float(np.sum(w))
    factor = float(np.sum(w * np.array([e.shared_factor for e in members])) / np.sum(w))
    # what is shared but not the run-shared noise (the error of a drift inferred from the cases)
    fixed = float(np.sum(w * np.maximum(shared - noise.variance * np.array([e.shared_factor for e in members]), 0))
                  / np.sum(w))
    # (the cases' part is known to many degrees of freedom: a coarser grid does)
    own_mult, own_weight = inverse_chi2_grid(float(np.median([e.df for e in members])), 16)
    shared_var, shared_weight = noise.draws()
    variance = own_part * own_mult[:, None] + fixed + factor * shared_var[None, :]
    spread = Spread(np.sqrt(variance).ravel(), (own_weight[:, None] * shared_weight[None, :]).ravel())
    scale = math.sqrt(own_part + fixed + factor * noise.variance)
    return Estimate(name, theta, scale, math.inf, spread=spread), math.sqrt(tau2)


# ---- paired -----------------------------------------------------------------------------------


def _pair_value(logs: np.ndarray, robust: bool) -> tuple[float, float]:
    """One pair of processes' log ratio and its own sampling variance, from its trials' log ratios."""
    n = len(logs)
    if not robust:
        return float(np.mean(logs)), (float(np.var(logs, ddof=1)) / n if n > 1 else 0.0)
    from scipy.stats import median_abs_deviation

    if n > 2:
        scale = float(median_abs_deviation(logs, scale="normal"))
    else:
        scale = float(np.std(logs, ddof=1)) if n > 1 else 0.0
    return float(np.median(logs)), (math.pi / 2) * scale ** 2 / n


def paired(ratios_by_case: Mapping[str, Sequence[float] | Sequence[Sequence[float]]], policy: Policy | None = None,
           labels: Mapping[str, Mapping[str, str]] | None = None, robust: bool = True) -> Summary:
    """Paired A/B verdicts (``mode="paired"``): each case's per-trial ratios B/A, judged by the
    same rule as the history verdicts — the mean log ratio against its standard error, BH across
    cases — and its groups pooled the same way. ``labels`` (case -> backend, precision, model,
    device, scenario) default to what the key (a case id or benchmark name) says.

    A case's ratios are one list (one pair of worker processes) or a list per pair of
    processes. One pair: the trials are the unit (a t test on them). Several: the *pairs* are
    — a case can settle at one of two levels per process (13–19% apart here), which no
    number of trials inside one pair of processes averages out; interleaving takes out the
    machine's drift, not the level each side's process started at. A pair's value is its
    trials' median log ratio (``robust``; False: their mean, as before): a block of calls hit
    by outside load, or by the other side's spinning threads, moves a mean by its share of
    the trials, a median barely (docs/verdicts.md, fifth session: on the same trials 16 of 18
    cases flagged at +10% against 11 before the lead-in, 15 against 14 after it). The pairs' spread is then
    estimated with few degrees of freedom, so it is moderated across the cases as the
    history verdicts moderate theirs (:func:`prior_spread`), never below what the trials
    inside the pairs show."""
    policy = policy or Policy()
    pairs_of = {key: _as_pairs(ratios) for key, ratios in ratios_by_case.items()}
    values_of = {key: [_pair_value(np.log(p), robust) for p in pairs] for key, pairs in pairs_of.items()
                 if len(pairs) >= 2}
    spread_of: dict[str, tuple[float, int]] = {}
    for key, values in values_of.items():
        spread_of[key] = (float(np.var([v for v, _ in values], ddof=1)), len(values) - 1)
    s0, d0 = prior_spread([v for v, _ in spread_of.values()], [d for _, d in spread_of.values()], policy)
    estimates = []
    for key in sorted(pairs_of):
        pairs = pairs_of[key]
        found = dict((labels or {}).get(key) or _labels_of_key(key))
        if len(pairs) == 1:
            logs = np.log(np.asarray(pairs[0], dtype=float))
            n = len(logs)
            sd = max(float(np.std(logs, ddof=1)), 1e-4) if n > 1 else math.inf
            estimates.append(Estimate(key, float(np.mean(logs)), sd / math.sqrt(n), max(1, n - 1), 0.0, found))
            continue
        values = values_of[key]
        means = [v for v, _ in values]
        own, df = spread_of[key]
        moderated = s0 if not math.isfinite(d0) else (d0 * s0 + df * own) / (d0 + df)
        # a pair's value varies at least as much as its own trials say it does
        within = [w for (_, w), p in zip(values, pairs, strict=True) if len(p) > 1]
        variance = max(moderated, float(np.mean(within)) if within else 0.0, 1e-8)
        estimates.append(Estimate(key, float(np.mean(means)), math.sqrt(variance / len(pairs)), d0 + df, 0.0, found))
    cases = [Verdict(d.key, d.verdict, d.ratio, d.ci95, d.p_value, d.q_value, d.min_detectable_change,
                     sum(len(p) for p in pairs_of[d.key]), None, d.reason.replace("slower", "slower: B than A")
                     .replace("faster", "faster: B than A"), "paired", "")
             for d in decide(estimates, policy)]
    cases.sort(key=_case_order)
    return Summary(tuple(cases), tuple(judge_groups(estimates, policy, mode="paired")))


def _as_pairs(ratios: Sequence[float] | Sequence[Sequence[float]]) -> list[list[float]]:
    """A case's trial ratios as a list per pair of processes (a flat list: one pair)."""
    pairs: list[list[float]] = []
    flat: list[float] = []
    for item in ratios:
        if isinstance(item, (list, tuple, np.ndarray)):
            if len(item):
                pairs.append([float(r) for r in item])
        else:
            flat.append(float(item))  # type: ignore[arg-type]  # (not a sequence: a ratio)
    return pairs if pairs else [flat]


# ---- the table --------------------------------------------------------------------------------


def table(verdicts: Sequence[Verdict], groups: Sequence[GroupVerdict] = (),
          machine: MachineLevel | None = None) -> str:
    """The verdict tables as plain text (and valid Markdown): groups first, then cases, each
    regressions first, each row with the mode that judged it and its detectable change."""
    lines: list[str] = []
    if groups:
        lines += ["| verdict | group | mode | cases | ratio | 95% CI | q | detectable | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in sorted(groups, key=_group_order):
            also = f" (= {', '.join(g.same_as)})" if g.same_as else ""
            lines.append(f"| {g.verdict} | {g.key}{also} | {g.mode} | {len(g.cases)} | {g.ratio:.3f} | "
                         f"{g.ci95[0]:.2f}–{g.ci95[1]:.2f} | {g.q_value:.3g} | {_share(g.min_detectable_change)} | "
                         f"{g.reason} |")
        lines.append("")
    lines += ["| verdict | case | mode | ratio | 95% CI | q | detectable | runs | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in sorted(verdicts, key=_case_order):
        ratio = f"{v.ratio:.3f}" if v.ratio is not None else "–"
        ci = f"{v.ci95[0]:.2f}–{v.ci95[1]:.2f}" if v.ci95 else "–"
        q = f"{v.q_value:.3g}" if v.q_value is not None else "–"
        mdc = _share(v.min_detectable_change) if v.min_detectable_change is not None else "–"
        mode = v.mode + (f" ({v.drift_source})" if v.drift_source else "")
        lines.append(f"| {v.verdict} | {v.key} | {mode} | {ratio} | {ci} | {q} | {mdc} | {v.history_runs} | "
                     f"{v.reason} |")
    counts = {name: sum(v.verdict == name for v in verdicts) for name in VERDICTS}
    footer = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    flagged = sum(g.verdict != "unchanged" for g in groups)
    if groups:
        footer += f"; groups: {len(groups)} judged, {flagged} flagged"
    lines += ["", footer]
    if machine is not None:
        lines += [f"- {note}" for note in machine.notes]
    return "\n".join(lines)


def _share(change: float) -> str:
    """A detectable change as the table shows it: beyond 10x it is "> 999%" (nothing it vouches for)."""
    return f"{change * 100:.0f}%" if change < 9.995 else "> 999%"
