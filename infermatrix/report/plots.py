"""The report's plots (matplotlib, embedded as PNG data): latency, speed-ups, throughput, int8, generation, trends."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from typing import Any

from infermatrix.report.data import Row, rows

# ---- plots --------------------------------------------------------------------------------


#: One colour per precision on every plot, so a glance compares like with like.
PRECISION_COLORS = {"fp32": "tab:blue", "tf32": "tab:cyan", "bf16": "tab:orange", "fp16": "tab:red",
                    "int8": "tab:green", "int8-dynamic": "tab:olive",
                    "int8-weight-only": "tab:brown", "int4-weight-only": "tab:purple"}


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




def plot_serving(serve: list[Row], generate: list[Row]) -> list[tuple[str, str]]:
    """Per generation model: latency against throughput, one curve per served case over its
    concurrency points (the knee ringed), Poisson-rate points as crosses; the in-process
    backends' per-token latency at batch 1 as dashed lines for comparison."""
    import matplotlib.pyplot as plt

    plots = []
    for model in sorted({r.model for r in serve}):
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for r in sorted((s for s in serve if s.model == model), key=lambda s: s.side):
            figures = r.result.serve or {}
            points = figures.get("points") or []
            for axes, key in ((left, "tpot_ms"), (right, "ttft_ms")):
                curve = [p for p in points if "concurrency" in p and (p.get(key) or {}).get("p50") is not None]
                line = axes.plot([p["output_tokens_per_s"] for p in curve], [p[key]["p50"] for p in curve],
                                 marker="o", label=r.side)[0]
                for p in curve:
                    axes.annotate(str(p["concurrency"]), (p["output_tokens_per_s"], p[key]["p50"]),
                                  fontsize="x-small", textcoords="offset points", xytext=(3, 3))
                knee = figures.get("knee")
                if knee is not None and knee < len(points) and (points[knee].get(key) or {}).get("p50") is not None:
                    axes.scatter([points[knee]["output_tokens_per_s"]], [points[knee][key]["p50"]], s=160,
                                 facecolors="none", edgecolors=line.get_color(), linewidths=1.5)
                rated = [p for p in points if "rate" in p and (p.get(key) or {}).get("p50") is not None]
                if rated:
                    axes.scatter([p["output_tokens_per_s"] for p in rated], [p[key]["p50"] for p in rated],
                                 marker="x", color=line.get_color())
        for g in sorted((g for g in generate if g.model == model and g.result.itl_p50_ms), key=lambda g: g.side):
            left.axhline(g.result.itl_p50_ms or 0, linestyle="--", linewidth=0.8, color="gray")
            left.annotate(f"in process: {g.side}", (0, g.result.itl_p50_ms or 0), fontsize="xx-small",
                          color="gray", xycoords=("axes fraction", "data"))
        left.set_ylabel("time per output token p50 (ms)")
        right.set_ylabel("time to first token p50 (ms)")
        for axes in (left, right):
            axes.set_xlabel("output tokens/s (all requests)")
            axes.legend(fontsize="x-small")
        figure.suptitle(f"{model}: served latency against throughput (numbers: requests in flight; ring: knee)")
        plots.append((f"Serving — {model}", _png(figure)))
    return plots


def plot_variants(table: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Per original model: speed-up over its fp32 case on the same backend against the case's
    agreement with the original's fp32 outputs (top-1, else centered cosine); one marker shape
    per backend, labelled variant/precision. The originals' own reduced precisions are points
    too: post-training int8 beside QAT and prune-then-quantize."""
    import matplotlib.pyplot as plt

    plots = []
    markers = "osD^v<>pP*X"
    for model in sorted({t["model"] for t in table if t["variant"]}):
        chosen = [t for t in table if t["model"] == model and t["speedup"] is not None
                  and (t["top1_agreement"] is not None or t["cosine_mean"] is not None)]
        if not chosen:
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        backends = sorted({t["backend"] for t in chosen})
        for index, backend in enumerate(backends):
            mine = [t for t in chosen if t["backend"] == backend]
            xs = [t["top1_agreement"] if t["top1_agreement"] is not None else t["cosine_mean"] for t in mine]
            axes.scatter(xs, [t["speedup"] for t in mine], marker=markers[index % len(markers)], label=backend,
                         c=[PRECISION_COLORS.get(t["precision"], "tab:gray") for t in mine])
            for x, t in zip(xs, mine, strict=True):
                axes.annotate(f"{t['variant'] or 'original'}/{t['precision']}/b{t['batch_size']}",
                              (x, t["speedup"]), fontsize="xx-small", textcoords="offset points", xytext=(3, 2))
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_xlabel("agreement with the original (top-1; centered cosine where no classes)")
        axes.set_ylabel("speed-up over the original's fp32, same backend and batch")
        axes.set_title(f"{model}: variants — speed against agreement (colour: precision)")
        axes.legend(fontsize="x-small")
        plots.append((f"Variants — {model}", _png(figure)))
    return plots
