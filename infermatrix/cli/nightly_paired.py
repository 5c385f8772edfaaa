"""``python -m infermatrix nightly-paired RESULTS... [--reference FILE | --baselines DIR]``: pair tonight
against the last good state.

The reference is an accepted baseline (default: the newest of this machine in ``--baselines``)
that recorded its environments; each is re-created from its lock (exact versions, the commit;
cached under ``<cache>/reference-envs/<lock hash>``), and every latency case of RESULTS (the
current run's ``--benchmark-json`` files) is timed interleaved there and in the interpreter
that ran it (infermatrix.nightly.paired). The verdict is the paired ratio, current / reference.

Exit status: 0, or 1 when a case regressed in paired mode, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infermatrix.cache import resolve_cache_dir
from infermatrix.cli.nightly import parse_slowdowns
from infermatrix.nightly import paired
from infermatrix.nightly.lock import LockError, environments
from infermatrix.report.data import ReportError, merge_runs
from infermatrix.report.write import result_files
from infermatrix.results import baselines, verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix nightly-paired", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="the current run's result JSON files (or a folder)")
    parser.add_argument("--reference", type=Path, default=None, help="the accepted run to pair against "
                        "(default: the newest baseline of this machine in --baselines)")
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout (default: here)")
    parser.add_argument("--out", type=Path, default=None, help="write the paired verdicts here (JSON; "
                        "python -m infermatrix report --paired shows them)")
    parser.add_argument("--trials", type=int, default=paired.TRIALS)
    parser.add_argument("--calls", type=int, default=paired.CALLS, help="calls per side per trial")
    parser.add_argument("--processes", type=int, default=paired.PROCESSES, metavar="N",
                        help=f"pairs of worker processes per case (default {paired.PROCESSES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=verdicts.Policy.alpha)
    parser.add_argument("--min-effect", type=float, default=verdicts.Policy.min_effect)
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="passed to pip when a reference environment is built")
    parser.add_argument("--inject-slowdown", action="append", default=[], metavar="BACKEND=PERCENT",
                        help="fault injection: slow BACKEND on the current side")
    args = parser.parse_args(argv)
    try:
        slowdowns = parse_slowdowns(args.inject_slowdown)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        current = merge_runs(result_files(args.results))
        machine = baselines.fingerprint(current["machine_info"])
        if args.reference is not None:
            reference = baselines.load_run(args.reference)
            source = str(args.reference)
        else:
            paths = baselines.history(args.baselines, machine)
            if not paths:
                raise baselines.BaselineError(f"no baseline for machine {machine} in {args.baselines}: nothing to "
                                              "pair against (accept a run first)")
            reference, source = baselines.load_history(args.baselines, machine)[-1], str(paths[-1])
        if not environments(reference, source):
            raise baselines.BaselineError(f"{source}: recorded no environment (accepted before locks were "
                                          "recorded), so it cannot be re-created — accept a run again")
    except (ReportError, baselines.BaselineError, LockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    repo = args.repo.resolve()
    outcome = paired.run_paired(reference, current, repo, resolve_cache_dir(None, repo), trials=args.trials,
                                calls=args.calls, seed=args.seed, processes=args.processes, slowdowns=slowdowns,
                                pip_args=args.pip_arg,
                                policy=verdicts.Policy(alpha=args.alpha, min_effect=args.min_effect),
                                reference_source=source, log=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(outcome.lines()))
    if args.out is not None:
        outcome.save(args.out)
    return 1 if any(v.verdict == "regressed" for v in outcome.verdicts) else 0
