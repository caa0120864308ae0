"""GPT-2: the decoder-only Transformer, from ids to logits.

    input_ids (B, T) → wte + wpe (learned positions) → blocks → ln_f → wteᵀ (tied head) → logits (B, T, V)

Each block is pre-LayerNorm with residuals:

    x = x + c_proj(attention(ln_1(x)))             causal self-attention (F5.4, scale 1/√D)
    x = x + c_proj(GELU_tanh(c_fc(ln_2(x))))       feed-forward, width 4C

Unlike T5, GPT-2's layers have biases and a real LayerNorm (mean subtracted), its positions are a
learned table of ``n_positions`` rows (so sequences are limited to that length), and the causal
LM objective (F11.1) predicts token t+1 from tokens ≤ t.

Names follow the checkpoint (``c_attn``, ``c_proj``, ``c_fc``) so a LoRA target pattern means the
same here as in the reference library. The checkpoint stores those as ``Conv1D`` with weights
(in, out); here they are ``nn.Linear`` (out, in): ``convert.py`` transposes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import GPTAttention, KVCache, causal_mask, padding_mask, with_prefix_columns
from .functional import Dropout, check_token_ids, embedding, gelu_tanh, gradient_last, lm_head
from .generate import GenerationMixin
from .optim.init import gpt2_init_
from .packing import Linear
from .shapes import Dims


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # feed-forward width; None means 4 · n_embd
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.1
    eos_token_id: int = 50256
    pad_token_id: int = 50256  # GPT-2 has no pad token; padding reuses end-of-text

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for name in ("eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size}): "
                                 f"set it when you shrink vocab_size")


class MLP(nn.Module):
    """``c_proj(GELU_tanh(c_fc(x)))``, (B, T, C) → (B, T, 4C) → (B, T, C)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Linear(config.n_embd, inner)
        self.c_proj = Linear(inner, config.n_embd)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))


class GPTBlock(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTAttention(config.n_embd, config.n_head, config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x, mask, prefix_kv=None, cache=None):  # x: (B, T, C)
        x = x + self.dropout(self.attn(self.ln_1(x), mask=mask, prefix_kv=prefix_kv, cache=cache))
        return x + self.mlp(self.ln_2(x))


class GPT(GenerationMixin, nn.Module):
    """``model(input_ids=…, attention_mask=None) → logits (B, T, V)``."""

    is_encoder_decoder = False

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = None  # None: the head is tied to wte (a method such as probing may set its own)
        self.packed_head = None  # the head weight packed for decoding, inside generate() only (packing.py)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """GPT-2's initialisation (F12.6), from the table in ``optim/init.py`` (``gpt2_init_std``):
        N(0, 0.02) for embeddings and matrices, zero biases, LayerNorm scales 1, and the
        projections that write into the residual stream (``c_proj``) scaled by 1/√(2L), since
        each of the 2L sublayers adds its output to the same stream."""
        gpt2_init_(self)

    def embed(self, input_ids):
        """ids (B, T) → token embeddings (B, T, C), refusing ids outside the vocabulary."""
        check_token_ids(input_ids, self.config.vocab_size)
        return embedding(input_ids, self.wte.weight, tied_to_head=self.lm_head is None)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, prefix_kv=None, cache=None,
                position_ids=None, prefix_visible=None):
        """Logits (B, T, V): the head (tied to ``wte``) applied to :meth:`features`."""
        head = gradient_last(self.head_weight())  # before the lookup: see functional.gradient_last
        hidden = self.features(input_ids, attention_mask, inputs_embeds, prefix_kv, cache, position_ids,
                               prefix_visible)
        return lm_head(hidden, head, packed=self.packed_head)                      # (B, T, V)

    def features(self, input_ids=None, attention_mask=None, inputs_embeds=None, prefix_kv=None, cache=None,
                 position_ids=None, prefix_visible=None):
        """The last hidden states (B, T, C), after ``ln_f``.

        ``attention_mask`` (B, S_past + T): 1 for tokens, 0 for padding (also of cached tokens).
        ``prefix_kv``: one ``(P_key, P_value)`` per block, each (B, H, m, D) (prefix tuning, F5.3).
        ``prefix_visible``: (B, T) bool, which new positions may attend to the prefix (default all;
        the infix ``[x; INFIX; y]`` of F5.7 hides it from the positions of x).
        ``cache``: one :class:`KVCache` per block (generation).
        """
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, _ = Dims("GPT input", C=self.config.n_embd).check("inputs_embeds", embeds, "B T C").shape
        past = cache[0].length if cache is not None else 0
        padding = None if attention_mask is None else padding_mask(attention_mask, embeds.dtype, batch, past + length)
        if position_ids is None:
            position_ids = self.position_ids(attention_mask, past, length, embeds.device)
        if int(position_ids.max()) >= self.config.n_positions:
            raise ValueError(f"sequence of {past + length} tokens is longer than this model's "
                             f"n_positions={self.config.n_positions}: truncate the input or generate fewer tokens")
        x = self.dropout(embeds + self.wpe(position_ids))                          # (B, T, C)

        # The mask every block shares, (B|1, 1, T, S): causal, plus padding when given.
        mask = causal_mask(length, past + length, x.dtype, x.device)
        if padding is not None:
            mask = (mask + padding).clamp(min=torch.finfo(x.dtype).min)
        for i, block in enumerate(self.blocks):
            layer_prefix = prefix_kv[i] if prefix_kv is not None else None
            prefix_length = 0 if layer_prefix is None else layer_prefix[0].shape[2]
            x = block(x, with_prefix_columns(mask, prefix_length, prefix_visible), layer_prefix,
                      cache[i] if cache is not None else None)
        return self.ln_f(x)                                                        # (B, T, C)

    def head_weight(self):
        """The LM head (V, C): the token embedding when tied, else ``lm_head``."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    @staticmethod
    def position_ids(attention_mask, past: int, length: int, device):
        """Positions of the new tokens: count real tokens only, so left padding does not shift them."""
        if attention_mask is None:
            return torch.arange(past, past + length, device=device)[None, :]      # (1, T)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)          # (B, S_past + T)
        return positions[:, past:past + length]                                    # (B, T)

    # -- generation (see generate.py) --------------------------------------------------------------
    def new_cache(self):
        return [KVCache() for _ in self.blocks]

    def check_generation_length(self, prompt_length: int, max_new_tokens: int):
        """The last new token is not fed back, so n prompt + N new tokens take n + N - 1 positions.
        Checked before decoding, so the answer does not depend on whether an early end token stops it."""
        if prompt_length + max_new_tokens - 1 > self.config.n_positions:
            raise ValueError(f"a prompt of {prompt_length} tokens and max_new_tokens={max_new_tokens} need "
                             f"{prompt_length + max_new_tokens - 1} positions, more than this model's "
                             f"n_positions={self.config.n_positions}: truncate the input or generate fewer tokens")

    def start_decoding(self, input_ids, attention_mask=None, inputs_embeds=None, prefix_kv=None,
                       prefix_visible=None):
        """The prompt is the first step: the state starts empty and the prompt is fed as tokens.
        ``prefix_visible`` (B, prompt length) applies to the prompt; every new token sees the prefix."""
        state = {"cache": self.new_cache(), "attention_mask": attention_mask, "prefix_kv": prefix_kv,
                 "inputs_embeds": inputs_embeds, "prefix_visible": prefix_visible}
        if input_ids is None:  # prompt given as embeddings: no prompt tokens, (B, 0)
            input_ids = torch.zeros(inputs_embeds.shape[0], 0, dtype=torch.long, device=inputs_embeds.device)
        return state, input_ids

    def decoding_layers(self):
        """What runs at every decoding step: every block."""
        return self.blocks

    def step_features(self, state, tokens):
        """Feed new tokens (B, t); return what the head reads for the next token (B, C)."""
        mask = state["attention_mask"]
        if mask is not None and state["cache"][0].length > 0:
            mask = torch.cat([mask, mask.new_ones(tokens.shape)], dim=1)       # the new tokens are real
            state["attention_mask"] = mask
        embeds, state["inputs_embeds"] = state["inputs_embeds"], None           # prompt embeddings, first step only
        visible, state["prefix_visible"] = state["prefix_visible"], None        # the prompt's, first step only
        hidden = self.features(input_ids=tokens if embeds is None else None, inputs_embeds=embeds,
                               attention_mask=mask, prefix_kv=state["prefix_kv"], cache=state["cache"],
                               prefix_visible=visible)
        # Only the last position chooses the next token: the head never reads the rest of the prompt.
        return hidden[:, -1]                                                       # (B, C)

    def reorder_state(self, state, batch_index):
        for first_step_only in ("inputs_embeds", "prefix_visible"):
            if state[first_step_only] is not None:
                state[first_step_only] = state[first_step_only].index_select(0, batch_index)
        for cache in state["cache"]:
            cache.reorder(batch_index)
        if state["attention_mask"] is not None:
            state["attention_mask"] = state["attention_mask"].index_select(0, batch_index)
        if state["prefix_kv"] is not None:
            state["prefix_kv"] = [tuple(t.index_select(0, batch_index) for t in kv) for kv in state["prefix_kv"]]
