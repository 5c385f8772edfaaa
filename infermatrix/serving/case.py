"""The ``served`` kind of case: a generation model behind an OpenAI-compatible server.

A server backend (``BackendInfo.server``) returns a :class:`ServerSession` from
``pytest_infermatrix_prepare_server``: a server it started (vLLM) or one the user runs
(``--endpoint``). Before anything is timed the server's greedy tokens (temperature 0)
for the generation model's seeded prompts are compared with the torch fp32 greedy
reference of the same model folder (``generation.compare_tokens``, the generate
scenario's gate), and the client's own floor (TTFT and ITL against a server that does no
work) is measured once. The ``serve`` scenario then loads the server
(:mod:`infermatrix.serving.client`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from infermatrix.api.scenario import CaseKind
from infermatrix.api.types import BackendInfo, ModelSpec, PrepareTimes, RunOptions
from infermatrix.case import generation
from infermatrix.case.generation import GenerationSpec, TokenReport
from infermatrix.case.runner import Drivable
from infermatrix.gate.precision import PrecisionReport, check_precision
from infermatrix.serving import client
from infermatrix.serving.client import Endpoint, LoadPoint, Request, Slo


class ServerSession(Protocol):
    """What ``pytest_infermatrix_prepare_server`` returns: a server ready to take requests.

    ``endpoint``: where to send them and what every request carries; ``log_path``: the
    server's log (None for a server the suite did not start), kept with the result;
    ``close()``: stop a server the suite started (nothing for the user's). Optionally
    ``precision_evidence()``, as a forward session's.
    """

    endpoint: Endpoint
    config: Mapping[str, Any]
    times: PrepareTimes
    size_bytes: int | None
    log_path: Path | None

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class ServeLoad:
    """The load sweep of the serve scenario (its options, ``--serve-*`` and ``--slo``)."""

    concurrencies: tuple[int, ...] = (1, 2, 4, 8)
    rates: tuple[float, ...] = ()
    requests: int = 32
    warmup: int = 4
    input_lengths: tuple[int, int] = (16, 64)
    output_lengths: tuple[int, int] = (32, 64)
    slo: Slo = dataclasses.field(default_factory=Slo)
    seed: int = 0
    timeout_s: float = 600.0
    #: how prompts are sent: "text" (decoded by the model folder's tokenizer; the server
    #: tokenizes it inside every TTFT, as real clients and ``vllm bench serve`` send them) or
    #: "tokens" (token ids; TTFT without tokenizing)
    prompts: str = "text"

    @classmethod
    def from_options(cls, get: Callable[[str], Any]) -> ServeLoad:
        """The sweep from the ``--serve-*`` and ``--slo`` options (``get``: pytest's getoption);
        a malformed value raises ValueError naming the option."""

        def numbers(option: str, kind: Callable[[str], Any]) -> tuple[Any, ...]:
            raw = str(get(option) or "")
            try:
                values = tuple(kind(v) for v in raw.split(",") if v.strip())
            except ValueError:
                values = (0,)
            if any(not v > 0 for v in values):
                raise ValueError(f"{option} {raw!r}: give positive numbers separated by commas, e.g. 1,2,4")
            return values

        concurrencies = numbers("--serve-concurrency", int)
        rates = numbers("--serve-rates", float)
        if not concurrencies and not rates:
            raise ValueError("--serve-concurrency and --serve-rates are both empty: give at least one load point")
        prompts = str(get("--serve-prompts"))
        if prompts not in ("text", "tokens"):
            raise ValueError(f"--serve-prompts {prompts!r}: give text or tokens")
        return cls(concurrencies, rates, int(get("--serve-requests")), int(get("--serve-warmup")),
                   client.parse_range("--serve-input-lengths", str(get("--serve-input-lengths"))),
                   client.parse_range("--serve-output-lengths", str(get("--serve-output-lengths"))),
                   Slo.parse(get("--slo")), prompts=prompts)

    def points(self) -> list[LoadPoint]:
        return [LoadPoint(concurrency=c) for c in self.concurrencies] + [LoadPoint(rate=r) for r in self.rates]


def server_tokens(endpoint: Endpoint, prompts: Mapping[str, tuple[np.ndarray, int]],
                  tokenizer_dir: Path | None = None) -> tuple[dict[str, list[list[int]]], str]:
    """The server's greedy tokens for each prompt (one request each, temperature 0), and how
    they were read: the token ids the server returned, or its text re-encoded with the model
    folder's tokenizer where it returns no ids."""

    async def ask() -> list[client.RequestResult]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            return [await client.complete(session, endpoint, Request(tuple(int(t) for t in row), new))
                    for ids, new in prompts.values() for row in ids]

    results = asyncio.run(ask())
    failed = [r.error for r in results if not r.success]
    if failed:
        raise RuntimeError(f"the server at {endpoint.base_url} failed a check request: {failed[0]}")
    how = "token ids the server returned"
    if any(not r.token_ids for r in results):
        if tokenizer_dir is None:
            raise RuntimeError(f"the server at {endpoint.base_url} returns no token ids and there is no tokenizer "
                               "to read its text")
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        for r in results:
            r.token_ids = list(tokenizer(r.text, add_special_tokens=False)["input_ids"])
        how = "the server's text, re-encoded with the model folder's tokenizer (it returned no token ids)"
    got: dict[str, list[list[int]]] = {}
    it = iter(results)
    for key, (ids, _) in prompts.items():
        got[key] = [next(it).token_ids for _ in range(len(ids))]
    return got, how


@dataclasses.dataclass
class PreparedServer(Drivable):
    """A served case whose server answers, checked against the torch fp32 tokens."""

    case: Any
    session: ServerSession
    spec: GenerationSpec
    accuracy: TokenReport
    prepare_s: float
    check_s: float
    rss_before_bytes: int
    token_source: str
    client_floor: dict[str, float]
    extra_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    slowdown: float = 0.0
    precision: PrecisionReport | None = None
    #: the model folder whose tokenizer turns the seeded prompts into text (``--serve-prompts text``)
    tokenizer_dir: Path | None = None

    def info(self) -> dict[str, Any]:
        return {
            "backend_config": dict(self.session.config), "prepare_s": self.prepare_s, **self.session.times.as_dict(),
            "accuracy": {**self.accuracy.as_dict(), "token_source": self.token_source},
            **({"precision_evidence": self.precision.as_dict()} if self.precision is not None else {}),
            "model_size_bytes": self.session.size_bytes, "generation_config": self.spec.key()["config"],
            "server_log": str(self.session.log_path) if self.session.log_path else None,
            "client_floor": self.client_floor,
        }

    def record_memory(self, hook: Any) -> None:
        """A server's memory is its own processes' (not measured here); nothing of this process's."""

    def serve(self, benchmark: Any, load: ServeLoad) -> dict[str, Any]:
        """Every load point of the sweep; pytest-benchmark's rounds are the first point's
        end-to-end request latencies, so the verdicts see a served case like any other."""
        if self.slowdown:
            raise RuntimeError("--inject-slowdown cannot slow a server the suite does not run in-process; "
                               "leave server backends out of it")
        from infermatrix.measure.timing import benchmark_recorder

        record = None if getattr(benchmark, "disabled", False) else benchmark_recorder(benchmark, "infermatrix serve")
        vocab = int(self.spec.config["vocab_size"])
        endpoint = self.session.endpoint
        points: list[dict[str, Any]] = []
        tokenizer = text_tokenizer(self.tokenizer_dir) if load.prompts == "text" else None
        for index, point in enumerate(load.points()):
            requests = client.requests_for(load.requests, load.seed + index, self.spec.seed, vocab,
                                           load.input_lengths, load.output_lengths)
            warmup = client.requests_for(load.warmup, load.seed + 10_000 + index, self.spec.seed, vocab,
                                         load.input_lengths, load.output_lengths)
            if tokenizer is not None:
                requests, warmup = client.as_text(requests, tokenizer), client.as_text(warmup, tokenizer)
            results, duration, cpu = client.run_point(endpoint, requests, point, load.seed + index, warmup,
                                                      load.timeout_s)
            figures = client.summarize(results, duration, load.slo, cpu, point)
            points.append(figures)
            if index == 0 and record is not None:
                for r in results:
                    if r.success and r.e2e_s is not None:
                        record(r.e2e_s)
        knee = client.knee(points)
        if self.session.log_path is not None:  # the log file lives in the case's temporary folder: its end travels
            from infermatrix.serving.process import log_tail

            self.extra_info["server_log_tail"] = log_tail(self.session.log_path, 4000)
        self.extra_info.update(serve={
            "points": points, "knee": knee, "client_floor": self.client_floor,
            "load": {"requests": load.requests, "warmup": load.warmup, "input_lengths": list(load.input_lengths),
                     "output_lengths": list(load.output_lengths), "seed": load.seed, "slo": load.slo.as_dict(),
                     "prompts": load.prompts},
        })
        failed = sum(p["failed"] for p in points)
        if failed:
            raise RuntimeError(f"{failed} request(s) failed: {points[0].get('errors') or points[-1].get('errors')}")
        return {"points": points, "knee": knee}


def text_tokenizer(folder: Path | None) -> Any:
    """The model folder's tokenizer, which turns the seeded prompts into text
    (``--serve-prompts text``); an error that says what is missing otherwise — never token
    ids in its place, which would time another thing than the record says."""
    advice = "or send token ids instead: --serve-prompts tokens"
    if folder is None:
        raise RuntimeError(f"--serve-prompts text needs the model folder's tokenizer and there is no folder; {advice}")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise RuntimeError(f"--serve-prompts text decodes the prompts with transformers, which is not installed "
                           f"here ({exc}): pip install 'infermatrix[llm]', {advice}") from exc
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"--serve-prompts text: no tokenizer could be loaded from {folder} ({exc}); "
                           f"{advice}") from exc


def client_floor(requests: int = 64, tokens: int = 32) -> dict[str, float]:
    """The client's own overhead: TTFT and ITL against a server that does no work
    (``infermatrix.serving.null_server``, in a process of its own), sequential requests."""
    import sys

    from infermatrix.serving.process import ServerProcess, free_port

    port = free_port()
    import tempfile

    log = Path(tempfile.mkdtemp(prefix="infermatrix-null-")) / "null-server.log"
    url = f"http://127.0.0.1:{port}"
    with ServerProcess.start([sys.executable, "-m", "infermatrix.serving.null_server", str(port)], log, url,
                             timeout_s=60) as server:
        endpoint = Endpoint(server.base_url, "null", {})
        batch = [Request((0, 1, 2, 3), tokens) for _ in range(requests)]
        results, _, cpu = client.run_point(endpoint, batch, LoadPoint(concurrency=1), warmup=batch[:4])
    done = [r for r in results if r.success]
    if not done:
        raise RuntimeError(f"the null server answered no request: {results[0].error if results else ''}")
    itl = [x for r in done for x in r.itl_s]
    return {"ttft_ms": float(np.median([r.ttft_s for r in done])) * 1e3,
            "itl_ms": float(np.median(itl)) * 1e3 if itl else 0.0,
            "client_cpu_us_per_token": cpu / max(1, sum(r.output_tokens for r in done)) * 1e6,
            "requests": float(len(done))}


def prepare(case: Any, prepare_session: Callable[[], ServerSession | None], cache_root: Path) -> PreparedServer:
    """Start (or reach) the server, check its greedy tokens against torch fp32's, prove its
    precision where it can, and measure the client's floor."""
    from infermatrix.case.runner import timed_prepare

    spec: GenerationSpec = case.model.generation
    session, prepare_s, rss_before = timed_prepare(case, prepare_session)
    try:
        expected = generation.reference_tokens(case.model.name, spec, cache_root, 1)
        prompts = {f"{p}x{n}": (generation.prompt_ids(p, 1, spec.seed, int(spec.config["vocab_size"])), n)
                   for p, n in generation.sweep(spec)}
        started = time.perf_counter()
        folder = generation.model_dir(case.model.name, spec, cache_root)
        got, how = server_tokens(session.endpoint, prompts, folder)
        check_s = time.perf_counter() - started
        report = generation.compare_tokens(got, {k: expected[k] for k in got}, case.target.precision)
        give = getattr(session, "precision_evidence", None)
        precision = check_precision(case.target.precision, give() if callable(give) else None)
        floor = client_floor()
    except BaseException:
        session.close()
        raise
    return PreparedServer(case, session, spec, report, prepare_s, check_s, rss_before, how, floor,
                          precision=precision, tokenizer_dir=folder)


def prepare_served(case: Any, prepare_session: Callable[[], ServerSession | None], options: RunOptions,
                   policy: Any, accuracy_samples: int) -> PreparedServer:
    return prepare(case, prepare_session, options.cache_root)


def is_served(model: ModelSpec, backend: BackendInfo) -> bool:
    return generation.is_generation_model(model) and backend.server


#: A generation model behind a server, prepared by ``pytest_infermatrix_prepare_server``.
SERVED = CaseKind("served", accepts=is_served, fill_cache=generation.fill_generation_cache,
                  prepare_hook="pytest_infermatrix_prepare_server", prepare=prepare_served)
