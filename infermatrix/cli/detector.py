"""How well do the verdicts detect, on this machine?  ``python -m infermatrix detector``

Two measurements on real runs (not a timed unit test):

nightly  ``--runs`` separate pytest runs of a small latency matrix (``--models``, ``--backends``), unchanged; then
         leave-one-out: each run judged against the others as history (A/A false
         positives, nights with a group flagged), and runs with ``--inject-slowdown`` at
         ``--slowdowns`` (10, 15, 20%) on one backend judged against all unchanged runs
         (recall on that backend's cases, its group verdict, false positives on the rest).
         pytest-benchmark's own ``median:10%`` rule (last unchanged run vs each run) is
         scored on the same runs for comparison.
paired   ``python -m infermatrix ab`` on every case of the matrix, A/A and with a 10%
         slowdown injected into side B, ``--repeats`` times: recall and false positives.

Prints a summary; ``--out DIR`` keeps the run JSON files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from infermatrix.cache import atomic_write_json
from infermatrix.cli import ab
from infermatrix.results import verdicts


@dataclasses.dataclass(frozen=True)
class Matrix:
    """The small latency matrix the detector measures (named on the command line)."""

    models: str
    backends: str
    precisions: str
    #: what every run adds (``--repeats``, the timing budget): the nightly's own settings
    run_args: tuple[str, ...] = ()

    @property
    def slowed(self) -> str:
        """The backend the injected slowdowns hit: the first one named."""
        return self.backends.split(",")[0]

    def case_ids(self, rootdir: Path) -> list[str]:
        """The cases of this matrix that run here (as pytest's run of it times them): the
        product of the names less what does not exist (onnxruntime has no bf16) or skips."""
        from infermatrix import host
        from infermatrix.api.types import RunOptions
        from infermatrix.cache import resolve_cache_dir
        from infermatrix.case import matrix
        from infermatrix.case.offline import matrix_here
        from infermatrix.machine import physical_cores

        options = RunOptions(cache_root=resolve_cache_dir(None, rootdir), threads=physical_cores())
        selection = matrix.Selection(models=tuple(self.models.split(",")), backends=tuple(self.backends.split(",")),
                                     devices=("cpu",), precisions=tuple(self.precisions.split(",")), batch_sizes=(1,))
        return [e.case.id for e in matrix_here(host.plugin_manager(), selection, options) if e.skip_reason is None]


def pytest_run(rootdir: Path, out: Path, extra: list[str], cases: Matrix) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "suites/test_latency.py", "-q", "-p", "no:cacheprovider",
           "--models", cases.models, "--backends", cases.backends, "--devices", "cpu",
           "--precisions", cases.precisions,
           "--batch-sizes", "1", "--scenarios", "latency", f"--benchmark-json={out}", *cases.run_args, *extra]
    subprocess.run(cmd, cwd=rootdir, check=True, capture_output=True, text=True)
    return dict(json.loads(out.read_text()))


def median_rule(old: dict[str, Any], new: dict[str, Any], threshold: float = 0.10) -> dict[str, bool]:
    """pytest-benchmark's --benchmark-compare-fail=median:10% on one pair of runs."""
    before = {b["name"]: b["stats"]["median"] for b in old["benchmarks"]}
    return {b["name"]: b["stats"]["median"] > before[b["name"]] * (1 + threshold)
            for b in new["benchmarks"] if b["name"] in before}


def nightly(rootdir: Path, runs: int, folder: Path, cases: Matrix,
            slowdowns: tuple[int, ...] = (10, 15, 20)) -> dict[str, Any]:
    unchanged = [pytest_run(rootdir, folder / f"aa-{i}.json", [], cases) for i in range(runs)]
    aa_flags = aa_total = 0
    aa_group_nights = 0
    rule_flags = rule_total = 0
    mdcs = []
    group_mdcs = []
    for i in range(runs):
        history = [r for j, r in enumerate(unchanged) if j != i]
        summary = verdicts.assess(history, unchanged[i])
        results = summary.cases
        aa_flags += sum(v.verdict in ("regressed", "improved") for v in results)
        aa_total += len(results)
        aa_group_nights += any(g.verdict != "unchanged" for g in summary.groups)
        mdcs += [v.min_detectable_change for v in results if v.min_detectable_change is not None]
        group_mdcs += [g.min_detectable_change for g in summary.groups if g.key == f"backend={cases.slowed}"]
        if i > 0:
            flags = median_rule(unchanged[i - 1], unchanged[i])
            rule_flags += sum(flags.values())
            rule_total += len(flags)
    injected = {}
    for percent in slowdowns:
        run = pytest_run(rootdir, folder / f"slow{percent}.json",
                         ["--inject-slowdown", f"{cases.slowed}={percent}"], cases)
        summary = verdicts.assess(unchanged, run)
        results = summary.cases
        group = next((g for g in summary.groups if g.key == f"backend={cases.slowed}"), None)
        slowed = [v for v in results if f"-{cases.slowed}-" in v.key]
        others = [v for v in results if f"-{cases.slowed}-" not in v.key]
        rule = median_rule(unchanged[-1], run)
        injected[f"{percent}%"] = {
            "recall": sum(v.verdict == "regressed" for v in slowed) / len(slowed),
            "recall_where_detectable": (
                sum(v.verdict == "regressed" for v in slowed if (v.min_detectable_change or 1) <= percent / 100)
                / max(1, sum((v.min_detectable_change or 1) <= percent / 100 for v in slowed))),
            "false_positives_other_backend": sum(v.verdict in ("regressed", "improved") for v in others) / len(others),
            "median_rule_recall": float(np.mean([rule[v.key] for v in slowed if v.key in rule])),
            "median_rule_false_positives": float(np.mean([rule[v.key] for v in others if v.key in rule])),
            # the slowed backend as a group (docs/verdicts.md): its verdict, ratio and detectable change
            "group": None if group is None else {"verdict": group.verdict, "ratio": group.ratio,
                                                 "min_detectable_change": group.min_detectable_change},
            "other_groups_flagged": [g.key for g in summary.groups if g.verdict != "unchanged"
                                     and g.key != f"backend={cases.slowed}"],
            "machine": summary.machine.as_dict() if summary.machine else None,
        }
    return {
        "history_runs": runs - 1,
        "aa_false_positive_rate": aa_flags / aa_total,
        "median_min_detectable_change": float(np.median(mdcs)),
        "aa_nights_with_a_group_flagged": aa_group_nights,
        "median_group_min_detectable_change": float(np.median(group_mdcs)) if group_mdcs else None,
        "median_rule_aa_false_positive_rate": rule_flags / max(1, rule_total),
        "injected": injected,
    }


def with_processes(run: dict[str, Any], processes: int) -> dict[str, Any]:
    """``run`` as if each case had been timed in ``processes`` fresh processes only (the first
    ones of its ``--repeats``); 0: the in-process median alone (a run without ``--repeats``)."""
    benchmarks = []
    for bench in run["benchmarks"]:
        info = dict(bench.get("extra_info") or {})
        medians = info.pop("repeat_medians_ms", None)
        if processes and medians:
            if len(medians) < processes:
                raise ValueError(f"{bench['name']}: {len(medians)} fresh processes recorded, {processes} asked for")
            info["repeat_medians_ms"] = medians[:processes]
        benchmarks.append({**bench, "extra_info": info})
    return {**run, "benchmarks": benchmarks}


def slowed(run: dict[str, Any], backend: str, percent: float) -> dict[str, Any]:
    """``run`` with every case of ``backend`` ``percent`` slower: its median and each fresh
    process's median scaled, as ``--inject-slowdown`` would (it busy-waits that share of every
    timed call; the real injected runs check that the two agree)."""
    factor = 1 + percent / 100
    benchmarks = []
    for bench in run["benchmarks"]:
        info = dict(bench.get("extra_info") or {})
        stats = dict(bench["stats"])
        if info.get("backend") == backend:
            stats["median"] = stats["median"] * factor
            if info.get("repeat_medians_ms"):
                info["repeat_medians_ms"] = [m * factor for m in info["repeat_medians_ms"]]
        benchmarks.append({**bench, "stats": stats, "extra_info": info})
    return {**run, "benchmarks": benchmarks}


def analyse(runs: list[dict[str, Any]], backend: str, processes: int,
            slowdowns: tuple[float, ...] = (10, 15, 20)) -> dict[str, Any]:
    """Leave-one-out over stored unchanged runs: each judged against the others (A/A), and the
    same held-out run with ``backend`` slowed after the fact (one try per run and slowdown):
    how often each slowed case and the backend's group are flagged."""
    runs = [with_processes(r, processes) for r in runs]
    aa_flags = aa_total = aa_group_nights = 0
    mdcs: list[float] = []
    group_mdcs: list[float] = []
    hits: dict[float, list[int]] = {p: [0, 0, 0, 0] for p in slowdowns}  # cases flagged, cases, groups, tries
    for i, run in enumerate(runs):
        history = [r for j, r in enumerate(runs) if j != i]
        summary = verdicts.assess(history, run)
        aa_flags += sum(v.verdict in ("regressed", "improved") for v in summary.cases)
        aa_total += len(summary.cases)
        aa_group_nights += any(g.verdict != "unchanged" for g in summary.groups)
        mdcs += [v.min_detectable_change for v in summary.cases if v.min_detectable_change is not None]
        group_mdcs += [g.min_detectable_change for g in summary.groups if g.key == f"backend={backend}"]
        for percent in slowdowns:
            judged = verdicts.assess(history, slowed(run, backend, percent))
            cases = [v for v in judged.cases if f"-{backend}-" in v.key]
            group = next((g for g in judged.groups if g.key == f"backend={backend}"), None)
            counts = hits[percent]
            counts[0] += sum(v.verdict == "regressed" for v in cases)
            counts[1] += len(cases)
            counts[2] += group is not None and group.verdict == "regressed"
            counts[3] += 1
    return {
        "processes_per_case": processes, "runs": len(runs), "history_runs": len(runs) - 1,
        "aa_case_verdicts": aa_total, "aa_flagged": aa_flags, "aa_false_positive_rate": aa_flags / max(1, aa_total),
        "aa_nights_with_a_group_flagged": aa_group_nights,
        "median_min_detectable_change": float(np.median(mdcs)) if mdcs else None,
        "median_group_min_detectable_change": float(np.median(group_mdcs)) if group_mdcs else None,
        "slowed": {f"{p:g}%": {"cases_flagged": f"{c[0]} of {c[1]}", "case_recall": c[0] / max(1, c[1]),
                               "group_flagged": f"{c[2]} of {c[3]}", "group_recall": c[2] / max(1, c[3])}
                   for p, c in hits.items()},
    }


def paired(rootdir: Path, repeats: int, cases: list[str], processes: int = ab.PROCESSES,
           trials: int = ab.TRIALS, save: Path | None = None) -> dict[str, Any]:
    """A/A and +10% (side B busy-waits 10% of each call) on every case, ``repeats`` times,
    each case measured by ``processes`` pairs of worker processes; judged as the nightly's
    paired mode judges (the pairs as the unit), and — from the same measurements — as if
    each case had had its first pair of processes only. ``save``: the ratios measured so far
    are written there after every case (a long measurement stopped early keeps them)."""
    a = ab.Side("a", sys.executable, rootdir, None, 0.0)
    b_same = ab.Side("b", sys.executable, rootdir, None, 0.0)
    b_slow = ab.Side("b", sys.executable, rootdir, None, 10.0)
    nights: list[dict[str, dict[str, list[list[float]]]]] = []
    for repeat in range(repeats):
        nights.append({"aa": {}, "slow": {}})
        for i, c in enumerate(cases):
            nights[-1]["aa"][c] = ab.measure_case(c, a, b_same, trials, 20, repeat * 100 + i, processes)
            nights[-1]["slow"][c] = ab.measure_case(c, a, b_slow, trials, 20, repeat * 100 + i, processes)
            if save is not None:
                atomic_write_json(save, nights)

    def scored(first_pair_only: bool) -> dict[str, Any]:
        fps = hits = 0
        mdc = []
        for night in nights:
            aa, slow = ({c: (r[:1] if first_pair_only else r) for c, r in night[k].items()} for k in ("aa", "slow"))
            judged = ab.judge_paired(aa)
            fps += sum(v.verdict != "unchanged" for v in judged)
            mdc += [v.min_detectable_change for v in judged if v.min_detectable_change is not None]
            hits += sum(v.verdict == "regressed" for v in ab.judge_paired(slow))
        total = repeats * len(cases)
        return {"recall_at_10pct": hits / total, "flagged_at_10pct": f"{hits} of {total}",
                "false_positive_rate": fps / total, "aa_flagged": f"{fps} of {total}",
                "median_detectable_change": float(np.median(mdc))}

    def pair_ratios(kind: str) -> list[float]:
        # each pair as the verdict counts it: its median trial
        return [math.exp(float(np.median(np.log(p)))) for n in nights for r in n[kind].values() for p in r]

    aa_pairs, slow_pairs = pair_ratios("aa"), pair_ratios("slow")
    return {
        "cases": cases, "repeats": repeats, "processes": processes, "trials": trials,
        "pairs": scored(False), "first_pair_only": scored(True),
        "aa_pair_ratio_range": [min(aa_pairs), max(aa_pairs)],
        "ab_pair_ratio_range": [min(slow_pairs), max(slow_pairs)],
        "ratios": nights,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix detector", description=__doc__.splitlines()[0])
    parser.add_argument("--rootdir", type=Path, default=Path.cwd())
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("nightly", "paired"), default=None)
    parser.add_argument("--paired-processes", type=int, default=ab.PROCESSES, metavar="N",
                        help=f"paired mode: pairs of worker processes per case (default {ab.PROCESSES})")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models", required=True, help="comma list, e.g. resnet18,mobilenet_v2")
    parser.add_argument("--backends", required=True,
                        help="comma list, e.g. onnxruntime,openvino; the nightly part slows the first one")
    parser.add_argument("--precisions", default="fp32,int8", help="comma list (default: fp32,int8)")
    parser.add_argument("--repeats-per-run", type=int, default=0, metavar="N",
                        help="time each case in N fresh processes per run too (pytest's --repeats; default 0)")
    parser.add_argument("--run-args", default="", metavar="ARGS",
                        help="more pytest options for every run, e.g. '--min-time 0.3 --max-time 1'")
    parser.add_argument("--analyse", type=Path, default=None, metavar="DIR",
                        help="judge the unchanged runs stored in DIR (aa-*.json from --out) again, leave-one-out, "
                        "with the first backend slowed after the fact; no new runs")
    parser.add_argument("--processes", default="0", metavar="N,...",
                        help="with --analyse: judge as if each case had N fresh processes (0: in-process only)")
    parser.add_argument("--slowdowns", default="10,15,20",
                        help="percent slowdowns injected into the first backend, one run each (default: 10,15,20)")
    args = parser.parse_args(argv)
    if args.analyse is not None:
        stored = [json.loads(p.read_text()) for p in sorted(args.analyse.glob("aa-*.json"),
                                                             key=lambda p: int(p.stem.split("-")[1]))]
        if len(stored) < 3:
            parser.error(f"--analyse {args.analyse}: {len(stored)} aa-*.json run(s); at least 3 are needed")
        slowdowns = tuple(float(p) for p in args.slowdowns.split(",") if p.strip())
        backend = args.backends.split(",")[0]
        print(json.dumps([analyse(stored, backend, int(n), slowdowns) for n in args.processes.split(",")], indent=2))
        return 0
    rootdir = args.rootdir.resolve()
    run_args = (*(["--repeats", str(args.repeats_per_run)] if args.repeats_per_run else []), *args.run_args.split())
    matrix = Matrix(args.models, args.backends, args.precisions, tuple(run_args))
    cases = matrix.case_ids(rootdir)
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "paired"):
            summary["paired"] = paired(rootdir, args.repeats, cases, args.paired_processes,
                                       save=folder / "paired-ratios.json")
            print(json.dumps(summary, indent=2), flush=True)
        if args.only in (None, "nightly"):
            summary["nightly"] = nightly(rootdir, args.runs, folder, matrix,
                                         tuple(int(p) for p in args.slowdowns.split(",") if p.strip()))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
