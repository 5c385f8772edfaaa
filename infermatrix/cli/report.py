"""``python -m infermatrix report RESULTS... [--baseline DIR] --out DIR``: summary.md and index.html of one run.

Exit status: 0; 1 when a case or group regressed or a case failed (a failed case is a regression,
with or without baselines), so a nightly job fails; 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infermatrix.report.data import ReportError
from infermatrix.report.write import build
from infermatrix.results import baselines, verdicts


def load_verdicts(path: Path) -> verdicts.Summary:
    try:
        return verdicts.Summary.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path}: not a verdict summary ({exc}); give a file written from Summary.as_dict() "
                          "(python -m infermatrix compare --json writes one)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="result JSON files of one run (--benchmark-json)")
    parser.add_argument("--baseline", type=Path, default=None, help="baselines directory to judge against")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.md and index.html")
    parser.add_argument("--verdicts", type=Path, action="append", default=[], metavar="SUMMARY.json",
                        help="more verdicts of this run to show beside the history ones, each row with its mode "
                        "(e.g. the nightly's paired judgement): JSON as Summary.as_dict() / compare --json writes it")
    args = parser.parse_args(argv)
    try:
        extra = [load_verdicts(path) for path in args.verdicts]
        status = build(args.results, args.out, args.baseline, extra)
    except (ReportError, baselines.BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'index.html'}")
    return status
