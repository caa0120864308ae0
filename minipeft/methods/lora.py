"""LoRA: a trainable low-rank update beside a frozen linear layer.

Paper: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (seed 001 "LoRA",
003 §3.1.3). Formulas from ../shared/FORMULAS.md:

    F6.1  W = W_0 + ΔW = W_0 + B A,   W_0 ∈ R^{d×k} frozen, B ∈ R^{d×r}, A ∈ R^{r×k}, r ≪ min(d, k)
          on an input, with the α/r scaling of F6.5:   h = W_0 x + (α/r) · B A x
    F6.2  B = 0 at the start, so ΔW = 0 and the model starts as the pretrained one; A random
    F6.3  merge for inference: W ← W_0 + (α/r) B A (no extra latency); unmerge restores W_0
    F6.4  trainable parameters per wrapped matrix: r (d + k)
    F6.5  scaling α/r (the reference library's knobs: ``r``, ``lora_alpha``, ``lora_dropout``)

    symbol   variable                       shape
    x        x                              (…, k)       k = in_features
    W_0      base_layer.weight              (d, k)       d = out_features (nn.Linear stores (out, in))
    A        lora_A.weight                  (r, k)
    B        lora_B.weight                  (d, r)
    r        rank  (option ``r``)
    α        option ``lora_alpha``
    α/r      scaling

Choices, following the reference library ``peft`` so that its users meet no surprise:

* ``lora_alpha`` defaults to 8 (peft's default; the seed's example uses 32 with r=8).
* A is Kaiming-uniform (peft's ``init_lora_weights=True``); ``init_lora_weights="gaussian"``
  draws A from N(0, 1/r²), closer to the paper's "A Gaussian" (F6.2). Either way B = 0.
* Dropout is applied to x on the LoRA path only: ``B A dropout(x)``; the frozen path is untouched.
* Layers are chosen by ``target_modules``: a list of names matched against the end of each
  linear layer's full name (``["q", "v"]`` matches ``encoder.blocks.0.self_attn.q``), or one
  regular expression matched against the whole full name. Default: the attention query and
  value projections, ``q``, ``v`` for T5 (self- and cross-attention) and the fused ``c_attn``
  for GPT-2, as peft does.
* ``merge()`` / ``unmerge()`` are called explicitly; ``train()`` / ``eval()`` never merge.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from ..functional import Dropout
from ..shapes import Dims
from .base import MethodLayer, PeftModel
from .registry import register

# The attention query and value projections, by model class (peft's defaults for t5 and gpt2).
DEFAULT_TARGETS = {"T5Model": ("q", "v"), "GPT": ("c_attn",)}


class LowRankLayer(MethodLayer):
    """A frozen ``nn.Linear`` (``base_layer``) plus an update ΔW that can be folded into its weight.

    What LoRA's layer and AdaLoRA's (adalora.py) share: ``merge``/``unmerge`` (F6.3) around the
    subclass's ``delta_weight()``."""

    base_layer: nn.Linear
    merged: bool = False

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self):
        """F6.3  W ← W_0 + ΔW: the layer now costs exactly what the frozen one did."""
        self.base_layer.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """F6.3  W ← W − ΔW: back to W_0 (up to float rounding, ~1e-7 relative)."""
        self.base_layer.weight -= self.delta_weight()
        self.merged = False


class LoRALinear(LowRankLayer):
    """``h = W_0 x + (α/r) B A dropout(x)``: a frozen ``nn.Linear`` plus a rank-r update (F6.1)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 init: bool | str = True):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank                                                 # F6.5  α/r
        out_features, in_features = base_layer.out_features, base_layer.in_features  # d, k
        like_base = dict(device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.lora_A = nn.Linear(in_features, rank, bias=False, **like_base)       # A: (r, k)
        self.lora_B = nn.Linear(rank, out_features, bias=False, **like_base)      # B: (d, r)
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()  # p = 0: no mask to draw
        self.merged = False
        self.reset_lora_parameters(init)

    @torch.no_grad()
    def reset_lora_parameters(self, init: bool | str = True):
        """F6.2: B = 0, so ΔW = B A = 0 and the wrapped layer starts as the frozen one; A random."""
        # exercise: F6.2 initialise A at random (Kaiming-uniform a=√5 as peft, or N(0, 1/r²) for "gaussian") and B so that ΔW = 0
        if init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / self.rank)
        else:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        # end exercise

    def delta_weight(self):
        """F6.1, F6.5  ΔW = (α/r) B A, (d, k): the update that ``merge`` adds to W_0."""
        # exercise: F6.1 the scaled update (α/r) B A as one (d, k) matrix
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)
        # end exercise

    def forward(self, x):                                           # x: (…, k)
        out = self.base_layer(x)                                    # (…, d)  W_0 x + b  (includes ΔW x once merged)
        if self.merged or not self.enabled:
            return out
        Dims("F6.1 LoRA", k=self.base_layer.in_features).check("x", x, "... k")
        # exercise: F6.1 h = W_0 x + (α/r) B A x, with dropout on x on the LoRA path only
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        # end exercise

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


def linear_layer_names(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear`` in the model (the layers LoRA can wrap)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def matches(name: str, target: str | tuple[str, ...]) -> bool:
    """peft's rule: a string is a regex over the full name; a list entry matches the name's end."""
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in target)


def find_targets(model: nn.Module, target: str | tuple[str, ...]) -> list[str]:
    """The linear layers ``target`` chooses; a target that chooses none is an error naming the choices."""
    names = linear_layer_names(model)
    chosen = [name for name in names if matches(name, target)]
    entries = [target] if isinstance(target, str) else target
    if not entries:
        raise ValueError("target_modules is empty: name the linear layers LoRA should wrap, e.g. ['q', 'v']")
    unmatched = [entry for entry in entries if not any(matches(name, entry if isinstance(target, str) else (entry,))
                                                       for name in names)]
    if unmatched:
        short = sorted({name.rsplit(".", 1)[-1] for name in names})
        example = names[0] if names else "(none)"
        raise ValueError(f"target_modules {unmatched[0]!r} matches no linear layer of "
                         f"{type(model).__name__}; its linear layers are named {', '.join(short)} "
                         f"(full names like {example!r}). Pass a list of those names, e.g. "
                         f"target_modules=['{short[0]}'], or a regex over the full names")
    return chosen


@register
class LoRA(PeftModel):
    name = "lora"
    title = "LoRA"                                   # in messages (AdaLoRA, a subclass, has its own)

    @dataclasses.dataclass(frozen=True)
    class Options:
        r: int = 8                                   # rank r of B A
        lora_alpha: float = 8                        # α: the update is scaled by α/r (F6.5)
        lora_dropout: float = 0.0                    # dropout on x, LoRA path only
        target_modules: tuple[str, ...] | str | None = None  # None: the model's query and value projections
        init_lora_weights: bool | str = True         # True: Kaiming-uniform A (peft); "gaussian": N(0, 1/r²)

        def __post_init__(self):
            if isinstance(self.target_modules, list):
                object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not isinstance(self.r, int) or self.r < 1:
                raise ValueError(f"r (the LoRA rank) must be a positive integer, got {self.r!r}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if self.init_lora_weights not in (True, "gaussian"):
                raise ValueError(f"init_lora_weights must be True (Kaiming-uniform A, as peft) or 'gaussian', "
                                 f"got {self.init_lora_weights!r}")

    def attach(self):
        options = self.options
        self.wrap_targets(lambda layer: LoRALinear(layer, options.r, options.lora_alpha, options.lora_dropout,
                                                   options.init_lora_weights))

    def wrap_targets(self, make_layer):
        """Replace every linear layer ``target_modules`` chooses (default: the query and value
        projections) by ``make_layer(layer)``."""
        target = self.options.target_modules
        if target is None:
            kind = type(self.model).__name__
            if kind not in DEFAULT_TARGETS:
                raise ValueError(f"no default {self.name} targets for {kind}: pass target_modules=[...] "
                                 f"(its linear layers: {', '.join(sorted(set(linear_layer_names(self.model))))})")
            target = DEFAULT_TARGETS[kind]
        for name in find_targets(self.model, target):
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, make_layer(getattr(parent, child)))

    def lora_layers(self) -> list[LowRankLayer]:
        return [module for module in self.modules() if isinstance(module, LowRankLayer)]

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self.lora_layers())

    def merge(self):
        """F6.3  Fold ΔW = (α/r) B A into every wrapped weight (for inference; the adapters keep their values)."""
        if self.merged:
            raise RuntimeError(f"{self.title} is already merged into the base weights; call unmerge() first")
        if not self.enabled:
            raise RuntimeError(f"{self.title} is switched off (inside disabled()): merge it after switching it back on")
        for layer in self.lora_layers():
            layer.merge()

    def unmerge(self):
        """F6.3  Subtract ΔW again: back to W_0 and the separate low-rank path."""
        if not self.merged:
            raise RuntimeError(f"{self.title} is not merged: there is nothing to unmerge")
        for layer in self.lora_layers():
            layer.unmerge()

    def set_enabled(self, enabled: bool):
        if not enabled and self.merged:
            raise RuntimeError(f"{self.title} is merged into the base weights, so the base cannot be run without it: "
                               "call unmerge() first")
        super().set_enabled(enabled)
