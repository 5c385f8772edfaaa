"""One side of a paired A/B comparison: a process that holds one prepared case and runs
timed blocks on request. Started by ``python -m infermatrix ab`` (``infermatrix.cli.ab``).

It speaks JSON lines on stdin/stdout, not the worker pool's pickled requests, on
purpose: its other side may be another version of infermatrix (``--b-commit``), and
plain JSON is what two versions can share. A block is ``paired.block_timer``'s, as for
sides in one process.

A side can be another environment (its own python), another checkout (its own
rootdir on PYTHONPATH) or another configuration (``--inject-slowdown``, ``--threads``),
so the worker finds its plugins and its ``infermatrix`` package from where it runs (the
side's checkout comes first on ``PYTHONPATH``; the host then imports that checkout's
``plugins`` package).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from infermatrix import host
from infermatrix.api.types import RunOptions
from infermatrix.cache import resolve_cache_dir
from infermatrix.case.offline import OfflineError, find_case, prepare_offline
from infermatrix.machine import physical_cores
from infermatrix.measure.paired import block_timer


def send(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootdir", type=Path, required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inject-slowdown", type=float, default=0.0, help="percent")
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)

    rootdir = args.rootdir.resolve()
    manager = host.plugin_manager()
    options = RunOptions(cache_root=args.cache or resolve_cache_dir(None, rootdir),
                         threads=args.threads or physical_cores())
    with tempfile.TemporaryDirectory(prefix="infermatrix-ab-") as tmp:
        try:
            prepared = prepare_offline(manager, find_case(manager, args.case, options), options, Path(tmp))
        except OfflineError as exc:
            send({"error": str(exc)})
            return 2
        prepared.slowdown = args.inject_slowdown / 100
        # one untimed call, then the timed ones; the lead-in before them is the driver's
        # (infermatrix.cli.ab), so that both sides get the same whatever their version
        block = block_timer(prepared.call, lead_in_s=0.0)
        send({"ready": True, "config": dict(prepared.session.config), "version": prepared.case.backend.version,
              "cosine": prepared.accuracy.cosine_similarity})
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("quit"):
                break
            send({"median_s": block(int(command["calls"]))})
        prepared.session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
