"""``python -m infermatrix``: compare stored runs, accept a run as a baseline.

    python -m infermatrix compare BASELINE... CURRENT [--json]
    python -m infermatrix accept RESULT.json [--baselines DIR]
    python -m infermatrix ab --cases ID,... [side options]   (paired A/B, see infermatrix.ab)
    python -m infermatrix report RESULTS... [--baseline DIR] --out DIR   (summary.md + index.html)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infermatrix import baselines, verdicts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ab"]:
        from infermatrix import ab

        return ab.main(argv[1:])
    if argv[:1] == ["report"]:
        from infermatrix import report

        return report.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m infermatrix", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="judge the last run against the runs before it (oldest first)")
    compare.add_argument("runs", nargs="+", type=Path, help="BASELINE... CURRENT (pytest-benchmark JSON)")
    compare.add_argument("--json", action="store_true", help="print verdicts as JSON")
    compare.add_argument("--alpha", type=float, default=verdicts.Policy.alpha, help="false discovery rate")
    compare.add_argument("--min-effect", type=float, default=verdicts.Policy.min_effect,
                         help="smallest change called a regression (fraction, default 0.05)")
    compare.add_argument("--allow-other-machine", action="store_true",
                         help="compare runs from different machines (refused by default)")
    commands.add_parser("ab", help="paired A/B comparison of two sides (see python -m infermatrix ab --help)")
    commands.add_parser("report", help="merge a run's result files into summary.md and index.html (see --help)")
    accept = commands.add_parser("accept", help="store a run as the newest baseline of its machine")
    accept.add_argument("result", type=Path)
    accept.add_argument("--baselines", type=Path, default=Path("baselines"))
    args = parser.parse_args(argv)

    try:
        if args.command == "accept":
            path = baselines.accept(baselines.load_run(args.result), args.baselines)
            print(f"accepted: {path}")
            return 0
        if len(args.runs) < 2:
            parser.error("compare needs at least one baseline run and the current run")
        runs = [baselines.load_run(p) for p in args.runs]
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


if __name__ == "__main__":
    raise SystemExit(main())
