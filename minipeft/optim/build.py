"""What a training script calls: an optimiser or a schedule by name, with clear errors.

    optimizer = build_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=0.1)
    scheduler = build_schedule("cosine", optimizer, warmup_steps=100, total_steps=1000)

``weight_decay_groups(model.named_parameters(), 0.1)`` puts biases and norm weights (every
parameter with fewer than 2 dimensions) in a group without decay, as GPT-2/3 training does.
"""

from __future__ import annotations

from .adafactor import AdaFactor
from .adam import Adam, AdamW
from .schedules import SCHEDULES, build_schedule
from .sgd import SGD

OPTIMIZERS = ("adam", "adamw", "adafactor", "sgd")


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, **options):
    """``name`` in ``OPTIMIZERS``; ``options`` go to the optimiser (``betas``, ``momentum``, …).

    AdaFactor is built with an external learning rate (``relative_step=False``,
    ``scale_parameter=False``, Hugging Face's fine-tuning recipe) so schedules apply to it; pass
    ``lr=None`` for the paper's relative step size instead.
    """
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay, **options)
    if name == "adamw":
        return AdamW(params, lr=lr, weight_decay=weight_decay, **options)
    if name == "sgd":
        return SGD(params, lr=lr, weight_decay=weight_decay, **options)
    if name == "adafactor":
        external = {"relative_step": False, "scale_parameter": False} if lr is not None else {}
        return AdaFactor(params, lr=lr, weight_decay=weight_decay, **{**external, **options})
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def weight_decay_groups(named_parameters, weight_decay: float) -> list[dict]:
    """Two parameter groups: matrices with ``weight_decay``, vectors (biases, norms) without."""
    decay, no_decay = [], []
    for _, param in named_parameters:
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


__all__ = ["build_optimizer", "build_schedule", "weight_decay_groups", "OPTIMIZERS", "SCHEDULES"]
