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


#: untimed calls at the head of every block run for at least this long (at least one call):
#: the side that ran before may still have threads spinning (ONNX Runtime's pool, OpenMP, TBB),
#: and on a 2-core machine they take the core this side's threads need. One untimed call was
#: not enough: mobilenet_v2 onnxruntime int8 A/A (~1 ms a call) read trial ratios 0.5–2.4
#: (robust sd 0.44–0.68); 50 ms of calls first, 0.05–0.08 (docs/verdicts.md, fifth session)
LEAD_IN_S = 0.05


def block_timer(call: Callable[[], Any], lead_in_s: float | None = None) -> Callable[[int], float]:
    """A side run in this process, as :func:`interleaved_blocks` drives it: untimed calls for
    ``lead_in_s`` (at least one: the other side's runtime may still have threads spinning),
    then ``calls`` timed calls; their median in seconds."""
    lead_in = LEAD_IN_S if lead_in_s is None else lead_in_s

    def run_block(calls: int) -> float:
        started = time.perf_counter()
        call()
        while time.perf_counter() - started < lead_in:
            call()
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    return run_block


def interleaved_blocks(sides: Mapping[str, Callable[[int], float]], trials: int, calls_per_trial: int,
                       seed: int = 0) -> PairedResult:
    """Each trial runs every side's block once (``side(calls) -> median seconds``), the sides
    in a fresh random order. A side may be in this process (:func:`block_timer`) or in
    another one (the A/B workers, each answering one block per request): the one paired
    design for both."""
    names = list(sides)
    rng = random.Random(seed)
    results = []
    for _ in range(trials):
        order = names[:]
        rng.shuffle(order)
        results.append({name: sides[name](calls_per_trial) for name in order})
    return PairedResult(names, [{name: trial[name] for name in names} for trial in results])


def interleaved(calls: Mapping[str, Callable[[], Any]], trials: int = 12, calls_per_trial: int = 20,
                seed: int = 0, warmup: int = 3, blocks: bool = False, lead_in_s: float | None = None) -> PairedResult:
    """``blocks=False``: calls of all sides shuffled together (for two sessions of one
    runtime). ``blocks=True``: each side runs its calls back to back, sides in a fresh
    random order every trial, each block after untimed calls for ``lead_in_s`` (default
    :data:`LEAD_IN_S`, at least one call) — for sides with different thread runtimes
    (OpenMP, TBB, ONNX Runtime's pool), whose idle threads spin for a while after each
    call and would slow whichever side runs next."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    if blocks:
        return interleaved_blocks({name: block_timer(calls[name], lead_in_s) for name in names}, trials,
                                  calls_per_trial, seed)
    rng = random.Random(seed)
    results = []
    for _ in range(trials):
        samples: dict[str, list[float]] = {name: [] for name in names}
        order = [name for name in names for _ in range(calls_per_trial)]
        rng.shuffle(order)
        for name in order:
            started = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - started)
        results.append({name: statistics.median(values) for name, values in samples.items()})
    return PairedResult(names, results)
