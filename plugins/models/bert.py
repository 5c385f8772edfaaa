"""A BERT-base-shaped transformer encoder (12 layers, hidden 768, 12 heads, FFN 3072,
sequence 128), written in plain torch so it needs no transformers package and exports
cleanly to ONNX. Outputs the last hidden state and the tanh-pooled [CLS] vector.
"""

from __future__ import annotations

from typing import Any

import pytest

from infermatrix.api.types import FORM_TORCH, InputSpec, ModelSpec

VOCAB_SIZE = 30522
SEQUENCE_LENGTH = 128
HIDDEN = 768
LAYERS = 12
HEADS = 12
FFN = 3072


def build_encoder(
    vocab_size: int = VOCAB_SIZE,
    max_positions: int = 512,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    heads: int = HEADS,
    ffn: int = FFN,
) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q, k, v = self.qkv(x).view(b, s, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v)
            return self.out(context.transpose(1, 2).reshape(b, s, hidden))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = SelfAttention()
            self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
            self.up = nn.Linear(hidden, ffn)
            self.down = nn.Linear(ffn, hidden)
            self.norm2 = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm1(x + self.attention(x))
            return self.norm2(x + self.down(F.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token_embedding = nn.Embedding(vocab_size, hidden)
            self.position_embedding = nn.Embedding(max_positions, hidden)
            self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.pooler = nn.Linear(hidden, hidden)

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.embedding_norm(self.token_embedding(input_ids) + self.position_embedding(positions))
            for layer in self.layers:
                x = layer(x)
            return x, torch.tanh(self.pooler(x[:, 0]))

    return Encoder()


MODELS = [
    ModelSpec(
        name="bert_base",
        family="bert",
        task="embedding",
        inputs=(InputSpec("input_ids", (SEQUENCE_LENGTH,), "int64", high=VOCAB_SIZE),),
        output_names=("last_hidden_state", "pooled"),
        forms={FORM_TORCH: build_encoder},
        default_batch_sizes=(1,),
        linear_heavy=True,
    ),
]


@pytest.hookimpl
def pytest_infermatrix_models() -> list[ModelSpec]:
    return MODELS
