"""``python -m infermatrix report RESULTS... [--baseline DIR] --out DIR``: summary.md and index.html of one run.

Exit status: 0; 1 when a case or group regressed or a case failed (a failed case is a regression,
with or without baselines), so a nightly job fails; 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infermatrix.nightly.paired import PairedOutcome
from infermatrix.report.data import ReportError
from infermatrix.report.write import build
from infermatrix.results import baselines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="result JSON files of one run (--benchmark-json)")
    parser.add_argument("--baseline", type=Path, default=None, help="baselines directory to judge against")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.md and index.html")
    parser.add_argument("--paired", type=Path, default=None, metavar="PAIRED_JSON",
                        help="paired verdicts (python -m infermatrix nightly-paired --out), shown beside the history "
                        "ones with the mode that judged each case")
    args = parser.parse_args(argv)
    try:
        paired = None
        if args.paired is not None:
            try:
                paired = PairedOutcome.from_dict(json.loads(args.paired.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ReportError(f"{args.paired}: cannot read the paired verdicts ({exc})") from None
        status = build(args.results, args.out, args.baseline, paired)
    except (ReportError, baselines.BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'index.html'}")
    return status
