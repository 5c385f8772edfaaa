"""Paired A/B: two sides of the same cases, measured at the same time on the same machine.

    python -m infermatrix ab --cases resnet18-onnxruntime-cpu-fp32-b1,... \\
        [--a-python PY --a-rootdir DIR --a-threads N --a-inject-slowdown P] \\
        [--b-python PY --b-rootdir DIR --b-threads N --b-inject-slowdown P] [--json]

Each side is a worker process holding the prepared case (infermatrix.isolation.abworker): another
environment (``--b-python .tox/onnxruntime/bin/python``), another checkout
(``--b-rootdir`` of a ``git worktree`` at the commit to compare), or another
configuration. The driver runs randomized multiple interleaved trials: in every trial
both sides run a short block of calls (after 50 ms of untimed ones), in random order, and
the trial's ratio is B's median over A's. Machine drift and level jumps hit both sides of a trial alike, so the
ratios are steady where separate runs are not (two interleaved sessions agreed to
±1–3% here, against ~17% between processes). But a process can settle at one of two
levels for its whole life, which interleaving does not take out: each case is measured by
``--processes`` pairs of workers one after another (default 3), and the pairs are the
verdict's unit — each pair's median trial log ratio (a block hit by outside load moves a
mean, not a median), their mean against its standard error, the pairs' spread
moderated across the cases; Benjamini–Hochberg across cases; the cases' groups (backend, precision, model, device)
pooled the same way as in ``compare``; the same verdicts (``mode`` "paired"), tables and exit
code as ``compare``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from infermatrix.measure.paired import LEAD_IN_S, interleaved_blocks
from infermatrix.results.verdicts import Policy, Verdict, paired

#: pairs of worker processes per case (measured: docs/verdicts.md, paired mode)
PROCESSES = 3
#: interleaved trials per case, split among the pairs: 8 a pair, so that each pair's median trial
#: stands when a few of its trials are hit by outside load (docs/verdicts.md, fifth session);
#: trials are cheap next to the workers' start
TRIALS = 24


def worker_module(rootdir: Path) -> str:
    """The side's own A/B worker: a checkout from before the core's layers has it at
    ``infermatrix/abworker.py``. Both speak the same JSON lines, so any two versions pair."""
    return ("infermatrix.abworker" if (rootdir / "infermatrix" / "abworker.py").is_file()
            else "infermatrix.isolation.abworker")


@dataclasses.dataclass
class Side:
    name: str
    python: str
    rootdir: Path
    threads: int | None
    inject_slowdown: float
    #: added to the worker's environment (e.g. the shared cache for a side whose rootdir has none)
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def start(self, case_id: str) -> subprocess.Popen[str]:
        cmd = [self.python, "-m", worker_module(self.rootdir), "--rootdir", str(self.rootdir), "--case", case_id,
               "--inject-slowdown", str(self.inject_slowdown)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        env = {**os.environ, **self.environment,
               "PYTHONPATH": os.pathsep.join([str(self.rootdir), os.environ.get("PYTHONPATH", "")])}
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, cwd=self.rootdir, env=env)


def _ask(proc: subprocess.Popen[str], payload: dict[str, Any] | None) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    if payload is not None:
        proc.stdin.write(json.dumps(payload) + "\n")
        proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited (code {proc.wait()}) without answering")
        if line.startswith("{"):
            return dict(json.loads(line))


def measure_case(case_id: str, a: Side, b: Side, trials: int, calls: int, seed: int,
                 processes: int = 1) -> list[list[float]]:
    """Per-trial ratios B/A of the case's median latency, a list per pair of worker processes:
    ``processes`` pairs one after another, ``trials`` trials split among them (at least 3
    each). A process can settle at one of two levels for its whole life (docs/verdicts.md), so
    the pairs, not the trials, are what the verdict counts (``verdicts.paired``)."""
    per_pair = max(3, math.ceil(trials / max(1, processes)))
    return [_measure_pair(case_id, a, b, per_pair, calls, seed * 1000 + p) for p in range(max(1, processes))]


def _measure_pair(case_id: str, a: Side, b: Side, trials: int, calls: int, seed: int) -> list[float]:
    """One worker process per side, interleaved trials; the trials' ratios B/A."""
    # which side's process starts first alternates with the seed: neither always gets the quieter start
    order = [("A", a), ("B", b)] if seed % 2 == 0 else [("B", b), ("A", a)]
    workers = {name: side.start(case_id) for name, side in order}
    try:
        for name, proc in workers.items():
            hello = _ask(proc, None)
            if "error" in hello:
                raise RuntimeError(f"side {name}: {hello['error']}")

        def remote_block(proc: subprocess.Popen[str]) -> Callable[[int], float]:
            def run(calls: int) -> float:
                # the lead-in (paired.LEAD_IN_S): untimed blocks of one call until it has passed;
                # sent by this driver, so a side running an older worker gets the same lead-in
                started = time.perf_counter()
                while time.perf_counter() - started < LEAD_IN_S:
                    _ask(proc, {"calls": 1})
                # the worker makes one untimed call, then ``calls`` timed ones, and answers their median
                return float(_ask(proc, {"calls": calls})["median_s"])

            return run

        result = interleaved_blocks({name: remote_block(proc) for name, proc in workers.items()}, trials, calls, seed)
        return result.ratios("B", "A")
    finally:
        for proc in workers.values():
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(json.dumps({"quit": True}) + "\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def judge_paired(ratios_by_case: Mapping[str, Sequence[float] | Sequence[Sequence[float]]],
                 policy: Policy | None = None) -> list[Verdict]:
    """Each case's per-trial ratios B/A (a list per pair of processes, or one flat list),
    judged by the same rule as the history verdicts (``verdicts.paired``): the mean log ratio
    against its standard error — of the trials for one pair, of the pairs' median trials for
    several — BH across cases."""
    return list(paired(ratios_by_case, policy).cases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix ab", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="comma list of case ids")
    for side in ("a", "b"):
        parser.add_argument(f"--{side}-python", default=sys.executable)
        parser.add_argument(f"--{side}-rootdir", type=Path, default=Path.cwd())
        parser.add_argument(f"--{side}-commit", default=None, metavar="REV",
                            help="run this side from a temporary git worktree of the checkout at REV")
        parser.add_argument(f"--{side}-threads", type=int, default=None)
        parser.add_argument(f"--{side}-inject-slowdown", type=float, default=0.0, metavar="PERCENT")
    parser.add_argument("--trials", type=int, default=TRIALS,
                        help=f"interleaved trials in all, split among the pairs (default {TRIALS})")
    parser.add_argument("--processes", type=int, default=PROCESSES, metavar="N",
                        help=f"pairs of worker processes per case, one after another (default {PROCESSES}): "
                             "a process can settle at one of two levels, so the verdict counts pairs")
    parser.add_argument("--calls", type=int, default=20, help="calls per side per trial")
    parser.add_argument("--alpha", type=float, default=Policy.alpha)
    parser.add_argument("--min-effect", type=float, default=Policy.min_effect)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        sides = []
        for name in ("a", "b"):
            rootdir = getattr(args, f"{name}_rootdir").resolve()
            commit = getattr(args, f"{name}_commit")
            if commit:
                rootdir = stack.enter_context(worktree(rootdir, commit))
            sides.append(Side(name, getattr(args, f"{name}_python"), rootdir, getattr(args, f"{name}_threads"),
                              getattr(args, f"{name}_inject_slowdown")))
        return run_sides(args, sides)


@contextlib.contextmanager
def worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A detached ``git worktree`` of ``repo`` at ``commit``, removed afterwards. It shares
    the repository's cache directory (the same model content gives the same keys)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="infermatrix-ab-worktree-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True, text=True)
        cache = repo / ".infermatrix-cache"
        if cache.exists():
            (path / ".infermatrix-cache").symlink_to(cache)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)],
                           capture_output=True, text=True)


def run_sides(args: argparse.Namespace, sides: list[Side]) -> int:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    ratios = {}
    for i, case_id in enumerate(cases):
        try:
            ratios[case_id] = measure_case(case_id, sides[0], sides[1], args.trials, args.calls, args.seed + i,
                                           args.processes)
        except RuntimeError as exc:
            print(f"error: {case_id}: {exc}", file=sys.stderr)
            return 2
    summary = paired(ratios, Policy(alpha=args.alpha, min_effect=args.min_effect))
    if args.json:
        print(json.dumps({v.key: {**v.as_dict(), "trial_ratios": ratios[v.key]} for v in summary.cases}, indent=2))
    else:
        print(summary.table())
    return summary.exit_status()


if __name__ == "__main__":
    raise SystemExit(main())
