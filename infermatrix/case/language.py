"""The seeded language a generation model is prompted with, and trained on when it is seeded.

A seeded model straight from its initializer has no preferred next token: its top two
logits are near-tied at many steps (the tiny Llama's smallest gap over 64 greedy steps was
0.005 with a median of 0.37), so any lower precision diverges from fp32 within a few tokens
and a token check cannot tell a working path from garbage. A model that *knows* its next
token can be checked, so the seeded model is trained, briefly, on a language it can learn
in a few seconds: a fixed cycle through ``ALPHABET`` of the vocabulary's tokens, each token
always followed by the next one of the cycle. After training, every greedy step is a
confident prediction (top-1 ahead of top-2 by several logits) and the greedy stream goes
round the cycle: it neither repeats a token nor depends on luck.

Prompts are segments of the same cycle (BOS first), one seeded starting point per
sequence, so the model is asked what it was trained on, and its continuation is tokens
the prompt did not contain (prompt + new tokens < ``ALPHABET``). Everything here but
``train`` is numpy: an environment without torch makes the same prompts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

#: BOS, EOS, PAD, UNK: never part of the language.
SPECIAL = 4
#: Tokens in the cycle (fewer if the vocabulary is smaller): enough that the default sweep's
#: prompt + new tokens (64 + 32) never wrap round, few enough to learn in seconds.
ALPHABET = 256
#: The language's and the prompts' recipe: a change here must change cached references.
VERSION = 1


def cycle(seed: int, vocab_size: int) -> np.ndarray:
    """The language: the token ids of the cycle, in order (``cycle[i]`` is followed by ``cycle[i + 1]``)."""
    size = min(ALPHABET, vocab_size - SPECIAL)
    if size < 2:
        raise ValueError(f"vocabulary of {vocab_size} tokens: too small for a language ({SPECIAL} are special)")
    rng = np.random.default_rng(seed + 104729)
    return rng.permutation(np.arange(SPECIAL, vocab_size, dtype=np.int64))[:size]


def segments(order: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """One row per start: BOS, then ``length - 1`` tokens of the cycle from that start."""
    rows = np.zeros((len(starts), length), dtype=np.int64)  # column 0: <s> (id 0)
    rows[:, 1:] = order[(starts[:, None] + np.arange(length - 1)) % len(order)]
    return rows


def prompts(length: int, batch_size: int, seed: int, vocab_size: int) -> np.ndarray:
    """Seeded prompts of ``length`` tokens: each a segment of the cycle from its own start."""
    order = cycle(seed, vocab_size)
    rng = np.random.default_rng(seed + 7919 * length + batch_size)
    return segments(order, rng.integers(0, len(order), size=batch_size), length)


def continuation(ids: np.ndarray, new_tokens: int, seed: int, vocab_size: int) -> list[list[int]]:
    """What a model that learnt the language generates after ``ids`` (each row's last token onward)."""
    order = cycle(seed, vocab_size)
    position = {int(t): i for i, t in enumerate(order)}
    return [[int(order[(position[int(row[-1])] + 1 + k) % len(order)]) for k in range(new_tokens)] for row in ids]


@dataclasses.dataclass(frozen=True)
class Training:
    """A bounded, seeded training run on the language (part of the model folder's cache key).

    Measured here (2-core AMD EPYC Zen 5, torch 2.15): the default recipe takes 9 s with
    the machine to itself, 50-60 s with other jobs on its two cores, and leaves the tiny
    Llama following the cycle at every step of 38 prompts of 8 to 900 tokens x 32 new
    tokens, top-1 ahead of top-2 by >= 1.94 logits (median 8.9); untrained, the gap was as
    small as 0.005 (median 0.37).
    """

    steps: int = 40
    #: (sequences, tokens) of each step's batch, in turn: mostly short sequences, so that
    #: every token is seen near the start of a context, and every fourth step one sequence
    #: as long as the model's 1024 positions, so that a long context does not disturb a
    #: prediction (trained on 128-token sequences alone, the margin fell to 0.001 beyond them)
    shapes: tuple[tuple[int, int], ...] = ((8, 64), (4, 128), (8, 64), (1, 1024))
    learning_rate: float = 1e-2
    #: torch threads while training: a fixed count, so the same machine gives the same weights
    threads: int = 2

    def key(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "language": VERSION, "alphabet": ALPHABET}


def train(model: Any, recipe: Training, seed: int, vocab_size: int) -> dict[str, Any]:
    """Train ``model`` (a transformers causal LM) on the language, deterministically; returns what it did.

    AdamW, 5 warm-up steps, then a linear decay to a tenth of the rate; every position but
    the first (BOS, whose successor is a random start) is a target. Deterministic algorithms
    and a fixed thread count make the weights the same on every run on one machine; another
    CPU (another instruction set) may differ in the last bits, which the margins this buys
    (several logits) do not notice.
    """
    import torch

    order = cycle(seed, vocab_size)
    rng = np.random.default_rng(seed + 1)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()
    losses: list[float] = []
    try:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.98),
                                      weight_decay=0.0)
        for step in range(recipe.steps):
            rate = recipe.learning_rate * min(1.0, (step + 1) / 5) * max(0.1, 1 - step / recipe.steps)
            for group in optimizer.param_groups:
                group["lr"] = rate
            rows, length = recipe.shapes[step % len(recipe.shapes)]
            batch = torch.from_numpy(segments(order, rng.integers(0, len(order), size=rows), length))
            logits = model(input_ids=batch).logits[:, 1:-1]  # position i predicts token i + 1
            targets = batch[:, 2:]
            loss: Any = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        model.eval()
    return {"recipe": recipe.key(), "seconds": time.perf_counter() - started,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "torch": torch.__version__}
