"""A tiny decoder-only Llama for the ``generate`` scenario, built here with seeded weights.

4.2 M parameters (hidden 256, 4 layers, 4 heads, vocabulary 2000), trained for 40 seeded
steps on a seeded language (``infermatrix.case.language``: ~10 s on 2 idle cores, once per
cache) so that each next token is a confident prediction, and a byte-level BPE tokenizer
trained on seeded text: small enough for CI on 2 cores, no download. The config
is a parameter (``--generate-config tinyllama:num_hidden_layers=16``), and a real model
runs from a local Hugging Face folder (``--model-weights tinyllama=/path/to/folder``).
"""

from __future__ import annotations

import pytest

from infermatrix.api.types import FORM_GENERATION, InputSpec, ModelSpec
from infermatrix.case.generation import GenerationSpec
from infermatrix.case.language import Training

#: The default tiny Llama: 4.2 M parameters, CI-sized on 2 cores. ``initializer_range=0.1``
#: is the initialization the training recipe was measured from (untrained, the usual 0.02
#: made this model repeat one token).
TINY_LLAMA = {
    "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 4, "vocab_size": 2000, "max_position_embeddings": 1024, "initializer_range": 0.1,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
}

MODELS = [
    ModelSpec(
        name="tinyllama",
        family="llama",
        task="generation",
        inputs=(InputSpec("input_ids", (16,), "int64", high=TINY_LLAMA["vocab_size"]),),
        output_names=("token_ids",),
        forms={FORM_GENERATION: GenerationSpec(config=TINY_LLAMA, training=Training())},
        default_batch_sizes=(1,),
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
