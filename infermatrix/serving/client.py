"""An asynchronous streaming load generator for OpenAI-compatible completion servers.

Built on aiohttp (the client vLLM's own ``vllm bench serve`` uses, so the two measure the
same way). Each request streams (``"stream": true``, server-sent events); the client
stamps every event that carries generated text or tokens with ``time.perf_counter()``:

- **TTFT**: request sent -> first generated event;
- **ITL** (inter-token latency): between consecutive generated events;
- **TPOT** (time per output token): ``(e2e - TTFT) / (output tokens - 1)`` per request;
- **E2E**: request sent -> last generated event.

These are vLLM's definitions (``vllm/benchmarks/serve.py``), kept so the figures can be
compared with its benchmark (docs/measurements.md).

Two ways of loading a server, each a *load point*:

- **concurrency C** (closed loop): C requests in flight; each finished request is
  replaced by the next, until the load point's requests are done;
- **rate R** (open loop): requests arrive as a Poisson process of R per second (seeded
  exponential gaps), however many are in flight.

Before every load point ``warmup`` requests run the same way and are never counted.
Per load point: p50/p90/p99 and mean of each latency, request throughput, output tokens/s
and **goodput** (requests per second that met every SLO of ``--slo``). The client's own
CPU time is measured at every load point (``time.process_time``): on a small machine the
client competes with the server for cores, and the record says how much.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: the percentiles every latency is reported at
PERCENTILES = (50, 90, 99)


class SloError(ValueError):
    """A malformed ``--slo``; the message says what is expected."""


@dataclasses.dataclass(frozen=True)
class Slo:
    """Service-level objectives a request must meet to count toward goodput (milliseconds)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> Slo:
        """``"ttft=200,tpot=50"`` (milliseconds; any of ttft, tpot, e2e)."""
        if not text:
            return cls()
        values: dict[str, float] = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            name = name.strip().lower()
            if name not in ("ttft", "tpot", "e2e"):
                raise SloError(f"--slo {text!r}: {name!r} is not one of ttft, tpot, e2e (e.g. --slo ttft=200,tpot=50)")
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not number > 0:
                raise SloError(f"--slo {text!r}: {name}={value!r} is not a positive number of milliseconds")
            values[f"{name}_ms"] = number
        return cls(**values)

    def met(self, result: RequestResult) -> bool:
        if not result.success:
            return False
        checks = ((self.ttft_ms, result.ttft_s), (self.tpot_ms, result.tpot_s), (self.e2e_ms, result.e2e_s))
        return all(limit is None or (value is not None and value * 1e3 <= limit) for limit, value in checks)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Request:
    """One completion request: a prompt (token ids) and how many tokens to generate.

    ``text``: the prompt sent as text instead of token ids (the server tokenizes it), as
    ``vllm bench serve``'s datasets send theirs — the server's tokenizing is then part of
    every TTFT (see :func:`as_text`)."""

    prompt: tuple[int, ...]
    output_tokens: int
    text: str | None = None


@dataclasses.dataclass
class RequestResult:
    """What the client saw of one request."""

    success: bool
    prompt_tokens: int
    start_s: float = 0.0  # perf_counter when sent
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = dataclasses.field(default_factory=list)
    #: output tokens as the server's usage says (else the token ids or events counted)
    output_tokens: int = 0
    token_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where requests go and what every request carries besides the prompt."""

    base_url: str
    model: str
    #: fields added to every request body (``{"ignore_eos": true}`` makes vLLM generate exactly
    #: ``max_tokens``; a server that rejects unknown fields needs ``{}``)
    extra_body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: ask for the generated token ids (vLLM's ``return_token_ids``) for the token check
    token_ids: bool = True
    #: 0: greedy, as the token check needs and the serve scenario times; None: the server's
    #: default sampling (the field left out), as ``vllm bench serve`` sends without ``--temperature``
    temperature: float | None = 0.0

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/completions"


async def complete(session: Any, endpoint: Endpoint, request: Request) -> RequestResult:
    """Send one streaming completion and stamp its events."""
    import aiohttp

    body = {"model": endpoint.model,
            "prompt": list(request.prompt) if request.text is None else request.text,
            "max_tokens": request.output_tokens,
            **({} if endpoint.temperature is None else {"temperature": endpoint.temperature}),
            "stream": True, "stream_options": {"include_usage": True},
            **({"return_token_ids": True} if endpoint.token_ids else {}), **endpoint.extra_body}
    result = RequestResult(False, len(request.prompt))
    events = 0
    start = last = time.perf_counter()
    result.start_s = start
    try:
        async with session.post(endpoint.completions_url, json=body) as response:
            if response.status != 200:
                text = await response.text()
                result.error = f"HTTP {response.status}: {text[:300]}"
                return result
            # Read to the end of the body, [DONE] included: leaving early makes aiohttp close the
            # connection (an unread body cannot be reused), so the next request pays a new
            # connection and the server sees a disconnect. Chunks are split into lines here
            # because one read may hold several events or part of one.
            pending = b""
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, ":" comments (pings), other SSE fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        continue
                    message = json.loads(data)
                    choices = message.get("choices") or []
                    if choices:
                        choice = choices[0]
                        if result.ttft_s is None:
                            result.ttft_s = now - start
                        else:
                            result.itl_s.append(now - last)
                        last = now
                        events += 1
                        result.text += choice.get("text") or ""
                        result.token_ids.extend(choice.get("token_ids") or [])
                    usage = message.get("usage")
                    if usage and usage.get("completion_tokens") is not None:
                        result.output_tokens = int(usage["completion_tokens"])
                    if usage and usage.get("prompt_tokens") is not None:  # what the server saw (text: its own count)
                        result.prompt_tokens = int(usage["prompt_tokens"])
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    if result.ttft_s is None:
        result.error = "the stream ended without a generated token"
        return result
    result.e2e_s = last - start
    if not result.output_tokens:
        result.output_tokens = len(result.token_ids) or events
    result.success = True
    return result


@dataclasses.dataclass(frozen=True)
class LoadPoint:
    """A concurrency (closed loop) or a rate in requests/s (open loop, Poisson arrivals)."""

    concurrency: int | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a load point is a concurrency or a rate, not both")

    @property
    def name(self) -> str:
        return f"concurrency{self.concurrency}" if self.concurrency is not None else f"rate{self.rate:g}"


async def _drive(endpoint: Endpoint, warmup: Sequence[Request], requests: Sequence[Request], point: LoadPoint,
                 seed: int, timeout_s: float) -> tuple[list[RequestResult], float, float]:
    """Warm-up, then the counted requests, over one session whose connections both use (as
    vLLM's benchmark does): the counted requests open no connection the warm-up did not."""
    import aiohttp

    limit = point.concurrency or len(requests) or 1
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if warmup:
            await _load(session, endpoint, warmup, point, seed + 1_000_003)
        cpu = time.process_time()
        results, duration = await _load(session, endpoint, requests, point, seed)
        return results, duration, time.process_time() - cpu


async def _load(session: Any, endpoint: Endpoint, requests: Sequence[Request], point: LoadPoint,
                seed: int) -> tuple[list[RequestResult], float]:
    results: list[RequestResult | None] = [None] * len(requests)
    started = time.perf_counter()
    if point.concurrency is not None:
        queue = list(enumerate(requests))
        queue.reverse()

        async def worker() -> None:
            while queue:
                index, request = queue.pop()
                results[index] = await complete(session, endpoint, request)

        await asyncio.gather(*(worker() for _ in range(min(point.concurrency, len(requests)))))
    else:
        assert point.rate is not None
        gaps = np.random.default_rng(seed).exponential(1 / point.rate, size=len(requests))
        arrivals = np.cumsum(gaps) - gaps[0]  # the first request at once

        async def send(index: int, request: Request, at: float) -> None:
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            results[index] = await complete(session, endpoint, request)

        await asyncio.gather(*(send(i, r, float(a)) for i, (r, a) in enumerate(zip(requests, arrivals,
                                                                                      strict=True))))
    duration = time.perf_counter() - started
    return [r for r in results if r is not None], duration


def run_point(endpoint: Endpoint, requests: Sequence[Request], point: LoadPoint, seed: int = 0,
              warmup: Sequence[Request] = (), timeout_s: float = 600.0,
              own_process: bool = True) -> tuple[list[RequestResult], float, float]:
    """Run ``warmup`` (never counted) then ``requests`` at ``point``: (results, seconds, client CPU seconds).

    ``own_process``: in a fresh process that imports only this module (spawned), as vLLM's own
    benchmark is a process of its own: the process that prepared a case has loaded frameworks
    whose thread pools could wake beside the client.
    """
    if own_process:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(run_point, endpoint, list(requests), point, seed, list(warmup), timeout_s,
                               False).result()
    return asyncio.run(_drive(endpoint, warmup, requests, point, seed, timeout_s))


def _percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float | None]:
    if not values:
        return {**{f"p{p}": None for p in PERCENTILES}, "mean": None}
    array = np.asarray(values, dtype=float) * scale
    return {**{f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}, "mean": float(array.mean())}


def summarize(results: Sequence[RequestResult], duration_s: float, slo: Slo, client_cpu_s: float = 0.0,
              point: LoadPoint | None = None) -> dict[str, Any]:
    """One load point's figures (milliseconds, per second)."""
    done = [r for r in results if r.success]
    tokens = sum(r.output_tokens for r in done)
    met = sum(slo.met(r) for r in results)
    figures: dict[str, Any] = {
        **({"concurrency": point.concurrency} if point and point.concurrency is not None else {}),
        **({"rate": point.rate} if point and point.rate is not None else {}),
        "requests": len(results), "failed": len(results) - len(done),
        "duration_s": duration_s,
        "request_throughput": len(done) / duration_s if duration_s > 0 else 0.0,
        "output_tokens_per_s": tokens / duration_s if duration_s > 0 else 0.0,
        "output_tokens": tokens,
        # the prompts' lengths as the server counted them (text prompts: its tokenizer's count)
        "prompt_tokens_mean": float(np.mean([r.prompt_tokens for r in done])) if done else None,
        "ttft_ms": _percentiles([r.ttft_s for r in done if r.ttft_s is not None]),
        "tpot_ms": _percentiles([t for r in done if (t := r.tpot_s) is not None]),
        "itl_ms": _percentiles([x for r in done for x in r.itl_s]),
        "e2e_ms": _percentiles([r.e2e_s for r in done if r.e2e_s is not None]),
        "client_cpu_s": client_cpu_s,
        "client_cpu_share": client_cpu_s / duration_s if duration_s > 0 else 0.0,
    }
    if slo.as_dict():
        figures["slo"] = slo.as_dict()
        figures["goodput"] = met / duration_s if duration_s > 0 else 0.0
        figures["slo_attained"] = met / len(results) if results else 0.0
    errors = sorted({r.error for r in results if r.error})
    if errors:
        figures["errors"] = errors[:5]
    return figures


def requests_for(count: int, seed: int, language_seed: int, vocab_size: int, input_lengths: tuple[int, int],
                 output_lengths: tuple[int, int]) -> list[Request]:
    """``count`` prompts of the model's seeded language (``language_seed``: the one it was
    trained on), each from a seeded start, with seeded input and output lengths (uniform
    over each inclusive range)."""
    from infermatrix.case import language

    order = language.cycle(language_seed, vocab_size)
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(count):
        length = int(rng.integers(input_lengths[0], input_lengths[1] + 1))
        new = int(rng.integers(output_lengths[0], output_lengths[1] + 1))
        start = rng.integers(0, len(order), size=1)
        prompt = language.segments(order, start, length)[0]
        made.append(Request(tuple(int(t) for t in prompt), new))
    return made


def as_text(requests: Sequence[Request], tokenizer: Any) -> list[Request]:
    """The same requests with their prompts as text, decoded by the model's own tokenizer (a
    Hugging Face tokenizer). Decoding and the server's re-encoding need not give the same ids
    back (a byte-level BPE merges differently, the server may add a BOS token): a result's
    ``prompt_tokens`` is the server's count where its usage reports one (see :func:`summarize`)."""
    return [dataclasses.replace(r, text=tokenizer.decode(list(r.prompt), skip_special_tokens=True))
            for r in requests]


def parse_range(option: str, text: str) -> tuple[int, int]:
    """``"32"`` or ``"16:64"`` -> inclusive bounds."""
    low, _, high = text.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        bounds = (0, 0)
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise ValueError(f"{option} {text!r}: give N or LOW:HIGH, positive, LOW <= HIGH (e.g. 16:64)")
    return bounds


def knee(points: Sequence[Mapping[str, Any]]) -> int | None:
    """The index of the latency-throughput curve's knee among concurrency points: the last point
    whose throughput gain over the previous one is at least half its added latency (relative);
    past it, more load buys mostly latency. None with fewer than 3 points."""
    curve = [p for p in points if "concurrency" in p and p["e2e_ms"]["p50"] is not None]
    if len(curve) < 3:
        return None
    best = 0
    for i in range(1, len(curve)):
        gain = curve[i]["output_tokens_per_s"] / max(curve[i - 1]["output_tokens_per_s"], 1e-9) - 1
        cost = curve[i]["e2e_ms"]["p50"] / max(curve[i - 1]["e2e_ms"]["p50"], 1e-9) - 1
        if gain >= 0.5 * max(cost, 0.0) and gain > 0.05:
            best = i
    return points.index(curve[best])

