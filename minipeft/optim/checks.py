"""Argument checks shared by the optimisers: one clear error per bad hyperparameter."""

from __future__ import annotations


def check_at_least(name: str, value: float, low: float) -> None:
    """``value`` must be ≥ ``low`` (learning rates, eps, weight decay)."""
    if not value >= low:  # also catches NaN
        raise ValueError(f"{name} must be ≥ {low}, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """``value`` must lie in [0, 1): a decay rate such as β1, β2 or momentum."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
