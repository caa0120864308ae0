"""Learning-rate schedules (F12.5): linear warmup, then cosine (or linear) decay to a floor.

Seed 002 §学习率: Transformers need the learning rate *warmed up* from small values (Huang et al.
2020: early Adam steps with layer norm are unstable), then decayed. GPT-3 (F12.5) decays with a
cosine to 10% of the peak. Each schedule is a multiplier of the optimiser's ``lr``, a function of
the number of optimiser steps taken so far, ``step = 0, 1, 2, …``:

    warmup        f(step) = (step + 1) / warmup_steps                 for step < warmup_steps
    cosine        f(step) = floor + (1 − floor) · ½ (1 + cos(π p))    p = (step − warmup) / (total − warmup)
    linear        f(step) = floor + (1 − floor) · (1 − p)
    constant      f(step) = 1
    after total   f(step) = floor

The first update (step 0) already moves the weights (lr/warmup_steps, not 0); update number
``warmup_steps`` runs at the peak; update number ``total_steps`` and later at ``floor · lr``.

The schedules are small frozen dataclasses, callable, so ``torch.optim.lr_scheduler.LambdaLR``
drives them and its ``state_dict`` stays picklable. ``build_schedule`` wires one up:

    scheduler = build_schedule("cosine", optimizer, warmup_steps=100, total_steps=1000)
    ... optimizer.step(); scheduler.step()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class Warmup:
    """Linear warmup to 1, then constant: the multiplier of ``constant``."""

    warmup_steps: int

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be ≥ 0, got {self.warmup_steps}")

    def warmup(self, step: int) -> float:
        return (step + 1) / self.warmup_steps

    def __call__(self, step: int) -> float:
        return self.warmup(step) if step < self.warmup_steps else 1.0


@dataclass(frozen=True)
class WarmupCosine(Warmup):
    """F12.5 linear warmup, then cosine decay from 1 to ``floor`` at ``total_steps`` (GPT-3: 0.1)."""

    total_steps: int
    floor: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.total_steps <= self.warmup_steps:
            raise ValueError(f"total_steps ({self.total_steps}) must be greater than warmup_steps "
                             f"({self.warmup_steps}): the decay needs at least one step")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor is a fraction of the peak learning rate, in [0, 1]; got {self.floor}")

    def progress(self, step: int) -> float:
        """p ∈ [0, 1]: how far through the decay ``step`` is."""
        return min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))

    def decay(self, progress: float) -> float:
        # F12.5  cosine to the floor: floor + (1 − floor) · ½ (1 + cos(π p))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.warmup(step) if step < self.warmup_steps else self.decay(self.progress(step))


@dataclass(frozen=True)
class WarmupLinear(WarmupCosine):
    """Linear warmup, then a straight line from 1 down to ``floor`` at ``total_steps``."""

    def decay(self, progress: float) -> float:
        return self.floor + (1 - self.floor) * (1 - progress)


SCHEDULES = ("cosine", "linear", "constant")


def build_schedule(name: str, optimizer, warmup_steps: int, total_steps: int, floor: float = 0.1) -> LambdaLR:
    """A ``LambdaLR`` for ``name`` in ``SCHEDULES``; call its ``step()`` after each ``optimizer.step()``."""
    if name == "cosine":
        multiplier = WarmupCosine(warmup_steps, total_steps, floor)
    elif name == "linear":
        multiplier = WarmupLinear(warmup_steps, total_steps, floor)
    elif name == "constant":
        multiplier = Warmup(warmup_steps)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if any(group.get("lr") is None for group in optimizer.param_groups):
        raise ValueError("this optimiser has no learning rate to schedule (AdaFactor with relative_step=True "
                         "computes its own): build it with an lr, e.g. build_optimizer('adafactor', params, lr=1e-3)")
    return LambdaLR(optimizer, multiplier)
