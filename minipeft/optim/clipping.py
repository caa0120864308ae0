"""Gradient clipping by global norm (F12.5).

    F12.5   g ← g / max(1, ‖g‖ / c)

``‖g‖`` is the L2 norm of *all* gradients together, as one long vector; ``c`` is ``max_norm``.
Below ``c`` nothing changes; above it, every gradient is scaled by the same factor, so the
direction is kept and the length becomes ``c``. (The seed writes ``g / min(1, ‖g‖)``: a slip; with
``min`` small gradients would be *enlarged*.)

``torch.nn.utils.clip_grad_norm_`` computes ``g · min(1, c / (‖g‖ + 10⁻⁶))``: the same up to its
10⁻⁶; the tests compare the two.
"""

from __future__ import annotations

import math

import torch


def global_grad_norm(parameters) -> torch.Tensor:
    """‖g‖: the L2 norm of every gradient concatenated (parameters without a gradient skipped)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """F12.5: scale all gradients by ``1 / max(1, ‖g‖ / max_norm)`` in place; return ‖g‖ before clipping.

    A non-finite norm (an overflow in fp16) leaves the gradients untouched: the loss scaler
    skips that step (see ``mixed_precision.py``).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    parameters = [p for p in parameters if p.grad is not None]
    total_norm = global_grad_norm(parameters)
    if math.isfinite(total_norm.item()):
        # F12.5  g ← g / max(1, ‖g‖ / c)
        divisor = max(1.0, total_norm.item() / max_norm)
        for param in parameters:
            param.grad.div_(divisor)
    return total_norm
