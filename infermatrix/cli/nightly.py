"""``python -m infermatrix nightly [options] [-- PYTEST_ARGS]``: one night, judged and stored.

Every benchmark environment of the tox labels (default: cpu-backends, and gpu-backends where
an NVIDIA driver is) runs one after another; the night is judged in history mode against the
results store and, where the newest accepted baseline recorded its environments, in paired
mode against a re-creation of them; the night is committed to the results branch, and its
merged run accepted as the newest baseline only when it passed (infermatrix.nightly.night).
``make nightly``, ``tox -e nightly`` and the GitHub workflow all run this.

Exit status: 0 the night passed; 1 it failed (an environment failed, a case failed, a case
regressed); 2 it could not run or could not be stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infermatrix.cache import resolve_cache_dir
from infermatrix.nightly import night
from infermatrix.nightly.paired import CALLS, PROCESSES, TRIALS
from infermatrix.nightly.store import BRANCH, ResultsStore

#: fresh processes per latency case every night (measured: docs/verdicts.md "Measured here")
REPEATS = 3


def parse_slowdowns(values: list[str]) -> dict[str, float]:
    """``BACKEND=PERCENT`` values; a ValueError names the one that is not."""
    found = {}
    for value in values:
        backend, sep, percent = value.partition("=")
        try:
            found[backend] = float(percent)
        except ValueError:
            sep = ""
        if not sep or not backend:
            raise ValueError(f"--inject-slowdown {value}: give BACKEND=PERCENT, e.g. onnxruntime=10")
    return found


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infermatrix nightly", description=__doc__.splitlines()[0])
    p.add_argument("--labels", default=None, help="comma list of tox labels whose environments run "
                   "(default: cpu-backends, and gpu-backends where nvidia-smi is)")
    p.add_argument("--envs", default=None, help="comma list of tox environments instead of --labels")
    p.add_argument("--list-envs", action="store_true",
                   help="print the environments the labels select as a JSON list, and run nothing")
    p.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout (default: here)")
    p.add_argument("--store", type=Path, default=None,
                   help="where the results branch is checked out (default: <repo>/.infermatrix-results)")
    p.add_argument("--branch", default=BRANCH, help=f"the results branch (default: {BRANCH})")
    p.add_argument("--remote", default=None,
                   help="fetch the results branch from and push it to this remote (default: local only)")
    p.add_argument("--results", type=Path, default=None, help="where the environments write their result JSON "
                   "(default: <repo>/results; its *.json files are removed first)")
    p.add_argument("--out", type=Path, default=None,
                   help="report directory: summary.md, index.html, night.md, paired.json (default: <repo>/report)")
    p.add_argument("--no-export", action="store_true", help="do not run tox -e export first")
    p.add_argument("--no-paired", action="store_true", help="history mode only")
    p.add_argument("--paired-trials", type=int, default=TRIALS)
    p.add_argument("--paired-calls", type=int, default=CALLS, help="calls per side per trial")
    p.add_argument("--paired-processes", type=int, default=PROCESSES, metavar="N",
                   help=f"pairs of worker processes per case in paired mode (default {PROCESSES})")
    p.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="passed to pip when a reference environment is built (e.g. --pip-arg=--extra-index-url=URL)")
    p.add_argument("--inject-slowdown", action="append", default=[], metavar="BACKEND=PERCENT",
                   help="fault injection: slow BACKEND tonight (each environment's pytest and the paired side)")
    p.add_argument("--repeats", type=int, default=REPEATS, metavar="N",
                   help=f"time every latency case in N fresh processes too (pytest's --repeats; default {REPEATS}: "
                   "a case's median sits at one of two levels per process here, and the history verdicts judge "
                   "the mean of N; docs/verdicts.md). 0: the in-process median alone")
    p.add_argument("pytest_args", nargs="*", help="after --: passed to every environment's pytest")
    return p


def main(argv: list[str] | None = None) -> int:
    command = parser()
    args = command.parse_args(argv)
    try:
        slowdowns = parse_slowdowns(args.inject_slowdown)
    except ValueError as exc:
        command.error(str(exc))
    repo = args.repo.resolve()
    labels = args.labels.split(",") if args.labels else night.default_labels()
    try:
        envs = [e for e in args.envs.split(",") if e] if args.envs else night.list_envs(repo, labels)
    except (night.NightError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list_envs:
        print(json.dumps(envs))
        return 0
    if not envs:
        print(f"error: no tox environment carries the labels {', '.join(labels)}", file=sys.stderr)
        return 2
    if args.repeats < 0:
        print(f"error: --repeats {args.repeats}: give 0 or a number of fresh processes", file=sys.stderr)
        return 2
    pytest_args = list(args.pytest_args)
    if args.repeats and not any(a == "--repeats" or a.startswith("--repeats=") for a in pytest_args):
        pytest_args = [f"--repeats={args.repeats}", *pytest_args]
    config = night.NightConfig(
        repo=repo, envs=envs, pytest_args=pytest_args,
        results_dir=(args.results or repo / "results").resolve(), report_dir=(args.out or repo / "report").resolve(),
        store=ResultsStore(repo, (args.store or repo / ".infermatrix-results").resolve(), args.branch, args.remote),
        cache_root=resolve_cache_dir(None, repo), export=not args.no_export, paired=not args.no_paired,
        trials=args.paired_trials, calls=args.paired_calls, processes=args.paired_processes,
        pip_args=list(args.pip_arg),
        slowdowns=slowdowns)
    print(f"infermatrix nightly: environments, one after another: {', '.join(envs)}", flush=True)
    try:
        result = night.run_night(config, night.tox_runner(repo), log=lambda line: print(line, flush=True))
    except night.NightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((config.report_dir / "night.md").read_text())
    if result.store_error:
        print(f"error: {result.store_error}", file=sys.stderr)
    elif result.commit:
        accepted = f"; accepted as {result.accepted.relative_to(config.store.path)}" if result.accepted else \
            "; not accepted as a baseline"
        print(f"infermatrix nightly: stored as commit {result.commit[:12]} on {config.store.branch}{accepted}")
    return result.exit_code
