"""AdapterFusion: attention over N frozen task adapters, at every place the adapters sit.

Paper: Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer
Learning" (seed 004 §4.2.2, eq. 4.2, fig. 4.6). Formulas from ../shared/FORMULAS.md:

    F8.1  stage 1, knowledge extraction: N adapters (F1), one per task. Single-task adapters
          (ST-A) are trained each on its own (``train.py --method adapter``, one run per task);
          multi-task adapters (MT-A) would be trained jointly.
    F8.2  stage 2, knowledge composition:  Ψ ← argmin_Ψ L_n(D_n; Θ, Φ_1, …, Φ_N, Ψ)
          on the target task n; the base Θ and every adapter Φ_t frozen, only the fusion Ψ trains.
    F8.3  in every layer, "the output of the feed-forward layer is the Query, the outputs of the
          adapters are the Keys and Values" (004), attention over the N adapters:

              q   = h W_Q + b_Q                      the sublayer's output h: (B, T, C) → (B, T, C)
              k_t = δ_t W_K + b_K                    δ_t = W_up,t σ(W_down,t h), adapter t's branch
              v_t = δ_t W_V                          (B, T, N, C), t = 1 … N
              s_t = softmax_t(q · k_t)               (B, T, N): a weight per token and adapter
              o   = h + Σ_t s_t v_t                  (B, T, C)

    symbol   variable                                     shape
    h        the output of the sublayer the adapters follow   (B, T, C)
    δ_t      ``adapter.branch(h)`` of fused adapter t       (B, T, N, C) stacked
    W_Q,b_Q  ``fusion.query``  (nn.Linear, C → C)            Ψ
    W_K,b_K  ``fusion.key``    (nn.Linear, C → C)            Ψ
    W_V      ``fusion.value``  (nn.Linear, C → C, no bias)   Ψ (``value=False``: W_V = I, "static" fusion)
    s        ``FusedAdapters.last_weights``                 (B, T, N)

One reading to settle. Adapter t's *output* is ``h + δ_t`` (F1.1), and the seed makes it Key and
Value. ``h`` is the same in all N outputs, so in the Key it adds the same number ``q · (h W_K)``
to every score and the softmax cancels it: keys from ``δ_t`` or from ``h + δ_t`` give the same
weights. In the Value it would pass ``h`` through ``W_V``; we follow the reference library
(AdapterHub's ``residual_before=False``) and add ``h`` after the mixing, so ``W_V`` mixes only what
the adapters add. ``residual_before=True`` is the seed's literal reading, ``Σ_t s_t (h + δ_t) W_V``.

Initialisation (AdapterHub's "dynamic" fusion): W_Q, W_K ~ N(0, 0.02²), biases 0, so every score
starts near 0 and s_t near 1/N: the fused model starts as the *average* of the adapters' branches;
W_V = I (+ 1e-6 off the diagonal), and training adds ``0.01 · ‖I − W_V‖²_F`` per fusion
(``regularization``) so that W_V stays near the identity unless the task needs otherwise.

Parameters: ``3C² + 2C`` per place (``2C² + 2C`` without W_V), where the adapters sit: Houlsby
placement has twice the places of Pfeiffer's. That is more than the adapters themselves (a
bottleneck of r has ``2Cr + C + r``): 004 notes that sharing the fusion module across places
reduces it further, ``share_fusion=True``: one Ψ for all.

A fusion checkpoint holds Ψ only; it refers to its N adapter checkpoints by path (as AdapterHub
saves a fusion apart from the adapters it names) and records a hash of each, so loading it with
changed adapter files is refused. The adapters must have been trained without their layer norms
(``--option train_layer_norms=false``): the base's norms are shared by all N adapters and frozen
(Θ in F8.2), so a norm each adapter changed for itself has no place here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..gpt import GPTBlock
from ..shapes import Dims
from ..t5 import T5Block
from .adapter import Adapter, BottleneckAdapter, adapted_sublayers, bottleneck_size
from .base import MethodLayer, PeftModel, read_checkpoint
from .registry import register

VALUE_REGULARIZATION = 0.01   # AdapterHub's weight on ‖I − W_V‖²


class FusionAttention(nn.Module):
    """F8.3  ``o = h + Σ_t softmax_t(q · k_t) v_t``: attention of each token over N adapter branches."""

    def __init__(self, width: int, value: bool = True):
        super().__init__()
        self.query = nn.Linear(width, width)                   # W_Q, b_Q: (C, C), (C,)
        self.key = nn.Linear(width, width)                     # W_K, b_K
        self.value = nn.Linear(width, width, bias=False) if value else None   # W_V
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Q, K small (every s_t starts near 1/N); W_V the identity (+1e-6 off the diagonal)."""
        for linear in (self.query, self.key):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        if self.value is not None:
            self.value.weight.fill_(1e-6).fill_diagonal_(1.0)

    def forward(self, h, branches, residual_before: bool = False):
        """h: (B, T, C), branches δ: (B, T, N, C) → (o: (B, T, C), s: (B, T, N))."""
        dims = Dims("F8.3 AdapterFusion", C=self.query.in_features)
        dims.check("h", h, "... T C")
        dims.check("branches", branches, "... T N C")
        values = branches + h.unsqueeze(-2) if residual_before else branches      # (B, T, N, C)
        # exercise: F8.3 q from h, k_t and v_t from the branches, s = softmax over the N adapters, o
        q = self.query(h)                                                         # (B, T, C)
        k = self.key(branches)                                                    # (B, T, N, C)
        v = self.value(values) if self.value is not None else values             # (B, T, N, C)
        weights = (k @ q.unsqueeze(-1)).squeeze(-1).softmax(dim=-1)               # s: (B, T, N)
        mixed = (weights.unsqueeze(-1) * v).sum(dim=-2)                           # (B, T, C)
        # end exercise
        return (mixed if residual_before else h + mixed), weights

    def value_regularization(self) -> torch.Tensor:
        """``‖I − W_V‖²_F``: how far the value matrix has moved from the identity."""
        identity = torch.eye(self.value.in_features, device=self.value.weight.device, dtype=self.value.weight.dtype)
        return (identity - self.value.weight).pow(2).sum()


class FusedAdapters(MethodLayer):
    """A sublayer followed by N frozen adapters and their fusion, called exactly like the sublayer."""

    def __init__(self, base_layer: nn.Module, adapters: list[BottleneckAdapter], fusion: FusionAttention,
                 residual_before: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleList(adapters)
        self.fusion = fusion
        self.residual_before = residual_before
        self.last_weights: torch.Tensor | None = None          # s of the last call, (B, T, N), detached

    def forward(self, *args, **kwargs):
        h = self.base_layer(*args, **kwargs)                                      # (B, T, C)
        if not self.enabled:
            return h
        branches = torch.stack([adapter.branch(h) for adapter in self.adapters], dim=-2)   # (B, T, N, C)
        out, weights = self.fusion(h, branches, self.residual_before)
        self.last_weights = weights.detach()
        return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@register
class AdapterFusion(PeftModel):
    name = "adapter_fusion"
    builds_on_runs = True          # stage 2 needs stage 1's adapter runs: not in the results grid

    @dataclasses.dataclass(frozen=True)
    class Options:
        adapters: tuple[str, ...] = ()            # the N stage-1 checkpoints (train.py's peft.safetensors), F8.1
        value: bool = True                        # W_V ("dynamic" fusion); False: "static", W_V = I
        regularization: bool = True               # + 0.01 ‖I − W_V‖² to the loss
        residual_before: bool = False             # True: values h + δ_t, the seed's literal reading
        share_fusion: bool = False                # one Ψ for every place (004: fewer parameters)
        adapter_digests: tuple[str, ...] = ()     # filled in at creation; checked when a checkpoint loads

        def __post_init__(self):
            for knob in ("adapters", "adapter_digests"):      # one path on the command line is a str
                value = getattr(self, knob)
                object.__setattr__(self, knob, (str(value),) if isinstance(value, (str, Path)) else
                                   tuple(str(item) for item in value))
            if len(self.adapters) < 2:
                raise ValueError("adapter_fusion fuses N >= 2 trained adapters: pass their checkpoints, e.g. "
                                 "get_peft(model, 'adapter_fusion', adapters=('runs/a/peft.safetensors', "
                                 "'runs/b/peft.safetensors')) or --option adapters=runs/a/peft.safetensors,"
                                 "runs/b/peft.safetensors (each from train.py --method adapter --option "
                                 f"train_layer_norms=false); got {list(self.adapters)}")
            if self.regularization and not self.value:
                object.__setattr__(self, "regularization", False)   # nothing to regularise without W_V

    def attach(self):
        sources = [self.read_adapter(Path(path)) for path in self.options.adapters]
        digests = tuple(digest for _, _, digest in sources)
        if self.options.adapter_digests and self.options.adapter_digests != digests:
            changed = [path for path, saved, now in zip(self.options.adapters, self.options.adapter_digests, digests)
                       if saved != now]
            raise ValueError(f"adapter checkpoint(s) {', '.join(changed)} changed since this fusion was trained: "
                             f"a fusion is only meaningful on the adapters it was trained with")
        self.options = dataclasses.replace(self.options, adapter_digests=digests)
        placements = {(opts.adapter_placement, opts.cross_adapter, opts.adapter_stacks) for opts, _, _ in sources}
        if len(placements) > 1:
            raise ValueError(f"the adapters to fuse sit in different places ({sorted(placements)} as "
                             f"(adapter_placement, cross_adapter, adapter_stacks)): train them with the same placement")
        placement = sources[0][0]                                   # the options that say where each adapter sits

        width = self.config.d_model if self.is_encoder_decoder else self.config.n_embd
        shared = FusionAttention(width, self.options.value) if self.options.share_fusion else None
        blocks = [module for module in self.model.modules() if isinstance(module, (T5Block, GPTBlock))]
        for block in blocks:
            for sublayer in adapted_sublayers(block, placement):
                adapters = [BottleneckAdapter(width, bottleneck_size(opts, width), opts.non_linearity, opts.adapter_bias)
                            for opts, _, _ in sources]
                fusion = shared or FusionAttention(width, self.options.value)
                setattr(block, sublayer, FusedAdapters(getattr(block, sublayer), adapters, fusion,
                                                       self.options.residual_before))
        self.load_adapters([tensors for _, tensors, _ in sources])

    def read_adapter(self, path: Path) -> tuple[Adapter.Options, dict[str, torch.Tensor], str]:
        """(options, tensors, file digest) of one stage-1 adapter checkpoint, refused unless it fits."""
        metadata, tensors = read_checkpoint(path)
        if metadata["method"] != "adapter":
            raise ValueError(f"{path} holds a {metadata['method']!r} checkpoint: AdapterFusion fuses adapters "
                             f"(train.py --method adapter --option train_layer_norms=false)")
        if metadata["base_fingerprint"] != self.base_fingerprint:
            raise ValueError(f"{path} was trained on a different base model (fingerprint "
                             f"{metadata['base_fingerprint']}, this model's is {self.base_fingerprint}): every "
                             f"fused adapter must come from the base the fusion runs on")
        norms = sorted(name for name in tensors if ".adapter." not in name)
        if norms:
            raise ValueError(f"{path} also trained the base's layer norms ({norms[0]}, … {len(norms)} tensors): "
                             f"the fused adapters share the frozen base and its norms, so train them with "
                             f"--option train_layer_norms=false")
        return Adapter.Options(**json.loads(metadata["options"])), tensors, file_digest(path)

    @torch.no_grad()
    def load_adapters(self, checkpoints: list[dict[str, torch.Tensor]]):
        """Copy adapter t's tensors (``….ffn.adapter.up.weight``) into ``….ffn.adapters.t.up.weight``; freeze."""
        for t, tensors in enumerate(checkpoints):
            ours = {name: param for name, param in self.named_parameters() if f".adapters.{t}." in name}
            theirs = {name.replace(".adapter.", f".adapters.{t}."): tensor for name, tensor in tensors.items()}
            missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
            mis_shaped = [name for name in sorted(set(ours) & set(theirs)) if ours[name].shape != theirs[name].shape]
            if missing or unexpected or mis_shaped:
                raise ValueError(f"adapter checkpoint {self.options.adapters[t]} does not fit: missing "
                                 f"{missing[:3]}, unexpected {unexpected[:3]}, mis-shaped {mis_shaped[:3]}")
            for name, param in ours.items():
                param.copy_(theirs[name])
                param.requires_grad_(False)

    def fusions(self) -> list[FusionAttention]:
        """Every distinct fusion module (one when ``share_fusion``)."""
        return list({id(layer.fusion): layer.fusion for layer in self.fused_layers().values()}.values())

    def fused_layers(self) -> dict[str, FusedAdapters]:
        return {name.removeprefix("model."): module for name, module in self.named_modules()
                if isinstance(module, FusedAdapters)}

    def regularization_loss(self) -> torch.Tensor | None:
        """``0.01 · Σ ‖I − W_V‖²_F`` over the fusions (AdapterHub's), or None."""
        if not self.options.regularization or not self.enabled:
            return None
        return VALUE_REGULARIZATION * sum(fusion.value_regularization() for fusion in self.fusions())

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """Per fused place, the mean weight s_t of each adapter over the tokens of the last call, (N,)."""
        return {name: layer.last_weights.flatten(0, -2).mean(0) for name, layer in self.fused_layers().items()
                if layer.last_weights is not None}
