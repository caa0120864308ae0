"""Proxy-tuning: steer a model you do not fine-tune with the logits of a small pair that you did.

Seed 004 §4.2.3 ("加在输出", added at the output; Liu et al. 2024, "Tuning Language Models by
Proxy"). The model M is used as a black box: only its next-token scores. A small model M⁻ (the
anti-expert) is fine-tuned into M⁺ (the expert); at every decoding step the difference the
fine-tuning made is added to M's scores. Formulas from ../shared/FORMULAS.md:

    F9.1  s̃ = s_M + s_M⁺ − s_M⁻          (eq. 4.3, at every step t, from the same prefix x_<t)
          p_M̃(X_t | x_<t) = softmax(s̃)   (eq. 4.4), from which the next token is chosen

    symbol   variable              shape
    s_M      base scores           (B, V)   V: the shared vocabulary
    s_M⁺     expert scores         (B, V)
    s_M⁻     anti-expert scores    (B, V)
    s̃        steered               (B, V)

The three models must share the vocabulary: the same V, and id i the same token in all three
(the document: "这两个模型需要相同的词汇表"). We check what the models can tell us (V and the special
ids); that their tokenizers agree is yours to make sure of. No weight of any of them changes:
nothing trains here, the expert was trained before (with any method: a ``PeftModel`` is a model).

``alpha`` scales the steer, ``s_M + α (s_M⁺ − s_M⁻)``; ``alpha=1`` (the default) is eq. 4.3 and
``alpha=0`` is M alone. The document has no α; the paper discusses the same knob, and it makes
a useful experiment (lesson 13).

Decoding runs the three models side by side, each on its own key/value cache: the same token goes
into all three at every step, so each sees the same x_<t. A prompt or prefix method on one of them
runs through its own input seam, as in its own ``generate``.
"""

from __future__ import annotations

import torch
from torch import nn

from .generate import choose_next
from .methods.base import PeftModel
from .shapes import Dims


class ProxyTuned(nn.Module):
    """``base`` (M) steered by ``expert`` (M⁺) minus ``anti_expert`` (M⁻): F9.1.

    Call it like the models (teacher-forced scores, (B, T, V)) or ``generate`` with it (greedy by
    default; ``do_sample=True`` samples from eq. 4.4's softmax, with ``temperature`` and ``top_k``).
    """

    def __init__(self, base: nn.Module, expert: nn.Module, anti_expert: nn.Module, alpha: float = 1.0):
        super().__init__()
        self.base, self.expert, self.anti_expert = base, expert, anti_expert
        self.alpha = alpha
        check_shared_vocabulary({"base": base, "expert": expert, "anti_expert": anti_expert})
        self.config = inner(base).config
        self.is_encoder_decoder = inner(base).is_encoder_decoder

    def members(self):
        return (self.base, self.expert, self.anti_expert)

    def steer(self, base_scores, expert_scores, anti_expert_scores):
        """F9.1  s̃ = s_M + α (s_M⁺ − s_M⁻), any shape (…, V)."""
        # exercise: F9.1 the base's scores plus alpha times what fine-tuning changed in the small pair
        return base_scores + self.alpha * (expert_scores - anti_expert_scores)
        # end exercise

    def forward(self, **inputs):
        """Teacher-forced steered scores, (B, T, V): each model called with the same inputs."""
        base_scores, expert_scores, anti_expert_scores = (model(**inputs) for model in self.members())
        Dims("F9.1 proxy-tuning", V=base_scores.shape[-1]).check("expert scores", expert_scores, "... V")
        return self.steer(base_scores, expert_scores, anti_expert_scores)

    def generate(self, input_ids, max_new_tokens: int = 20, attention_mask=None, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None):
        """New token ids (B, ≤ max_new_tokens), as the models' own ``generate`` returns them."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, S), got shape {tuple(input_ids.shape)}: for one sequence "
                             f"pass ids[None]")
        with torch.inference_mode():
            decoders = [start_decoding(model, input_ids, attention_mask, max_new_tokens) for model in self.members()]
            eos, pad = self.config.eos_token_id, self.config.pad_token_id
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            new_tokens = []
            for _ in range(max_new_tokens):
                # exercise: F9.1 one step: each model's next-token scores from its own cache, steered, then a token
                scores = [model.decode_step(state, tokens) for model, state, tokens in decoders]   # 3 × (B, V)
                steered = self.steer(*scores)                                                       # (B, V)
                next_tokens = choose_next(steered, do_sample, temperature, top_k, generator)        # (B,)
                # end exercise
                next_tokens = next_tokens.masked_fill(finished, pad)
                new_tokens.append(next_tokens)
                finished |= next_tokens == eos
                if finished.all():
                    break
                # exercise: F9.1 every model reads the same x_<t: the chosen token goes into all three caches
                decoders = [(model, state, next_tokens[:, None]) for model, state, _ in decoders]
                # end exercise
            generated = torch.stack(new_tokens, dim=1)                                              # (B, ≤ N)
        return generated.clone()


def inner(model: nn.Module) -> nn.Module:
    """The T5Model or GPT itself (a PeftModel wraps one)."""
    return model.model if isinstance(model, PeftModel) else model


def start_decoding(model: nn.Module, input_ids, attention_mask, max_new_tokens: int):
    """(the base model, its decoding state, its first tokens), through the method's input seam if any."""
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if isinstance(model, PeftModel) and model.enabled:
        inputs = model.model_inputs(**inputs)
    network = inner(model)
    given = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
    network.check_generation_length(given.shape[1], max_new_tokens)
    state, tokens = network.start_decoding(inputs.get("input_ids"), inputs.get("attention_mask"),
                                           inputs.get("inputs_embeds"), inputs.get("prefix_kv"),
                                           inputs.get("prefix_visible"))
    return network, state, tokens


SPECIAL_IDS = ("pad_token_id", "eos_token_id")


def check_shared_vocabulary(models: dict[str, nn.Module]):
    """One error naming what differs: the kind of model, the vocabulary size, the special ids."""
    kinds = {name: "encoder-decoder" if inner(model).is_encoder_decoder else "decoder-only"
             for name, model in models.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"proxy-tuning decodes the three models step by step from the same tokens, so they must "
                         f"be of one kind; got {', '.join(f'{n}: {k}' for n, k in kinds.items())}")
    for what in ("vocab_size",) + SPECIAL_IDS:
        values = {name: getattr(inner(model).config, what) for name, model in models.items()}
        if len(set(values.values())) > 1:
            raise ValueError(f"proxy-tuning adds the models' scores id by id (F9.1), so they need one vocabulary; "
                             f"their {what} differ: {', '.join(f'{n} {v}' for n, v in values.items())}. Use an "
                             f"expert and anti-expert built on the base's tokenizer")
