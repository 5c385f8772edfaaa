"""Paired, interleaved timing of several sessions in one process.

On this project's machines a case's median moves ~17% between processes and jumps
between levels, but sessions called alternately in one process see the same machine
state: their per-trial ratios are stable to a few percent. So comparisons between
backends or configurations are made here, not between separate runs: each trial calls
every side ``calls_per_trial`` times in a randomized interleaved order (A B B A …), and
each side's median per trial gives one ratio per trial.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class PairedResult:
    names: list[str]
    #: per trial, per side: the median seconds of that side's calls in the trial
    trial_medians_s: list[dict[str, float]]

    def median_s(self, name: str) -> float:
        return statistics.median(trial[name] for trial in self.trial_medians_s)

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per-trial ratio of ``name``'s median to ``baseline``'s (>1: ``name`` is slower)."""
        return [trial[name] / trial[baseline] for trial in self.trial_medians_s]

    def summary(self, baseline: str) -> dict[str, dict[str, Any]]:
        out = {}
        for name in self.names:
            ratios = self.ratios(name, baseline)
            out[name] = {
                "median_ms": self.median_s(name) * 1e3,
                "ratio_to_" + baseline: statistics.median(ratios),
                "ratio_range": [min(ratios), max(ratios)],
            }
        return out


def interleaved(calls: Mapping[str, Callable[[], Any]], trials: int = 12, calls_per_trial: int = 20,
                seed: int = 0, warmup: int = 3, blocks: bool = False) -> PairedResult:
    """``blocks=False``: calls of all sides shuffled together (for two sessions of one
    runtime). ``blocks=True``: each side runs its calls back to back, sides in a fresh
    random order every trial, the first call of each block untimed — for sides with
    different thread runtimes (OpenMP, TBB, ONNX Runtime's pool), whose idle threads
    spin for a while after each call and would slow whichever side runs next."""
    names = list(calls)
    rng = random.Random(seed)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    results = []
    for _ in range(trials):
        samples: dict[str, list[float]] = {name: [] for name in names}
        plan: list[tuple[str, bool]] = []  # (side, timed)
        if blocks:
            sides = names[:]
            rng.shuffle(sides)
            for name in sides:
                plan.append((name, False))  # switching runtimes: the first call is not timed
                plan += [(name, True)] * calls_per_trial
        else:
            order = [name for name in names for _ in range(calls_per_trial)]
            rng.shuffle(order)
            plan = [(name, True) for name in order]
        for name, timed in plan:
            started = time.perf_counter()
            calls[name]()
            if timed:
                samples[name].append(time.perf_counter() - started)
        results.append({name: statistics.median(values) for name, values in samples.items()})
    return PairedResult(names, results)
