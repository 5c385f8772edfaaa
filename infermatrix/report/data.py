"""The merged run a report is made of: result files of one run merged, rows read as records, tables."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infermatrix.nightly.lock import merge_environments
from infermatrix.results import CaseResult, RecordError, baselines


class ReportError(ValueError):
    """Inputs that cannot make one report; the message names the file and what to do."""


# ---- the merged run ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One timed case of one scenario: its record and the median of its rounds."""

    name: str
    result: CaseResult
    #: the median of the rounds pytest-benchmark stored (what each scenario times: see its module)
    median_ms: float

    @property
    def scenario(self) -> str:
        return self.result.scenario

    @property
    def case_id(self) -> str:
        return self.result.case_id

    @property
    def model(self) -> str:
        return self.result.model

    @property
    def backend(self) -> str:
        return self.result.backend

    @property
    def device(self) -> str:
        return self.result.device

    @property
    def precision(self) -> str:
        return self.result.precision

    @property
    def batch_size(self) -> int:
        return self.result.batch_size

    @property
    def throughput(self) -> float | None:
        return self.result.throughput_samples_per_s

    @property
    def side(self) -> str:
        return f"{self.backend}:{self.precision}" + ("" if self.device == "cpu" else f"@{self.device}")


def merge_runs(paths: Sequence[Path]) -> dict[str, Any]:
    """One run from the result files of one nightly (one per environment)."""
    if not paths:
        raise ReportError("no result files given: pass the --benchmark-json files of the run (e.g. results/*.json)")
    runs = [(path, baselines.load_run(path)) for path in paths]
    for path, run in runs:
        # A 0 or NaN median would be divided by and plotted on a log scale: refuse it by name.
        baselines.check_run(run, path, "a report cannot show it — rerun the cases it names")
    machines = {baselines.fingerprint(run["machine_info"]): path for path, run in runs}
    if len(machines) > 1:
        raise ReportError("the result files come from different machines: "
                          + "; ".join(f"{p} ({m})" for m, p in machines.items())
                          + " — a report covers one machine's run")
    machine_info = json.loads(json.dumps(runs[0][1]["machine_info"]))
    merged_backends: dict[str, Any] = {}
    benchmarks: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    probes: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path, run in runs:
        for name, info in ((run["machine_info"].get("infermatrix") or {}).get("backends") or {}).items():
            if info.get("available") or name not in merged_backends:  # the environment that ran it knows its version
                merged_backends[name] = info
        for bench in run["benchmarks"]:
            if bench["name"] in seen:
                raise ReportError(f"{bench['name']} is in both {seen[bench['name']]} and {path}: give each "
                                  "environment's results once")
            seen[bench["name"]] = path
            benchmarks.append(bench)
        failed.update((run.get("infermatrix") or {}).get("failed") or {})
        probe = (run.get("infermatrix") or {}).get("probe")
        if probe is not None:
            probes.append({"source": str(path), **probe})
    machine_info.setdefault("infermatrix", {})["backends"] = merged_backends
    # one lock per environment: what re-creates each of them for the paired nightly
    environments = merge_environments(runs)
    return {"machine_info": machine_info, "benchmarks": benchmarks,
            # each environment's probe: its identity (numpy, BLAS) and cost, as that run recorded it
            "infermatrix": {"failed": failed, "environments": environments, "probes": probes},
            "datetime": max(str(run.get("datetime", "")) for _, run in runs), "sources": [str(p) for p in paths]}


def rows(run: dict[str, Any]) -> list[Row]:
    """Every benchmark of the run as a row, whatever its scenario or the version that wrote it."""
    found = []
    for bench in run["benchmarks"]:
        try:
            result = CaseResult.from_benchmark(bench)
        except RecordError as exc:  # a result the report cannot place is an error, never a silent gap
            sources = ", ".join(run.get("sources") or [])
            raise ReportError(f"{exc}{f' (in {sources})' if sources else ''}") from None
        found.append(Row(name=bench["name"], result=result, median_ms=float(bench["stats"]["median"]) * 1e3))
    return found


class NotEstimable:
    """A cell for a percentile that was measured but has too few samples for an estimate:
    shown as ``n/e`` (with ``NOT_ESTIMABLE_NOTE`` below the table), never as a number."""

    def __init__(self, why: str | None = None) -> None:
        self.why = why

    def __str__(self) -> str:
        return "n/e"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotEstimable)

    def __hash__(self) -> int:
        return hash(NotEstimable)


def _min_samples_text() -> str:
    from infermatrix.measure import tails

    return ", ".join(f"p{p:g}: {tails.min_samples(p)}" for p in tails.DEFAULT_TAILS)


#: The footnote of every table that can hold ``n/e``.
NOT_ESTIMABLE_NOTE = ("n/e: not estimable — fewer samples than MLPerf LoadGen's early-stopping estimate needs at 99% "
                      "confidence ({minimum}); the latency scenario collects them with --tail-percentiles (e.g. "
                      "--tail-percentiles 90,99).")


def not_estimable_note() -> str:
    return NOT_ESTIMABLE_NOTE.format(minimum=_min_samples_text())


#: (heading, percentile key) of the latency table's tail columns.
LATENCY_TAILS = (("p90 ms", "p90"), ("p99 ms", "p99"), ("p99.9 ms", "p99_9"))


def percentile_cell(result: CaseResult, key: str) -> float | NotEstimable | None:
    """A latency percentile for a table: its value in ms, ``n/e`` where measured without enough
    samples, None where not measured."""
    found = result.percentile(key)
    if found is None:
        flat = getattr(result, f"latency_{key}_ms", None)
        return None if flat is None else float(flat)
    value = found.get("value_ms")
    return NotEstimable(found.get("not_estimable")) if value is None else float(value)


def latency_table(latency: list[Row]) -> list[list[Any]]:
    """One line per latency case: the median of its rounds, each tail (or n/e), the rounds and why they stopped."""
    lines = []
    for r in sorted(latency, key=lambda r: (r.model, r.batch_size, r.side)):
        lines.append([r.case_id, r.median_ms, *(percentile_cell(r.result, key) for _, key in LATENCY_TAILS),
                      r.result.rounds, r.result.stop_reason])
    return lines


def int8_table(latency: list[Row]) -> list[dict[str, Any]]:
    """int8 against fp32 of the same backend, device, model and batch: speed-up, accuracy, size."""
    fp32 = {(r.model, r.backend, r.device, r.batch_size): r for r in latency if r.precision == "fp32"}
    found = []
    for r in latency:
        if not r.precision.startswith("int8"):
            continue
        base = fp32.get((r.model, r.backend, r.device, r.batch_size))
        if base is None:
            continue
        accuracy = r.result.accuracy or {}
        found.append({
            "case": r.case_id, "fp32_ms": base.median_ms, "int8_ms": r.median_ms,
            "speedup": base.median_ms / r.median_ms,
            "centered_cosine": accuracy.get("centered_cosine_worst"),
            "class_agreement": accuracy.get("class_agreement"),
            "fp32_size_mb": (base.result.model_size_bytes or 0) / 1e6 or None,
            "int8_size_mb": (r.result.model_size_bytes or 0) / 1e6 or None,
        })
    return found


def generation_table(generate: list[Row]) -> list[dict[str, Any]]:
    """Every generate case and sweep configuration: TTFT and tokens/s side by side."""
    found = []
    for r in sorted(generate, key=lambda r: (r.model, r.side)):
        share = (r.result.accuracy or {}).get("identical_share")
        prefix = (r.result.accuracy or {}).get("shortest_prefix")  # absent in records from before the prefix gate
        for config, f in (r.result.generate or {}).items():
            # inter-token latencies measured (p50) but too few of them for the p99: n/e
            itl_p99: float | NotEstimable | None = f.get("itl_p99_ms")
            if itl_p99 is None and f.get("itl_p50_ms") is not None:
                itl_p99 = NotEstimable()
            found.append({"case": r.case_id, "config": config, "ttft_ms": f.get("ttft_ms"),
                          "itl_p50_ms": f.get("itl_p50_ms"), "itl_p99_ms": itl_p99,
                          "decode_tokens_per_s": f.get("decode_tokens_per_s"),
                          "e2e_tokens_per_s": f.get("e2e_tokens_per_s"), "identical_tokens": share,
                          "shortest_prefix": prefix})
    return found


#: (heading, record field, scale) of the cold-start table: seconds, each phase apart.
COLD_START_COLUMNS = (("import s", "framework_import_s", 1.0), ("load s", "load_s", 1.0),
                      ("convert s", "convert_s", 1.0), ("quantize s", "quantize_s", 1.0),
                      ("compile s", "compile_s", 1.0), ("first inference s", "first_inference_s", 1.0),
                      ("total s", "cold_start_total_s", 1.0))
#: (heading, record field, scale) of the memory table: MB (10^6 bytes).
MEMORY_COLUMNS = (("host peak RSS added MB", "memory_host_peak_rss_added_bytes", 1e-6),
                  ("host peak RSS MB", "memory_host_peak_rss_bytes", 1e-6),
                  ("device peak MB", "memory_device_peak_bytes", 1e-6),
                  ("model size MB", "model_size_bytes", 1e-6))


def figure_table(chosen: list[Row], columns: Sequence[tuple[str, str, float]]) -> list[list[Any]]:
    """One line per case: the case id, then each column's field scaled (None where not measured)."""
    lines = []
    for r in sorted(chosen, key=lambda r: (r.model, r.batch_size, r.side)):
        values = [getattr(r.result, field) for _, field, _ in columns]
        lines.append([r.case_id, *(None if v is None else float(v) * scale
                                   for v, (_, _, scale) in zip(values, columns, strict=True))])
    return lines


def markdown_table(headers: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(cell(v) for v in line) + " |" for line in body)]




def serving_table(serve: list[Row]) -> list[dict[str, Any]]:
    """Every served case's load points: throughput, latency percentiles, goodput; the knee marked."""
    found = []
    for r in sorted(serve, key=lambda r: (r.model, r.side)):
        figures = r.result.serve or {}
        knee = figures.get("knee")
        for index, p in enumerate(figures.get("points") or []):
            point = f"concurrency {p['concurrency']}" if "concurrency" in p else f"rate {p.get('rate')}/s"
            found.append({"case": r.case_id, "model": r.model, "point": point, "knee": index == knee,
                          "request_throughput": p.get("request_throughput"),
                          "output_tokens_per_s": p.get("output_tokens_per_s"),
                          "ttft_p50_ms": (p.get("ttft_ms") or {}).get("p50"),
                          "ttft_p99_ms": (p.get("ttft_ms") or {}).get("p99"),
                          "tpot_p50_ms": (p.get("tpot_ms") or {}).get("p50"),
                          "tpot_p99_ms": (p.get("tpot_ms") or {}).get("p99"),
                          "e2e_p50_ms": (p.get("e2e_ms") or {}).get("p50"),
                          "goodput": p.get("goodput"), "requests": p.get("requests"),
                          "client_cpu_share": p.get("client_cpu_share")})
    return found


def served_beside_generate(serve: list[Row], generate: list[Row]) -> list[dict[str, Any]]:
    """Per generation model and precision: each in-process backend's generate figures (first
    sweep configuration) beside each server's at concurrency 1 — one request at a time, the
    comparable load — so what serving costs (HTTP, scheduling, detokenizing) shows."""
    found = []
    models = sorted({r.model for r in serve})
    for model in models:
        for r in sorted((g for g in generate if g.model == model), key=lambda g: g.side):
            found.append({"model": model, "how": f"in process: {r.backend}", "case": r.case_id,
                          "precision": r.precision, "ttft_ms": r.result.ttft_ms,
                          "per_token_ms": r.result.itl_p50_ms, "tokens_per_s": r.result.decode_tokens_per_s})
        for r in sorted((s for s in serve if s.model == model), key=lambda s: s.side):
            first = next((p for p in (r.result.serve or {}).get("points") or [] if p.get("concurrency") == 1), None)
            if first is None:
                continue
            tpot = (first.get("tpot_ms") or {}).get("p50")
            found.append({"model": model, "how": f"served: {r.backend}, 1 request in flight", "case": r.case_id,
                          "precision": r.precision, "ttft_ms": (first.get("ttft_ms") or {}).get("p50"),
                          "per_token_ms": tpot, "tokens_per_s": 1e3 / tpot if tpot else None})
    return found


def variant_table(latency: list[Row], throughput: list[Row]) -> list[dict[str, Any]]:
    """The variants' trade-off: every latency case of a model that has variants in this run,
    the original's own cases included (variant None), each beside the original's fp32 case of
    the same backend, device and batch — its speed-up over it, its size, and its agreement
    with the original: the case's own outputs (this backend, this precision) against the
    original's fp32 reference on the gate's inputs, so a QAT or pruned variant at int8 and
    the original at post-training int8 answer the same question. Beside them: the variant's
    fp32 torch module against the original on held-out inputs (``variant_*``), and the
    gate's figure (the case against its own model's fp32 reference)."""
    variants = [r for r in latency if r.result.variant]
    originals = {(r.result.variant or {}).get("of") for r in variants}
    chosen = variants + [r for r in latency if r.model in originals]
    original_fp32 = {(r.model, r.backend, r.device, r.batch_size): r for r in latency
                     if r.precision == "fp32" and not r.result.variant}
    best_throughput: dict[tuple[str, str, str, str], float] = {}
    for t in throughput:
        key = (t.model, t.backend, t.device, t.precision)
        if t.throughput is not None and t.throughput > best_throughput.get(key, 0.0):
            best_throughput[key] = t.throughput
    found = []
    for r in sorted(chosen, key=lambda r: (r.model, r.backend, r.device, r.precision, r.batch_size)):
        info = r.result.variant or {}
        of = info.get("of") or r.model
        base = original_fp32.get((of, r.backend, r.device, r.batch_size))
        module_agreement = info.get("agreement") or {}
        case_agreement = r.result.agreement_with_original or {}
        accuracy = r.result.accuracy or {}
        found.append({
            "case": r.case_id, "model": of, "variant": info.get("name"), "backend": r.backend, "device": r.device,
            "precision": r.precision, "batch_size": r.batch_size, "latency_ms": r.median_ms,
            "throughput_samples_per_s": best_throughput.get((r.model, r.backend, r.device, r.precision)),
            "original_fp32_ms": base.median_ms if base is not None else None,
            "speedup": base.median_ms / r.median_ms if base is not None and r.median_ms else None,
            "model_size_mb": (r.result.model_size_bytes or 0) / 1e6 or None,
            "parameters_m": info["parameters"] / 1e6 if "parameters" in info else None,
            "nonzero_parameters_m": info["nonzero_parameters"] / 1e6 if "nonzero_parameters" in info else None,
            "top1_agreement": case_agreement.get("top1_agreement"),
            "cosine_mean": case_agreement.get("cosine_mean"),
            "agreement_samples": case_agreement.get("samples"),
            "variant_top1_agreement": module_agreement.get("top1_agreement"),
            "variant_cosine_mean": module_agreement.get("cosine_mean"),
            "gate_centered_cosine": accuracy.get("centered_cosine_worst"),
        })
    return found
