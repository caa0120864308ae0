"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

A soft prompt P of m vectors, each as wide as a token embedding, is put in front of the input
embeddings; the frozen model reads it like m extra tokens. Only P trains. Formulas
(../shared/FORMULAS.md):

    F2.1  X' = [P; X] ∈ R^{(m+n)×C},  P ∈ R^{m×C};  trainable parameters m·C
          (T5-XXL, C = 4096, m = 5 → 20,480)
    F2.2  init: random; from the 5,000 most frequent vocabulary tokens; from the class-label words
    F2.3  length 1–200; about 20 is usually enough

    symbol  variable                     shape
    P       self.prompt                  (m, C)
    X       inputs_embeds (model.embed)  (B, n, C)
    X'      the new inputs_embeds        (B, m + n, C)
    m       options.num_virtual_tokens

Where P goes: T5 reads its input with the encoder, so P is prepended to the encoder input (the
decoder is untouched); GPT has one stack, so P is prepended to its input and generation continues
after ``[P; x]``. The attention mask gets m ones in front (every query may look at P). On GPT the
m virtual tokens take positions 0 … m-1 of the learned position table, so ``m + n`` may not exceed
``n_positions``; T5's relative positions have no such limit.

GPT's logits come back for the input tokens only, (B, n, V), aligned with ``input_ids`` as the
base model's are: the m prompt positions predict nothing a loss would use. (``peft`` returns all
m + n positions and pads the labels with -100 instead: the same numbers, shifted.)

The parameter count differs from ``peft`` on T5: for an encoder-decoder ``peft`` allocates 2·m
prompt vectors (``num_transformer_submodules=2``) but only uses the first m, so it reports 2·m·C
trainable parameters where F2.1 (and this module) count m·C.

``prompt_tuning_init`` (``peft``'s option name; values case-insensitive):
    "random"  N(0, σ²) with σ the standard deviation of the model's own embedding table, so P
              starts at the scale of real tokens (``peft`` uses N(0, 1) whatever the model's scale).
    "vocab"   embeddings of tokens drawn from the first ``prompt_tuning_init_vocab_size`` ids
              (default 5,000, F2.2): SentencePiece and GPT-2's BPE number their tokens roughly by
              frequency, so the first ids are the frequent ones. ``None`` draws from the whole
              vocabulary (that is ``peft``'s "SAMPLE_VOCAB").
    "text"    embeddings of the words of ``prompt_tuning_init_text`` (tokenized with the tokenizer
              in directory ``tokenizer_name_or_path``) or of ``prompt_tuning_init_token_ids``,
              repeated or cut to m tokens as ``peft`` does (T5's end-of-sequence token is left out:
              these are words, not a sentence).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from ..shapes import Dims
from .base import PeftModel
from .registry import register

PROMPT_INITS = ("random", "vocab", "text")


@register
class PromptTuning(PeftModel):
    name = "prompt"

    @dataclasses.dataclass(frozen=True)
    class Options:
        num_virtual_tokens: int = 20
        prompt_tuning_init: str = "random"
        prompt_tuning_init_text: str | None = None
        prompt_tuning_init_token_ids: tuple[int, ...] | None = None
        tokenizer_name_or_path: str | None = None
        prompt_tuning_init_vocab_size: int | None = 5000

        def __post_init__(self):
            check_virtual_token_count(self.num_virtual_tokens)
            init = str(self.prompt_tuning_init).lower()
            if init == "sample_vocab":
                raise ValueError("prompt_tuning_init='SAMPLE_VOCAB' is peft's uniform draw from the whole vocabulary: "
                                 "use prompt_tuning_init='vocab', prompt_tuning_init_vocab_size=None")
            if init not in PROMPT_INITS:
                raise ValueError(f"prompt_tuning_init must be one of {PROMPT_INITS}, got {self.prompt_tuning_init!r}")
            object.__setattr__(self, "prompt_tuning_init", init)
            words_given = self.prompt_tuning_init_text is not None or self.prompt_tuning_init_token_ids is not None
            if (init == "text") != words_given:
                raise ValueError("prompt_tuning_init='text' goes with prompt_tuning_init_text (and "
                                 "tokenizer_name_or_path) or prompt_tuning_init_token_ids, and they only with it")

    def attach(self):
        options = self.options
        check_room_for_virtual_tokens(self.model, options.num_virtual_tokens)
        if options.prompt_tuning_init == "text":
            token_ids = words_to_token_ids(self.model, options.num_virtual_tokens, options.prompt_tuning_init_text,
                                           options.prompt_tuning_init_token_ids, options.tokenizer_name_or_path)
            initial = initial_embeddings(self.model, "text", options.num_virtual_tokens, token_ids=token_ids)
        else:
            initial = initial_embeddings(self.model, options.prompt_tuning_init, options.num_virtual_tokens,
                                         vocab_size=options.prompt_tuning_init_vocab_size)
        self.prompt = nn.Parameter(initial)                                          # (m, C)

    def model_inputs(self, **inputs) -> dict:
        return prepend_prompt(self.model, self.prompt, inputs)

    def forward(self, **inputs):
        logits = super().forward(**inputs)
        return drop_prompt_positions(self, logits, self.options.num_virtual_tokens)


# -- the input seam, shared with P-tuning v1 and the embedding-only prefix ablation ---------------------

def prepend_prompt(model, prompt, inputs: dict) -> dict:
    """F2.1  X' = [P; X]: the model's input embeddings with ``prompt`` in front, mask extended.

    ``prompt`` is (m, C), one prompt for the whole batch, or (B, m, C), one per example (a mixed
    batch, F2.5: ``mixed.py``)."""
    inputs = dict(inputs)
    input_ids, embeds = inputs.pop("input_ids", None), inputs.pop("inputs_embeds", None)
    if embeds is None:
        if input_ids is None:
            raise ValueError("a prompt is prepended to the input: pass input_ids (B, n) or inputs_embeds (B, n, C)")
        embeds = model.embed(input_ids)                                               # (B, n, C)
    dims = Dims("F2.1 X' = [P; X]", C=model_width(model))
    dims.check("input embeddings X", embeds, "B n C")
    dims.check("prompt P", prompt, "m C" if prompt.dim() == 2 else "B m C")
    batch, length, m = dims["B"], dims["n"], dims["m"]
    check_room_for_virtual_tokens(model, m, length)
    # exercise: F2.1 X' = [P; X] with P expanded over the batch (no copy), and m ones in front of the attention mask
    inputs["inputs_embeds"] = torch.cat([prompt.to(embeds.dtype).expand(batch, m, -1), embeds], dim=1)  # (B, m+n, C)
    mask = inputs.get("attention_mask")
    if mask is not None:
        inputs["attention_mask"] = torch.cat([mask.new_ones(batch, m), mask], dim=1)         # (B, m+n)
    # end exercise
    return inputs


def drop_prompt_positions(peft: PeftModel, logits, num_virtual_tokens: int):
    """GPT's logits (B, m+n, V) → (B, n, V): those of the input tokens, aligned with ``input_ids``.
    T5's logits are the decoder's and need no change."""
    if peft.enabled and not peft.is_encoder_decoder:
        return logits[:, num_virtual_tokens:]
    return logits


def model_width(model) -> int:
    return model.config.d_model if model.is_encoder_decoder else model.config.n_embd


def embedding_table(model):
    """The frozen token embedding matrix (V, C)."""
    return model.shared.weight if model.is_encoder_decoder else model.wte.weight


def check_virtual_token_count(num_virtual_tokens) -> None:
    if not isinstance(num_virtual_tokens, int) or isinstance(num_virtual_tokens, bool) or num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens must be a positive integer (the prompt/prefix length m), "
                         f"got {num_virtual_tokens!r}")


def check_room_for_virtual_tokens(model, num_virtual_tokens: int, input_length: int = 0) -> None:
    """Virtual tokens in the input take positions: on GPT, m + n must fit in ``n_positions``."""
    if model.is_encoder_decoder:
        return  # relative positions: no table to run out of
    limit = model.config.n_positions
    if num_virtual_tokens + max(input_length, 1) > limit:
        raise ValueError(f"{num_virtual_tokens} virtual tokens + {input_length} input tokens do not fit in this "
                         f"model's n_positions={limit} (virtual tokens in the input take positions too): "
                         f"use fewer virtual tokens or a shorter input")


# -- initialisation (F2.2) --------------------------------------------------------------------------------

@torch.no_grad()
def initial_embeddings(model, init: str, count: int, vocab_size: int | None = None, token_ids=None):
    """F2.2  ``count`` starting vectors (count, C): random, frequent-vocabulary tokens, or given words."""
    table = embedding_table(model)                                                   # (V, C)
    if init == "random":
        return torch.randn(count, table.shape[1], dtype=table.dtype, device=table.device) * table.std()
    if init == "vocab":
        candidates = torch.arange(min(vocab_size or table.shape[0], table.shape[0]), device=table.device)
        special = torch.tensor([model.config.pad_token_id, model.config.eos_token_id], device=table.device)
        candidates = candidates[~torch.isin(candidates, special)]
        token_ids = candidates[torch.randint(len(candidates), (count,), device=table.device)]
    return table[torch.as_tensor(token_ids, device=table.device)].clone()           # (count, C)


def words_to_token_ids(model, count: int, text: str | None, token_ids, tokenizer_path: str | None) -> list[int]:
    """The ids of the initialisation words, repeated or cut to ``count`` tokens (as ``peft`` does)."""
    if token_ids is None:
        if tokenizer_path is None:
            raise ValueError("initialising from text needs tokenizer_name_or_path (a directory with the model's "
                             "tokenizer files) or the token ids themselves")
        token_ids = tokenize_words(model, text, tokenizer_path)
    token_ids = [int(token_id) for token_id in token_ids]
    vocab_size = embedding_table(model).shape[0]
    if not token_ids or min(token_ids) < 0 or max(token_ids) >= vocab_size:
        raise ValueError(f"initialisation token ids must be a non-empty list of ids in [0, {vocab_size}), "
                         f"got {token_ids[:8]}")
    return (token_ids * math.ceil(count / len(token_ids)))[:count]


def tokenize_words(model, text: str, tokenizer_path: str) -> list[int]:
    """The ids of ``text`` under the tokenizer in ``tokenizer_path``: ``spiece.model`` (T5's, and
    the tiny bases', GPT included) or GPT-2's ``vocab.json`` + ``merges.txt``, whichever is there."""
    from ..tokenizers import GPT2Tokenizer, T5Tokenizer

    directory = Path(tokenizer_path)
    if (directory / "spiece.model").is_file():
        return T5Tokenizer.from_dir(directory).encode(text, add_eos=False)
    if (directory / "vocab.json").is_file():
        return GPT2Tokenizer.from_dir(directory).encode(text)
    raise ValueError(f"no tokenizer in {directory}: tokenizer_name_or_path must be a directory with "
                            f"spiece.model (SentencePiece) or vocab.json + merges.txt (GPT-2 BPE)")
