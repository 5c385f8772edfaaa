"""Stored results: ``baselines/<machine fingerprint>/<timestamp>.json``.

Each file is an accepted pytest-benchmark JSON run (raw rounds kept), so
``pytest-benchmark compare`` reads them too; the files of one fingerprint, oldest
first, are the history a verdict is judged against. The fingerprint is the hardware
(CPU model, physical cores, GPU models) and OS/architecture; backend and Python
versions are not part of it — an upgrade is exactly what users want compared.
Accepting a run is explicit and atomic (temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from infermatrix.machine import DISPATCH_FLAGS
from infermatrix.results.record import CaseResult, RecordError


class BaselineError(ValueError):
    """A stored or given result file cannot be used; the message names it and what to do."""


def fingerprint(machine_info: dict[str, Any]) -> str:
    """A directory name for this hardware, readable and unique (hash of the facts).

    Two CPUs may share a brand string ("AMD EPYC" names a Zen 3 with AVX2 only and a
    Zen 4 with AVX-512 + VNNI + bf16), so the facts include what changes the numbers:
    vendor, family/model/stepping, the dispatch-relevant ISA flags and the cache sizes.
    A run recorded before these were kept has none of them and is filed by what it has.
    """
    im = machine_info.get("infermatrix") or {}
    cpu = str(im.get("cpu_model") or machine_info.get("cpu", {}).get("brand_raw") or machine_info.get("processor")
              or "unknown-cpu")
    cores = im.get("cpu_physical_cores") or machine_info.get("cpu", {}).get("count") or 0
    gpus = sorted(g.get("name", "") for g in im.get("gpus", []))
    system = str(im.get("os") or machine_info.get("system") or "")
    arch = str(im.get("arch") or machine_info.get("machine") or "")
    facts: dict[str, Any] = {"cpu": cpu, "cores": cores, "gpus": gpus, "os": system, "arch": arch}
    generation = ""
    if im.get("cpu_family") is not None or im.get("isa"):
        isa = im.get("isa") or {}
        flags = sorted(k for k, v in isa.items() if v is True and k in DISPATCH_FLAGS)
        facts.update(vendor=im.get("cpu_vendor"), family=im.get("cpu_family"), model=im.get("cpu_model_number"),
                     stepping=im.get("cpu_stepping"), isa=flags, caches=im.get("cpu_cache_bytes") or {})
        best = ("amx" if "amx_int8" in flags else "avx512vnni" if "avx512_vnni" in flags
                else "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "")
        generation = f"-f{im.get('cpu_family')}m{im.get('cpu_model_number')}-{best}"
        # A run with oneDNN capped (ONEDNN_MAX_CPU_ISA) times OpenVINO's and torch's kernels of
        # another CPU generation: its history is its own.
        cap = isa.get("onednn_max_cpu_isa")
        if cap:
            facts["onednn_max_cpu_isa"] = str(cap).upper()
            generation += f"-onednn-{str(cap).lower()}"
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-",
                  f"{cpu}{generation}-{cores}c-{'-'.join(gpus) or 'nogpu'}-{system}-{arch}".lower())
    return f"{slug.strip('-')[:80]}-{digest}"


def load_run(path: Path) -> dict[str, Any]:
    """A pytest-benchmark JSON run, validated; errors name the file and what to do."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such file") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is truncated or not a result — "
            "remove it or replace it with a run saved by --benchmark-json"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) or "machine_info" not in data:
        raise BaselineError(
            f"{path}: not a pytest-benchmark result (needs 'machine_info' and a 'benchmarks' list); "
            "give a file written by --benchmark-json"
        )
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict) or "stats" not in bench or "extra_info" not in bench:
            raise BaselineError(f"{path}: benchmark #{i} lacks 'stats' or 'extra_info'; not an infermatrix result")
        if "case_id" not in bench["extra_info"]:
            raise BaselineError(f"{path}: benchmark #{i} ({bench.get('name')}) has no case_id: not an infermatrix run")
    return data


#: The statistics every judged run needs finite and above 0: the verdicts take logs of the
#: medians and the report divides by them, so one 0, negative or NaN stops every later compare.
TIMED_STATS = ("median", "mean", "min")


def run_problems(run: Mapping[str, Any]) -> list[str]:
    """What keeps ``run`` out of a history: each entry names the benchmark, the field and its value.

    A benchmark needs a ``stats.median`` (what the verdicts judge); ``mean``, ``min`` and the
    raw rounds (``stats.data``) are checked where present (pytest-benchmark writes them all;
    hand-made and older files may lack some). The record must read as a ``CaseResult``.
    """
    problems: list[str] = []
    for i, bench in enumerate(run.get("benchmarks") or []):
        name = str(bench.get("name") or f"#{i}") if isinstance(bench, Mapping) else f"#{i}"
        if not isinstance(bench, Mapping) or not isinstance(bench.get("stats"), Mapping):
            problems.append(f"benchmark {name}: no 'stats' object")
            continue
        stats = bench["stats"]
        if "median" not in stats:
            problems.append(f"benchmark {name}: stats.median is missing")
        for field in TIMED_STATS:
            if field in stats and not _positive(stats[field]):
                problems.append(f"benchmark {name}: stats.{field} = {stats[field]!r}")
        data = stats.get("data")
        if data is not None:
            if not isinstance(data, list):
                problems.append(f"benchmark {name}: stats.data = {type(data).__name__}, not a list of rounds")
            elif not _all_positive(data):
                bad = next(((k, v) for k, v in enumerate(data) if not _positive(v)), None)
                if bad is not None:
                    problems.append(f"benchmark {name}: stats.data[{bad[0]}] = {bad[1]!r} (a round)")
        try:
            CaseResult.from_benchmark(bench)
        except RecordError as exc:
            problems.append(f"benchmark {name}: the record does not read: {exc}")
    return problems


def _positive(value: Any) -> bool:
    """A timing that can be real: a finite number above 0 (JSON's true is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _all_positive(rounds: list[Any]) -> bool:
    """The common case at numpy speed (a run keeps up to 100,000 rounds per benchmark); the
    element-wise check then only runs to name the first bad round."""
    values = np.asarray(rounds) if rounds else np.zeros(0)
    return values.ndim == 1 and values.dtype.kind in "fiu" and bool(np.all(np.isfinite(values) & (values > 0)))


def check_run(run: Mapping[str, Any], source: Path | str, advice: str) -> None:
    """Raise ``BaselineError`` naming ``source``, the first problems of ``run`` and ``advice``."""
    problems = run_problems(run)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BaselineError(f"{source}: {'; '.join(problems[:3])}{more} — timings must be finite numbers above 0 "
                            f"and each benchmark an infermatrix record; {advice}")


def version_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two runs' software (Python, backends): shown beside the verdicts,
    since an upgrade is a change users want compared, not a reason for a new baseline."""
    def versions(run: dict[str, Any]) -> dict[str, str]:
        info = run.get("machine_info", {})
        found = {"python": str(info.get("python_version", ""))}
        for name, backend in (info.get("infermatrix", {}).get("backends") or {}).items():
            found[name] = str(backend.get("version", "")) if backend.get("available") else "not installed"
        return found

    before, after = versions(old), versions(new)
    return [f"{name} {before.get(name, '–')} -> {after.get(name, '–')}"
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def _accepted_order(path: Path) -> tuple[str, int]:
    """``20261122T101500.json`` before ``20261122T101500-1.json`` (plain sorting puts "-" first)."""
    match = re.fullmatch(r"(.*?)(?:-(\d+))?\.json", path.name)
    return (match.group(1), int(match.group(2) or 0)) if match else (path.stem, 0)


def history(baselines_dir: Path, machine: str) -> list[Path]:
    """Accepted runs of ``machine``, oldest first."""
    folder = baselines_dir / machine
    return sorted(folder.glob("*.json"), key=_accepted_order) if folder.is_dir() else []


def load_history(baselines_dir: Path, machine: str) -> list[dict[str, Any]]:
    """The accepted runs of ``machine``, oldest first, each checked to come from that machine."""
    runs = []
    for path in history(baselines_dir, machine):
        run = load_run(path)
        check_run(run, path, f"this stored run cannot be judged against — move it out of {path.parent} "
                  "(nothing was changed) and compare again")
        recorded = fingerprint(run["machine_info"])
        if recorded != machine:
            raise BaselineError(
                f"{path}: recorded on machine {recorded}, but filed under {machine}; its timings are not "
                f"comparable here — move it to {baselines_dir / recorded}/ (nothing was changed)"
            )
        runs.append(run)
    return runs


def accept(run: dict[str, Any], baselines_dir: Path, allow_other_machine: bool = False,
           expected_machine: str | None = None, source: Path | str = "this run") -> Path:
    """Store ``run`` as the newest baseline of its machine, atomically; earlier runs stay.

    The run is written to a temporary file and fsynced, then hard-linked to its final
    name: a link never replaces an existing file, so two runs saving at once each get
    their own name, and a writer killed at any moment leaves either no new baseline or
    a complete one (a stray ``.accept-*.tmp`` at worst, which nothing reads).

    Only finite timings above 0 enter a history (``run_problems``): a stored NaN would stop
    every later compare of the machine. ``source`` names the run in that refusal.
    """
    check_run(run, source, "refusing to store it as a baseline (the earlier baselines are untouched) — "
              "rerun the cases it names")
    machine = fingerprint(run["machine_info"])
    if expected_machine is not None and machine != expected_machine and not allow_other_machine:
        raise BaselineError(f"this run is from machine {machine}, not {expected_machine}; refusing to file it there")
    folder = baselines_dir / machine
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    data = json.dumps(run, indent=1).encode()
    target = folder / f"{stamp}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".accept-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            for n in itertools.count():
                target = folder / (f"{stamp}.json" if n == 0 else f"{stamp}-{n}.json")
                try:
                    os.link(tmp, target)
                    break
                except FileExistsError:
                    continue  # another run saved in the same second: take the next name
            _fsync_directory(folder)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise BaselineError(
            f"{target}: could not save the baseline ({exc.strerror or exc}); the earlier baselines are untouched — "
            "free space or make the directory writable and accept the run again"
        ) from None
    return target


def _fsync_directory(folder: Path) -> None:
    """Make the new name itself durable (the file's data was fsynced before linking)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
