"""The timing loop: warm-up, stopping rules and the median's interval, on a fake clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binom

from infermatrix.measure.timing import TimingPolicy, median_confidence_interval, timed_rounds, warm_up


class FakeClock:
    """Each call() advances time by the next duration; reading the clock is free."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)

    def __call__(self) -> float:
        return self.now

    def call(self) -> None:
        self.now += next(self.durations)


def test_steady_durations_stop_when_the_median_is_precise() -> None:
    rng = np.random.default_rng(0)
    clock = FakeClock(0.010 * (1 + 0.01 * rng.standard_normal(100_000)))
    policy = TimingPolicy(min_rounds=10, min_time_s=0.1, max_time_s=100.0, target_precision=0.02)
    samples, reason = timed_rounds(clock.call, policy, clock=clock)
    assert reason == "precision reached"
    assert len(samples) >= 10 and sum(samples) >= 0.1
    lo, hi = median_confidence_interval(samples)
    assert (hi - lo) / 2 / np.median(samples) <= 0.02


def test_noisy_durations_stop_at_the_time_budget_and_say_so() -> None:
    rng = np.random.default_rng(1)
    clock = FakeClock(0.010 * rng.lognormal(0, 1.0, 100_000))
    policy = TimingPolicy(min_rounds=10, min_time_s=0.1, max_time_s=0.5, target_precision=0.001)
    samples, reason = timed_rounds(clock.call, policy, clock=clock)
    assert reason == "time budget spent"
    assert sum(samples) == pytest.approx(0.5, abs=0.2)


def test_min_rounds_hold_even_past_the_time_budget() -> None:
    clock = FakeClock(itertools.repeat(1.0))
    samples, reason = timed_rounds(clock.call, TimingPolicy(min_rounds=7, min_time_s=0, max_time_s=0.5), clock=clock)
    assert len(samples) == 7 and reason == "time budget spent"


def test_recorded_rounds_are_the_returned_samples() -> None:
    clock = FakeClock(itertools.cycle([0.001, 0.002, 0.003]))
    recorded: list[float] = []
    samples, _ = timed_rounds(clock.call, TimingPolicy(min_rounds=5, max_time_s=0.05, min_time_s=0.01),
                              record=recorded.append, clock=clock)
    assert recorded == samples


def test_warm_up_runs_at_least_the_rounds_and_the_time() -> None:
    clock = FakeClock(itertools.repeat(0.03125))  # binary-exact, so 4 calls are exactly 0.125 s
    assert warm_up(clock.call, TimingPolicy(warmup_rounds=2, warmup_time_s=0.125), clock=clock) == 4
    clock = FakeClock(itertools.repeat(1.0))
    assert warm_up(clock.call, TimingPolicy(warmup_rounds=3, warmup_time_s=0.1), clock=clock) == 3


def test_median_interval_covers_the_true_median_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2)
    true_median = np.exp(0.0)  # lognormal(0, 1)
    hits = 0
    trials = 400
    for _ in range(trials):
        lo, hi = median_confidence_interval(rng.lognormal(0, 1, 40))
        hits += lo <= true_median <= hi
    coverage = hits / trials
    # order-statistic intervals are conservative: at least the nominal 95%, not absurdly more
    assert 0.93 <= coverage <= 0.995, coverage
    assert binom.cdf(20, 40, 0.5) > 0.5  # sanity of the rank arithmetic's premise


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_rounds": 2}, "at least 3 rounds"), ({"min_time_s": 2, "max_time_s": 1}, "below min_time_s"),
     ({"target_precision": 2}, "give a fraction")],
)
def test_bad_policy_values_say_what_to_give(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimingPolicy(**kwargs)
