"""``python -m infermatrix accept RESULT.json``: store a run as the newest baseline of its machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infermatrix.results import baselines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix accept", description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    args = parser.parse_args(argv)
    try:
        path = baselines.accept(baselines.load_run(args.result), args.baselines, source=args.result)
    except baselines.BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"accepted: {path}")
    return 0
