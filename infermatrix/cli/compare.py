"""``python -m infermatrix compare BASELINE... CURRENT``: judge the last run against the runs before it.

Exit status: 0; 1 when a case or a group regressed or a case failed (a failed case is a
regression: docs/verdicts.md); 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infermatrix.results import baselines, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="BASELINE... CURRENT (pytest-benchmark JSON)")
    parser.add_argument("--json", action="store_true",
                        help="print the judgement as JSON: exit_status, counts, groups, cases, machine")
    parser.add_argument("--alpha", type=float, default=verdicts.Policy.alpha,
                        help="false discovery rate across the cases")
    parser.add_argument("--group-alpha", type=float, default=verdicts.Policy.group_alpha,
                        help="false discovery rate across the groups (backends, precisions, models, devices)")
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
    policy = verdicts.Policy(alpha=args.alpha, group_alpha=args.group_alpha, min_effect=args.min_effect)
    summary = verdicts.assess(runs[:-1], runs[-1], policy)
    changes = baselines.version_changes(runs[-2], runs[-1])
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        if changes:
            print("versions differ from the newest baseline: " + "; ".join(changes))
        print(summary.table())
    return summary.exit_status()
