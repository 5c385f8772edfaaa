"""The timing loop: warm-up, stopping rules and the median's interval, on a fake clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binom

from infermatrix.measure import tails
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


# ---- tail percentiles (infermatrix.measure.tails) -------------------------------------------------


def steady(seed: int) -> FakeClock:
    rng = np.random.default_rng(seed)
    return FakeClock(0.010 * (1 + 0.001 * rng.standard_normal(1_000_000)))


def test_a_16_round_latency_run_reports_no_tail_it_cannot_vouch_for() -> None:
    from infermatrix.case.runner import percentile_info

    policy = TimingPolicy(min_rounds=16, min_time_s=0, max_time_s=100.0)
    clock = steady(3)
    samples, reason = timed_rounds(clock.call, policy, clock=clock)
    assert (len(samples), reason) == (16, "precision reached")  # the median needed no more
    info = percentile_info(samples, policy, reason, "latency")
    assert info["latency_p50_ms"] == pytest.approx(np.median(samples) * 1e3)
    for key, needed in (("p90", 64), ("p99", 662), ("p99_9", 6636)):
        assert f"latency_{key}_ms" not in info, key  # before: p99 and p99.9 were both the maximum
        detail = info["latency_percentiles"][key]
        assert detail["value_ms"] is None and detail["samples"] == 16 and detail["samples_needed"] == needed
        assert f"needs {needed}" in detail["not_estimable"] and "--tail-percentiles" in detail["not_estimable"]


def test_asked_for_tails_keep_the_loop_going_until_it_has_their_samples() -> None:
    from infermatrix.case.runner import percentile_info

    clock = steady(4)
    policy = TimingPolicy(min_rounds=16, min_time_s=0, max_time_s=100.0, tail_percentiles=(90.0, 99.0),
                          tail_max_time_s=100.0)
    assert policy.tail_rounds == 662
    samples, reason = timed_rounds(clock.call, policy, clock=clock)
    assert (len(samples), reason) == (662, "tail samples collected")
    info = percentile_info(samples, policy, reason, "latency")
    ordered = np.sort(samples)
    assert info["latency_p99_ms"] == pytest.approx(ordered[-1] * 1e3)  # at 662 rounds: the slowest (t = 1)
    t90 = tails.overlatency_allowed(662, 90)
    assert info["latency_p90_ms"] == pytest.approx(ordered[662 - t90] * 1e3)
    assert info["latency_percentiles"]["p90"]["order_statistic"] == 662 - t90 + 1
    assert "latency_p99_9_ms" not in info  # not asked for, not collected


def test_the_tail_time_limit_stops_the_loop_and_the_tail_says_so() -> None:
    from infermatrix.case.runner import percentile_info

    clock = FakeClock(itertools.repeat(0.0625))  # binary-exact: 16 rounds a second
    policy = TimingPolicy(min_rounds=5, min_time_s=0, max_time_s=1.0, tail_percentiles=(90.0,), tail_max_time_s=2.0)
    samples, reason = timed_rounds(clock.call, policy, clock=clock)
    assert (len(samples), reason) == (32, "tail time limit spent")
    detail = percentile_info(samples, policy, reason, "latency")["latency_percentiles"]["p90"]
    assert detail["value_ms"] is None and detail["samples"] == 32
    assert "--tail-max-time 2 s" in detail["not_estimable"]


def test_without_tails_asked_the_loop_stops_where_it_always_did() -> None:
    for policy in (TimingPolicy(min_rounds=10, min_time_s=0.1, max_time_s=100.0),
                   TimingPolicy(min_rounds=10, min_time_s=0.1, max_time_s=100.0, tail_max_time_s=1000.0)):
        clock = steady(5)
        samples, reason = timed_rounds(clock.call, policy, clock=clock)
        assert reason == "precision reached" and len(samples) < 64


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tail_percentiles": (100.0,)}, "above 50 and below 100"),
    ({"tail_percentiles": (99.0,), "max_time_s": 10.0, "tail_max_time_s": 5.0}, "at least the case's time budget"),
    ({"tail_percentiles": (99.0,), "max_rounds": 100}, "662 rounds needed, more than max_rounds=100"),
])
def test_bad_tail_policies_say_what_to_give(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimingPolicy(**kwargs)
