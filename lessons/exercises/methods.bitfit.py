# EXERCISE COPY of minipeft/methods/bitfit.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_bitfit.py --exercise methods.bitfit
# Start over with:        python lessons/exercises/make.py
"""BitFit: train only the bias terms of the frozen model.

Paper: Ben Zaken, Ravfogel, Goldberg 2021, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models" (named in seed 002, "Adaptation 总结": LoRA, BitFit
as lightweight fine-tuning that trains < 1 % of the parameters, F10.4). Formula ids from
../shared/FORMULAS.md:

    F10.3  BitFit: θ = (W, b); W frozen, only the biases b train
    F10.4  lightweight methods train < 1 % of the parameters

    symbol   variable
    b        every parameter named ``…bias``: GPT-2's ``c_attn``, ``c_proj``, ``c_fc`` biases and
             the LayerNorm shifts ``ln_1``, ``ln_2``, ``ln_f`` (the paper trains both kinds)

Nothing is added to the model: BitFit only chooses which existing parameters train, so it
changes the base's own tensors in place. ``disabled()`` still runs the untouched base (the
original biases are kept, see ``PeftModel.train_in_place``), and a checkpoint holds just the
biases. GPT-2 small: 102,144 biases of 124M parameters, 0.08 %.

T5 has no biases at all (its linear layers are ``bias=False`` and RMSNorm has a scale but no
shift), so BitFit on T5 would train nothing and is refused. The documented alternative is the
layer norms, which the documents list as trainable beside adapters (F1.5, seed 004 §4.2):
``bitfit_fallback="layer_norm"`` trains every norm's scale instead (what ``peft`` calls LN
tuning; t5-small: 16,384 parameters). On a model that has biases the fallback is not used.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..t5 import RMSNorm
from .base import PeftModel
from .registry import register

FALLBACKS = (None, "layer_norm")


def bias_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """F10.3: the model's bias terms, by name."""
    raise NotImplementedError("exercise: F10.3 every parameter of the model whose name says it is a bias")


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every parameter of the model's layer norms (RMSNorm scales; LayerNorm scales and shifts)."""
    return [(f"{module_name}.{name}", param) for module_name, module in model.named_modules()
            if isinstance(module, (RMSNorm, nn.LayerNorm)) for name, param in module.named_parameters()]


@register
class BitFit(PeftModel):
    name = "bitfit"

    @dataclasses.dataclass(frozen=True)
    class Options:
        bitfit_fallback: str | None = None   # "layer_norm": for a model without biases (T5), train the norms

        def __post_init__(self):
            if self.bitfit_fallback not in FALLBACKS:
                raise ValueError(f"bitfit_fallback must be None or 'layer_norm', got {self.bitfit_fallback!r}")

    def attach(self):
        biases = bias_parameters(self.model)
        if biases:
            self.train_in_place(param for _, param in biases)
        elif self.options.bitfit_fallback == "layer_norm":
            self.train_in_place(param for _, param in norm_parameters(self.model))
        else:
            raise ValueError(
                f"{type(self.model).__name__} has no bias terms (T5's linear layers have bias=False and its "
                f"RMSNorm has a scale but no shift), so BitFit (F10.3: train only the biases) would train "
                f"nothing. Pass bitfit_fallback='layer_norm' to train the layer-norm scales instead (the "
                f"documented alternative, F1.5: layer norms train beside adapters), or use a model with "
                f"biases such as GPT-2")
