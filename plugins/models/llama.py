"""A tiny decoder-only Llama for the ``generate`` scenario, built here with seeded weights.

4.2 M parameters (hidden 256, 4 layers, 4 heads, vocabulary 2000) and a byte-level BPE
tokenizer trained on seeded text: small enough for CI on 2 cores, no download. The config
is a parameter (``--generate-config tinyllama:num_hidden_layers=16``), and a real model
runs from a local Hugging Face folder (``--model-weights tinyllama=/path/to/folder``).
"""

from __future__ import annotations

import pytest

from infermatrix.generation import TINY_LLAMA, GenerationSpec
from infermatrix.types import InputSpec, ModelSpec

MODELS = [
    ModelSpec(
        name="tinyllama",
        family="llama",
        task="generation",
        inputs=(InputSpec("input_ids", (16,), "int64", high=TINY_LLAMA["vocab_size"]),),
        output_names=("token_ids",),
        build_torch=None,
        default_batch_sizes=(1,),
        generation=GenerationSpec(config=TINY_LLAMA),
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
