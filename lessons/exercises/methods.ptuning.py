# EXERCISE COPY of minipeft/methods/ptuning.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_ptuning.py --exercise methods.ptuning
# Start over with:        python lessons/exercises/make.py
"""P-tuning (v1; Liu et al. 2021, "GPT Understands, Too"): trained prompt vectors placed around
the input by a template, produced by a small prompt encoder.

    F3.1  template T = {[P_0:i], x, [P_i+1:m], y}  →  {h_0 … h_i, e(x), h_i+1 … h_m, e(y)}; only h trains
    F3.2  h'_i = MLP([LSTM→(h_0:i) : LSTM←(h_i:m)]);  at inference the cached h' is used

    symbol      variable                               shape
    h_0 … h_m   self.prompt_embedding                  (m, C)
    LSTM→, ←    self.lstm_head (bidirectional)         (1, m, C) → (1, m, 2·hidden)
    MLP         self.mlp_head: 2h → 2h → C, ReLU
    h'          prompt()                               (m, C)
    i           options.virtual_tokens_before_input    prompt vectors before x; the other m - i follow x
    e(x)        model.embed(input_ids)                 (B, n, C)

Why an encoder: the paper argues the prompt vectors should depend on each other (the
bidirectional LSTM lets each h'_i see all h) and start off the embedding manifold less easily.
The encoder only exists while training: in ``eval()`` with gradients off (inference, generation)
h' is computed once and cached; the cache is recomputed when any encoder weight changes (their
version counters move on every in-place update: an optimizer step, a load).

Where the template goes: on T5, x is the encoder input, so ``[P_0:i], x, [P_i+1:m]`` is the new
encoder input (each row's trailing prompt vectors right after its own last real token, before
its padding: T5 batches are right-padded). On GPT, y follows x in the same sequence, so vectors
after x would have to go between x and y, which the model cannot know from ``input_ids``: there
all m vectors go before x (``virtual_tokens_before_input`` = m, the default, which is also what
``peft``'s P-tuning does everywhere). GPT's logits are returned for the input tokens only.

Options follow ``peft``'s ``PromptEncoderConfig``: ``encoder_reparameterization_type`` ("LSTM", the
paper's and our default; "MLP", ``peft``'s default, three linear layers), ``encoder_hidden_size``
(default C), ``encoder_num_layers`` (LSTM layers, 2), ``encoder_dropout``. Parameters:
m·C + LSTM + MLP (see tests/test_ptuning.py for the formula); ``peft`` counts the same for a
decoder-only model (for T5 it allocates 2·m prompt vectors and uses m, as for prompt tuning).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..shapes import Dims
from .base import PeftModel
from .prompt import check_room_for_virtual_tokens, check_virtual_token_count, drop_prompt_positions, model_width
from .registry import register

ENCODER_TYPES = ("LSTM", "MLP")


@register
class PTuning(PeftModel):
    name = "ptuning"

    @dataclasses.dataclass(frozen=True)
    class Options:
        num_virtual_tokens: int = 20
        virtual_tokens_before_input: int | None = None    # None: all of them before x
        encoder_reparameterization_type: str = "LSTM"
        encoder_hidden_size: int | None = None
        encoder_num_layers: int = 2
        encoder_dropout: float = 0.0

        def __post_init__(self):
            check_virtual_token_count(self.num_virtual_tokens)
            before = self.virtual_tokens_before_input
            if before is not None and not 0 <= before <= self.num_virtual_tokens:
                raise ValueError(f"virtual_tokens_before_input must be in [0, num_virtual_tokens="
                                 f"{self.num_virtual_tokens}], got {before}")
            kind = str(self.encoder_reparameterization_type).upper()
            if kind not in ENCODER_TYPES:
                raise ValueError(f"encoder_reparameterization_type must be one of {ENCODER_TYPES}, "
                                 f"got {self.encoder_reparameterization_type!r}")
            object.__setattr__(self, "encoder_reparameterization_type", kind)

    def attach(self):
        options, width = self.options, model_width(self.model)
        m = options.num_virtual_tokens
        self.before = m if options.virtual_tokens_before_input is None else options.virtual_tokens_before_input
        if not self.is_encoder_decoder and self.before != m:
            raise ValueError("on a decoder-only model P-tuning's vectors after x would fall between x and y, which "
                             "the model cannot locate: leave virtual_tokens_before_input unset (all before x)")
        check_room_for_virtual_tokens(self.model, m)
        hidden = options.encoder_hidden_size or width
        self.prompt_embedding = nn.Parameter(torch.randn(m, width))                     # h (m, C)
        if options.encoder_reparameterization_type == "LSTM":
            self.lstm_head = nn.LSTM(width, hidden, num_layers=options.encoder_num_layers,
                                     dropout=options.encoder_dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, width))
        self.cached_prompt, self.cache_key = None, None

    # -- the prompt encoder (F3.2) and its inference cache ------------------------------------------
    def encode_prompt(self):
        """F3.2  h' = MLP([LSTM→ : LSTM←]) of h, (m, C)."""
        h = self.prompt_embedding[None]                                                 # (1, m, C)
        if self.options.encoder_reparameterization_type == "MLP":
            return self.mlp_head(h)[0]
        raise NotImplementedError("exercise: F3.2 h'_i = MLP([LSTM→(h_0:i) : LSTM←(h_i:m)]): the bidirectional LSTM's outputs, then the MLP")

    def prompt(self):
        """h' (m, C): recomputed while training, computed once and cached for inference."""
        if self.training or torch.is_grad_enabled():
            return self.encode_prompt()
        key = tuple((param.data_ptr(), param._version) for param in self.parameters() if param.requires_grad)
        if key != self.cache_key:
            self.cached_prompt, self.cache_key = self.encode_prompt(), key
        return self.cached_prompt

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        return super().generate(*args, **kwargs)

    # -- the template (F3.1) ------------------------------------------------------------------------
    def model_inputs(self, **inputs) -> dict:
        inputs = dict(inputs)
        input_ids, embeds = inputs.pop("input_ids", None), inputs.pop("inputs_embeds", None)
        if embeds is None:
            if input_ids is None:
                raise ValueError("P-tuning places its prompt around the input: pass input_ids or inputs_embeds")
            embeds = self.model.embed(input_ids)                                        # (B, n, C)
        check_room_for_virtual_tokens(self.model, self.options.num_virtual_tokens, embeds.shape[1])
        embeds, mask = apply_template(self.prompt(), embeds, inputs.get("attention_mask"), self.before)
        inputs["inputs_embeds"] = embeds
        if inputs.get("attention_mask") is not None:
            inputs["attention_mask"] = mask
        return inputs

    def forward(self, **inputs):
        return drop_prompt_positions(self, super().forward(**inputs), self.options.num_virtual_tokens)


def apply_template(prompt, embeds, attention_mask, before: int):
    """F3.1  [P_0:i], x, [P_i+1:m] for every row: ``prompt`` (m, C) around ``embeds`` (B, n, C).

    With trailing vectors (i < m) each row's real tokens must come first (right padding): the
    m - i trailing vectors go right after them and the padding moves to the end. Returns
    (B, m+n, C) and the new mask (B, m+n) (None when no mask was given).
    """
    dims = Dims("F3.1 template")
    m, width = dims.check("prompt h'", prompt, "m C").shape
    batch, length, _ = dims.check("input embeddings e(x)", embeds, "B n C").shape
    device = embeds.device
    lengths = torch.full((batch,), length, device=device)
    if attention_mask is not None:
        dims.check("attention_mask", attention_mask, "B n")
        if before < m:
            lengths = attention_mask.sum(dim=1)                                          # (B,)
            right_padded = attention_mask.bool() == (torch.arange(length, device=device) < lengths[:, None])
            if not right_padded.all():
                raise ValueError("prompt vectors after x need right-padded inputs (real tokens first, then padding)")
    position = torch.arange(m + length, device=device)[None, :]                         # (1, m+n)
    lengths = lengths[:, None]                                                           # (B, 1)
    # Read every output position from the bank [h'_0 … h'_m-1, e(x)_0 … e(x)_n-1]:
    raise NotImplementedError("exercise: F3.1 the bank index of each output position: h' before x, e(x), h' after x, then the padding")
    bank = torch.cat([prompt.to(embeds.dtype).expand(batch, m, width), embeds], dim=1)  # (B, m+n, C)
    out = bank.gather(1, source[..., None].expand(batch, m + length, width))            # (B, m+n, C)
    if attention_mask is None:
        return out, None
    if before == m:                                 # plain prepend: any padding (GPT pads on the left) is kept
        return out, torch.cat([attention_mask.new_ones(batch, m), attention_mask], dim=1)
    return out, (position < m + lengths).to(attention_mask.dtype)                        # (B, m+n)
