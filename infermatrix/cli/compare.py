"""``python -m infermatrix compare BASELINE... CURRENT``: judge the last run against the runs before it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infermatrix.results import baselines, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="BASELINE... CURRENT (pytest-benchmark JSON)")
    parser.add_argument("--json", action="store_true", help="print verdicts as JSON")
    parser.add_argument("--alpha", type=float, default=verdicts.Policy.alpha, help="false discovery rate")
    parser.add_argument("--min-effect", type=float, default=verdicts.Policy.min_effect,
                        help="smallest change called a regression (fraction, default 0.05)")
    parser.add_argument("--allow-other-machine", action="store_true",
                        help="compare runs from different machines (refused by default)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("compare needs at least one baseline run and the current run")
    try:
        runs = [baselines.load_run(p) for p in args.runs]
        for path, run in zip(args.runs, runs, strict=True):
            baselines.check_run(run, path, "it cannot be judged or judged against — leave it out of the compare "
                                "(nothing was changed)")
    except baselines.BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    machines = {baselines.fingerprint(r["machine_info"]) for r in runs}
    if len(machines) > 1 and not args.allow_other_machine:
        print(f"error: the runs come from different machines ({', '.join(sorted(machines))}); "
              "their timings are not comparable — pass --allow-other-machine to compare anyway", file=sys.stderr)
        return 2
    results = verdicts.judge(runs[:-1], runs[-1], verdicts.Policy(alpha=args.alpha, min_effect=args.min_effect))
    changes = baselines.version_changes(runs[-2], runs[-1])
    if changes and not args.json:
        print("versions differ from the newest baseline: " + "; ".join(changes))
    if args.json:
        print(json.dumps({v.key: v.as_dict() for v in results}, indent=2))
    else:
        print(verdicts.table(results))
    return 1 if any(v.verdict == "regressed" for v in results) else 0
