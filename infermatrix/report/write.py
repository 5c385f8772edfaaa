"""Writing the report (``python -m infermatrix report RESULTS... [--baseline DIR] --out DIR``): what a team reads.

Merges the result JSON of every per-backend environment of one run (each a
pytest-benchmark file written with ``--benchmark-json``), judges it against the stored
baselines of its machine when asked, and writes:

- ``summary.md``: short enough for a CI job summary — the verdicts (groups first, then cases,
  regressions first, each row with the mode that judged it and its detectable change),
  generation, cold-start and memory figures, failed cases and why, the machine and its
  reference probe;
- ``index.html``: one self-contained page (plots embedded as PNG data, no network needed):
  latency per model by backend and precision, a backend x backend speed-up heatmap per
  model, throughput against batch size, int8 against fp32 (speed-up, accuracy, size),
  trends over the stored history, cold start and memory per case, the full table (every
  scenario's result: each is read as an ``infermatrix.results.CaseResult``), and the
  machine and versions behind the numbers.

Exit status (``build``): 0; 1 when a case or group regressed or a case failed — judged or not:
a failed case is a regression (docs/verdicts.md) — so a nightly job fails; 2 for bad input.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from infermatrix.cache import atomic_write_json
from infermatrix.nightly.paired import PairedOutcome, judged, judged_table
from infermatrix.report.data import (
    COLD_START_COLUMNS,
    LATENCY_TAILS,
    MEMORY_COLUMNS,
    NotEstimable,
    ReportError,
    Row,
    figure_table,
    generation_table,
    int8_table,
    latency_table,
    markdown_table,
    merge_runs,
    not_estimable_note,
    rows,
    served_beside_generate,
    serving_table,
    variant_table,
)
from infermatrix.report.plots import (
    plot_generation,
    plot_int8,
    plot_latency,
    plot_serving,
    plot_speedup_heatmaps,
    plot_throughput,
    plot_trends,
    plot_variants,
)
from infermatrix.results import baselines, verdicts

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
    lines += probe_lines(run)
    return lines


def probe_lines(run: dict[str, Any]) -> list[str]:
    """The reference probe of each environment's run: what it was (numpy, BLAS, threads) and its cost."""
    found = []
    for probe in (run.get("infermatrix") or {}).get("probes") or []:
        where = Path(str(probe.get("source", ""))).name
        if not probe.get("enabled", False):
            found.append(f"reference probe ({where}): off ({probe.get('why', 'not recorded')})")
            continue
        identity = probe.get("identity") or {}
        blas = identity.get("blas") or {}
        loaded: dict[str, Any] = next(iter(identity.get("blas_loaded") or []), {})
        found.append(
            f"reference probe ({where}): numpy {identity.get('numpy', '?')}, {blas.get('name', 'BLAS')} "
            f"{blas.get('version', '')} {loaded.get('architecture') or ''}".rstrip()
            + f", {identity.get('threads', '?')} thread(s); {probe.get('readings', 0)} readings, "
            f"{probe.get('seconds', 0):.2f} s in all ({probe.get('per_reading_ms') or 0:.0f} ms each)")
    return found


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


def verdict_lines(results: verdicts.Summary) -> list[str]:
    """Groups first, then cases; each regressions first (``Summary.table``)."""
    return results.table().splitlines()


def write_summary(path: Path, run: dict[str, Any], table: list[Row], results: verdicts.Summary | None,
                  baseline_note: str) -> None:
    failed = run["infermatrix"]["failed"]
    lines = ["# infermatrix report", ""]
    head = f"{len({r.case_id for r in table})} case(s) timed, {len(failed)} failed"
    if results is not None:
        head += f", {len(results.regressed)} regressed"
        if results.groups:
            head += f", {len(results.regressed_groups)} of {len(results.groups)} group(s) regressed"
    lines += [f"**{head}** — run of {run.get('datetime') or 'unknown time'}", ""]
    lines += ["## Verdicts", ""]
    if results is None:
        lines += [baseline_note, ""]
    else:
        lines += [baseline_note, "", *verdict_lines(results), ""]
    generation = generation_table([r for r in table if r.scenario == "generate"])
    if generation:
        lines += ["## Generation", "",
                  "| case | prompt / new | TTFT ms | decode tok/s | e2e tok/s | identical tokens | shortest prefix |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {g['case']} | {g['config']} | {g['ttft_ms']:.2f} | {g['decode_tokens_per_s'] or 0:.0f} | "
                  f"{g['e2e_tokens_per_s']:.0f} | {_figure(g['identical_tokens'], '.3f')} | "
                  f"{_figure(g['shortest_prefix'], 'd')} |" for g in generation]
        lines.append("")
    lines += serving_lines([r for r in table if r.scenario == "serve"], [r for r in table if r.scenario == "generate"])
    variant_rows = variant_table([r for r in table if r.scenario == "latency"],
                                 [r for r in table if r.scenario == "throughput"])
    if variant_rows:
        lines += ["## Variants", "", "Speed-up: over the original's fp32 case on the same backend and batch. "
                  "Top-1 and cosine vs original: this case's outputs (its backend, its precision) against the "
                  "original's fp32 reference on the gate's inputs, centered — so a variant at int8 and the "
                  "original at post-training int8 answer the same question. Variant fp32 cosine: the variant's "
                  "torch module against the original on held-out inputs. Gate: the case against its own "
                  "model's fp32 reference.", "",
                  *markdown_table(VARIANT_HEADERS, variant_cells(variant_rows)), ""]
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


def accuracy_cell(accuracy: Mapping[str, Any]) -> str:
    """The judged figures of a forward case (records older than the centered gate have only the first)."""
    rel, worst = accuracy.get("rel_l2_error"), accuracy.get("centered_cosine_worst")
    if rel is None:
        return ""
    return f"{rel:.2g} / {worst:.4f}" if worst is not None else f"{rel:.2g}"


def _figure(value: Any, spec: str) -> str:
    """A figure for a Markdown cell; a dash where the record has none."""
    return "–" if value is None else format(value, spec)


def _table_html(headers: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A table; an ``n/e`` cell carries why in its tooltip, and the table is followed by the
    footnote that says what ``n/e`` means."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"<td>{v:.4g}</td>"
        if isinstance(v, NotEstimable) and v.why:
            return f'<td class="ne" title="{html.escape(v.why)}">{html.escape(str(v))}</td>'
        return f"<td>{html.escape('' if v is None else str(v))}</td>"

    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for row in body:
        out.append("<tr>" + "".join(cell(v) for v in row) + "</tr>")
    out.append("</tbody></table>")
    if any(isinstance(v, NotEstimable) for row in body for v in row):
        out.append(f'<p class="note">{html.escape(not_estimable_note())}</p>')
    return "".join(out)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee;margin:.5em 0}h2{border-bottom:1px solid #ddd}
.regressed{color:#b00;font-weight:bold}.ne{color:#777}.note{font-size:12px;color:#555}pre{background:#f7f7f7;padding:1em;overflow-x:auto}"""


#: Marks on <body> how many plots a browser decoded (checked by the test that renders the page).
IMAGE_CHECK = ("window.addEventListener('load',function(){var i=[].slice.call(document.images);"
               "document.body.dataset.imagesDecoded=i.filter(function(x){return x.complete&&x.naturalWidth>0})"
               ".length+'/'+i.length;});")


def write_html(path: Path, run: dict[str, Any], table: list[Row], results: verdicts.Summary | None,
               baseline_note: str, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    latency = [r for r in table if r.scenario == "latency"]
    throughput = [r for r in table if r.scenario == "throughput"]
    generate = [r for r in table if r.scenario == "generate"]
    serve = [r for r in table if r.scenario == "serve"]
    int8 = int8_table(latency)
    variant_rows = variant_table(latency, throughput)
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
               ("Serving: latency against throughput", plot_serving(serve, generate)),
               ("Variants: speed against agreement", plot_variants(variant_rows)),
               ("Trends", plot_trends(history, run)))
    for title, plots in figures:
        if not plots:
            continue
        sections.append(f"<h2>{html.escape(title)}</h2>")
        sections += [f'<figure><img alt="{html.escape(t)}" src="{src}"><figcaption>{html.escape(t)}</figcaption>'
                     "</figure>" for t, src in plots]
        if title == "Latency":
            sections.append(_table_html(["case", "median ms", *(h for h, _ in LATENCY_TAILS), "rounds", "stopped"],
                                        latency_table(latency)))
        if title.startswith("Generation"):
            sections.append(_table_html(
                ["case", "prompt / new tokens", "TTFT ms", "ITL p50 ms", "ITL p99 ms", "decode tok/s", "e2e tok/s",
                 "identical tokens", "shortest prefix"],
                [(g["case"], g["config"], g["ttft_ms"], g["itl_p50_ms"], g["itl_p99_ms"], g["decode_tokens_per_s"],
                  g["e2e_tokens_per_s"], g["identical_tokens"], g["shortest_prefix"])
                 for g in generation_table(generate)]))
        if title.startswith("Serving"):
            sections.append(_table_html(list(SERVING_HEADERS), serving_cells(serve)))
            sections.append(_table_html(list(BESIDE_HEADERS), beside_cells(serve, generate)))
        if title.startswith("Variants"):
            sections.append(_table_html(list(VARIANT_HEADERS), variant_cells(variant_rows)))
        if title == "int8 against fp32":
            sections.append(_table_html(
                ["case", "fp32 ms", "int8 ms", "speed-up", "centered cosine (worst sample)", "top-5 class agreement",
                 "fp32 MB", "int8 MB"],
                [(t["case"], t["fp32_ms"], t["int8_ms"], t["speedup"], t["centered_cosine"], t["class_agreement"],
                  t["fp32_size_mb"],
                  t["int8_size_mb"]) for t in int8]))
    for title, scenario, columns in (("Cold start", "cold-start", COLD_START_COLUMNS),
                                     ("Memory", "memory", MEMORY_COLUMNS)):
        chosen = [r for r in table if r.scenario == scenario]
        if chosen:
            sections.append(f"<h2>{title}</h2>" + _table_html(["case", *(c[0] for c in columns)],
                                                               figure_table(chosen, columns)))
    sections.append("<h2>All results</h2>" + _table_html(
        ["scenario", "case", "median ms", "samples/s", "accuracy (rel. L2 / centered cosine, worst sample)", "config"],
        [(r.scenario, r.case_id, r.median_ms, r.throughput, accuracy_cell(r.result.accuracy or {}),
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


def build(paths: Sequence[Path], out: Path, baseline_dir: Path | None, paired: PairedOutcome | None = None) -> int:
    """Write summary.md and index.html (with the paired verdicts when given); the exit status (see the module)."""
    run = merge_runs(result_files(paths))
    table = rows(run)
    results: verdicts.Summary | None = None
    history: list[dict[str, Any]] = []
    machine = baselines.fingerprint(run["machine_info"])
    if baseline_dir is None:
        note = "No baselines given (--baseline DIR): nothing judged."
    else:
        history = baselines.load_history(baseline_dir, machine)
        if history:
            results = verdicts.assess(history, run)
            changes = baselines.version_changes(history[-1], run)
            note = (f"Against {len(history)} stored run(s) of machine {machine} in {baseline_dir}."
                    + (f" Versions differ from the newest baseline: {'; '.join(changes)}." if changes else ""))
        else:
            note = (f"No baseline for machine {machine} in {baseline_dir}: nothing judged "
                    "(accept one with python -m infermatrix accept RESULT.json).")
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out / "summary.md", run, table, results, note)
    write_html(out / "index.html", run, table, results, note, history)
    variant_rows = variant_table([r for r in table if r.scenario == "latency"],
                                 [r for r in table if r.scenario == "throughput"])
    if variant_rows:  # the trade-off table for other tools, beside the pages
        atomic_write_json(out / "variants.json", variant_rows)
    status = exit_status(run, results)
    if paired is not None:
        history_verdicts = list(results.cases) if results is not None else []
        add_paired_section(out, paired, history_verdicts)
        if any(j.verdict.verdict == "regressed" for j in judged(history_verdicts, paired)):
            status = 1
    return status


def add_paired_section(out: Path, paired: PairedOutcome, history_verdicts: list[verdicts.Verdict]) -> None:
    """The paired verdicts beside the history ones: every case with the mode that judged it
    (infermatrix.nightly.paired), then the paired comparison's own table and notes."""
    lines = ["## Verdicts by the mode that judged each case", "",
             "Paired: timed interleaved against a re-creation of the accepted baseline's environment; "
             "history: against the stored runs (above).", "",
             *judged_table(judged(history_verdicts, paired)), "", "## Paired mode", "", *paired.lines(), ""]
    rows = judged(history_verdicts, paired)
    regressed = sum(j.verdict.verdict == "regressed" for j in rows)
    head = (f"**By the mode that judged each case: {regressed} regressed** ({len(paired.verdicts)} judged in paired "
            f"mode, {len(rows) - len(paired.verdicts)} in history mode; table below)")
    summary = (out / "summary.md").read_text().splitlines()
    first = next((i for i, line in enumerate(summary) if line.startswith("**")), 1)
    summary[first + 1:first + 1] = ["", head]
    (out / "summary.md").write_text("\n".join([*summary, "", *lines]))
    page = (out / "index.html").read_text()
    section = ("<h2>Verdicts by the mode that judged each case</h2><pre>"
               + html.escape("\n".join(lines[4:])) + "</pre>")
    page = page.replace("</body></html>", section + "</body></html>", 1)
    page = page.replace("<h1>infermatrix report</h1>", "<h1>infermatrix report</h1><p><b>"
                        + html.escape(head.replace("**", "")) + "</b></p>", 1)
    (out / "index.html").write_text(page)


def exit_status(run: dict[str, Any], results: verdicts.Summary | None) -> int:
    """1 when a case or group regressed or a case failed (judged against baselines or not), else 0."""
    if run["infermatrix"]["failed"]:
        return 1
    return results.exit_status() if results is not None else 0


SERVING_HEADERS = ("case", "load point", "req/s", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms",
                   "TPOT p99 ms", "E2E p50 ms", "goodput req/s", "client CPU share")
BESIDE_HEADERS = ("model", "how", "case", "TTFT ms", "per token ms (p50)", "tokens/s")


VARIANT_HEADERS = ("case", "variant", "precision", "latency ms", "samples/s", "speed-up", "size MB", "params M",
                   "non-zero M", "top-1 vs original", "cosine vs original", "variant fp32 cosine",
                   "gate cosine (worst)")


def variant_cells(table: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(t["case"], t["variant"] or "original", t["precision"], t["latency_ms"], t["throughput_samples_per_s"],
             t["speedup"], t["model_size_mb"], t["parameters_m"], t["nonzero_parameters_m"], t["top1_agreement"],
             t["cosine_mean"], t["variant_cosine_mean"], t["gate_centered_cosine"]) for t in table]


def serving_cells(serve: list[Row]) -> list[tuple[Any, ...]]:
    return [(t["case"], t["point"] + (" (knee)" if t["knee"] else ""), t["request_throughput"],
             t["output_tokens_per_s"], t["ttft_p50_ms"], t["ttft_p99_ms"], t["tpot_p50_ms"], t["tpot_p99_ms"],
             t["e2e_p50_ms"], t["goodput"], t["client_cpu_share"]) for t in serving_table(serve)]


def beside_cells(serve: list[Row], generate: list[Row]) -> list[tuple[Any, ...]]:
    return [(b["model"], b["how"], b["case"], b["ttft_ms"], b["per_token_ms"], b["tokens_per_s"])
            for b in served_beside_generate(serve, generate)]


def serving_lines(serve: list[Row], generate: list[Row]) -> list[str]:
    """The serving section of summary.md: every load point, then served beside in-process."""
    if not serve:
        return []

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else ("–" if value is None else str(value))

    lines = ["## Serving", "", "| " + " | ".join(SERVING_HEADERS) + " |", "|" + "---|" * len(SERVING_HEADERS)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in serving_cells(serve)]
    beside = beside_cells(serve, generate)
    if beside:
        lines += ["", "| " + " | ".join(BESIDE_HEADERS) + " |", "|" + "---|" * len(BESIDE_HEADERS)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in beside]
    return [*lines, ""]
