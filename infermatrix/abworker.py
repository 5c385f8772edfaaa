"""One side of a paired A/B comparison: a process that holds one prepared case and runs
timed trials on request (JSON lines on stdin/stdout). Started by ``infermatrix.ab``.

A side can be another environment (its own python), another checkout (its own
rootdir on PYTHONPATH) or another configuration (``--inject-slowdown``, ``--threads``),
so the worker finds its plugins and its ``infermatrix`` package from where it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from infermatrix import matrix, runner
from infermatrix.cache import resolve_cache_dir
from infermatrix.machine import physical_cores
from infermatrix.sidebyside import plugin_manager
from infermatrix.timing import TimingPolicy
from infermatrix.types import PrepareContext


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
    manager = plugin_manager(rootdir)
    models = [m for group in manager.hook.pytest_infermatrix_models() for m in group]
    backends = [b for group in manager.hook.pytest_infermatrix_backends() for b in group]
    entries = matrix.build(matrix.Selection(batch_sizes=None), models, backends,
                           lambda b: manager.hook.pytest_infermatrix_targets(backend=b, config=None))
    by_id = {e.case.id: e for e in entries}
    # batch sizes outside a model's defaults: parse the id's trailing -bN
    base, _, batch = args.case.rpartition("-b")
    if args.case not in by_id and batch.isdigit():
        for entry in entries:
            if entry.case.id.rpartition("-b")[0] == base:
                import dataclasses

                by_id[args.case] = dataclasses.replace(entry, case=dataclasses.replace(entry.case,
                                                                                         batch_size=int(batch)))
                break
    found = by_id.get(args.case)
    if found is None:
        send({"error": f"unknown case {args.case!r}"})
        return 2
    entry = found
    if entry.skip_reason:
        send({"error": f"{args.case}: {entry.skip_reason}"})
        return 2
    case = entry.case
    threads = args.threads or physical_cores()
    cache_root = args.cache or resolve_cache_dir(None, rootdir)
    with tempfile.TemporaryDirectory(prefix="infermatrix-ab-") as tmp:
        context = PrepareContext(workdir=Path(tmp), cache_root=cache_root, threads=threads, config=None)
        prepared = runner.prepare(
            case,
            lambda: manager.hook.pytest_infermatrix_prepare(backend=case.backend, model=case.model,
                                                            target=case.target, batch_size=case.batch_size,
                                                            context=context),
            cache_root, TimingPolicy(), accuracy_samples=8, threads=threads,
        )
        if not prepared.accuracy.passed:
            send({"error": prepared.accuracy.message(case.id)})
            return 1
        prepared.slowdown = args.inject_slowdown / 100
        send({"ready": True, "config": dict(prepared.session.config), "version": case.backend.version,
              "cosine": prepared.accuracy.cosine_similarity})
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("quit"):
                break
            prepared.call()  # untimed: the other side just ran, wake this side's threads
            samples = []
            for _ in range(int(command["calls"])):
                started = time.perf_counter()
                prepared.call()
                samples.append(time.perf_counter() - started)
            send({"median_s": statistics.median(samples)})
        prepared.session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
