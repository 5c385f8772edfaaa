"""Tail percentiles worth reporting: MLPerf LoadGen's early-stopping estimate.

A latency loop that stops when the *median* is precise may have 16 rounds; the 99th
percentile of 16 rounds is just their maximum. A tail percentile is reported here only
when there are enough samples for it, and then as LoadGen reports it.

The rule (LoadGen ``loadgen/early_stopping.cc`` and ``PerformanceSummary::EarlyStopping``
in ``loadgen/results.cc``, mlcommons/inference; the appendix "Early Stopping Criterion" of
``inference_rules.adoc``, mlcommons/inference_policies): treat the ``t`` slowest of ``n``
samples as "over the bound". With ``h = n - t`` samples under it, the p-th percentile is
shown to be at or below the ``t``-th slowest sample when a system whose rate of samples
under the bound were only ``p`` (tolerance ``d = 0``) would give ``t`` or fewer over it
with probability below ``1 - c``, ``c = 0.99``::

    F(t; h + t, 1 - p) = BetaRegularized[p, h, t + 1] < 1 - c

LoadGen takes the largest such ``t`` for the ``n`` samples it has, discards the ``t - 1``
slowest and reports the slowest left: the ``t``-th largest sample. When even ``t = 1``
fails (``n`` below the minimum), there is no estimate: LoadGen prints "Need to process at
least N queries". At c = 0.99: p90 needs 64 samples, p95 130, p99 662, p99.9 6636.

Since ``F(t; m, 1 - p)`` falls as ``m`` grows, "``h(t) + t <= n``" (LoadGen's loop) is the
same as ``F(t; n, 1 - p) < 1 - c``: the largest ``t`` is one below ``binom.ppf(1 - c, n,
1 - p)``, and the minimum ``h`` for ``t`` over-bound samples is a negative-binomial
quantile. Both are computed with scipy.stats and checked against the strict inequality.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: LoadGen's confidence and tolerance (``EarlyStopping`` in loadgen/results.cc).
CONFIDENCE = 0.99
TOLERANCE = 0.0
#: The tail percentiles every latency record states (estimable or not).
DEFAULT_TAILS = (90.0, 99.0, 99.9)
METHOD_EARLY_STOPPING = "loadgen-early-stopping"
METHOD_MEDIAN = "median"


def percentile_key(percentile: float) -> str:
    """``99.9`` -> ``"p99_9"``, ``90`` -> ``"p90"``: the record's names (``latency_p99_9_ms``)."""
    return "p" + f"{percentile:g}".replace(".", "_")


def check_tail(percentile: float) -> None:
    """A tail this module can estimate: above the median, below 100."""
    if not (math.isfinite(percentile) and 50 < percentile < 100):
        raise ValueError(f"percentile {percentile:g}: give a tail percentile above 50 and below 100, e.g. 99 or 99.9")


def _miss_rate(percentile: float) -> float:
    """The share of samples above the p-th percentile of a minimally failing system (1 - (p - d))."""
    check_tail(percentile)
    return (100.0 - percentile) / 100.0 + TOLERANCE


def _odds(t: int, n: int, miss_rate: float) -> float:
    """LoadGen's ``odds(h, t, p, d)``: the chance of ``t`` or fewer over-bound samples in ``n``."""
    from scipy.stats import binom

    return float(binom.cdf(t, n, miss_rate))


@functools.lru_cache(maxsize=256)
def min_passing(t: int, percentile: float, confidence: float = CONFIDENCE) -> int:
    """LoadGen's ``MinPassingQueriesFinder(t, p, d, c)``: the fewest under-bound samples ``h``
    with ``F(t; h + t, 1 - p) < 1 - c``.

    ``F(t; h + t, 1 - p)`` is the chance that fewer than ``t + 1`` over-bound samples come
    before the ``h``-th under-bound one: the survival function of a negative binomial
    (under-bound samples before the ``(t + 1)``-th over-bound one) at ``h - 1``.
    """
    from scipy.stats import nbinom

    if t < 0:
        raise ValueError(f"t={t}: a count of samples over the bound is 0 or more")
    q = _miss_rate(percentile)
    alpha = 1 - confidence
    k = int(nbinom.isf(alpha, t + 1, q))
    # isf answers sf(k) <= alpha; LoadGen's test is strict (prob < 1 - c): settle the edge exactly.
    while nbinom.sf(k, t + 1, q) >= alpha:
        k += 1
    while k > 0 and nbinom.sf(k - 1, t + 1, q) < alpha:
        k -= 1
    return max(k + 1, 1)


@functools.lru_cache(maxsize=64)
def min_samples(percentile: float, confidence: float = CONFIDENCE) -> int:
    """The fewest samples with an early-stopping estimate of the percentile (LoadGen's
    "Need to process at least N queries": ``h(1) + 1``)."""
    return min_passing(1, percentile, confidence) + 1


def overlatency_allowed(n: int, percentile: float, confidence: float = CONFIDENCE) -> int:
    """The largest ``t`` with ``h(t) + t <= n`` (LoadGen's single-stream loop); 0 when ``n``
    is below ``min_samples``: no estimate."""
    from scipy.stats import binom

    if n < min_samples(percentile, confidence):
        return 0
    q = _miss_rate(percentile)
    alpha = 1 - confidence
    t = int(binom.ppf(alpha, n, q)) - 1
    while t >= 1 and _odds(t, n, q) >= alpha:
        t -= 1
    while t + 1 <= n and _odds(t + 1, n, q) < alpha:
        t += 1
    return t


@dataclasses.dataclass(frozen=True)
class PercentileEstimate:
    """One percentile of a set of samples: a value, or why there is none."""

    percentile: float
    samples: int
    method: str
    #: seconds; None: not estimable from these samples
    value_s: float | None
    #: the samples the method needs (LoadGen's minimum query count for a tail)
    samples_needed: int
    #: 1-based rank, from the fastest, of the sample reported (None for the median and when not estimable)
    order_statistic: int | None = None
    confidence: float | None = None
    #: not estimable: why, in words the user can act on
    why: str | None = None

    @property
    def key(self) -> str:
        return percentile_key(self.percentile)

    @property
    def estimable(self) -> bool:
        return self.value_s is not None

    def as_record(self, scale: float = 1e3, unit: str = "ms") -> dict[str, Any]:
        """Plain JSON for the record: ``value_<unit>`` (null when not estimable) and how it was had."""
        found: dict[str, Any] = {
            f"value_{unit}": None if self.value_s is None else self.value_s * scale,
            "samples": self.samples, "samples_needed": self.samples_needed, "method": self.method,
        }
        if self.order_statistic is not None:
            found["order_statistic"] = self.order_statistic
        if self.confidence is not None:
            found["confidence"] = self.confidence
        if self.why is not None:
            found["not_estimable"] = self.why
        return found


def estimate(samples: Sequence[float], percentile: float, confidence: float = CONFIDENCE) -> PercentileEstimate:
    """LoadGen's early-stopping estimate of the ``percentile``-th percentile of ``samples``,
    or a not-estimable answer that says how many samples it needs."""
    n = len(samples)
    needed = min_samples(percentile, confidence)
    t = overlatency_allowed(n, percentile, confidence)
    if t == 0:
        return PercentileEstimate(percentile, n, METHOD_EARLY_STOPPING, None, needed, confidence=confidence,
                                  why=f"{n} samples; LoadGen's early-stopping rule needs {needed} for p{percentile:g} "
                                  f"at {confidence:.0%} confidence")
    ordered = np.sort(np.asarray(samples, dtype=float))
    rank = n - t + 1  # the t-th slowest: LoadGen's sample_latencies[queries_issued - t]
    return PercentileEstimate(percentile, n, METHOD_EARLY_STOPPING, float(ordered[rank - 1]), needed,
                              order_statistic=rank, confidence=confidence)


def median(samples: Sequence[float]) -> PercentileEstimate:
    """The median as a percentile entry (its precision is the timing loop's 95% interval)."""
    n = len(samples)
    return PercentileEstimate(50.0, n, METHOD_MEDIAN, float(np.median(samples)) if n else None, 1,
                              why=None if n else "no samples")


def reported_tails(requested: Iterable[float] = ()) -> tuple[float, ...]:
    """The tails a record states: the defaults and any the user asked for, in order."""
    return tuple(sorted({*DEFAULT_TAILS, *requested}))


def latency_percentiles(samples: Sequence[float], tails: Iterable[float] = DEFAULT_TAILS,
                        confidence: float = CONFIDENCE) -> dict[str, PercentileEstimate]:
    """p50 (the median) and each tail, keyed ``p50``, ``p90``, ``p99_9``..."""
    found = {"p50": median(samples)}
    for percentile in tails:
        found[percentile_key(percentile)] = estimate(samples, percentile, confidence)
    return found
