"""Decoding fast path: weights packed once per ``generate`` call for oneDNN's small-batch matmul.

A decoding step multiplies every weight matrix by only B rows (one new token per sequence). At
that shape the matmul does little arithmetic per weight read, and the library kernel behind
``F.linear`` spends most of its time re-arranging the weight into the blocked layout its inner
loop wants, every call. oneDNN can do that re-arrangement once (``_reorder_linear_weight``) and
then reuse the packed copy: on this project's 2-core CPU it makes the (B=8) matmuls of a T5
decoding step 1.5-2x faster (``python -m minipeft.benchmarks.models`` measures it).

The math is unchanged, ``y = x Wᵀ + b``; only the memory layout of W differs, so results agree
with ``F.linear`` to float32 rounding (``tests/test_fast_paths.py``). Packed copies are used only
inside ``generate``, under ``torch.no_grad()``: they have no backward.

Packing costs about as much as two decoding steps, so the copy is kept for the next ``generate``
call (one per weight, for the last batch size) and made again only when the weight has changed:
every in-place change of a tensor (an optimiser step, ``load_state_dict``, LoRA's ``merge``)
bumps its version counter, which is part of the key. The price is memory: while a weight lives,
so does its packed copy (about the size of the decoder and the head). ``forget_packed()`` drops
them all.

    with packed_for_decoding(model, rows=batch * beams):
        …the decoder's ``Linear`` layers and the LM head use their packed copy…

Projections that read the same input can also be packed side by side as one matrix, so one call
computes them all: T5's self-attention ``q``, ``k`` and ``v`` (a module offers them through
``fusable_projections()``). One (3·H·D, C) matmul instead of three (H·D, C) ones made a whole
``generate`` about 4 % faster (t5-small shape, B = 8, 2026-12-05, an AMD EPYC without bfloat16
matmuls), since at B rows a small matmul costs mostly its fixed overhead. A layer that a method
wraps (unmerged LoRA on ``q``) is not plain ``Linear`` any more and keeps its own path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

# weight → (rows, weight's version when packed, packed copy); an entry dies with its weight.
_packed_copies = WeakIdKeyDictionary()
# first weight of a fused group → (rows, every weight's identity and version, their stacked packed copy)
_fused_copies = WeakIdKeyDictionary()


def can_pack(weight: torch.Tensor) -> bool:
    """oneDNN packs float32 weights on the CPU (where this build has oneDNN)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """(out, in) weight → oneDNN's blocked copy tuned for ``rows`` input rows, or None if unsupported."""
    if not can_pack(weight):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def packed_copy(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``pack_weight(weight, rows)``, reused while ``weight`` is unchanged since it was packed."""
    return kept_copy(_packed_copies, weight, rows, lambda: pack_weight(weight, rows))


def kept_copy(cache: WeakIdKeyDictionary, weight: torch.Tensor, rows: int, make, version=None):
    """``make()``, kept in ``cache`` (weight → (rows, version, copy)) and returned again while
    ``version`` (default: the weight's version counter) and ``rows`` are unchanged; a None from
    ``make`` is not kept."""
    version = weight._version if version is None else version
    kept = cache.get(weight)
    if kept is not None and kept[:2] == (rows, version):
        return kept[2]
    made = make()
    if made is not None:
        cache[weight] = (rows, version, made)
    return made


def fused_packed_copy(weights: list[torch.Tensor], rows: int) -> torch.Tensor | None:
    """The weights (each (out_i, in)) stacked as one (Σ out_i, in) matrix and packed for ``rows``
    rows; kept while none of them is replaced or changed."""
    if not all(can_pack(weight) for weight in weights):
        return None
    return kept_copy(_fused_copies, weights[0], rows,
                     lambda: pack_weight(torch.cat([weight.detach() for weight in weights]), rows),  # (Σ out_i, in)
                     version=tuple((id(weight), weight._version) for weight in weights))


def forget_packed() -> None:
    """Drop every kept packed copy (they are only a cache: the next ``generate`` packs again)."""
    _packed_copies.clear()
    _fused_copies.clear()


def uses_packed(x) -> bool:
    """Whether a packed copy may serve input x: no gradient needed, float32, no bf16/fp16 autocast."""
    return not torch.is_grad_enabled() and x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)


def packed_matmul(x, packed, bias=None):
    """``y = x Wᵀ + b`` from W's packed copy (oneDNN), for x (…, in)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def linear(x, weight, bias=None, packed=None):
    """``y = x Wᵀ + b`` for x (…, in): from the packed copy of W when there is one and
    :func:`uses_packed` allows it (under bf16/fp16 autocast, F.linear casts as usual)."""
    if packed is not None and uses_packed(x):
        return packed_matmul(x, packed, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` that can hold a packed copy of its weight while the model decodes."""

    packed: torch.Tensor | None = None

    def forward(self, x):
        return linear(x, self.weight, self.bias, self.packed)


@contextmanager
def packed_for_decoding(model: nn.Module, rows: int):
    """Pack every :class:`Linear` that runs at each decoding step (``model.decoding_layers()``: T5's
    decoder, not its encoder, which runs once) and the LM head (``model.packed_head``) for ``rows``
    input rows (reusing the copies of an earlier call where the weights are unchanged)."""
    modules = list(model.decoding_layers().modules())
    layers = [module for module in modules if isinstance(module, Linear)]
    fusing = [(module, module.fusable_projections()) for module in modules if hasattr(module, "fusable_projections")]
    fusing = [(module, projections) for module, projections in fusing if projections]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.packed = packed_copy(layer.weight, rows)
            for module, projections in fusing:
                module.packed_fused = fused_packed_copy([projection.weight for projection in projections], rows)
            model.packed_head = packed_copy(model.head_weight(), rows)
        yield model
    finally:
        for layer in layers:
            layer.packed = None
        for module, _ in fusing:
            module.packed_fused = None
        model.packed_head = None
