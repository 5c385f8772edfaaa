"""Scenario ``generate``: text generation, the way serving projects report it.

For each generation model (a decoder-only model built locally with seeded weights, see
``plugins/models/llama.py``) on each backend's generation path (torch + transformers,
OpenVINO GenAI, ONNX Runtime GenAI), greedy decoding over a small sweep of prompt
lengths × generated lengths: time to first token, inter-token latency p50/p99, decode
and end-to-end tokens/s. Before anything is timed the generated token ids are checked
against torch's fp32 greedy tokens: identical at fp32, a stated share at lower precisions.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.plugin import CaseHandle
from infermatrix.timing import TimingPolicy

pytestmark = pytest.mark.infermatrix_scenario("generate")


def test_generate(infermatrix_prepared: CaseHandle, infermatrix_policy: TimingPolicy, benchmark: Any) -> None:
    results = infermatrix_prepared.generate(benchmark, infermatrix_policy)  # type: ignore[union-attr]
    for config, figures in results.items():
        assert figures["ttft_ms"] > 0 and figures["e2e_tokens_per_s"] > 0, (config, figures)
