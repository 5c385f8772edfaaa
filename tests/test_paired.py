"""Interleaved paired timing: every side gets its calls in every trial, in the mode asked."""

from __future__ import annotations

import pytest

from infermatrix.measure.paired import interleaved


@pytest.mark.parametrize("blocks", [False, True])
def test_every_side_gets_its_calls_in_every_trial(blocks: bool) -> None:
    log: list[str] = []
    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    result = interleaved(calls, trials=4, calls_per_trial=5, warmup=1, blocks=blocks, lead_in_s=0.0)
    assert len(result.trial_medians_s) == 4
    assert all(set(trial) == {"a", "b", "c"} for trial in result.trial_medians_s)
    timed = log[3:]  # after one warm-up call per side
    per_side = 4 * (5 + (1 if blocks else 0))  # blocks add one untimed switch call per side per trial
    assert {name: timed.count(name) for name in "abc"} == {"a": per_side, "b": per_side, "c": per_side}
    if blocks:  # each trial is three uninterrupted runs
        runs = [timed[i:i + 6] for i in range(0, len(timed), 6)]
        assert all(len(set(run)) == 1 for run in runs)
    else:
        assert any(timed[i] != timed[i + 1] for i in range(len(timed) - 1))


def test_a_block_starts_after_its_lead_in() -> None:
    """Untimed calls for the lead-in (the other side's threads may still spin), then the timed ones."""
    import time

    from infermatrix.measure.paired import block_timer

    stamps: list[float] = []
    block = block_timer(lambda: (stamps.append(time.perf_counter()), time.sleep(0.002)), lead_in_s=0.03)
    started = time.perf_counter()
    block(5)
    timed_from = stamps[-5]
    assert timed_from - started >= 0.03 and len(stamps) >= 5 + 2  # at least one lead-in call, and 30 ms of them
    stamps.clear()
    block_timer(lambda: stamps.append(time.perf_counter()), lead_in_s=0.0)(5)
    assert len(stamps) == 5 + 1  # no lead-in: one untimed call, as ever


def test_ratios_reflect_a_real_difference() -> None:
    import time

    # busy waits, not sleeps: on a loaded machine a 0.5 ms sleep overslept to 2.4 ms (the
    # scheduler's wake-up, not the call), which made "fast" as slow as "slow" in a trial
    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    def fast() -> None:
        spin(0.001)

    def slow() -> None:
        spin(0.004)

    result = interleaved({"fast": fast, "slow": slow}, trials=3, calls_per_trial=5)
    assert min(result.ratios("slow", "fast")) > 1.5
    summary = result.summary("fast")
    assert summary["fast"]["ratio_to_fast"] == 1.0 and summary["slow"]["ratio_to_fast"] > 1.5
