"""Multi-head attention: the one kernel both models share, and the seams PEFT attaches to.

Formula (../shared/FORMULAS.md F5.4, written row-wise as PyTorch stores tensors):

    Attn-op(Q, K, V) = softmax(Q Kᵀ · scale + M) V

    symbol  variable     shape           meaning
    Q       query        (B, H, T, D)    one row per target position
    K, V    key, value   (B, H, S, D)    one row per source position
    scale   scale        -               1/√D for GPT-2; 1 for T5, which folds 1/√D into its init (F12.6)
    M       mask         (B|1, H|1, T, S) additive: T5's relative position bias, and
                                         `finfo.min` where a query may not look (padding, future)

The formula is computed by ``torch.nn.functional.scaled_dot_product_attention``, one fused kernel
that never stores the (T, S) probability matrix when it can avoid it; ``tests/test_attention.py``
pins it to the written-out formula above. With dropout on the probabilities (training) it is
written out instead: the fused kernel has no dropout on the CPU and would fall back to the same
steps, drawing its mask with the slower ``bernoulli_`` (see ``functional.dropout``).

Two seams make every prefix-style PEFT method a few lines (../shared/ARCHITECTURE.md):

* ``prefix_kv = (P_key, P_value)``, each (B, H, m, D), is prepended to the keys and values
  (F5.3 ``K_prefix = [P_key; K]``, ``V_prefix = [P_value; V]``): prefix tuning, P-tuning v2.
  The caller gives the mask m extra columns (zeros: every query may see the prefix; GPT's
  ``prefix_visible`` hides them from some queries, for the infix ``[x; INFIX; y]`` of F5.7).
* ``cache``, a :class:`KVCache`, keeps the keys and values of earlier tokens during generation,
  so each new token costs one row of attention instead of a whole new forward pass.

The keys are laid out ``[prefix; cached; new]`` along the S axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .packing import Linear, packed_matmul, uses_packed
from .shapes import Dims


def attend(query, key, value, mask=None, scale=None, dropout=0.0):
    """F5.4  softmax(Q Kᵀ · scale + M) V  for query (B, H, T, D) and key, value (B, H, S, D)."""
    dims = Dims("F5.4 Attn-op")
    dims.check("query", query, "B H T D")
    dims.check("key", key, "B H S D")
    dims.check("value", value, "B H S D")
    if mask is not None:                       # broadcastable over B, H and (padding masks) T
        dims.check("mask", mask, "... S")
        if mask.shape[-2] not in (1, dims["T"]):
            dims.check("mask", mask, "... T S")
    # exercise: F5.4 return softmax(query keyᵀ · scale + mask) value, dropout on the probabilities (scale None = 1/√D)
    if dropout == 0.0:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    scores = query @ key.transpose(-2, -1) * (query.shape[-1] ** -0.5 if scale is None else scale)   # (B, H, T, S)
    if mask is not None:
        scores = scores + mask
    return functional.dropout(scores.softmax(dim=-1), dropout) @ value                             # (B, H, T, D)
    # end exercise


def split_heads(x, n_heads):
    """(B, T, H·D) → (B, H, T, D)."""
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(x):
    """(B, H, T, D) → (B, T, H·D)."""
    batch, n_heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, n_heads * head_dim)


class KVCache:
    """Keys and values of the tokens seen so far by one attention layer, each (B, H, S, D).

    Self-attention appends the new token's key/value at every step. Cross-attention stores the
    encoder's keys/values once (``frozen=True`` after the first call) and reuses them.

    Storage is a buffer with room to spare, doubled when full, so a step writes only its new
    rows instead of copying every earlier key and value into a new tensor (``torch.cat``).
    """

    def __init__(self):
        self.key_buffer: torch.Tensor | None = None    # (B, H, capacity, D)
        self.value_buffer: torch.Tensor | None = None
        self.length = 0
        self.frozen = False

    @property
    def keys(self):
        return None if self.key_buffer is None else self.key_buffer[:, :, :self.length]      # (B, H, S, D)

    @property
    def values(self):
        return None if self.value_buffer is None else self.value_buffer[:, :, :self.length]  # (B, H, S, D)

    def append(self, keys, values):
        """Add (B, H, T, D) new keys/values; return all of them, (B, H, S_past + T, D)."""
        new_length = self.length + keys.shape[2]
        if self.key_buffer is None or new_length > self.key_buffer.shape[2]:
            self._grow(keys, capacity=max(2 * new_length, 16))
        self.key_buffer[:, :, self.length:new_length] = keys
        self.value_buffer[:, :, self.length:new_length] = values
        self.length = new_length
        return self.keys, self.values

    def _grow(self, like, capacity: int):
        batch, heads, _, head_dim = like.shape
        key_buffer = like.new_empty(batch, heads, capacity, head_dim)
        value_buffer = like.new_empty(batch, heads, capacity, head_dim)
        if self.key_buffer is not None:
            key_buffer[:, :, :self.length] = self.keys
            value_buffer[:, :, :self.length] = self.values
        self.key_buffer, self.value_buffer = key_buffer, value_buffer

    def reorder(self, batch_index):
        """Keep rows ``batch_index`` (beam search picks which hypotheses survive)."""
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer.index_select(0, batch_index)
            self.value_buffer = self.value_buffer.index_select(0, batch_index)


def prepend_prefix(keys, values, prefix_kv):
    """F5.3  K_prefix = [P_key; K], V_prefix = [P_value; V] along the source axis."""
    if prefix_kv is None:
        return keys, values
    prefix_keys, prefix_values = prefix_kv
    dims = Dims("F5.3 prefix", B=keys.shape[0], H=keys.shape[1], D=keys.shape[3])
    dims.check("prefix key", prefix_keys, "B H m D")
    dims.check("prefix value", prefix_values, "B H m D")
    # exercise: F5.3 put the prefix in front of the keys and of the values (which axis is the source axis?)
    return torch.cat([prefix_keys, keys], dim=2), torch.cat([prefix_values, values], dim=2)
    # end exercise


class T5Attention(nn.Module):
    """T5's attention: separate ``q``, ``k``, ``v``, ``o`` projections, no biases, scale 1.

    Self-attention when ``source`` is None, cross-attention over ``source`` (the encoder output)
    otherwise. The relative position bias arrives inside ``mask``: the stack computes it once and
    every layer shares it.
    """

    packed_fused = None   # while decoding: q, k, v packed side by side, one matmul (packing.py)

    def __init__(self, d_model: int, n_heads: int, head_dim: int, dropout: float, is_cross_attention: bool = False):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        self.is_cross_attention = is_cross_attention
        inner = n_heads * head_dim
        self.q = Linear(d_model, inner, bias=False)
        self.k = Linear(d_model, inner, bias=False)
        self.v = Linear(d_model, inner, bias=False)
        self.o = Linear(inner, d_model, bias=False)

    def fusable_projections(self):
        """Self-attention's q, k, v, which read the same x, for decoding to pack as one matrix; None
        for cross-attention (k and v read the encoder output once) or where a method wraps one."""
        projections = (self.q, self.k, self.v)
        if self.is_cross_attention or any(type(projection) is not Linear for projection in projections):
            return None
        return projections

    def forward(self, x, source=None, mask=None, prefix_kv=None, cache: KVCache | None = None):
        # x: (B, T, C); source: (B, S, C) or None
        if source is None and self.packed_fused is not None and uses_packed(x):   # decoding: one matmul
            fused = packed_matmul(x, self.packed_fused)                     # (B, T, 3·H·D)
            query, keys, values = (split_heads(part, self.n_heads) for part in fused.chunk(3, dim=-1))
            if cache is not None:
                keys, values = cache.append(keys, values)                   # (B, H, S_past + T, D)
        elif cache is not None and cache.frozen:                             # cross-attention, later steps
            query = split_heads(self.q(x), self.n_heads)                     # (B, H, T, D)
            keys, values = cache.keys, cache.values
        else:
            query = split_heads(self.q(x), self.n_heads)                     # (B, H, T, D)
            kv_input = x if source is None else source
            keys = split_heads(self.k(kv_input), self.n_heads)              # (B, H, S, D)
            values = split_heads(self.v(kv_input), self.n_heads)            # (B, H, S, D)
            if cache is not None:
                keys, values = cache.append(keys, values)                   # (B, H, S_past + S, D)
                cache.frozen = source is not None
        keys, values = prepend_prefix(keys, values, prefix_kv)             # (B, H, m + S, D)
        dropout = self.dropout if self.training else 0.0
        out = attend(query, keys, values, mask, scale=1.0, dropout=dropout)  # (B, H, T, D)
        return self.o(merge_heads(out))                                      # (B, T, C)


class GPTAttention(nn.Module):
    """GPT-2's causal self-attention: one fused ``c_attn`` projection to Q, K, V, then ``c_proj``.

    The causal (and padding) mask arrives in ``mask``; scale is the usual 1/√D.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.c_attn = Linear(d_model, 3 * d_model)
        self.c_proj = Linear(d_model, d_model)

    def forward(self, x, mask=None, prefix_kv=None, cache: KVCache | None = None):
        # x: (B, T, C)
        query, keys, values = self.c_attn(x).split(x.shape[-1], dim=2)     # 3 × (B, T, C)
        query = split_heads(query, self.n_heads)                             # (B, H, T, D)
        keys = split_heads(keys, self.n_heads)
        values = split_heads(values, self.n_heads)
        if cache is not None:
            keys, values = cache.append(keys, values)                       # (B, H, S_past + T, D)
        keys, values = prepend_prefix(keys, values, prefix_kv)             # (B, H, m + S, D)
        dropout = self.dropout if self.training else 0.0
        out = attend(query, keys, values, mask, dropout=dropout)            # (B, H, T, D)
        return self.c_proj(merge_heads(out))                                 # (B, T, C)


def padding_mask(attention_mask, dtype, batch: int | None = None, length: int | None = None):
    """(B, S) of 1 = token, 0 = padding → additive (B, 1, 1, S): 0 or the dtype's minimum.

    ``batch`` and ``length``, where given, are what the mask must cover (B rows, S keys, cached ones
    included): the models pass them, so a mask of another shape is refused here, with both shapes,
    not deep inside the attention."""
    expected = {name: size for name, size in (("B", batch), ("S", length)) if size is not None}
    Dims("attention mask (1 = token, 0 = padding)", **expected).check("attention_mask", attention_mask, "B S")
    blocked = attention_mask[:, None, None, :] == 0
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(blocked, torch.finfo(dtype).min)


def causal_mask(query_length, key_length, dtype, device):
    """Additive (T, S): query i (at absolute position S - T + i) may look at keys 0 … S - T + i."""
    # exercise: build the (T, S) additive mask: 0 where key position <= query position, else finfo(dtype).min
    query_pos = torch.arange(key_length - query_length, key_length, device=device)[:, None]
    key_pos = torch.arange(key_length, device=device)[None, :]
    return torch.zeros(query_length, key_length, dtype=dtype, device=device).masked_fill(
        key_pos > query_pos, torch.finfo(dtype).min
    )
    # end exercise


def with_prefix_columns(mask, prefix_length, visible=None):
    """Give an additive mask (…, T, S) ``prefix_length`` leading columns for the prefix keys.

    Zeros (every query sees the prefix), or, with ``visible`` (B, T) bool, zeros for the queries
    it marks and the dtype's minimum for the rest: the infix of F5.7, which the queries of x may
    not see. Returns (B|1, 1, T, m + S), or the same shape as ``mask`` without ``visible``."""
    if mask is None or prefix_length == 0:
        return mask
    if visible is None:
        return F.pad(mask, (prefix_length, 0), value=0.0)
    batch, length = Dims("F5.7 infix", T=mask.shape[-2]).check("prefix_visible", visible, "B T").shape
    hidden = ~visible[:, None, :, None].expand(batch, 1, length, prefix_length)           # (B, 1, T, m)
    columns = torch.zeros(hidden.shape, dtype=mask.dtype, device=mask.device).masked_fill(
        hidden, torch.finfo(mask.dtype).min)
    return torch.cat([columns, mask.expand(batch, 1, *mask.shape[-2:])], dim=-1)          # (B, 1, T, m + S)
