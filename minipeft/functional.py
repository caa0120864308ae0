"""Small functions both models use."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gelu_tanh(x):
    """GELU, tanh approximation ("gelu_new" of GPT-2 and T5 v1.1):

        GELU(x) ≈ 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))

    Written out rather than ``F.gelu(x, approximate="tanh")``: the fused kernel rounds
    differently, and through many layers of large weights that grows to ~1e-2 in the logits,
    where the reference implementation, which computes this very expression, stays identical.
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def embedding(input_ids, weight, tied_to_head: bool):
    """Rows ``weight[input_ids]``, (…) → (…, C).

    When the same (V, C) matrix is also the LM head (tied), its gradient is a dense (V, C) matrix
    anyway: the head's. The lookup's own contribution touches only the looked-up rows, so it is
    returned as a sparse gradient and added into the head's, instead of materialising (and
    zero-filling) another full (V, C) matrix for every lookup: ~3·V·C fewer floats written per
    training step. Untied, the embedding's gradient stays dense (optimisers such as AdamW need that).
    """
    return F.embedding(input_ids, weight, sparse=tied_to_head)


def check_token_ids(input_ids, vocab_size: int):
    """Refuse ids outside [0, V) with a message, instead of an index error deep inside torch."""
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)].unique().tolist()[:5]
        raise ValueError(f"token ids {bad} are outside the vocabulary [0, {vocab_size}): "
                         "was the input made by a tokenizer for another model?")
