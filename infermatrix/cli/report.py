"""``python -m infermatrix report RESULTS... [--baseline DIR] --out DIR``: summary.md and index.html of one run.

Exit status: 0; 1 when a case or group regressed or a case failed (a failed case is a regression,
with or without baselines), so a nightly job fails; 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infermatrix.report.data import ReportError
from infermatrix.report.write import build
from infermatrix.results import baselines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="result JSON files of one run (--benchmark-json)")
    parser.add_argument("--baseline", type=Path, default=None, help="baselines directory to judge against")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.md and index.html")
    args = parser.parse_args(argv)
    try:
        status = build(args.results, args.out, args.baseline)
    except (ReportError, baselines.BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'index.html'}")
    return status
