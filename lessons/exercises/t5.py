# EXERCISE COPY of minipeft/t5.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_t5.py --exercise t5
# Start over with:        python lessons/exercises/make.py
"""T5: the encoder-decoder Transformer of the source documents (seed 000 §2), from ids to logits.

What makes T5 different from the Transformer of "Attention is all you need":

* RMS layer norm: ``y = w · x / sqrt(mean(x²) + ε)``: no mean subtraction, no bias.
* Attention without the 1/√D scale (F5.4): the scale is folded into the initialisation (F12.6).
* No position embeddings: a learned scalar per head and *relative-position bucket* is added to
  the attention scores. Buckets are exact for small distances and log-spaced up to
  ``relative_attention_max_distance``; the encoder's are bidirectional, the decoder's causal.
  The bias is computed once per stack (in HF's checkpoints it lives in the first layer) and
  every layer of that stack reuses it.
* Feed-forward ``wo · ReLU(wi · x)`` (T5 v1.0) or ``wo · (GELU(wi_0 · x) ⊙ wi_1 · x)`` (v1.1,
  flan-T5, mT5: "gated-gelu").
* Tied input/output embeddings with the hidden state rescaled by ``d_model^-0.5`` before the
  LM head (v1.0); a separate ``lm_head`` and no rescale in v1.1 / flan-T5 / mT5. The two are
  separate settings (``tie_word_embeddings``, ``scale_decoder_outputs``) because checkpoints
  saved by transformers 5 may tie the head *without* the rescale.
* The decoder starts from the pad token (id 0).

Data flow, with the shape legend of ../shared/STYLE.md (B batch, S source, T target, C width):

    input_ids (B, S) → shared → encoder blocks → encoder output (B, S, C)
    decoder_input_ids (B, T) → shared → decoder blocks (self-attn, cross-attn over the
    encoder output, FFN) → × C^-0.5 → shared.weightᵀ → logits (B, T, V)

Each block is pre-norm with a residual: ``x = x + dropout(sublayer(norm(x)))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, T5Attention, causal_mask, padding_mask, with_prefix_columns
from .functional import Dropout, check_token_ids, embedding, gelu_tanh, gradient_last, lm_head
from .generate import GenerationMixin
from .optim.init import t5_init_
from .packing import Linear
from .shapes import Dims


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (T5 v1.0) or "gated-gelu" (v1.1, flan-T5, mT5)
    tie_word_embeddings: bool = True   # LM head = shared.weight (else a separate lm_head)
    scale_decoder_outputs: bool = True  # multiply the decoder output by d_model^-0.5 before the head
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.feed_forward_proj not in ("relu", "gated-gelu"):
            raise ValueError(f"feed_forward_proj must be 'relu' or 'gated-gelu', got {self.feed_forward_proj!r}")


class RMSNorm(nn.Module):
    """T5's layer norm: ``y = w · x / sqrt(mean(x²) + ε)``: no mean subtraction, no bias."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):  # (…, C)
        raise NotImplementedError("exercise: y = weight · x / sqrt(mean(x², last axis) + eps)")


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """Map ``key_position - query_position`` to a bucket in [0, num_buckets).

    Bidirectional (encoder): half the buckets for keys before the query, half for keys after.
    Causal (decoder): only keys at or before the query count; later ones share bucket 0.
    Within each half, distances below ``max_exact = buckets / 2`` get a bucket each; larger ones
    share log-spaced buckets up to ``max_distance``, beyond which everything shares the last.
    """
    raise NotImplementedError("exercise: the buckets: sign half (bidirectional), exact below max_exact, log-spaced up to max_distance")


class RelativePositionBias(nn.Module):
    """One learned scalar per (bucket, head), added to the attention scores: (1, H, T, S)."""

    def __init__(self, config: T5Config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.embedding = nn.Embedding(self.num_buckets, config.num_heads)
        self._bucket_cache: dict = {}  # (T, S, offset, device) → (T, S) bucket ids; pure function of shape

    def buckets(self, query_length: int, key_length: int, offset: int, device):
        key = (query_length, key_length, offset, str(device))
        if key not in self._bucket_cache:
            # an ordinary tensor even when first asked for inside generate's inference_mode, so that
            # training can use it later (autograd refuses inference tensors)
            with torch.inference_mode(False):
                query_pos = torch.arange(offset, offset + query_length, device=device)[:, None]
                key_pos = torch.arange(key_length, device=device)[None, :]
                self._bucket_cache[key] = relative_position_bucket(
                    key_pos - query_pos, self.bidirectional, self.num_buckets, self.max_distance
                )
        return self._bucket_cache[key]

    def forward(self, query_length: int, key_length: int, offset: int = 0):
        """Bias for queries at positions offset … offset+T-1 and keys at 0 … S-1."""
        buckets = self.buckets(query_length, key_length, offset, self.embedding.weight.device)  # (T, S)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)                          # (1, H, T, S)


class FeedForward(nn.Module):
    """``wo · ReLU(wi · x)`` (v1.0) or ``wo · (GELU_tanh(wi_0 · x) ⊙ (wi_1 · x))`` (gated-gelu)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.feed_forward_proj == "gated-gelu"
        if self.gated:
            self.wi_0 = Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = Linear(config.d_model, config.d_ff, bias=False)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, x):  # (B, T, C)
        raise NotImplementedError("exercise: wo · ReLU(wi · x), or wo · (GELU_tanh(wi_0 · x) ⊙ wi_1 · x) when gated; dropout before wo")


class T5Block(nn.Module):
    """Self-attention, (decoder only) cross-attention, FFN; each ``x + dropout(f(norm(x)))``."""

    def __init__(self, config: T5Config, is_decoder: bool):
        super().__init__()
        attention_args = (config.d_model, config.num_heads, config.d_kv, config.dropout_rate)
        self.self_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.self_attn = T5Attention(*attention_args)
        if is_decoder:
            self.cross_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
            self.cross_attn = T5Attention(*attention_args, is_cross_attention=True)
        self.ffn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, x, self_mask, encoder_out=None, cross_mask=None, prefix_kv=None, cache=None):
        # x: (B, T, C); encoder_out: (B, S, C); prefix_kv: {"self"|"cross": (P_key, P_value)}
        prefix_kv = prefix_kv or {}
        self_cache, cross_cache = cache if cache is not None else (None, None)
        raise NotImplementedError("exercise: three pre-norm residual sublayers x = x + dropout(f(norm(x))): self-attn, cross-attn (if encoder_out), FFN")


class T5Stack(nn.Module):
    """A stack of blocks sharing one relative position bias, then a final RMS norm."""

    def __init__(self, config: T5Config, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        n_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.position_bias = RelativePositionBias(config, bidirectional=not is_decoder)
        self.blocks = nn.ModuleList(T5Block(config, is_decoder) for _ in range(n_layers))
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, embeds, attention_mask=None, encoder_out=None, encoder_mask=None,
                prefix_kv=None, cache=None):
        """embeds (B, T, C) → (B, T, C).

        ``attention_mask`` (B, T_total) marks real tokens (1) and padding (0) of this stack's
        input, including tokens already in ``cache``; ``encoder_mask`` (B, S) the encoder's.
        ``prefix_kv`` is a list, one entry per block, of ``{"self": (K, V), "cross": (K, V)}``.
        """
        batch, length, _ = embeds.shape
        past = cache[0][0].length if cache is not None else 0
        key_length = past + length
        # The mask every layer shares: relative position bias + causal + padding, (B|1, H, T, S).
        self_mask = self.position_bias(length, key_length, offset=past)
        if self.is_decoder:
            self_mask = self_mask + causal_mask(length, key_length, embeds.dtype, embeds.device)
        if attention_mask is not None:
            self_mask = self_mask + padding_mask(attention_mask, embeds.dtype, batch, key_length)
        self_mask = self_mask.clamp(min=torch.finfo(embeds.dtype).min)
        cross_mask = None if encoder_mask is None else padding_mask(encoder_mask, embeds.dtype,
                                                                    batch, encoder_out.shape[1])

        x = self.dropout(embeds)
        for i, block in enumerate(self.blocks):
            layer_prefix = prefix_kv[i] if prefix_kv is not None else {}
            x = block(
                x,
                self_mask=with_prefix_columns(self_mask, _prefix_length(layer_prefix.get("self"))),
                encoder_out=encoder_out,
                cross_mask=with_prefix_columns(cross_mask, _prefix_length(layer_prefix.get("cross")))
                if cross_mask is not None else None,
                prefix_kv=layer_prefix,
                cache=cache[i] if cache is not None else None,
            )
        return self.dropout(self.final_layer_norm(x))


def _prefix_length(prefix_kv) -> int:
    return 0 if prefix_kv is None else prefix_kv[0].shape[2]


class T5Model(GenerationMixin, nn.Module):
    """The whole encoder-decoder: ``model(input_ids=…, decoder_input_ids=…) → logits (B, T, V)``."""

    is_encoder_decoder = True

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.packed_head = None  # the head weight packed for decoding, inside generate() only (packing.py)
        self.init_weights()

    def init_weights(self):
        """T5's initialisation (F12.6), from the table in ``optim/init.py`` (``t5_init_std``).

        Every matrix is N(0, 1/fan_in), so activations keep unit scale, except the query, whose
        std also carries the 1/√D that T5's attention leaves out: std(q) = (C · D)^-1/2.
        Embeddings (and an untied head) are N(0, 1); norms start at 1.
        """
        t5_init_(self)

    # -- the seams: ids or embeddings in, encoder output reusable -------------------------------
    def embed(self, input_ids):
        """ids (B, T) → embeddings (B, T, C), refusing ids outside the vocabulary."""
        check_token_ids(input_ids, self.config.vocab_size)
        return embedding(input_ids, self.shared.weight, tied_to_head=self.lm_head is None)

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, prefix_kv=None):
        """(B, S) ids or (B, S, C) embeddings → encoder output (B, S, C)."""
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        Dims("T5 encoder input", C=self.config.d_model).check("inputs_embeds", embeds, "B S C")
        return self.encoder(embeds, attention_mask=attention_mask, prefix_kv=prefix_kv)

    def decode(self, decoder_input_ids, encoder_out, attention_mask=None, decoder_attention_mask=None,
               prefix_kv=None, cache=None, head=None):
        """Decoder ids (B, T) over encoder output (B, S, C) → logits (B, T, V). ``head``: the (V, C)
        LM head as :meth:`forward` passes it (through ``gradient_last``); None: ``head_weight()``."""
        hidden = self.decoder_features(decoder_input_ids, encoder_out, attention_mask, decoder_attention_mask,
                                       prefix_kv, cache)                               # (B, T, C)
        head = self.head_weight() if head is None else head
        return lm_head(hidden, head, packed=self.packed_head)                        # (B, T, V)

    def decoder_features(self, decoder_input_ids, encoder_out, attention_mask=None, decoder_attention_mask=None,
                         prefix_kv=None, cache=None):
        """What the LM head reads, (B, T, C): the decoder's output, rescaled when the head is tied."""
        hidden = self.decoder(
            self.embed(decoder_input_ids), attention_mask=decoder_attention_mask, encoder_out=encoder_out,
            encoder_mask=attention_mask, prefix_kv=prefix_kv, cache=cache,
        )                                                                              # (B, T, C)
        if self.config.scale_decoder_outputs:
            # With tied embeddings (T5 v1.0) the rescale keeps the logits at the scale an untied head learns.
            hidden = hidden * self.config.d_model ** -0.5
        return hidden

    def head_weight(self):
        """The LM head (V, C): the shared embedding when tied, else ``lm_head``."""
        return self.shared.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids=None, decoder_input_ids=None, attention_mask=None, decoder_attention_mask=None,
                inputs_embeds=None, encoder_out=None, prefix_kv=None):
        """Logits (B, T, V). ``prefix_kv``: ``{"encoder": [...], "decoder": [...]}``, one entry per
        block (see :meth:`T5Stack.forward`)."""
        if decoder_input_ids is None:
            raise ValueError("T5Model needs decoder_input_ids (B, T); for training use model.shift_right(labels)")
        prefix_kv = prefix_kv or {}
        # Taken before the embedding lookups, so the head's gradient reaches the tied matrix after
        # theirs and is summed in place (functional.gradient_last: saves two copies of its size).
        head = gradient_last(self.head_weight())
        if encoder_out is None:
            encoder_out = self.encode(input_ids, attention_mask, inputs_embeds, prefix_kv.get("encoder"))
        return self.decode(decoder_input_ids, encoder_out, attention_mask, decoder_attention_mask,
                           prefix_kv.get("decoder"), head=head)

    def shift_right(self, labels):
        """Teacher forcing: decoder input = [start, y_0 … y_{T-2}], with -100 (ignored) → pad."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    # -- generation (see generate.py) --------------------------------------------------------------
    def new_cache(self):
        """One (self-attention, cross-attention) cache pair per decoder block."""
        return [(KVCache(), KVCache()) for _ in self.decoder.blocks]

    def start_decoding(self, input_ids, attention_mask=None, inputs_embeds=None, prefix_kv=None,
                       prefix_visible=None):
        """Run the encoder once; return the decoding state and the first decoder tokens."""
        if prefix_visible is not None:
            raise ValueError("prefix_visible (the infix of F5.7) is a decoder-only seam: on an encoder-decoder "
                             "the decoder's prefix (prefix_on=('decoder', 'cross')) already sits between x and y")
        encoder_out = self.encode(input_ids, attention_mask, inputs_embeds, (prefix_kv or {}).get("encoder"))
        state = {"encoder_out": encoder_out, "attention_mask": attention_mask, "cache": self.new_cache(),
                 "prefix_kv": (prefix_kv or {}).get("decoder")}
        start = torch.full((encoder_out.shape[0], 1), self.config.decoder_start_token_id,
                           dtype=torch.long, device=encoder_out.device)
        return state, start

    def decoding_layers(self):
        """What runs at every decoding step (the encoder runs once, in ``start_decoding``)."""
        return self.decoder

    def step_features(self, state, tokens):
        """Feed new decoder tokens (B, t); return what the head reads for the next token (B, C)."""
        hidden = self.decoder_features(tokens, state["encoder_out"], state["attention_mask"],
                                       prefix_kv=state["prefix_kv"], cache=state["cache"])
        return hidden[:, -1]

    def reorder_state(self, state, batch_index):
        state["encoder_out"] = state["encoder_out"].index_select(0, batch_index)
        if state["attention_mask"] is not None:
            state["attention_mask"] = state["attention_mask"].index_select(0, batch_index)
        for self_cache, cross_cache in state["cache"]:
            self_cache.reorder(batch_index)
            cross_cache.reorder(batch_index)
        if state["prefix_kv"] is not None:
            state["prefix_kv"] = [{kind: tuple(t.index_select(0, batch_index) for t in kv)
                                   for kind, kv in layer.items()} for layer in state["prefix_kv"]]

