"""Small functions both models use."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .packing import linear


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
    the mask's cost, and this draws half as many as one per element. The mask is then made a float
    tensor of 0 and 1/(1-p), so the forward and the backward pass are one multiplication each
    (``torch.where`` with the bool mask costs about a sixth more, both ways).
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
    mask = (numbers >= drop).view(x.shape).to(x.dtype)                               # (…) 1 = keep, P = 1 - t/2¹⁵
    return x * mask.mul_(1.0 / (1.0 - drop / 2 ** 15))                               # (…)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same train/eval switch) drawing its mask with :func:`dropout`."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def embedding(input_ids, weight, tied_to_head: bool):
    """Rows ``weight[input_ids]``, (…) → (…, C).

    When the same (V, C) matrix is also the LM head (tied), its gradient is a dense (V, C) matrix
    anyway: the head's. The lookup's own contribution touches only the looked-up rows, so it is
    returned as a sparse gradient and added into the head's, instead of materialising (and
    zero-filling) another full (V, C) matrix for every lookup; with ``gradient_last`` (below) the
    addition happens in place, so a lookup costs what its rows cost. Untied, the embedding's
    gradient stays dense (optimisers such as AdamW need that).
    """
    return F.embedding(input_ids, weight, sparse=tied_to_head)


# ---- the tied head's gradient --------------------------------------------------------------------
#
# With tied embeddings one (V, C) matrix E gets three gradients in a T5 training step: a dense one
# from the LM head (logits = h Eᵀ) and a sparse one from each lookup (encoder, decoder: only the
# looked-up rows, see ``embedding``). Autograd sums them as they arrive. It adds in place into a
# dense gradient that it alone holds, but it never adds a sparse one into a dense one in place: it
# copies the dense (V, C) matrix first. The head's gradient comes first (the head is the last op of
# the forward pass, so its backward runs first), so each lookup used to cost a copy of E's size,
# 16 million floats at t5-small shape. Two small changes let the sparse gradients come first,
# where they are summed cheaply, and the dense one last, where the sum lands in it in place:
#
# * ``gradient_last(E)``, called *before* the lookups, is an identity in the graph. The backward
#   pass runs ready nodes newest first, so this oldest node hands the head's gradient on last.
# * ``lm_head`` computes the head's gradient as a fresh (V, C) matrix. ``F.linear``'s is a
#   transposed view of its matmul, which autograd may not overwrite, so it would copy anyway.
#
# The gradient is the same sum, in another order (it agrees to float32 rounding, ``tests/test_fast_paths.py``).

class _GradientLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad


def gradient_last(weight):
    """``weight`` itself, through an identity node created now: call it before the embedding
    lookups, and the head's gradient reaches ``weight`` after theirs (see the note above). Only
    for float32 (and float64) weights: on the CPU torch cannot add two sparse fp16 gradients."""
    if torch.is_grad_enabled() and weight.requires_grad and weight.dtype in (torch.float32, torch.float64):
        return _GradientLast.apply(weight)
    return weight


class _LMHead(torch.autograd.Function):
    """logits = h Eᵀ with the textbook gradients ∂h = g E and ∂E = gᵀ h, each a fresh tensor."""

    @staticmethod
    def forward(ctx, hidden, weight):                   # hidden (N, C), weight (V, C)
        ctx.save_for_backward(hidden, weight)
        return hidden @ weight.t()                      # (N, V)

    @staticmethod
    def backward(ctx, grad):                            # grad (N, V)
        hidden, weight = ctx.saved_tensors
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None      # (N, C)
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None  # (V, C)
        return grad_hidden, grad_weight


def lm_head(hidden, weight, packed=None):
    """Logits ``h Wᵀ``: (…, C) hidden states and the (V, C) head → (…, V).

    Decoding uses the packed copy (``packing.linear``); training a head that needs a gradient uses
    :class:`_LMHead`, whose ∂W is a fresh matrix (see ``gradient_last``). Under autocast, the
    usual ``F.linear``."""
    if (torch.is_grad_enabled() and weight.requires_grad
            and not torch.is_autocast_enabled(hidden.device.type)):
        return _LMHead.apply(hidden.reshape(-1, hidden.shape[-1]), weight).view(*hidden.shape[:-1], -1)
    return linear(hidden, weight, packed=packed)


def check_token_ids(input_ids, vocab_size: int):
    """Refuse ids outside [0, V) with a message, instead of an index error deep inside torch."""
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)].unique().tolist()[:5]
        raise ValueError(f"token ids {bad} are outside the vocabulary [0, {vocab_size}): "
                         "was the input made by a tokenizer for another model?")
