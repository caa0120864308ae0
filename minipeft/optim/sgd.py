"""Stochastic gradient descent (F12.1), with torch.optim.SGD's options.

    F12.1   θ_t = θ_{t−1} − η · g_t,      g_t = (1/|B|) Σ_{x∈B} ∇_θ(−log p_θ(x))

The mean over the mini-batch is the loss's job (``reduction="mean"``); the optimiser sees g_t
in ``param.grad``. The options, in the order they act (as torch.optim.SGD):

    weight decay λ (L2)   g ← g + λ θ
    momentum μ            b_t = μ b_{t−1} + (1 − τ) g      (b_1 = g; τ = dampening)
    Nesterov              g ← g + μ b_t                    (else g ← b_t)

State per parameter: nothing without momentum, one buffer ``momentum_buffer`` (the size of θ)
with it.

Symbols → variables: η → ``lr``, μ → ``momentum``, τ → ``dampening``, λ → ``weight_decay``.
"""

from __future__ import annotations

import torch

from .checks import check_at_least, check_unit_interval


class SGD(torch.optim.Optimizer):
    """F12.1 SGD: ``θ ← θ − η g``, with optional momentum, dampening, Nesterov and L2 decay."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        check_at_least("lr", lr, 0.0)
        check_unit_interval("momentum", momentum)
        check_at_least("dampening", dampening, 0.0)
        check_at_least("weight_decay", weight_decay, 0.0)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self.update(param, param.grad, self.state[param], **{k: group[k] for k in (
                        "lr", "momentum", "dampening", "weight_decay", "nesterov")})
        return loss

    @staticmethod
    def update(param, grad, state, lr, momentum, dampening, weight_decay, nesterov):
        if weight_decay:
            # L2 regularisation: g ← g + λ θ
            grad = grad.add(param, alpha=weight_decay)
        if momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()      # b_1 = g
            else:
                # b_t = μ b_{t−1} + (1 − τ) g
                state["momentum_buffer"].mul_(momentum).add_(grad, alpha=1 - dampening)
            buffer = state["momentum_buffer"]
            grad = grad.add(buffer, alpha=momentum) if nesterov else buffer
        # F12.1  θ_t = θ_{t−1} − η g_t
        param.add_(grad, alpha=-lr)
