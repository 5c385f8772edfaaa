"""Synthetic nights with known effects, for the verdicts' simulation tests — and the figures
docs/verdicts.md quotes, printed by ``PYTHONPATH=. python tests/verdict_simulation.py``.

A night: every case of a 32-case matrix (4 backends x 4 models x 2 precisions, CPU) gets its
run median as ``base x machine level x case noise``: the machine's level moves by up to ±10%
from night to night; each case's own between-run noise is lognormal at 8% (the unit of noise of
the issue's figures); the reference probe reads the machine's level with 2% noise per reading,
and the cases' level departs from the probe's by a further 1% per night (what the probe does
not capture, shared by every case). The current night's noise is drawn once; the same draw is
then judged unchanged (A/A) and with slowdowns applied, so every comparison is paired.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping

import numpy as np

from infermatrix.results import verdicts

BACKENDS = ("onnxruntime", "openvino", "torch", "tensorflow")
MODELS = ("resnet18", "mobilenet_v2", "vit", "bert")
PRECISIONS = ("fp32", "int8")


def matrix(size: int = 32) -> dict[str, dict[str, str]]:
    """Benchmark name -> its group values, for ``size`` cases of the synthetic matrix."""
    found = {}
    for backend in BACKENDS:
        for model in MODELS:
            for precision in PRECISIONS:
                labels = {"backend": backend, "model": model, "precision": precision, "device": "cpu",
                          "scenario": "latency"}
                found[f"test_latency[{model}-{backend}-cpu-{precision}-b1]"] = labels
    return dict(list(found.items())[:size])


@dataclasses.dataclass(frozen=True)
class Machine:
    noise: float = 0.08
    drift: float = 0.10
    probe_noise: float = 0.02
    tracking: float = 0.01
    probe: bool = True


def night(rng: np.random.Generator, cases: Mapping[str, Mapping[str, str]], base: Mapping[str, float],
          machine: Machine, start: float) -> dict[str, verdicts.CaseRun]:
    level = rng.uniform(-machine.drift, machine.drift)
    shared = rng.normal(0, machine.tracking)
    found = {}
    for i, (key, labels) in enumerate(cases.items()):
        median = base[key] * math.exp(level + shared + rng.normal(0, machine.noise))
        probe = None
        if machine.probe:
            reading = math.exp(level + rng.normal(0, machine.probe_noise))
            probe = {"key": "synthetic", "time": start + 5.0 * i, "matmul_ms": [reading], "copy_ms": [reading]}
        found[key] = verdicts.CaseRun(key, median, None, (), labels, probe)
    return found


def nights(rng: np.random.Generator, history_runs: int, machine: Machine = Machine(),
           cases: Mapping[str, Mapping[str, str]] | None = None
           ) -> tuple[list[dict[str, verdicts.CaseRun]], dict[str, verdicts.CaseRun]]:
    """``history_runs`` nights of history, then the current night, all unchanged."""
    cases = cases if cases is not None else matrix()
    base = {key: float(np.exp(rng.uniform(-7, -2))) for key in cases}
    runs = [night(rng, cases, base, machine, start=86400.0 * i) for i in range(history_runs + 1)]
    return runs[:-1], runs[-1]


def slowed(run: Mapping[str, verdicts.CaseRun], factors: Mapping[str, float]) -> dict[str, verdicts.CaseRun]:
    """The same night with some cases' medians multiplied (the probe reads the same machine)."""
    return {key: dataclasses.replace(case, median_s=case.median_s * factors.get(key, 1.0))
            for key, case in run.items()}


@dataclasses.dataclass
class Figures:
    tries: int = 0
    case_verdicts: int = 0
    case_false_positives: int = 0
    group_verdicts: int = 0
    group_false_positives: int = 0
    nights_with_a_group_flag: int = 0
    case_caught: int = 0
    case_mdcs: list[float] = dataclasses.field(default_factory=list)
    group_caught: int = 0
    group_mdcs: list[float] = dataclasses.field(default_factory=list)
    #: tries in which the group's stated change was below every one of its cases' stated changes
    group_below_its_cases: int = 0
    #: of the slowed group's cases, how many were flagged one by one
    slowed_cases: int = 0
    slowed_cases_flagged: int = 0

    def line(self, history_runs: int) -> str:
        return (f"{history_runs} history runs, {self.tries} tries: A/A {self.case_false_positives} of "
                f"{self.case_verdicts} case verdicts flagged, {self.group_false_positives} of {self.group_verdicts} "
                f"group verdicts ({self.nights_with_a_group_flag} nights); one case slowed by its stated change: "
                f"flagged {self.case_caught}/{self.tries} (median stated {statistics.median(self.case_mdcs):.1%}); "
                f"backend=onnxruntime slowed by its stated change: flagged {self.group_caught}/{self.tries} "
                f"(median stated {statistics.median(self.group_mdcs):.1%}; below each of its cases' in "
                f"{self.group_below_its_cases}/{self.tries}; its cases flagged one by one "
                f"{self.slowed_cases_flagged}/{self.slowed_cases})")


def simulate(history_runs: int, tries: int, seed: int, machine: Machine = Machine(),
             group: str = "backend=onnxruntime") -> Figures:
    """A/A verdicts, one case slowed by exactly its stated detectable change, and one whole
    group slowed by exactly its stated detectable change — on the same noise draws."""
    rng = np.random.default_rng(seed)
    cases = matrix()
    figures = Figures()
    for attempt in range(tries):
        history, current = nights(rng, history_runs, machine, cases)
        unchanged = verdicts.assess_cases(history, current)
        figures.tries += 1
        figures.case_verdicts += len(unchanged.cases)
        figures.case_false_positives += sum(v.verdict != "unchanged" for v in unchanged.cases)
        figures.group_verdicts += len(unchanged.groups)
        flagged_groups = sum(g.verdict != "unchanged" for g in unchanged.groups)
        figures.group_false_positives += flagged_groups
        figures.nights_with_a_group_flag += flagged_groups > 0
        by_key = {v.key: v for v in unchanged.cases}

        target = list(cases)[attempt % len(cases)]
        change = by_key[target].min_detectable_change
        assert change is not None
        figures.case_mdcs.append(change)
        one = verdicts.assess_cases(history, slowed(current, {target: 1 + change}))
        figures.case_caught += next(v for v in one.cases if v.key == target).verdict == "regressed"

        pooled = next(g for g in unchanged.groups if g.key == group)
        figures.group_mdcs.append(pooled.min_detectable_change)
        members = {key: 1 + pooled.min_detectable_change for key in pooled.cases}
        figures.group_below_its_cases += all(pooled.min_detectable_change < (by_key[key].min_detectable_change or 0)
                                             for key in members)
        whole = verdicts.assess_cases(history, slowed(current, members))
        figures.group_caught += next(g for g in whole.groups if g.key == group).verdict == "regressed"
        figures.slowed_cases += len(members)
        figures.slowed_cases_flagged += sum(v.verdict == "regressed" for v in whole.cases if v.key in members)
    return figures


if __name__ == "__main__":
    for runs, seed in ((5, 5), (5, 55), (12, 12), (12, 99)):
        print(f"seed {seed}: " + simulate(runs, 300, seed).line(runs), flush=True)
