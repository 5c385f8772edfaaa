"""Backends side by side, interleaved in one process: ``python -m infermatrix sidebyside``.

    python -m infermatrix sidebyside --model resnet18 --batch-size 1 \\
        --sides torch:fp32,torch-compile:int8,onnxruntime:fp32,onnxruntime:int8,openvino:fp32,openvino:int8
    python -m infermatrix sidebyside --model resnet18 \\
        --sides onnxruntime:fp32,resnet18.sparse90/onnxruntime:fp32,resnet18.pruned50/onnxruntime:fp32

Every side is prepared through the same hooks as in a pytest run (the one plugin host,
:func:`infermatrix.host.plugin_manager`), checked against the fp32 reference, then all sides are timed in
randomized interleaved trials (see infermatrix.measure.paired). Ratios between sides from one
such run are far steadier on a noisy machine than medians from separate runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from infermatrix import host
from infermatrix.api.types import RunOptions
from infermatrix.cache import resolve_cache_dir
from infermatrix.case.offline import prepare_side
from infermatrix.machine import physical_cores
from infermatrix.measure import paired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix sidebyside", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--sides", required=True,
                        help="comma list of backend:precision (device cpu) or backend:device@precision, each "
                             "optionally after MODEL/ for another model (resnet18.sparse90/onnxruntime:fp32)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--calls-per-trial", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rootdir", type=Path, default=Path.cwd())
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    threads = args.threads or physical_cores()
    options = RunOptions(cache_root=resolve_cache_dir(None, args.rootdir.resolve()), threads=threads)
    manager = host.plugin_manager()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    prepared: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="infermatrix-sidebyside-") as tmp:
        try:
            for i, side in enumerate(sides):
                workdir = Path(tmp) / str(i)
                workdir.mkdir()
                prepared[side] = prepare_side(manager, args.model, side, args.batch_size, options, workdir)
            # different backends bring different thread runtimes: interleave in blocks
            result = paired.interleaved({side: p.call for side, p in prepared.items()}, trials=args.trials,
                                        calls_per_trial=args.calls_per_trial, blocks=True)
        finally:
            for p in prepared.values():
                p.session.close()
    summary = result.summary(sides[0])
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.model} b{args.batch_size}, {threads} threads, {args.trials} trials, each side "
              f"{args.calls_per_trial} calls in a block, block order randomized per trial")
        for side, row in summary.items():
            low, high = row["ratio_range"]
            print(f"  {side:28s} median {row['median_ms']:8.2f} ms   x{row['ratio_to_' + sides[0]]:.2f} of "
                  f"{sides[0]} (trials {low:.2f}-{high:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
