# EXERCISE COPY of minipeft/methods/adalora.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_adalora.py --exercise methods.adalora
# Start over with:        python lessons/exercises/make.py
"""AdaLoRA: the low-rank update in SVD form, with a budget of ranks that goes where it is needed.

Papers: seed 000 §3.3 writes a low-rank matrix as U·diag(s)·Vᵀ; Zhang et al. 2023, "AdaLoRA:
Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning" (in seed 001's list) trains the
update that way and prunes its least important triplets (u_i, s_i, v_i) as training goes on.
Formulas from ../shared/FORMULAS.md:

    F7.1  W = W_0 + U·diag(s)·Vᵀ, W_0 frozen; on an input, with LoRA's α/r (F6.5):
              h = W_0 x + (α/r) U (s ⊙ (Vᵀ x))
    F7.2  trainable parameters  L·(m·r + n·r + r)  for L wrapped m×n matrices at rank r
    F7.3  the importance of every trained entry w (Ī smoothed sensitivity, Ū its uncertainty):
              I = |w · ∂L/∂w|,   Ī ← β₁ Ī + (1 − β₁) I,   Ū ← β₂ Ū + (1 − β₂) |I − Ī|,   s(w) = Ī · Ū
          of triplet i:  S_i = s(s_i) + mean_j s(U_ji) + mean_j s(V_ji)
          the budget b(t) (triplets kept, over all layers): L·init_r for t ≤ tinit, then down to
              b(T) = L·target_r by a cube:  b(t) = b(T) + (b(0) − b(T)) (1 − (t − tinit)/(T − tinit − tfinal))³
          every deltaT steps the b(t) triplets of highest S keep their s_i, the others get s_i = 0;
          the penalty γ·R added to the loss keeps the triplets apart:  R = ‖UᵀU − I‖² + ‖VᵀV − I‖²

    symbol   variable                   shape
    x        x                          (…, n)       n = in_features
    W_0      base_layer.weight          (m, n)       m = out_features
    U        lora_B                     (m, r)       (peft's names: U is its lora_B, Vᵀ its lora_A,
    s        lora_E                     (r, 1)        s its lora_E, kept as a column)
    Vᵀ       lora_A                     (r, n)
    r        init_r                     the rank every layer starts with
    b(T)/L   target_r                   the average rank left at the end
    γ        orth_reg_weight

Why the SVD form, when LoRA's B A can express the same matrices: pruning a rank of B A means
cutting a column of B and a row of A, which loses them for good; here it is one number, s_i = 0,
and U, V keep training, so a triplet pruned early can come back when its score rises. The
penalty R keeps U's and V's columns orthonormal, so that s_i is the size of the update along
its own direction and removing one triplet does not change the others. And why an *update*
beside W_0, when seed 000 §3.3 factorises W itself: a rank-r factorisation of a pretrained W
throws away everything outside its top r directions (lesson 12 measures what that does to the
model), while the update starts at s = 0, so the model starts as the pretrained one (F6.2).

Choices, following the reference library ``peft`` (its ``AdaLoraConfig``) so that its users meet
no surprise: the option names and defaults (``init_r=12``, ``target_r=8``, ``tinit=0``,
``tfinal=0``, ``deltaT=1``, ``beta1=beta2=0.85``, ``orth_reg_weight=0.5``, ``lora_alpha=8``),
U and V drawn from N(0, 0.02²) and s = 0, the scaling α/init_r (peft divides by init_r + 1e-5),
the schedule above step by step (steps count from 0; at step T − tfinal the budget is fixed and
from then on the same triplets stay pruned), importance read after the optimiser step from the
gradients of that step, and ties at the threshold pruned. Where we differ: R is the *squared*
Frobenius norm of F7.3 (and of the paper), averaged over the wrapped layers; peft adds the plain
norms, averaged over the 2L matrices. ``train.py`` sets the schedule's T to its ``--steps``; in
your own loop call ``peft.prepare_training(total_steps)`` once and
``peft.update_and_allocate(step)`` after each ``optimizer.step()``, before ``zero_grad()``.
``init_r == target_r`` trains the plain SVD form of F7.1 with nothing pruned.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..functional import Dropout
from ..shapes import Dims
from .lora import LoRA, LowRankLayer
from .registry import register


class SVDLinear(LowRankLayer):
    """``h = W_0 x + (α/r) U (s ⊙ (Vᵀ dropout(x)))``: a frozen ``nn.Linear`` plus an update in SVD form (F7.1)."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = alpha / rank                                                   # α/r, r = init_r
        out_features, in_features = base_layer.out_features, base_layer.in_features  # m, n
        like_base = dict(device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **like_base))      # Vᵀ: (r, n)
        self.lora_E = nn.Parameter(torch.empty(rank, 1, **like_base))                # s:  (r, 1)
        self.lora_B = nn.Parameter(torch.empty(out_features, rank, **like_base))     # U:  (m, r)
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """s = 0, so ΔW = 0 and the layer starts as the frozen one; U and V Gaussian (as peft, std 0.02)."""
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, std=0.02)
        nn.init.normal_(self.lora_B, std=0.02)

    def delta_weight(self) -> torch.Tensor:
        """F7.1  ΔW = (α/r) U diag(s) Vᵀ, (m, n)."""
        raise NotImplementedError("exercise: F7.1 the scaled update (α/r) U diag(s) Vᵀ as one (m, n) matrix (s is a column, (r, 1))")

    def forward(self, x):                                            # x: (…, n)
        out = self.base_layer(x)                                     # (…, m)
        if self.merged or not self.enabled:
            return out
        Dims("F7.1 AdaLoRA", n=self.base_layer.in_features).check("x", x, "... n")
        raise NotImplementedError("exercise: F7.1 h = W_0 x + (α/r) U (s ⊙ (Vᵀ x)), dropout on x on the update's path only")

    def orthogonality(self) -> torch.Tensor:
        """F7.3  R = ‖UᵀU − I‖² + ‖VᵀV − I‖² (squared Frobenius norms; 0 when both are orthonormal)."""
        eye = torch.eye(self.rank, device=self.lora_A.device, dtype=self.lora_A.dtype)
        raise NotImplementedError("exercise: F7.3 the orthogonality penalty of U = lora_B (m, r) and Vᵀ = lora_A (r, n)")

    def kept_ranks(self) -> int:
        """How many triplets are alive: the entries of s that are not 0."""
        return int(torch.count_nonzero(self.lora_E))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


class RankAllocator:
    """F7.3: the importance scores of every trained entry, and the pruning to the budget.

    Holds, per trained tensor (U, s, Vᵀ of every layer), the smoothed sensitivity Ī and the
    uncertainty Ū; ``observe`` updates them from the gradients, ``triplet_scores`` combines them per
    triplet, ``prune_to`` keeps the ``budget`` best triplets over all layers.
    """

    def __init__(self, layers: dict[str, SVDLinear], beta1: float, beta2: float):
        self.layers, self.beta1, self.beta2 = layers, beta1, beta2
        self.smoothed: dict[str, torch.Tensor] = {}      # Ī per tensor, "layer.lora_A" → same shape
        self.uncertainty: dict[str, torch.Tensor] = {}   # Ū

    def tensors(self):
        for name, layer in self.layers.items():
            for part in ("lora_A", "lora_E", "lora_B"):
                yield f"{name}.{part}", getattr(layer, part)

    @torch.no_grad()
    def observe(self):
        """F7.3  I = |w ∂L/∂w|, then the two moving averages Ī and Ū, for every entry."""
        for key, param in self.tensors():
            if param.grad is None:
                raise RuntimeError(f"AdaLoRA scores its triplets from their gradients, and {key} has none: call "
                                   f"update_and_allocate after backward() and optimizer.step(), before zero_grad()")
            if key not in self.smoothed:
                self.smoothed[key] = torch.zeros_like(param)
                self.uncertainty[key] = torch.zeros_like(param)
            smoothed, uncertainty = self.smoothed[key], self.uncertainty[key]
            raise NotImplementedError("exercise: F7.3 sensitivity I = |w · grad|, then Ī ← β₁Ī + (1−β₁)I and Ū ← β₂Ū + (1−β₂)|I − Ī| (in place)")

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """F7.3  S_i = s(s_i) + mean_j s(U_ji) + mean_j s(V_ji) per layer, each (r,); s(w) = Ī·Ū."""
        score = {key: self.smoothed[key] * self.uncertainty[key] for key in self.smoothed}
        raise NotImplementedError("exercise: F7.3 one score per triplet i: its s_i's score plus the mean score of U's column i and of Vᵀ's row i")

    @torch.no_grad()
    def prune_to(self, budget: int) -> dict[str, torch.Tensor]:
        """Set s_i = 0 for every triplet outside the ``budget`` best (ties at the threshold pruned);
        return the kept triplets, a boolean (r,) per layer."""
        scores = self.triplet_scores()
        total = sum(len(values) for values in scores.values())
        if budget >= total:
            return {name: torch.ones_like(values, dtype=torch.bool) for name, values in scores.items()}
        threshold = torch.kthvalue(torch.cat(list(scores.values())), total - budget).values
        kept = {name: values > threshold for name, values in scores.items()}
        self.apply(kept)
        return kept

    @torch.no_grad()
    def apply(self, kept: dict[str, torch.Tensor]):
        for name, layer in self.layers.items():
            layer.lora_E.masked_fill_(~kept[name].unsqueeze(1), 0.0)

    def state_dict(self) -> dict:
        return {"smoothed": dict(self.smoothed), "uncertainty": dict(self.uncertainty)}

    def load_state_dict(self, state: dict):
        self.smoothed, self.uncertainty = dict(state["smoothed"]), dict(state["uncertainty"])


def budget_at(step: int, total_steps: int, initial: int, target: int, tinit: int, tfinal: int) -> int:
    """F7.3  b(t): ``initial`` up to ``tinit``, down to ``target`` by a cube at ``total_steps − tfinal``."""
    if step <= tinit:
        return initial
    if step >= total_steps - tfinal:
        return target
    remaining = 1 - (step - tinit) / (total_steps - tfinal - tinit)
    return int((initial - target) * remaining ** 3 + target)


@register
class AdaLoRA(LoRA):
    name = "adalora"
    title = "AdaLoRA"
    reads_gradients = True

    @dataclasses.dataclass(frozen=True)
    class Options:
        init_r: int = 12                             # r: every layer's rank at the start
        target_r: int = 8                            # the average rank left after pruning
        lora_alpha: float = 8                        # α: the update is scaled by α/init_r
        lora_dropout: float = 0.0                    # dropout on x, the update's path only
        target_modules: tuple[str, ...] | str | None = None  # None: the query and value projections, as LoRA
        tinit: int = 0                               # steps before any pruning
        tfinal: int = 0                              # last steps at the final budget, the pruned set fixed
        deltaT: int = 1                              # prune every deltaT steps
        beta1: float = 0.85                          # β₁ of the smoothed sensitivity Ī
        beta2: float = 0.85                          # β₂ of the uncertainty Ū
        orth_reg_weight: float = 0.5                 # γ of the orthogonality penalty
        total_step: int | None = None                # T of the schedule; train.py sets it to --steps

        def __post_init__(self):
            if isinstance(self.target_modules, list):
                object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not isinstance(self.init_r, int) or self.init_r < 1:
                raise ValueError(f"init_r (every layer's starting rank) must be a positive integer, got {self.init_r!r}")
            if not isinstance(self.target_r, int) or not 1 <= self.target_r <= self.init_r:
                raise ValueError(f"target_r (the average rank kept) must be an integer from 1 to init_r={self.init_r}, "
                                 f"got {self.target_r!r}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            for name in ("beta1", "beta2"):
                if not 0.0 < getattr(self, name) < 1.0:
                    raise ValueError(f"{name} (a moving average's weight) must be in (0, 1), got {getattr(self, name)}")
            if self.orth_reg_weight < 0:
                raise ValueError(f"orth_reg_weight must be 0 or more, got {self.orth_reg_weight}")
            if self.tinit < 0 or self.tfinal < 0 or self.deltaT < 1:
                raise ValueError(f"tinit and tfinal must be 0 or more and deltaT at least 1, got tinit={self.tinit}, "
                                 f"tfinal={self.tfinal}, deltaT={self.deltaT}")

    def attach(self):
        options = self.options
        self.wrap_targets(lambda layer: SVDLinear(layer, options.init_r, options.lora_alpha, options.lora_dropout))
        self.allocator = RankAllocator({name: module for name, module in self.model.named_modules()
                                        if isinstance(module, SVDLinear)}, options.beta1, options.beta2)
        self.total_steps = options.total_step
        self.final_kept: dict[str, torch.Tensor] | None = None   # the pruned set, fixed at step T − tfinal

    # -- the budget (F7.3) ---------------------------------------------------------------------------
    @property
    def initial_budget(self) -> int:
        return self.options.init_r * len(self.allocator.layers)

    @property
    def target_budget(self) -> int:
        return self.options.target_r * len(self.allocator.layers)

    def budget(self, step: int) -> int:
        """b(step): how many triplets, over all layers, keep their s_i after this step."""
        options = self.options
        return budget_at(step, self.schedule_length(), self.initial_budget, self.target_budget,
                         options.tinit, options.tfinal)

    def schedule_length(self) -> int:
        if self.total_steps is None:
            raise RuntimeError("AdaLoRA's budget needs the run's length: pass total_step=… to get_peft or call "
                               "prepare_training(total_steps) before training (train.py does)")
        return self.total_steps

    def prepare_training(self, total_steps: int):
        options = self.options
        if options.tinit >= total_steps - options.tfinal:
            raise ValueError(f"AdaLoRA prunes between step tinit={options.tinit} and step T - tfinal = "
                             f"{total_steps} - {options.tfinal}: that leaves no step to prune in; lower tinit "
                             f"or tfinal (--option tinit=…) or train longer")
        self.total_steps = total_steps

    @torch.no_grad()
    def update_and_allocate(self, step: int):
        """F7.3, after ``optimizer.step()`` and before ``zero_grad()``: update the scores from this
        step's gradients and prune s to the budget b(step) (every ``deltaT`` steps, after ``tinit``).
        At step T − tfinal the budget reaches its target and the pruned set is fixed."""
        options = self.options
        final_step = self.schedule_length() - options.tfinal
        if step < final_step:
            self.allocator.observe()
            if step > options.tinit and step % options.deltaT == 0:
                self.allocator.prune_to(self.budget(step))
        elif self.final_kept is None:
            self.final_kept = self.allocator.prune_to(self.target_budget)
        else:
            self.allocator.apply(self.final_kept)

    def after_optimizer_step(self, step: int):
        self.update_and_allocate(step)

    def regularization_loss(self) -> torch.Tensor | None:
        """F7.3  γ · R averaged over the wrapped layers (None when γ = 0)."""
        if self.options.orth_reg_weight == 0 or not self.enabled:
            return None
        layers = list(self.allocator.layers.values())
        return self.options.orth_reg_weight * sum(layer.orthogonality() for layer in layers) / len(layers)

    def rank_pattern(self) -> dict[str, int]:
        """How many triplets each wrapped layer keeps now (the entries of s that are not 0)."""
        return {name: layer.kept_ranks() for name, layer in self.allocator.layers.items()}

    def training_state(self) -> dict:
        return {"allocator": self.allocator.state_dict(), "final_kept": self.final_kept}

    def load_training_state(self, state: dict):
        if state:
            self.allocator.load_state_dict(state["allocator"])
            self.final_kept = state["final_kept"]
