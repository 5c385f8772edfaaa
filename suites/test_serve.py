"""Scenario ``serve``: a generation model behind a server, under concurrent streaming load.

For each generation model on each server backend — vLLM started by the suite
(``plugins/backends/vllm.py``), or a server you run (``--endpoint``,
``plugins/backends/openai_endpoint.py``) — the server's greedy tokens are first checked
against torch's fp32 tokens (``infermatrix.serving.case``), then an asynchronous streaming
client (``infermatrix.serving.client``) loads it: a concurrency sweep (``--serve-concurrency``)
and Poisson arrival rates (``--serve-rates``) over seeded prompts; per load point TTFT, time
per output token, inter-token and end-to-end latency (p50/p90/p99), request and token
throughput, and goodput under ``--slo``. Warm-up requests are never counted; the client's
own floor is measured against a server that does no work and recorded beside the figures.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.scenario import Prepared, Scenario
from infermatrix.serving.case import SERVED, PreparedServer, ServeLoad


def measure(prepared: PreparedServer, benchmark: Any, load: ServeLoad) -> dict[str, Any]:
    return prepared.serve(benchmark, load)


SCENARIO = Scenario("serve", SERVED, default=True, order=0, measure=measure)
pytestmark = SCENARIO.mark()


@pytest.fixture
def serve_load(request: pytest.FixtureRequest) -> ServeLoad:
    return ServeLoad.from_options(request.config.getoption)


def test_serve(infermatrix_prepared: Prepared, serve_load: ServeLoad, benchmark: Any) -> None:
    results = infermatrix_prepared.run(SCENARIO, benchmark, serve_load)
    for point in results["points"]:
        assert point["failed"] == 0 and point["output_tokens_per_s"] > 0, point
        assert point["ttft_ms"]["p50"] is not None and point["ttft_ms"]["p50"] > 0, point
