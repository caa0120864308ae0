"""Small functions both models use."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gelu_tanh(x):
    """GELU, tanh approximation ("gelu_new" of GPT-2 and T5 v1.1):

        GELU(x) ≈ 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))

    Written out rather than ``F.gelu(x, approximate="tanh")``: the fused kernel rounds
    differently, and through many layers of large weights that grows to ~1e-2 in the logits,
    where the reference implementation, which computes this very expression, stays identical.
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def dropout(x, p: float, training: bool = True):
    """Dropout: each element is zeroed with probability p and the survivors are scaled by
    1/(1-p), so the expected output is x. (…) → (…), the distribution of ``F.dropout``.

    What differs is how the mask is drawn. ``F.dropout`` on the CPU draws one float Bernoulli
    sample per element (``bernoulli_``) and multiplies twice; in a T5 training step its ~60 masks
    cost about a tenth of the step. Here two elements share one random integer: ``random_`` gives
    31 random bits, and the low 15 bits of each 16-bit half of it are two independent numbers
    uniform on [0, 2¹⁵). An element is dropped when its number is below t = round(p·2¹⁵), with
    probability t/2¹⁵, which is p to within 2⁻¹⁶ (p = 0.1 drops 0.1000061); survivors are scaled
    by 1/(1 - t/2¹⁵), so the expectation stays exactly x. Drawing the random integers is most of
    the mask's cost, and this draws half as many as one per element.
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    drop = round(p * 2 ** 15)                                                        # t
    if drop == 2 ** 15:
        raise ValueError(f"dropout probability {p} rounds to 1 in steps of 2^-15: use p < {1 - 2 ** -16}")
    n = x.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_()  # (⌈n/2⌉,) on [0, 2³¹)
    numbers = words.view(torch.int16)[:n] & 0x7FFF                                   # (n,) on [0, 2¹⁵), 2 per word
    keep = (numbers >= drop).view(x.shape)                                           # (…) bool, P(keep) = 1 - t/2¹⁵
    return torch.where(keep, x * (1.0 / (1.0 - drop / 2 ** 15)), 0.0)                # (…)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same train/eval switch) drawing its mask with :func:`dropout`."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


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
