"""Bottleneck adapters: a small residual MLP after a frozen sublayer.

Papers: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"; Pfeiffer et al.
2021, "AdapterFusion" (seed 000 §3.1 and §4, 001 "Adapter Tuning", 002, 003 §3.1.2 and §3.2,
004 eq. 4.1). Formulas from ../shared/FORMULAS.md:

    F1.1  Adapter(h) = h + W_up σ(W_down h)  (+ biases),   W_down: d → r,  W_up: r → d,  r ≪ d
    F1.2  parameters per adapter, with biases:  2dr + d + r      (d=768, r=64 → 100,096; seed 000 §4)
    F1.3  whole model, one adapter per layer, no biases:  N = L · (d·r + r·d)
    F1.4  identity at initialisation: W_down Xavier-normal (variance 2/(d_in + d_out), 003 §3.2.2),
          W_up and both biases exactly zero, so the branch outputs 0 and Adapter(h) = h
    F1.5  placement (option ``adapter_placement``):
            "houlsby"   after the attention and after the FFN of every block (003 §3.2.1, 004 fig. 4.5)
            "pfeiffer"  after the FFN only (Pfeiffer et al.: as good, half the adapters)
            "self_attn" after self-attention only, before the FFN (seed 000 fig. 2, the T5 document)
          and which stacks (option ``adapter_stacks``, T5: ("encoder", "decoder") by default; GPT's
          one stack is a decoder): T5's decoder alone, with ``cross_adapter``, is what tiny-t5's
          sentiment task prefers on dev (README, Results);
          trainable beside them: the layer norms (F1.5, 004; ``train_layer_norms``, on by default:
          on tiny-t5 sentiment, seeds 0/1/2, test accuracy 81.3/74.7/78.0 % with them, 75.7/67.8/79.7 %
          without; ``False`` trains the adapters alone, the count of F1.2/F1.3)

    symbol   variable                 shape
    h        the sublayer's output    (B, T, C)   C = d, the model width
    W_down   adapter.down.weight      (r, C)      (nn.Linear stores (out, in))
    W_up     adapter.up.weight        (C, r)
    r        bottleneck               option ``adapter_size`` (default 64, the seed's d_adapter),
                                      or C // ``reduction_factor`` (the `adapters` library's knob)
    σ        option ``non_linearity`` ("relu" as the seeds; "gelu", "tanh", "sigmoid", "swish")

Where the adapter sits: each chosen sublayer (T5 ``self_attn`` / ``cross_attn`` / ``ffn``, GPT
``attn`` / ``mlp``) is wrapped; the wrapper applies F1.1 to the sublayer's output, inside the
block's residual, so a block computes ``x + dropout(Adapter(sublayer(norm(x))))`` (Houlsby's
placement: the adapter sees the sublayer's output before the skip connection adds ``x``).

T5's decoder has a third sublayer, cross-attention. Houlsby's adapters were defined for an
encoder (BERT): "after attention" there means self-attention. We follow the `adapters` library
(AdapterHub), whose Houlsby configuration leaves cross-attention unadapted (``cross_adapter:
false``): under every placement the decoder's cross-attention gets an adapter only with
``cross_adapter=True``.

Adapters add depth: at inference they cost a little latency (seed 001: "adapter增加了模型的层数，
引入了额外的推理延迟", adapters add layers and so inference latency) and, unlike LoRA, cannot be
merged into the frozen weights (there is a non-linearity in between).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..gpt import GPTBlock
from ..shapes import Dims
from ..t5 import RMSNorm, T5Block
from .base import MethodLayer, PeftModel
from .registry import register

NON_LINEARITIES = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "swish": F.silu}

# Which stacks of blocks get adapters: a T5 block with cross-attention, and every GPT block, is a decoder block.
ADAPTER_STACKS = ("encoder", "decoder")
# Which sublayers each placement adapts, per block type (the names of the block's attributes).
PLACEMENTS = {
    "houlsby": {T5Block: ("self_attn", "ffn"), GPTBlock: ("attn", "mlp")},
    "pfeiffer": {T5Block: ("ffn",), GPTBlock: ("mlp",)},
    "self_attn": {T5Block: ("self_attn",), GPTBlock: ("attn",)},
}
DEFAULT_ADAPTER_SIZE = 64  # seed 000 §4: d_model = 768, d_adapter = 64


class BottleneckAdapter(nn.Module):
    """F1.1  ``Adapter(h) = h + W_up σ(W_down h)``, (…, C) → (…, C); the identity at initialisation."""

    def __init__(self, width: int, bottleneck: int, non_linearity: str = "relu", bias: bool = True):
        super().__init__()
        self.down = nn.Linear(width, bottleneck, bias=bias)     # W_down: (r, C)
        self.up = nn.Linear(bottleneck, width, bias=bias)       # W_up:   (C, r)
        self.non_linearity = non_linearity
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """F1.4: W_down Xavier-normal, W_up = 0 and biases = 0, so the branch is 0 and Adapter(h) = h."""
        # exercise: F1.4 W_down Xavier-normal; W_up and the biases chosen so that Adapter(h) = h at the start
        nn.init.xavier_normal_(self.down.weight)
        nn.init.zeros_(self.up.weight)
        for linear in (self.down, self.up):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        # end exercise

    def branch(self, h):                                         # h: (…, C)
        """F1.1's branch ``W_up σ(W_down h)``, (…, C) → (…, C): what the adapter adds to ``h``
        (AdapterFusion, F8.3, mixes these)."""
        Dims("F1.1 adapter", C=self.up.out_features).check("h", h, "... C")
        sigma = NON_LINEARITIES[self.non_linearity]
        # exercise: F1.1 the branch W_up σ(W_down h)
        return self.up(sigma(self.down(h)))                     # (…, C)
        # end exercise

    def forward(self, h):                                        # h: (…, C)
        # exercise: F1.1 Adapter(h) = h + the branch
        return h + self.branch(h)                               # (…, C)
        # end exercise

    def extra_repr(self) -> str:
        return f"non_linearity={self.non_linearity}"


class AdapterAfter(MethodLayer):
    """A sublayer followed by an adapter: ``Adapter(sublayer(…))``, called exactly like the sublayer."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)                   # (B, T, C)
        return self.adapter(out) if self.enabled else out


def bottleneck_size(options, width: int) -> int:
    """r: ``adapter_size``, or ``width // reduction_factor``, or 64."""
    if options.reduction_factor is not None:
        if width < options.reduction_factor:
            raise ValueError(f"reduction_factor={options.reduction_factor} is larger than the model "
                             f"width {width}: the bottleneck would be empty")
        return width // options.reduction_factor
    return options.adapter_size or DEFAULT_ADAPTER_SIZE


def stack_of(block: nn.Module) -> str:
    """"decoder" for T5's decoder blocks (they have cross-attention) and GPT's blocks, else "encoder"."""
    return "decoder" if isinstance(block, GPTBlock) or hasattr(block, "cross_attn") else "encoder"


def adapted_sublayers(block: nn.Module, options) -> tuple[str, ...]:
    """The names of the sublayers of ``block`` that get an adapter under ``options`` (its
    ``adapter_placement``, ``cross_adapter`` and ``adapter_stacks``)."""
    if stack_of(block) not in options.adapter_stacks:
        return ()
    names = PLACEMENTS[options.adapter_placement][type(block)]
    if options.cross_adapter and hasattr(block, "cross_attn"):
        names = names + ("cross_attn",)
    return names


@register
class Adapter(PeftModel):
    name = "adapter"

    @dataclasses.dataclass(frozen=True)
    class Options:
        adapter_placement: str = "houlsby"            # "houlsby" | "pfeiffer" | "self_attn" (F1.5)
        adapter_size: int | None = None               # bottleneck r; default 64 (seed 000)
        reduction_factor: int | None = None           # or r = C // reduction_factor
        non_linearity: str = "relu"                   # σ
        adapter_bias: bool = True                     # biases in W_down, W_up (F1.2 counts them, F1.3 not)
        cross_adapter: bool = False                   # also after T5's decoder cross-attention
        adapter_stacks: tuple[str, ...] = ADAPTER_STACKS   # T5: the encoder's blocks, the decoder's, or both
        train_layer_norms: bool = True                # also train every layer norm (F1.5, 004)

        def __post_init__(self):
            if self.adapter_placement not in PLACEMENTS:
                raise ValueError(f"adapter_placement must be one of {', '.join(PLACEMENTS)}, "
                                 f"got {self.adapter_placement!r}")
            if self.non_linearity not in NON_LINEARITIES:
                raise ValueError(f"non_linearity must be one of {', '.join(NON_LINEARITIES)}, "
                                 f"got {self.non_linearity!r}")
            stacks = (self.adapter_stacks,) if isinstance(self.adapter_stacks, str) else tuple(self.adapter_stacks)
            if not stacks or any(stack not in ADAPTER_STACKS for stack in stacks) or len(set(stacks)) != len(stacks):
                raise ValueError(f"adapter_stacks must name some of {ADAPTER_STACKS} once each, "
                                 f"got {self.adapter_stacks!r}")
            object.__setattr__(self, "adapter_stacks", tuple(stack for stack in ADAPTER_STACKS if stack in stacks))
            if self.adapter_size is not None and self.reduction_factor is not None:
                raise ValueError("give the bottleneck either as adapter_size (r) or as reduction_factor "
                                 "(r = width // reduction_factor), not both")
            for knob in ("adapter_size", "reduction_factor"):
                value = getattr(self, knob)
                if value is not None and (not isinstance(value, int) or value < 1):
                    raise ValueError(f"{knob} must be a positive integer, got {value!r}")

    def bottleneck(self, width: int) -> int:
        return bottleneck_size(self.options, width)

    def attach(self):
        options = self.options
        blocks = [module for module in self.model.modules() if isinstance(module, (T5Block, GPTBlock))]
        if not blocks:
            raise ValueError(f"adapters attach to T5 or GPT blocks; {type(self.model).__name__} has none")
        if options.cross_adapter and not any(hasattr(block, "cross_attn") for block in blocks):
            raise ValueError(f"cross_adapter=True, but {type(self.model).__name__} has no cross-attention "
                             f"(only an encoder-decoder such as T5 has)")
        if not any(stack_of(block) in options.adapter_stacks for block in blocks):
            raise ValueError(f"adapter_stacks={options.adapter_stacks} leaves {type(self.model).__name__} no block "
                             f"to adapt (a decoder-only model has only decoder blocks: adapter_stacks=('decoder',))")
        width = self.config.d_model if self.is_encoder_decoder else self.config.n_embd
        size = self.bottleneck(width)
        for block in blocks:
            for sublayer in adapted_sublayers(block, options):
                adapter = BottleneckAdapter(width, size, options.non_linearity, options.adapter_bias)
                setattr(block, sublayer, AdapterAfter(getattr(block, sublayer), adapter))
        if options.train_layer_norms:
            self.train_in_place(param for module in self.model.modules()
                                if isinstance(module, (RMSNorm, nn.LayerNorm)) for param in module.parameters())

    def adapters(self) -> list[BottleneckAdapter]:
        return [module for module in self.modules() if isinstance(module, BottleneckAdapter)]
