"""Adam and AdamW (F12.2): momentum plus a per-coordinate step size.

Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015); Loshchilov & Hutter,
"Decoupled Weight Decay Regularization" (2019) for AdamW. Seed 002 §Adam.

    F12.2   m_t = β1 m_{t−1} + (1 − β1) g_t                 first moment (momentum)
            v_t = β2 v_{t−1} + (1 − β2) g_t²                second moment (the seed writes b_t: a slip)
            m̂_t = m_t / (1 − β1^t)                          bias correction: m_0 = v_0 = 0
            v̂_t = v_t / (1 − β2^t)
            θ_t = θ_{t−1} − η m̂_t / (√v̂_t + ε)

Weight decay λ enters in one of two places, and that is the whole difference between the two:

    Adam  (L2, coupled):     g_t ← g_t + λ θ_{t−1}       the decay is divided by √v̂ like the gradient
    AdamW (decoupled):       θ   ← θ − η λ θ            applied to θ directly, before the Adam step

Memory (F12.2): m and v are each the size of θ, so training holds θ, g, m, v: 4× the parameters
where SGD holds 2×. ``minipeft.optim.memory`` counts it; lesson 05 measures it.

Symbols → variables: η → ``lr``, (β1, β2) → ``betas``, ε → ``eps``, λ → ``weight_decay``,
m → ``state["exp_avg"]``, v → ``state["exp_avg_sq"]``, t → ``state["step"]``.
GPT-3's settings (F12.5): β1 = 0.9, β2 = 0.95, ε = 1e-8, λ = 0.1.
"""

from __future__ import annotations

import torch

from .checks import check_at_least, check_unit_interval


class Adam(torch.optim.Optimizer):
    """F12.2 Adam, with L2 weight decay added to the gradient (as ``torch.optim.Adam``)."""

    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        check_at_least("lr", lr, 0.0)
        check_unit_interval("betas[0]", betas[0])
        check_unit_interval("betas[1]", betas[1])
        check_at_least("eps", eps, 0.0)
        check_at_least("weight_decay", weight_decay, 0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)      # m_0 = 0
                    state["exp_avg_sq"] = torch.zeros_like(param)   # v_0 = 0
                self.update(param, param.grad, state, group["lr"], *group["betas"], group["eps"],
                            group["weight_decay"])
        return loss

    def update(self, param, grad, state, lr, beta1, beta2, eps, weight_decay):
        """F12.2 for one parameter tensor, in place."""
        state["step"] += 1
        t = state["step"]
        # exercise: weight decay: AdamW shrinks θ by η λ θ; Adam adds λ θ to the gradient
        if weight_decay and self.decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)                 # AdamW: θ ← θ − η λ θ
        elif weight_decay:
            grad = grad.add(param, alpha=weight_decay)        # Adam (L2): g ← g + λ θ
        # end exercise
        m, v = state["exp_avg"], state["exp_avg_sq"]
        # exercise: F12.2: update the moments m, v in place, bias-correct them, then θ ← θ − η m̂ / (√v̂ + ε)
        # F12.2  m_t = β1 m_{t−1} + (1 − β1) g_t
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        # F12.2  v_t = β2 v_{t−1} + (1 − β2) g_t²
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # F12.2  m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t)
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        # F12.2  θ_t = θ_{t−1} − η m̂_t / (√v̂_t + ε)
        param.addcdiv_(m_hat, v_hat.sqrt_().add_(eps), value=-lr)
        # end exercise


class AdamW(Adam):
    """F12.2 Adam with decoupled weight decay ``θ ← θ − η λ θ`` (as ``torch.optim.AdamW``)."""

    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
