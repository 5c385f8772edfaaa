"""Timing loops: warm-up outside the timed rounds, then rounds until the median is
known precisely enough or the case's time budget is spent — and, when tail percentiles
are asked for (``--tail-percentiles``), on until there are the samples they need
(``infermatrix.measure.tails``) or their time limit is spent.

Rounds are recorded into pytest-benchmark's own statistics, so its JSON, its table
and ``pytest-benchmark compare`` keep working on our results.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from infermatrix.measure import tails

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class TimingPolicy:
    """How long a case is timed. Defaults suit a noisy 2-core CPU machine."""

    warmup_rounds: int = 2
    warmup_time_s: float = 0.2
    min_rounds: int = 5
    min_time_s: float = 0.5
    max_time_s: float = 5.0
    max_rounds: int = 100_000
    #: Stop when the 95% confidence half-width of the median is below this share of it.
    target_precision: float = 0.02
    #: Tail percentiles (e.g. 99.0) to collect samples for: the loop goes on past the median's
    #: stopping point until it has the samples LoadGen's early-stopping estimate needs...
    tail_percentiles: tuple[float, ...] = ()
    #: ...or until this many seconds of timed rounds are spent (then they are not estimable).
    tail_max_time_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_rounds < 3:
            raise ValueError(f"min_rounds={self.min_rounds}: at least 3 rounds are needed for a median interval")
        if self.max_time_s < self.min_time_s:
            raise ValueError(f"max_time_s={self.max_time_s} is below min_time_s={self.min_time_s}")
        if not 0 < self.target_precision < 1:
            raise ValueError(f"target_precision={self.target_precision}: give a fraction, e.g. 0.02 for ±2%")
        for percentile in self.tail_percentiles:
            tails.check_tail(percentile)
        if self.tail_percentiles and not (math.isfinite(self.tail_max_time_s)
                                          and self.tail_max_time_s >= self.max_time_s):
            raise ValueError(f"tail_max_time_s={self.tail_max_time_s}: the time limit for tail samples must be at "
                             f"least the case's time budget max_time_s={self.max_time_s}")
        if self.tail_rounds > self.max_rounds:
            raise ValueError(f"tail_percentiles={self.tail_percentiles}: {self.tail_rounds} rounds needed, more than "
                             f"max_rounds={self.max_rounds}")

    @property
    def tail_rounds(self) -> int:
        """The rounds the asked-for tails need (0: none asked)."""
        return max((tails.min_samples(p) for p in self.tail_percentiles), default=0)


@dataclasses.dataclass(frozen=True)
class TimingResult:
    samples_s: list[float]
    #: "precision reached" | "time budget spent" | "max rounds" (the median's rule), or with
    #: tails asked for: "tail samples collected" | "tail time limit spent"
    stop_reason: str
    median_ci_s: tuple[float, float]
    warmup_calls: int

    @property
    def median_s(self) -> float:
        return float(np.median(self.samples_s))

    @property
    def relative_half_width(self) -> float:
        lo, hi = self.median_ci_s
        return (hi - lo) / 2 / self.median_s if self.median_s > 0 else math.inf


def median_confidence_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median from order statistics (binomial ranks).

    Latencies are skewed and often bimodal, so no normal approximation is assumed.
    """
    from scipy.stats import binom

    ordered = np.sort(np.asarray(samples, dtype=float))
    n = len(ordered)
    if n < 3:
        return (float(ordered[0]), float(ordered[-1])) if n else (math.nan, math.nan)
    alpha = 1 - confidence
    lo_rank = int(binom.ppf(alpha / 2, n, 0.5))
    hi_rank = int(binom.isf(alpha / 2, n, 0.5))
    lo_rank = max(lo_rank - 1, 0)
    hi_rank = min(hi_rank, n - 1)
    return float(ordered[lo_rank]), float(ordered[hi_rank])


def warm_up(call: Callable[[], Any], policy: TimingPolicy, clock: Clock = time.perf_counter) -> int:
    """Untimed calls: at least ``warmup_rounds``, and at least ``warmup_time_s`` worth."""
    calls = 0
    started = clock()
    while calls < policy.warmup_rounds or (clock() - started) < policy.warmup_time_s:
        call()
        calls += 1
        if calls >= 1000:
            break
    return calls


def timed_rounds(
    call: Callable[[], Any],
    policy: TimingPolicy,
    record: Callable[[float], None] | None = None,
    clock: Clock = time.perf_counter,
) -> tuple[list[float], str]:
    """Time ``call`` round by round until the median is precise or the budget is spent, then
    on until the asked-for tails have their samples (``policy.tail_rounds``) or
    ``policy.tail_max_time_s`` is spent."""
    samples: list[float] = []
    started = clock()
    next_check = policy.min_rounds
    tail_rounds = policy.tail_rounds
    median_done: str | None = None  # why the median's rule would stop here
    while True:
        t0 = clock()
        call()
        t1 = clock()
        duration = t1 - t0
        samples.append(duration)
        if record is not None:
            record(duration)
        n = len(samples)
        elapsed = t1 - started
        if n >= policy.max_rounds:
            return samples, "max rounds"
        if median_done is None:
            if elapsed >= policy.max_time_s and n >= policy.min_rounds:
                median_done = "time budget spent"
            elif n >= next_check and elapsed >= policy.min_time_s:
                # Checking costs a sort; do it at geometrically spaced round counts.
                next_check = max(n + 1, int(n * 1.25))
                lo, hi = median_confidence_interval(samples)
                median = float(np.median(samples))
                if median > 0 and (hi - lo) / 2 / median <= policy.target_precision:
                    median_done = "precision reached"
            if median_done is not None and n >= tail_rounds:
                return samples, median_done
        elif n >= tail_rounds:
            return samples, "tail samples collected"
        elif elapsed >= policy.tail_max_time_s:
            return samples, "tail time limit spent"


def measure(
    benchmark: Any,
    call: Callable[[], Any],
    policy: TimingPolicy,
    warmup_calls: int,
) -> TimingResult:
    """Time ``call`` into pytest-benchmark's fixture ``benchmark``.

    pytest-benchmark's ``pedantic`` mode needs the round count up front, and its
    ``--benchmark-precision`` judges the mean, which a few slow outliers (common
    here) keep wide; the suite's stopping rule is on the median. So the rounds are fed
    to the fixture's own statistics object, the way ``pedantic`` does internally.
    """
    if getattr(benchmark, "disabled", False):
        call()
        return TimingResult([], "benchmark disabled", (math.nan, math.nan), warmup_calls)
    record = benchmark_recorder(benchmark, "infermatrix.measure.timing.measure")
    samples, reason = timed_rounds(call, policy, record=record)
    return TimingResult(samples, reason, median_confidence_interval(samples), warmup_calls)


def benchmark_recorder(benchmark: Any, mode: str) -> Callable[[float], None]:
    """Claim pytest-benchmark's fixture and return the function that records one round.

    The only place that touches the fixture's internals (``_mode``, ``_make_stats``),
    the way its own ``pedantic()`` does: every scenario records through here.
    """
    if benchmark._mode:  # same guard as pytest-benchmark's pedantic()
        raise RuntimeError(f"benchmark fixture already used in {benchmark._mode} mode")
    benchmark._mode = mode
    update: Callable[[float], None] = benchmark._make_stats(1).update
    return update


def mark_untimed(benchmark: Any, why: str) -> None:
    """Claim the fixture without recording anything (a case deliberately not timed)."""
    benchmark._mode = why


class RecordedRounds:
    """Stands in for pytest-benchmark's fixture where there is none (a case's worker
    process): the same two members ``benchmark_recorder`` uses, keeping the rounds so the
    parent process can record them into the real fixture."""

    def __init__(self, disabled: bool = False) -> None:
        self.disabled = disabled
        self._mode: str | None = None
        self.samples: list[float] = []

    def _make_stats(self, iterations: int) -> RecordedRounds:
        return self

    def update(self, duration: float) -> None:
        self.samples.append(duration)
