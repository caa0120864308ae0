"""Greedy decoding's LM head: screened in int8, decided in float32, exact.

A greedy step needs only the index of the largest logit, ``argmax_v z_v`` with ``z_v = h · W_v``
for the hidden state h (C,) and the head W (V, C). Reading W is the largest single cost of a
decoding step (t5-small: 32,128 × 512 floats, 66 MB, a fifth of the step). An int8 copy is a
quarter of the bytes, and fbgemm's int8 matmul reads it in about a quarter of the time (0.9
against 3.4 ms at B = 8 on this project's 2-core CPU). But int8 keeps 8 bits, so its logits are
approximate, and greedy decoding must not change its answer. So the int8 logits only *screen*:
the K best of them are recomputed in float32, and a bound on the screen's error proves that no
token outside those K could have won. When the bound cannot prove it (a near-tie the screen
cannot resolve), the step falls back to the float32 head. The answer is the float32 argmax
either way.

The int8 matmul (``torch.ops.quantized.linear_dynamic``, fbgemm). Each row of W is stored as
int8 numbers q_v times one scale σ_v = max_c |W_v,c| / 127, so Ŵ_v = σ_v q_v. The hidden states are
rounded to ĥ on a grid of 128 levels, of step s = (max(h, 0) − min(h, 0)) / 127 over the (B, C)
batch, by ``round_to_grid``: by us, so that ‖h − ĥ‖ is known exactly. The kernel rounds its input
to the grid spanned by the input's own min and max, so two more rows, one at each end of our
grid, make that grid ours and its rounding of ĥ exact. It then sums the integer products exactly
in int32 (7-bit activations keep the pairwise products the CPU adds in int16 from saturating:
2·127·127 < 2¹⁵) and turns it into float32, with the grid's zero point taken out in float
arithmetic: a_v = ĥ · Ŵ_v up to u'·(|a_v| + 127·s·‖Ŵ_v‖₁), u' = 2⁻²¹ (float32's rounding of terms
as large as the grid's span times the row). ``int8_matmul_available`` checks exactly that on a
probe, once, before any screen is used.

The bound. With ΔW_v = W_v − Ŵ_v, z_v − a_v = (h − ĥ) · W_v + ĥ · ΔW_v, so by Cauchy–Schwarz

    |z_v − a_v| ≤ ‖h − ĥ‖·max‖W_v‖ + ‖ĥ‖·max‖ΔW_v‖ + u'·127·s·max‖Ŵ_v‖₁ + ε + u'·|a_v|
                =  e + u'·|a_v|,

where ε = C·2⁻²¹·‖h‖·max‖W_v‖ covers float32 summation in the recomputation. Let a_(K) be the
K-th largest screened logit. Every v outside the top K has a_v ≤ a_(K), and a + u'|a| grows with
a, so

    z_v ≤ a_(K) + u'·|a_(K)| + e.

If the best float32 logit among the top K, z*, is larger than that, it is the argmax of all V.
‖h − ĥ‖, ‖ĥ‖ and s are measured at each step; max‖W_v‖, max‖ΔW_v‖ and max‖Ŵ_v‖₁ once per weight.
The bound is looser than it was for bfloat16 (8 bits of a row's range rather than 8 significant
bits of each number), so K is 64: on the tiny bases' own greedy generations (the size threshold
lowered) the screen then decides 1,323 of 1,327 steps, against 1,240 with K = 16.

The int8 copy is made and kept like the float32 packed copies (``packing.py``): once per weight,
again only when the weight changes. It costs memory, a quarter of the head's size. It is used
only for greedy decoding in float32 on a CPU where this torch build's fbgemm runs (x86 with AVX2;
``int8_matmul_available``), and only for a head of at least ``MIN_HEAD_SIZE`` numbers, where
reading it costs more than the screen's extra steps; sampling, beam search and every other case
use the float32 logits. ``tests/test_fast_paths.py`` checks that the tokens are the float32
argmax's, including near-ties that take the fallback.

Until 2026-12-06 the screen was a bfloat16 copy (half the bytes, not a quarter) through oneDNN,
which only some CPUs have; the int8 one runs wherever fbgemm does and reads half as much.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .packing import can_pack, kept_copy, linear

OUTPUT_ROUNDING = 2.0 ** -21   # u': the kernel's float32 scaling of the exact integer sum
SUM_ROUNDING = 2.0 ** -21      # ε / (C·‖h‖·max‖W_v‖): float32 summation in the recomputation
LEVELS = 127                   # steps of the activations' grid (7 bits)
CANDIDATES = 64                # K: how many screened logits are recomputed in float32
MIN_HEAD_SIZE = 2 ** 22        # V·C below which the float32 head is cheap enough (the tiny bases' is 2¹⁷)

# weight → (0, weight's version when made, Screen); an entry dies with its weight.
_screens = WeakIdKeyDictionary()


@dataclass(frozen=True)
class Screen:
    """The int8 copy of a head W (V, C), packed by fbgemm, and the three norms of the bound."""

    packed: object                 # fbgemm's packed int8 rows and their scales σ_v
    max_row_norm: float            # max_v ‖W_v‖
    max_rounding_norm: float       # max_v ‖W_v − σ_v q_v‖
    max_rounded_sum: float         # max_v ‖σ_v q_v‖₁


@functools.cache
def int8_matmul_available() -> bool:
    """Whether this torch build has fbgemm's int8 matmul, this CPU runs it, and it computes
    ĥ · Ŵ_v exactly up to the output rounding u' (checked on a random probe)."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False
    generator = torch.Generator().manual_seed(0)
    weight, hidden = torch.randn(200, 48, generator=generator), torch.randn(8, 48, generator=generator)
    try:
        packed, rounded_weight = quantized_rows(weight)
        rounded, span, screened = screened_logits(hidden, packed)
    except (RuntimeError, AttributeError):
        return False
    exact = rounded.double() @ rounded_weight.double().T                               # (B, V)
    allowed = OUTPUT_ROUNDING * (exact.abs() + span * rounded_weight.abs().sum(dim=1))  # (B, V)
    return bool(((screened - exact).abs() <= allowed).all())


def can_screen(weight: torch.Tensor) -> bool:
    """A large float32 CPU head (more than K rows), on a CPU with fbgemm's int8 matmul."""
    return (can_pack(weight) and weight.shape[0] > CANDIDATES and weight.numel() >= MIN_HEAD_SIZE
            and int8_matmul_available())


@torch.no_grad()
def screen_for(weight: torch.Tensor) -> Screen | None:
    """The :class:`Screen` of ``weight``, reused while the weight is unchanged (for any batch size)."""
    if not can_screen(weight):
        return None
    return kept_copy(_screens, weight, 0, lambda: make_screen(weight))           # rows 0: any batch size


def quantized_rows(weight: torch.Tensor):
    """W (V, C) → (fbgemm's packed int8 copy, Ŵ = σ_v q_v in float32, (V, C))."""
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)   # σ_v, (V,)
    with warnings.catch_warnings():       # recent torch marks quantized tensors deprecated
        warnings.simplefilter("ignore")
        rows = torch.quantize_per_channel(weight, scales.double(), torch.zeros_like(scales, dtype=torch.long),
                                          0, torch.qint8)                               # q_v in [-127, 127]
        packed = torch.ops.quantized.linear_prepack(rows, None)
    return packed, rows.dequantize()


def make_screen(weight: torch.Tensor) -> Screen:
    weight = weight.detach()
    packed, rounded = quantized_rows(weight)                                           # Ŵ: (V, C)
    return Screen(packed=packed, max_row_norm=weight.norm(dim=1).max().item(),
                  max_rounding_norm=(weight - rounded).norm(dim=1).max().item(),
                  max_rounded_sum=rounded.abs().sum(dim=1).max().item())


def round_to_grid(hidden):
    """h (B, C) → (ĥ (B, C) on 128 levels of step s, the span 127·s, two rows (2, C) at the
    grid's two ends)."""
    low, high = hidden.min().clamp(max=0), hidden.max().clamp(min=0)                   # the grid spans 0
    step = ((high - low) / LEVELS).clamp(min=torch.finfo(torch.float32).tiny)          # s
    zero = torch.round(-low / step)                                                    # the level of 0
    rounded = (torch.clamp(torch.round(hidden / step) + zero, 0, LEVELS) - zero) * step  # ĥ, (B, C)
    ends = torch.stack([-zero * step, (LEVELS - zero) * step])[:, None].expand(2, hidden.shape[-1])  # (2, C)
    return rounded, LEVELS * step, ends


def screened_logits(hidden, packed):
    """(ĥ, the grid's span, a = ĥ Ŵᵀ): the int8 screen's logits (B, V) of hidden states (B, C)."""
    rounded, span, ends = round_to_grid(hidden)
    screened = torch.ops.quantized.linear_dynamic(torch.cat([rounded, ends]), packed, True)  # (B + 2, V)
    return rounded, span, screened[:-2]


def greedy_tokens(hidden, weight, packed=None, screen: Screen | None = None):
    """``argmax_v hidden · W_v``: (B, C) hidden states and the (V, C) head → (B,) token ids."""
    if screen is None or hidden.dtype != torch.float32 or torch.is_autocast_enabled(hidden.device.type):
        return linear(hidden, weight, packed=packed).argmax(dim=-1)
    rounded, span, screened = screened_logits(hidden, screen.packed)                   # ĥ (B, C), a (B, V)
    top = screened.topk(CANDIDATES, dim=-1)                                            # (B, K)
    exact = torch.einsum("bc,bkc->bk", hidden, F.embedding(top.indices, weight))      # (B, K) float32
    best = exact.max(dim=-1)                                                           # (B,)
    kth = top.values[:, -1]                                                            # a_(K), (B,)
    norm = hidden.norm(dim=-1)                                                         # ‖h‖, (B,)
    error = ((hidden - rounded).norm(dim=-1) * screen.max_row_norm
             + rounded.norm(dim=-1) * screen.max_rounding_norm
             + OUTPUT_ROUNDING * span * screen.max_rounded_sum
             + hidden.shape[-1] * SUM_ROUNDING * norm * screen.max_row_norm)          # e, (B,)
    if bool((best.values > kth + OUTPUT_ROUNDING * kth.abs() + error).all()):
        return top.indices.gather(1, best.indices[:, None]).squeeze(1)                # (B,)
    return linear(hidden, weight, packed=packed).argmax(dim=-1)                        # near-tie: float32
