"""Greedy decoding's LM head: screened in bfloat16, decided in float32, exact.

A greedy step needs only the index of the largest logit, ``argmax_v z_v`` with ``z_v = h · W_v``
for the hidden state h (C,) and the head W (V, C). Reading W is the largest single cost of a
decoding step (t5-small: 32,128 × 512 floats, 66 MB, a fifth of the step). A bfloat16 copy is half
the bytes, and its packed matmul takes about half the time (1.3 against 2.9 ms at B = 8 on this
project's CPU). But bfloat16 keeps 8 significant bits, so its logits are approximate, and greedy
decoding must not change its answer. So the bfloat16 logits only *screen*: the K best of them are
recomputed in float32, and a bound on the screen's error proves that no token outside those K
could have won. When the bound cannot prove it (a near-tie the screen cannot resolve), the step
falls back to the float32 head. The answer is the float32 argmax either way.

The bound. Write h_b = bf16(h), r = h − h_b, W_b = bf16(W), ΔW = W − W_b, and u = 2⁻⁸ for
bfloat16's unit roundoff. The screen computes a_v = bf16(h_b · W_b,v), the dot product summed in
float32. Since z_v = h_b · W_b,v + r · W_v + h_b · ΔW_v, Cauchy–Schwarz gives

    |z_v − a_v| ≤ ‖r‖·max‖W_v‖ + ‖h_b‖·max‖ΔW_v‖ + u/(1−u)·|a_v| + ε   =   e + u'·|a_v|

where the last u'|a_v| is the rounding of the output to bfloat16, and ε = C·2⁻²²·‖h‖·max‖W_v‖
covers float32 summation, in the screen and in the float32 recomputation. Let a_(K) be the K-th
largest screened logit. Every v outside the top K has a_v ≤ a_(K), and a + u'|a| grows with a, so

    z_v ≤ a_(K) + u'·|a_(K)| + e.

If the best float32 logit among the top K, z*, is larger than that, it is the argmax of all V.
‖r‖ and ‖h_b‖ are measured at each step; max‖W_v‖ and max‖ΔW_v‖ once per weight.

The bfloat16 copy is made, packed and kept like the float32 packed copies (``packing.py``):
once per weight and batch size, again only when the weight changes. It costs memory, half the
head's size. It is used only for greedy decoding in float32 on a CPU whose oneDNN has bfloat16
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), and only for a head of at least
``MIN_HEAD_SIZE`` numbers, where reading it costs more than the screen's extra steps; sampling,
beam search and every other case use the float32 logits. ``tests/test_fast_paths.py`` checks that
the tokens are the float32 argmax's, including near-ties that take the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .packing import can_pack, kept_copy, linear

BF16_UNIT_ROUNDOFF = 2.0 ** -8
CANDIDATES = 16            # K: how many screened logits are recomputed in float32
MIN_HEAD_SIZE = 2 ** 22    # V·C below which the float32 head is cheap enough (the tiny bases' is 2¹⁷)

# weight → (rows, weight's version when made, Screen); an entry dies with its weight.
_screens = WeakIdKeyDictionary()


@dataclass(frozen=True)
class Screen:
    """The bfloat16 copy of a head W (V, C), packed for ``rows`` input rows, and its two norms."""

    packed: torch.Tensor           # oneDNN's blocked bfloat16 copy of W
    max_row_norm: float            # max_v ‖W_v‖
    max_rounding_norm: float       # max_v ‖W_v − bf16(W_v)‖


def can_screen(weight: torch.Tensor) -> bool:
    """A large float32 CPU head (more than K rows), on a oneDNN that has bfloat16 matmuls."""
    return (can_pack(weight) and weight.shape[0] > CANDIDATES and weight.numel() >= MIN_HEAD_SIZE
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@torch.no_grad()
def screen_for(weight: torch.Tensor, rows: int) -> Screen | None:
    """The :class:`Screen` of ``weight`` for ``rows`` rows, reused while the weight is unchanged."""
    if not can_screen(weight):
        return None
    return kept_copy(_screens, weight, rows, lambda: make_screen(weight, rows))


def make_screen(weight: torch.Tensor, rows: int) -> Screen:
    rounded = weight.detach().to(torch.bfloat16)                                       # (V, C)
    return Screen(packed=torch.ops.mkldnn._reorder_linear_weight(rounded, rows),
                  max_row_norm=weight.norm(dim=1).max().item(),
                  max_rounding_norm=(weight - rounded.float()).norm(dim=1).max().item())


def greedy_tokens(hidden, weight, packed=None, screen: Screen | None = None):
    """``argmax_v hidden · W_v``: (B, C) hidden states and the (V, C) head → (B,) token ids."""
    if screen is None or hidden.dtype != torch.float32 or torch.is_autocast_enabled(hidden.device.type):
        return linear(hidden, weight, packed=packed).argmax(dim=-1)
    hidden_b = hidden.to(torch.bfloat16)                                               # (B, C)
    screened = torch.ops.mkldnn._linear_pointwise(hidden_b, screen.packed, None, "none", [], "")  # (B, V)
    top = screened.topk(CANDIDATES, dim=-1)                                            # (B, K)
    exact = torch.einsum("bc,bkc->bk", hidden, F.embedding(top.indices, weight))      # (B, K) float32
    best = exact.max(dim=-1)                                                           # (B,)
    hidden_b = hidden_b.float()
    u = BF16_UNIT_ROUNDOFF
    kth = top.values[:, -1].float()                                                    # a_(K), (B,)
    error = ((hidden - hidden_b).norm(dim=-1) * screen.max_row_norm
             + hidden_b.norm(dim=-1) * screen.max_rounding_norm
             + hidden.shape[-1] * 2.0 ** -22 * hidden.norm(dim=-1) * screen.max_row_norm)   # e, (B,)
    if bool((best.values > kth + u / (1 - u) * kth.abs() + error).all()):
        return top.indices.gather(1, best.indices[:, None]).squeeze(1)                # (B,)
    return linear(hidden, weight, packed=packed).argmax(dim=-1)                        # near-tie: float32
