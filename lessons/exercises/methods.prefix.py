# EXERCISE COPY of minipeft/methods/prefix.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_prefix.py --exercise methods.prefix
# Start over with:        python lessons/exercises/make.py
"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every attention layer gets m extra key/value pairs in front of its own: trained vectors that
every query can attend to, at every layer, while the model stays frozen. Formulas
(../shared/FORMULAS.md):

    F5.1  h_i = P_θ[i, :] if i ∈ P_idx, else LM_φ(z_i, h_<i)        (φ frozen)
    F5.2  decoder-only z = [PREFIX; x; y];  encoder-decoder z = [PREFIX; x; PREFIX'; y]
    F5.3  K_prefix = [P_key; K],  V_prefix = [P_value; V],  head = Attn-op(Q, K_prefix, V_prefix)
    F5.5  P_θ[i, :] = MLP_θ(P'_θ[i, :]); after training the MLP is dropped, only P_θ is kept
    F5.6  parameters |P_idx| × dim(h) per layer, for the keys and for the values
    F5.7  ablations: embedding-only vs every layer; prefix [PREFIX; x; y] vs infix [x; INFIX; y];
          init from the activations of real words

    symbol      variable                                   shape
    P_θ         prefix_matrix() / self.prefix_table        (m, S·2·H·D): S prefixed attention layers
    P'_θ        self.prefix_embedding                      (m, C)
    MLP_θ       self.prefix_mlp: C → h → S·2·H·D, tanh     h = options.encoder_hidden_size (default C)
    P_key, P_value  prefix_kv(B)[layer]                    (B, H, m, D) each, expanded over B (no copy)
    m = |P_idx| options.num_virtual_tokens

Where the prefixes go (``prefix_on``). GPT: every block's self-attention. T5: the encoder's
self-attention ("encoder"), the decoder's self-attention ("decoder") and the decoder's
cross-attention ("cross"); all three is the paper's setting (F5.2: PREFIX before x for the
encoder, PREFIX' before y for the decoder) and our default. F5.6 gives

    trainable = m · 2 · H·D · S,   S = L (GPT),  L_enc + 2·L_dec (T5, all three)

so 20 tokens on GPT-2 small (L = 12, H·D = 768) are 368,640 parameters, ``peft``'s number.

What ``peft`` does on T5 (checked against ``peft`` 0.21 / ``transformers`` 5, and pinned by
tests/test_prefix.py). For an encoder-decoder it builds the same m × L·2·C table as for GPT and
hands it to the decoder as ``past_key_values``: a self-attention cache and a cross-attention
cache. It then replaces the cross-attention cache by an empty one (so the encoder output can fill
it), which discards the cross-attention half. What remains is a prefix on the decoder
self-attention only, nothing on the encoder: ``prefix_on=("decoder",)`` here, with the same
parameter count. (The table is doubled along its layer axis and regrouped four slots per layer,
so decoder layer l reads the rows of layer 2l mod L: with an even L, half of ``peft``'s table is
never used.) One difference stays: ``peft``'s prefix lives in the generation cache, so
``transformers`` treats it as m earlier tokens: T5 adds its relative position bias to the prefix
columns (the decoder tokens sit at positions m, m+1, …) and GPT-2 shifts its learned positions
by m. Our prefix has no position (F5.3 adds keys and values, nothing else): its columns get no
position bias and the input starts at position 0, so a prefix does not use up GPT's
``n_positions``. Pass ``position_ids=arange(m, m+n)`` to a GPT forward to get ``peft``'s layout;
T5's relative bias on the prefix columns cannot be expressed through the ``prefix_kv`` seam.

Which lengths are refused: m must be a positive integer. Since the prefix takes no positions it
has no upper limit from the model (only memory); the embedding-only ablation puts the prefix in
the input, where on GPT it does take positions, so there m + n ≤ ``n_positions`` is checked.

Reparametrisation (F5.5, ``prefix_projection=True``, the paper's choice and our default; ``peft``'s
default is off): P_θ = MLP(P'_θ), recomputed at every forward while training. ``fold()`` computes
P_θ once and drops P'_θ and the MLP; the folded method is a plain ``prefix_projection=False`` one.
A checkpoint (``save_trained``) holds both: P'_θ and the MLP to resume training, and the folded
``prefix_table`` for inference (``PrefixTuning.load_folded`` reads only that).

Initialisation. Random by default (P_θ ~ N(0, 1) without, P'_θ ~ N(0, 1) with the MLP, as
``peft``). F5.7's init from real words (``prefix_init_text`` + ``tokenizer_name_or_path``, or
``prefix_init_token_ids``): the frozen model reads the words and P_θ is set to the keys and values
it computes for them at every prefixed layer. With the MLP, P'_θ and the first layer stay random
and the output layer is solved by least squares so that MLP(P'_θ) equals those activations
(exactly when m ≤ h).

Infix ablation (``infix=True``, F5.7, decoder-only models): z = [x; INFIX; y]. The same trained
keys and values, but only the positions that predict y attend to them, so x is read by the frozen
model alone and the infix can steer only y (the document's reason why prefix tuning does slightly
better). Those positions run from the end of x on: the row's first real end token in train.py's
layout ``x </s> y </s>`` (the last token of a generation prompt ``x </s>``), else the row's last
real token, or ``infix_from`` (B,) passed with the inputs. Every generated token sees the infix.
On an encoder-decoder there is nothing to add: F5.2's PREFIX' before y, ``prefix_on=("decoder",
"cross")``, is already an infix (x is encoded without it), so ``infix=True`` is refused there.

Embedding-only ablation (``embedding_only=True``, F5.7): P_θ (m, C) sits at the embedding layer
only and the frozen model computes every higher activation of the prefix: the input seam of
prompt tuning (``prompt.prepend_prompt``), with this module's reparametrisation and
initialisation. On T5 that is the encoder input (the T5 model has no seam for decoder input
embeddings, so F5.2's PREFIX' is left out): pass ``prefix_on=("encoder",)``.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from torch import nn

from ..attention import KVCache
from ..shapes import Dims
from .base import PeftModel, base_fingerprint, read_checkpoint
from .prompt import (check_room_for_virtual_tokens, check_virtual_token_count, drop_prompt_positions, model_width,
                     prepend_prompt, words_to_token_ids)
from .registry import get_peft, register

PREFIX_PLACES = ("encoder", "decoder", "cross")


@register
class PrefixTuning(PeftModel):
    name = "prefix"

    @dataclasses.dataclass(frozen=True)
    class Options:
        num_virtual_tokens: int = 20
        prefix_on: tuple[str, ...] = PREFIX_PLACES
        prefix_projection: bool = True
        encoder_hidden_size: int | None = None
        embedding_only: bool = False
        infix: bool = False
        prefix_init_text: str | None = None
        prefix_init_token_ids: tuple[int, ...] | None = None
        tokenizer_name_or_path: str | None = None

        def __post_init__(self):
            check_virtual_token_count(self.num_virtual_tokens)
            places = (self.prefix_on,) if isinstance(self.prefix_on, str) else tuple(self.prefix_on)
            unknown = [place for place in places if place not in PREFIX_PLACES]
            if not places or unknown or len(set(places)) != len(places):
                raise ValueError(f"prefix_on must name some of {PREFIX_PLACES} once each, got {self.prefix_on!r}")
            object.__setattr__(self, "prefix_on", tuple(place for place in PREFIX_PLACES if place in places))
            if self.infix and self.embedding_only:
                raise ValueError("infix=True puts the infix at every attention layer; the embedding-only ablation "
                                 "puts the prefix in the input: choose one")
            if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
                raise ValueError(f"encoder_hidden_size must be positive, got {self.encoder_hidden_size}")

    # -- building ----------------------------------------------------------------------------------
    def attach(self):
        options, model = self.options, self.model
        m = options.num_virtual_tokens
        if options.infix and model.is_encoder_decoder:
            raise ValueError("infix=True is for decoder-only models: on an encoder-decoder the decoder's prefix "
                             "already sits between x and y (F5.2's PREFIX'); pass prefix_on=('decoder', 'cross')")
        self.slots = prefixed_attention_layers(model, options)                     # S × (stack, layer, kind)
        if model.is_encoder_decoder:
            self.heads, self.head_dim = model.config.num_heads, model.config.d_kv
        else:
            self.heads, self.head_dim = model.config.n_head, model.config.n_embd // model.config.n_head
        width = model_width(model) if options.embedding_only else len(self.slots) * 2 * self.heads * self.head_dim
        if options.embedding_only:
            check_room_for_virtual_tokens(model, m)
        if options.prefix_projection:
            hidden = options.encoder_hidden_size or model_width(model)
            self.prefix_embedding = nn.Parameter(torch.randn(m, model_width(model)))   # P'_θ (m, C)
            self.prefix_mlp = nn.Sequential(nn.Linear(model_width(model), hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.prefix_table = nn.Parameter(torch.randn(m, width))                    # P_θ (m, S·2·H·D)
        if options.prefix_init_text is not None or options.prefix_init_token_ids is not None:
            token_ids = words_to_token_ids(model, m, options.prefix_init_text, options.prefix_init_token_ids,
                                           options.tokenizer_name_or_path)
            self.start_from(self.word_activations(token_ids))

    # -- the prefix ---------------------------------------------------------------------------------
    def prefix_matrix(self):
        """P_θ (m, width): the table itself, or (F5.5) the MLP of P'_θ."""
        if self.options.prefix_projection:
            raise NotImplementedError("exercise: F5.5 P_θ[i,:] = MLP_θ(P'_θ[i,:])")
        return self.prefix_table

    def prefix_kv(self, batch: int, dtype=None):
        """F5.3's P_key, P_value for every prefixed layer, each (B, H, m, D), in the model's layout."""
        table = self.prefix_matrix()
        m = self.options.num_virtual_tokens
        Dims("F5.6 P_θ", m=m, W=len(self.slots) * 2 * self.heads * self.head_dim).check("prefix", table, "m W")
        pairs = split_prefix_tables(table.to(dtype or table.dtype)[None], self.slots, self.heads,
                                    self.head_dim)                                     # S × 2 × (1, H, m, D)
        # one P_θ for the whole batch: expanded, not copied
        pairs = [(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)) for keys, values in pairs]
        return arrange_prefix_kv(self.model, self.slots, pairs)                        # S × 2 × (B, H, m, D)

    def model_inputs(self, **inputs) -> dict:
        infix_from = inputs.pop("infix_from", None)
        if infix_from is not None and not self.options.infix:
            raise ValueError("infix_from says where the infix of infix=True becomes visible; this prefix has infix=False")
        if self.options.embedding_only:
            return prepend_prompt(self.model, self.prefix_matrix(), inputs)
        reference = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
        if reference is None:
            raise ValueError("prefix tuning needs input_ids (B, n) or inputs_embeds (B, n, C) to know the batch size")
        dtype = inputs["inputs_embeds"].dtype if inputs.get("inputs_embeds") is not None else self.model_dtype()
        inputs = {**inputs, "prefix_kv": self.prefix_kv(reference.shape[0], dtype)}
        if self.options.infix:
            inputs["prefix_visible"] = infix_visibility(reference, inputs.get("attention_mask"),
                                                        self.model.config.eos_token_id, infix_from)   # (B, n)
        return inputs

    def forward(self, **inputs):
        logits = super().forward(**inputs)
        if self.options.embedding_only:
            return drop_prompt_positions(self, logits, self.options.num_virtual_tokens)
        return logits

    def model_dtype(self):
        return next(self.model.parameters()).dtype

    # -- folding (F5.5) -----------------------------------------------------------------------------
    @torch.no_grad()
    def fold(self):
        """F5.5: compute P_θ = MLP(P'_θ) once, keep it as ``prefix_table`` and drop P'_θ and the MLP."""
        if not self.options.prefix_projection:
            return self
        table = self.prefix_matrix().detach().clone()
        del self.prefix_embedding, self.prefix_mlp
        self.prefix_table = nn.Parameter(table)
        self.options = dataclasses.replace(self.options, prefix_projection=False)
        return self

    def merge(self):
        """Prefix tuning has no weight to merge into; its inference-time simplification is :meth:`fold`."""
        return self.fold()

    def unmerge(self):
        raise NotImplementedError("a folded prefix has dropped its MLP: to resume training, load the checkpoint "
                                  "saved before folding (it holds P'_θ and the MLP)")

    # -- checkpoints: what resumes training and what inference needs ----------------------------------
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        state = super().trained_state_dict()
        if self.options.prefix_projection:
            state["prefix_table"] = self.prefix_matrix().detach()    # the folded P_θ, for inference
        return state

    @torch.no_grad()
    def load_trained_state_dict(self, state: dict[str, torch.Tensor]):
        state = dict(state)
        folded = state.pop("prefix_table", None) if self.options.prefix_projection else None
        super().load_trained_state_dict(state)
        if folded is not None and not torch.allclose(folded.to(self.prefix_embedding.dtype), self.prefix_matrix(),
                                                     rtol=1e-4, atol=1e-5):
            raise ValueError("the checkpoint's folded prefix_table is not MLP(prefix_embedding) of the same "
                             "checkpoint: the file was edited or mixed from two runs")

    @classmethod
    def load_folded(cls, model: nn.Module, path) -> PrefixTuning:
        """Inference only: rebuild the method without the MLP and load the folded ``prefix_table``."""
        metadata, tensors = read_checkpoint(path)
        if metadata["method"] != cls.name:
            raise ValueError(f"{path} holds a {metadata['method']!r} checkpoint, not {cls.name!r}")
        if base_fingerprint(model) != metadata["base_fingerprint"]:
            raise ValueError(f"{path} was trained on a different base model: load it onto the same base weights")
        options = {key: tuple(value) if isinstance(value, list) else value
                   for key, value in json.loads(metadata["options"]).items()}
        options.update(prefix_projection=False, prefix_init_text=None, prefix_init_token_ids=None)
        peft = get_peft(model, cls.name, **options)
        peft.load_trained_state_dict({"prefix_table": tensors["prefix_table"]})
        return peft

    # -- initialisation from real words (F5.7) ----------------------------------------------------------
    @torch.no_grad()
    def word_activations(self, token_ids: list[int]):
        """What the frozen model computes for the words at every prefixed place: (m, width)."""
        model, ids = self.model, torch.tensor([token_ids])                              # (1, m)
        if self.options.embedding_only:
            return model.embed(ids)[0]                                                  # (m, C)
        was_training = model.training
        model.eval()
        try:
            if model.is_encoder_decoder:
                encoder_cache = [(KVCache(), KVCache()) for _ in model.encoder.blocks]
                encoder_out = model.encoder(model.embed(ids), cache=encoder_cache)      # (1, m, C)
                decoder_cache = model.new_cache()
                model.decode(ids, encoder_out, cache=decoder_cache)
                caches = {("encoder", "self"): [c[0] for c in encoder_cache],
                          ("decoder", "self"): [c[0] for c in decoder_cache],
                          ("decoder", "cross"): [c[1] for c in decoder_cache]}
            else:
                cache = model.new_cache()
                model(input_ids=ids, cache=cache)
                caches = {("decoder", "self"): cache}
        finally:
            model.train(was_training)
        per_slot = [torch.stack([caches[stack, kind][layer].keys[0], caches[stack, kind][layer].values[0]])
                    for stack, layer, kind in self.slots]                               # S × (2, H, m, D)
        stacked = torch.stack(per_slot)                                                 # (S, 2, H, m, D)
        return stacked.permute(3, 0, 1, 2, 4).reshape(len(token_ids), -1)              # (m, S·2·H·D)

    @torch.no_grad()
    def start_from(self, target):
        """Make P_θ equal ``target`` (m, width): directly, or through the MLP by least squares."""
        if not self.options.prefix_projection:
            self.prefix_table.copy_(target)
            return
        hidden = self.prefix_mlp[1](self.prefix_mlp[0](self.prefix_embedding))          # (m, h)
        output = self.prefix_mlp[2]
        solution = torch.linalg.pinv(hidden) @ (target - output.bias)                   # (h, width)
        output.weight.copy_(solution.T)


def infix_visibility(reference, attention_mask, eos_token_id: int, infix_from=None):
    """F5.7's [x; INFIX; y]: which positions (B, n) attend to the infix, from ``infix_from`` (B,) on.

    ``reference`` is the input_ids (B, n) or, without them, the inputs_embeds (B, n, C). Without
    ``infix_from``: from each row's first real end token (the end of x in ``x </s> y </s>``), or, in
    a row without one (or given embeddings), from its last real token, the one that predicts y's
    first token."""
    batch, length = reference.shape[:2]
    positions = torch.arange(length, device=reference.device)                           # (n,)
    if infix_from is None:
        real = (torch.ones(batch, length, dtype=torch.bool, device=reference.device) if attention_mask is None
                else attention_mask.bool())                                             # (B, n)
        ends = real & (reference == eos_token_id) if reference.dim() == 2 else torch.zeros_like(real)
        first_end = torch.where(ends, positions, length).amin(dim=1)                    # (B,), n where none
        last_real = torch.where(real, positions, -1).amax(dim=1)                        # (B,)
        infix_from = torch.where(first_end < length, first_end, last_real)
    infix_from = torch.as_tensor(infix_from, device=reference.device)
    Dims("F5.7 infix", B=batch).check("infix_from", infix_from, "B")
    return positions[None, :] >= infix_from[:, None]                                     # (B, n)


def split_prefix_tables(tables, slots, heads: int, head_dim: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """F5.3 / F5.6: prefix tables (N, m, S·2·H·D), one P_θ per row, → one (P_key, P_value) pair per
    prefixed slot, each (N, H, m, D). PrefixTuning passes its one table (N = 1); a mixed batch
    (``mixed.py``) one table per example."""
    count, m = tables.shape[:2]
    raise NotImplementedError("exercise: cut each (m, S·2·H·D) table into slots, keys/values and heads → (S, 2, N, H, m, D)")
    return [(kv[s, 0], kv[s, 1]) for s in range(len(slots))]                            # S × 2 × (N, H, m, D)


def arrange_prefix_kv(model, slots, pairs):
    """One (P_key, P_value) pair per slot, in slot order → the ``prefix_kv`` argument the model takes:
    GPT a list, one pair per block; T5 ``{"encoder": [...], "decoder": [...]}``, one
    ``{"self" | "cross": pair}`` per block."""
    if not model.is_encoder_decoder:
        return pairs                                                                   # [(K, V) per block]
    structure = {stack: [{} for _ in getattr(model, stack).blocks]
                 for stack in ("encoder", "decoder") if any(slot[0] == stack for slot in slots)}
    for (stack, layer, kind), pair in zip(slots, pairs):
        structure[stack][layer][kind] = pair
    return structure


def prefixed_attention_layers(model, options) -> list[tuple[str, int, str]]:
    """The attention layers that get a prefix, as (stack, layer index, "self" | "cross")."""
    places = options.prefix_on
    if not model.is_encoder_decoder:
        if "decoder" not in places:
            raise ValueError(f"GPT has only decoder self-attention: prefix_on={places} leaves it nothing to prefix "
                             f"(use prefix_on=('decoder',))")
        return [("decoder", i, "self") for i in range(len(model.blocks))]
    if options.embedding_only and places != ("encoder",):
        raise ValueError("the embedding-only prefix sits in T5's encoder input (there is no decoder-embedding "
                         "seam): pass prefix_on=('encoder',)")
    slots = []
    if "encoder" in places:
        slots += [("encoder", i, "self") for i in range(len(model.encoder.blocks))]
    if "decoder" in places:
        slots += [("decoder", i, "self") for i in range(len(model.decoder.blocks))]
    if "cross" in places:
        slots += [("decoder", i, "cross") for i in range(len(model.decoder.blocks))]
    return slots
