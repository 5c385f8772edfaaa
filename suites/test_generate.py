"""Scenario ``generate``: text generation, the way serving projects report it.

For each generation model (a decoder-only model built locally with seeded weights, see
``plugins/models/llama.py``) on each backend's generation path (torch + transformers,
OpenVINO GenAI, ONNX Runtime GenAI), greedy decoding over a small sweep of prompt
lengths × generated lengths: time to first token, inter-token latency p50/p99, decode
and end-to-end tokens/s. Before anything is timed the generated token ids are checked
against torch's fp32 greedy tokens (``generation.compare_tokens``): identical at fp32; at
lower precisions every sequence keeps a stated prefix and all together a stated share.
"""

from __future__ import annotations

from typing import Any

from infermatrix.api.scenario import Prepared, Scenario
from infermatrix.case.generation import GENERATION, PreparedGeneration
from infermatrix.measure.timing import TimingPolicy


def measure(prepared: PreparedGeneration, benchmark: Any, policy: TimingPolicy) -> dict[str, Any]:
    return prepared.generate(benchmark, policy)


SCENARIO = Scenario("generate", GENERATION, default=True, order=0, measure=measure)
pytestmark = SCENARIO.mark()


def test_generate(infermatrix_prepared: Prepared, infermatrix_policy: TimingPolicy, benchmark: Any) -> None:
    results = infermatrix_prepared.run(SCENARIO, benchmark, infermatrix_policy)
    for config, figures in results.items():
        assert figures["ttft_ms"] > 0 and figures["e2e_tokens_per_s"] > 0, (config, figures)
