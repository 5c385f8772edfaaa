"""``python -m infermatrix report RESULTS... [--baseline DIR] --out DIR``: what a team reads.

Merges the result JSON of every per-backend environment of one run (each a
pytest-benchmark file written with ``--benchmark-json``), judges it against the stored
baselines of its machine when asked, and writes:

- ``summary.md``: short enough for a CI job summary — the verdicts (regressions first),
  generation, cold-start and memory figures, failed cases and why, the machine;
- ``index.html``: one self-contained page (plots embedded as PNG data, no network needed):
  latency per model by backend and precision, a backend x backend speed-up heatmap per
  model, throughput against batch size, int8 against fp32 (speed-up, accuracy, size),
  trends over the stored history, cold start and memory per case, the full table (every
  scenario's result: each is read as an ``infermatrix.results.CaseResult``), and the
  machine and versions behind the numbers.

Exit status: 0, or 1 when a case regressed (so a nightly job fails), 2 for bad input.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infermatrix import baselines, verdicts
from infermatrix.results import CaseResult, RecordError


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
    machines = {baselines.fingerprint(run["machine_info"]): path for path, run in runs}
    if len(machines) > 1:
        raise ReportError("the result files come from different machines: "
                          + "; ".join(f"{p} ({m})" for m, p in machines.items())
                          + " — a report covers one machine's run")
    machine_info = json.loads(json.dumps(runs[0][1]["machine_info"]))
    merged_backends: dict[str, Any] = {}
    benchmarks: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
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
    machine_info.setdefault("infermatrix", {})["backends"] = merged_backends
    return {"machine_info": machine_info, "benchmarks": benchmarks, "infermatrix": {"failed": failed},
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


# ---- plots --------------------------------------------------------------------------------


#: One colour per precision on every plot, so a glance compares like with like.
PRECISION_COLORS = {"fp32": "tab:blue", "tf32": "tab:cyan", "bf16": "tab:orange", "fp16": "tab:red",
                    "int8": "tab:green", "int8-dynamic": "tab:olive", "int4": "tab:purple"}


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plot_latency(latency: list[Row]) -> list[tuple[str, str]]:
    """Per model (smallest batch): median latency per backend, one bar per precision."""
    import matplotlib.pyplot as plt
    import numpy as np

    plots = []
    for model in sorted({r.model for r in latency}):
        batch = min(r.batch_size for r in latency if r.model == model)
        chosen = [r for r in latency if r.model == model and r.batch_size == batch]
        backends = sorted({f"{r.backend}@{r.device}" for r in chosen})
        precisions = sorted({r.precision for r in chosen})
        figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(backends)), 3.6))
        width = 0.8 / len(precisions)
        for i, precision in enumerate(precisions):
            values = [next((r.median_ms for r in chosen if f"{r.backend}@{r.device}" == b and r.precision == precision),
                           np.nan) for b in backends]
            axes.bar(np.arange(len(backends)) + i * width, values, width, label=precision,
                     color=PRECISION_COLORS.get(precision, "tab:gray"))
        axes.set_xticks(np.arange(len(backends)) + width * (len(precisions) - 1) / 2, backends, rotation=30,
                        ha="right")
        axes.set_ylabel("median latency (ms)")
        axes.set_title(f"{model}, batch {batch}: latency by backend and precision (lower is better)")
        axes.legend(title="precision", fontsize="small")
        plots.append((f"Latency — {model} b{batch}", _png(figure)))
    return plots


def plot_speedup_heatmaps(latency: list[Row]) -> list[tuple[str, str]]:
    """Per model: how many times faster the column side is than the row side (same batch)."""
    import matplotlib.pyplot as plt
    import numpy as np

    plots = []
    for model in sorted({r.model for r in latency}):
        batch = min(r.batch_size for r in latency if r.model == model)
        sides = {r.side: r.median_ms for r in latency if r.model == model and r.batch_size == batch}
        if len(sides) < 2:
            continue
        names = sorted(sides, key=sides.__getitem__, reverse=True)
        matrix = np.array([[sides[row] / sides[col] for col in names] for row in names])
        figure, axes = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.6 * len(names)))
        image = axes.imshow(np.log2(matrix), cmap="RdYlGn", vmin=-3, vmax=3)
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="small")
        axes.set_yticks(range(len(names)), names, fontsize="small")
        for i in range(len(names)):
            for j in range(len(names)):
                axes.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
        axes.set_title(f"{model} b{batch}: speed-up of column over row (row latency / column latency)")
        figure.colorbar(image, ax=axes, label="log2 speed-up")
        plots.append((f"Speed-up heatmap — {model} b{batch}", _png(figure)))
    return plots


def plot_throughput(throughput: list[Row]) -> list[tuple[str, str]]:
    """Per model: best samples/s against batch size, one line per backend:precision."""
    import matplotlib.pyplot as plt

    plots = []
    for model in sorted({r.model for r in throughput}):
        chosen = [r for r in throughput if r.model == model and r.throughput]
        if not chosen:
            continue
        figure, axes = plt.subplots(figsize=(6.5, 3.6))
        for side in sorted({r.side for r in chosen}):
            points = sorted((r.batch_size, float(r.throughput or 0)) for r in chosen if r.side == side)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=side)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("batch size")
        axes.set_ylabel("samples / s (best configuration)")
        axes.set_title(f"{model}: throughput against batch size (higher is better)")
        axes.legend(fontsize="x-small", ncol=2)
        plots.append((f"Throughput — {model}", _png(figure)))
    return plots


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
            "cosine": accuracy.get("cosine_similarity"), "top1": accuracy.get("top1_agreement"),
            "fp32_size_mb": (base.result.model_size_bytes or 0) / 1e6 or None,
            "int8_size_mb": (r.result.model_size_bytes or 0) / 1e6 or None,
        })
    return found


def plot_int8(table: list[dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    if not table:
        return []
    figure, axes = plt.subplots(figsize=(max(6, 0.5 * len(table)), 3.6))
    axes.bar(range(len(table)), [t["speedup"] for t in table], color="tab:purple")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(table)), [t["case"] for t in table], rotation=45, ha="right", fontsize="x-small")
    axes.set_ylabel("fp32 latency / int8 latency")
    axes.set_title("int8 against fp32, same backend and batch (higher is better)")
    return [("int8 speed-up", _png(figure))]


def generation_table(generate: list[Row]) -> list[dict[str, Any]]:
    """Every generate case and sweep configuration: TTFT and tokens/s side by side."""
    found = []
    for r in sorted(generate, key=lambda r: (r.model, r.side)):
        share = (r.result.accuracy or {}).get("identical_share")
        for config, f in (r.result.generate or {}).items():
            found.append({"case": r.case_id, "config": config, "ttft_ms": f.get("ttft_ms"),
                          "itl_p50_ms": f.get("itl_p50_ms"), "itl_p99_ms": f.get("itl_p99_ms"),
                          "decode_tokens_per_s": f.get("decode_tokens_per_s"),
                          "e2e_tokens_per_s": f.get("e2e_tokens_per_s"), "identical_tokens": share})
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


def plot_generation(generate: list[Row]) -> list[tuple[str, str]]:
    """Per generation model (first sweep configuration): TTFT and decode tokens/s per side."""
    import matplotlib.pyplot as plt

    plots = []
    for model in sorted({r.model for r in generate}):
        chosen = sorted((r for r in generate if r.model == model), key=lambda r: r.side)
        if not chosen:
            continue
        names = [r.side for r in chosen]
        colors = [PRECISION_COLORS.get(r.precision, "tab:gray") for r in chosen]
        figure, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(names)), 3.6))
        left.bar(range(len(names)), [r.result.ttft_ms or 0 for r in chosen], color=colors)
        left.set_ylabel("time to first token (ms, lower is better)")
        right.bar(range(len(names)), [r.result.decode_tokens_per_s or 0 for r in chosen], color=colors)
        right.set_ylabel("decode tokens/s (higher is better)")
        for axes in (left, right):
            axes.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize="small")
        primary = chosen[0].result.generate_primary or ""
        figure.suptitle(f"{model} ({primary}, batch {chosen[0].batch_size}): generation by backend and precision")
        plots.append((f"Generation — {model}", _png(figure)))
    return plots


def plot_trends(history: list[dict[str, Any]], current: dict[str, Any]) -> list[tuple[str, str]]:
    """Per model: each latency case's median over the stored history and this run."""
    import matplotlib.pyplot as plt

    if not history:
        return []
    runs = [*history, current]
    per_case: dict[str, list[float | None]] = defaultdict(lambda: [None] * len(runs))
    models: dict[str, str] = {}
    for i, run in enumerate(runs):
        for r in rows(run):
            if r.scenario == "latency":
                per_case[r.case_id][i] = r.median_ms
                models[r.case_id] = r.model
    plots = []
    for model in sorted(set(models.values())):
        figure, axes = plt.subplots(figsize=(6.5, 3.6))
        for case_id in sorted(c for c, m in models.items() if m == model):
            values = per_case[case_id]
            axes.plot(range(len(runs)), [v if v is not None else float("nan") for v in values], marker=".",
                      label=case_id.removeprefix(f"{model}-"))
        axes.set_xticks(range(len(runs)), [*(f"#{i + 1}" for i in range(len(history))), "this run"],
                        fontsize="small")
        axes.set_yscale("log")
        axes.set_ylabel("median latency (ms)")
        axes.set_title(f"{model}: latency over the stored baselines and this run")
        axes.legend(fontsize="xx-small", ncol=2)
        plots.append((f"Trend — {model}", _png(figure)))
    return plots


# ---- writing -----------------------------------------------------------------------------


def machine_lines(run: dict[str, Any]) -> list[str]:
    info = run["machine_info"]
    im = info.get("infermatrix") or {}
    gpus = ", ".join(g.get("name", "?") for g in im.get("gpus") or []) or "none"
    lines = [
        f"CPU: {im.get('cpu_model', '?')} ({im.get('cpu_physical_cores', '?')} cores); GPU: {gpus}; "
        f"{im.get('os', info.get('system', '?'))} {im.get('arch', info.get('machine', ''))}; "
        f"Python {info.get('python_version', '?')}",
        f"machine fingerprint: {baselines.fingerprint(info)}",
    ]
    if im.get("isa") or im.get("cpu_family") is not None:
        lines.insert(1, isa_line(im))
    versions = [f"{name} {b.get('version') or '?'}" for name, b in sorted((im.get("backends") or {}).items())
                if b.get("available")]
    if versions:
        lines.append("backends: " + ", ".join(versions))
    return lines


def isa_line(im: dict[str, Any]) -> str:
    """The CPU's generation and the instruction sets its numbers depend on, said plainly
    ("no VNNI" matters as much as "AVX-512": it decides the int8 kernels)."""
    isa = im.get("isa") or {}
    caches = im.get("cpu_cache_bytes") or {}

    def has(label: str, *flags: str) -> str:
        return label if any(isa.get(f) for f in flags) else f"no {label}"

    parts = [has("AVX2", "avx2"), has("AVX-512", "avx512f"), has("VNNI", "avx512_vnni", "avx_vnni"),
             has("AMX", "amx_int8", "amx_bf16"), has("bf16", "avx512_bf16", "amx_bf16"),
             has("fp16", "avx512_fp16", "amx_fp16")]
    cap = isa.get("onednn_max_cpu_isa")
    cache_text = ", ".join(f"{name.upper()} {size // 1024} KiB" for name, size in sorted(caches.items()))
    return (f"CPU generation: {im.get('cpu_vendor') or '?'} family {im.get('cpu_family')} model "
            f"{im.get('cpu_model_number')} stepping {im.get('cpu_stepping')}; ISA: {', '.join(parts)}"
            f"{f' (oneDNN capped at {cap})' if cap else ''}{f'; caches: {cache_text}' if cache_text else ''}")


def verdict_lines(results: list[verdicts.Verdict]) -> list[str]:
    order = {"regressed": 0, "failed": 1, "improved": 2, "new": 3, "missing": 4, "unchanged": 5}
    ordered = sorted(results, key=lambda v: (order.get(v.verdict, 9), v.key))
    return verdicts.table(ordered).splitlines()


def write_summary(path: Path, run: dict[str, Any], table: list[Row], results: list[verdicts.Verdict] | None,
                  baseline_note: str) -> None:
    failed = run["infermatrix"]["failed"]
    regressed = [v for v in results or [] if v.verdict == "regressed"]
    lines = ["# infermatrix report", ""]
    head = f"{len({r.case_id for r in table})} case(s) timed, {len(failed)} failed"
    if results is not None:
        head += f", {len(regressed)} regressed"
    lines += [f"**{head}** — run of {run.get('datetime') or 'unknown time'}", ""]
    lines += ["## Verdicts", ""]
    if results is None:
        lines += [baseline_note, ""]
    else:
        lines += [baseline_note, "", *verdict_lines(results), ""]
    generation = generation_table([r for r in table if r.scenario == "generate"])
    if generation:
        lines += ["## Generation", "",
                  "| case | prompt / new | TTFT ms | decode tok/s | e2e tok/s | identical tokens |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g['case']} | {g['config']} | {g['ttft_ms']:.2f} | {g['decode_tokens_per_s'] or 0:.0f} | "
                  f"{g['e2e_tokens_per_s']:.0f} | {g['identical_tokens']:.3f} |" for g in generation]
        lines.append("")
    for title, scenario, columns in (("Cold start", "cold-start", COLD_START_COLUMNS),
                                     ("Memory", "memory", MEMORY_COLUMNS)):
        chosen = [r for r in table if r.scenario == scenario]
        if chosen:
            lines += [f"## {title}", "",
                      *markdown_table(["case", *(c[0] for c in columns)], figure_table(chosen, columns)), ""]
    if failed:
        lines += ["## Failed cases", ""]
        for name, reason in sorted(failed.items()):
            first = next((line for line in reason.splitlines() if line.strip()), reason)[:300]
            lines.append(f"- `{name}`: {first}")
        lines.append("")
    lines += ["## Machine", "", *(f"- {line}" for line in machine_lines(run)), ""]
    lines += ["The full page with plots is `index.html` (an artifact of this job).", ""]
    path.write_text("\n".join(lines))


def _table_html(headers: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee;margin:.5em 0}h2{border-bottom:1px solid #ddd}
.regressed{color:#b00;font-weight:bold}pre{background:#f7f7f7;padding:1em;overflow-x:auto}"""


#: Marks on <body> how many plots a browser decoded (checked by the test that renders the page).
IMAGE_CHECK = ("window.addEventListener('load',function(){var i=[].slice.call(document.images);"
               "document.body.dataset.imagesDecoded=i.filter(function(x){return x.complete&&x.naturalWidth>0})"
               ".length+'/'+i.length;});")


def write_html(path: Path, run: dict[str, Any], table: list[Row], results: list[verdicts.Verdict] | None,
               baseline_note: str, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    latency = [r for r in table if r.scenario == "latency"]
    throughput = [r for r in table if r.scenario == "throughput"]
    generate = [r for r in table if r.scenario == "generate"]
    int8 = int8_table(latency)
    sections: list[str] = []
    sections.append("<h2>Verdicts</h2><p>" + html.escape(baseline_note) + "</p>")
    if results is not None:
        sections.append("<pre>" + html.escape("\n".join(verdict_lines(results))) + "</pre>")
    failed = run["infermatrix"]["failed"]
    if failed:
        first_lines = [(n, r.strip().splitlines()[0][:400] if r.strip() else r) for n, r in sorted(failed.items())]
        sections.append("<h2>Failed cases</h2>" + _table_html(["test", "reason"], first_lines))
    figures = (("Latency", plot_latency(latency)), ("Speed-up between backends", plot_speedup_heatmaps(latency)),
               ("Throughput against batch size", plot_throughput(throughput)), ("int8 against fp32", plot_int8(int8)),
               ("Generation: time to first token and tokens/s", plot_generation(generate)),
               ("Trends", plot_trends(history, run)))
    for title, plots in figures:
        if not plots:
            continue
        sections.append(f"<h2>{html.escape(title)}</h2>")
        sections += [f'<figure><img alt="{html.escape(t)}" src="{src}"><figcaption>{html.escape(t)}</figcaption>'
                     "</figure>" for t, src in plots]
        if title.startswith("Generation"):
            sections.append(_table_html(
                ["case", "prompt / new tokens", "TTFT ms", "ITL p50 ms", "ITL p99 ms", "decode tok/s", "e2e tok/s",
                 "identical tokens"],
                [(g["case"], g["config"], g["ttft_ms"], g["itl_p50_ms"], g["itl_p99_ms"], g["decode_tokens_per_s"],
                  g["e2e_tokens_per_s"], g["identical_tokens"]) for g in generation_table(generate)]))
        if title == "int8 against fp32":
            sections.append(_table_html(
                ["case", "fp32 ms", "int8 ms", "speed-up", "cosine", "top-1", "fp32 MB", "int8 MB"],
                [(t["case"], t["fp32_ms"], t["int8_ms"], t["speedup"], t["cosine"], t["top1"], t["fp32_size_mb"],
                  t["int8_size_mb"]) for t in int8]))
    for title, scenario, columns in (("Cold start", "cold-start", COLD_START_COLUMNS),
                                     ("Memory", "memory", MEMORY_COLUMNS)):
        chosen = [r for r in table if r.scenario == scenario]
        if chosen:
            sections.append(f"<h2>{title}</h2>" + _table_html(["case", *(c[0] for c in columns)],
                                                               figure_table(chosen, columns)))
    sections.append("<h2>All results</h2>" + _table_html(
        ["scenario", "case", "median ms", "samples/s", "accuracy (rel. L2 / cosine)", "config"],
        [(r.scenario, r.case_id, r.median_ms, r.throughput,
          f"{(r.result.accuracy or {}).get('rel_l2_error', float('nan')):.2g} / "
          f"{(r.result.accuracy or {}).get('cosine_similarity', float('nan')):.6f}",
          ", ".join(f"{k}={v}" for k, v in sorted((r.result.backend_config or {}).items()))[:300])
         for r in sorted(table, key=lambda r: (r.model, r.batch_size, r.scenario, r.median_ms))]))
    im = run["machine_info"].get("infermatrix") or {}
    sections.append("<h2>Machine and versions</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>"
                                                                   for x in machine_lines(run)) + "</ul>")
    sections.append("<p>CPU flags: " + html.escape(" ".join(sorted(im.get("cpu_flags") or []))) + "</p>")
    sections.append(_table_html(["backend", "version", "available", "reason"], [
        (name, b.get("version"), b.get("available"), b.get("reason")) for name, b in
        sorted((im.get("backends") or {}).items())]))
    sections.append("<p>Sources: " + html.escape(", ".join(run.get("sources") or [])) + "</p>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>infermatrix report</title>"
            f"<style>{STYLE}</style><script>{IMAGE_CHECK}</script></head><body><h1>infermatrix report</h1>"
            f"<p>{len({r.case_id for r in table})} case(s) timed, {len(failed)} failed — run of "
            f"{html.escape(str(run.get('datetime') or '?'))}</p>{''.join(sections)}</body></html>")
    path.write_text(page)


def result_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a directory stands for the ``*.json`` files in it (tox passes no globs)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(path.glob("*.json"))
            if not inside:
                raise ReportError(f"{path}: no result files (*.json) in this directory")
            found += inside
        else:
            found.append(path)
    return found


def build(paths: Sequence[Path], out: Path, baseline_dir: Path | None) -> int:
    run = merge_runs(result_files(paths))
    table = rows(run)
    results: list[verdicts.Verdict] | None = None
    history: list[dict[str, Any]] = []
    machine = baselines.fingerprint(run["machine_info"])
    if baseline_dir is None:
        note = "No baselines given (--baseline DIR): nothing judged."
    else:
        history = baselines.load_history(baseline_dir, machine)
        if history:
            results = verdicts.judge(history, run)
            changes = baselines.version_changes(history[-1], run)
            note = (f"Against {len(history)} stored run(s) of machine {machine} in {baseline_dir}."
                    + (f" Versions differ from the newest baseline: {'; '.join(changes)}." if changes else ""))
        else:
            note = (f"No baseline for machine {machine} in {baseline_dir}: nothing judged "
                    "(accept one with python -m infermatrix accept RESULT.json).")
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out / "summary.md", run, table, results, note)
    write_html(out / "index.html", run, table, results, note, history)
    return 1 if any(v.verdict == "regressed" for v in results or []) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="result JSON files of one run (--benchmark-json)")
    parser.add_argument("--baseline", type=Path, default=None, help="baselines directory to judge against")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.md and index.html")
    args = parser.parse_args(argv)
    try:
        status = build(args.results, args.out, args.baseline)
    except (ReportError, baselines.BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'index.html'}")
    return status
