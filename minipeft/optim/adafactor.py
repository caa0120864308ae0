"""AdaFactor (F12.3): Adam's per-coordinate step size from O(m + n) memory per matrix.

Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost" (2018), the
optimiser T5 was trained with. Seed 002 §AdaFactor: "store row and column sums O(m+n) instead of
the O(m×n) matrices, and drop the momentum".

For a matrix parameter X (m × n) with gradient G (the paper's Algorithm 4, with decay and clipping):

    F12.3   β̂2_t = 1 − t^c                                   c = ``decay_rate`` = −0.8
            R_t = β̂2_t R_{t−1} + (1 − β̂2_t) · rowmean(G² + ε1)    (m,)   one number per row
            C_t = β̂2_t C_{t−1} + (1 − β̂2_t) · colmean(G² + ε1)    (n,)   one number per column
            V̂_t = R_t C_tᵀ / mean(R_t)                                 (m, n) rank-1 estimate of E[G²]
            U_t = G_t / √V̂_t                                           Adam's g / √v, from m + n numbers
            Û_t = U_t / max(1, RMS(U_t) / d)                           update clipping, d = ``clip_threshold``
            X_t = X_{t−1} − α_t Û_t

The paper writes row and column *sums* and divides by the total ``1ᵀR``; with means, as here,
the factors of m and n cancel and the state keeps the scale of a squared gradient. Vectors (biases,
norms) keep the full second moment v, as Adam does: it is as small as the vector itself.

The step size α_t (§8 of the paper) is either

    relative_step=True  (lr=None):  ρ_t = min(10⁻², 1/√t)     (warmup_init: min(10⁻⁶·t, 1/√t))
    relative_step=False (lr given): ρ_t = lr                  a schedule can drive it (LambdaLR)

times ``max(ε2, RMS(X_{t−1}))`` when ``scale_parameter=True``: the step is relative to the size of
the weights. Defaults are the paper's and Hugging Face's (``eps=(1e-30, 1e-3)``, ``clip_threshold=1``,
``decay_rate=-0.8``, ``beta1=None``, relative step and parameter scaling on). For fine-tuning with
an external schedule, Hugging Face recommends ``lr=1e-3, relative_step=False, scale_parameter=False``,
which is what ``build_optimizer("adafactor", …)`` uses.

Options beyond the paper's algorithm, as in Hugging Face's version: ``beta1`` keeps momentum of the
scaled update, ``m_t = β1 m_{t−1} + (1 − β1) α_t Û_t`` (a full-size buffer: AdaFactor's memory
saving is gone); ``weight_decay`` λ is decoupled, ``X ← X − α_t λ X``.

Symbols → variables: R → ``state["row"]``, C → ``state["col"]``, v (vectors) → ``state["full"]``,
m → ``state["exp_avg"]``, (ε1, ε2) → ``eps``, d → ``clip_threshold``, c → ``decay_rate``.
"""

from __future__ import annotations

import math

import torch

from .checks import check_at_least, check_unit_interval


def rms(tensor) -> torch.Tensor:
    """Root mean square, ``sqrt(mean(x²))``."""
    return tensor.norm(2) / tensor.numel() ** 0.5


class AdaFactor(torch.optim.Optimizer):
    """F12.3 AdaFactor: factored second moment (rows + columns), update clipping, relative steps."""

    def __init__(self, params, lr: float | None = None, eps: tuple[float, float] = (1e-30, 1e-3),
                 clip_threshold: float = 1.0, decay_rate: float = -0.8, beta1: float | None = None,
                 weight_decay: float = 0.0, scale_parameter: bool = True, relative_step: bool = True,
                 warmup_init: bool = False):
        if relative_step and lr is not None:
            raise ValueError("AdaFactor: relative_step=True computes its own step size; pass lr=None, "
                             "or relative_step=False to use lr (e.g. with a schedule)")
        if not relative_step and lr is None:
            raise ValueError("AdaFactor: relative_step=False needs a learning rate lr")
        if warmup_init and not relative_step:
            raise ValueError("AdaFactor: warmup_init=True is a relative-step schedule; it needs relative_step=True")
        if lr is not None:
            check_at_least("lr", lr, 0.0)
        check_at_least("eps[0]", eps[0], 0.0)
        check_at_least("eps[1]", eps[1], 0.0)
        check_at_least("clip_threshold", clip_threshold, 0.0)
        if not decay_rate < 0:
            raise ValueError(f"decay_rate must be negative (β̂2_t = 1 − t^decay_rate), got {decay_rate!r}")
        if beta1 is not None:
            check_unit_interval("beta1", beta1)
        check_at_least("weight_decay", weight_decay, 0.0)
        super().__init__(params, dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, decay_rate=decay_rate,
                                      beta1=beta1, weight_decay=weight_decay, scale_parameter=scale_parameter,
                                      relative_step=relative_step, warmup_init=warmup_init))

    @staticmethod
    def step_size(group, step: int, param) -> float:
        """α_t = ρ_t · max(ε2, RMS(X_{t−1})) (or ρ_t alone without parameter scaling)."""
        if group["relative_step"]:
            cap = 1e-6 * step if group["warmup_init"] else 1e-2
            relative = min(cap, 1.0 / math.sqrt(step))                      # ρ_t
        else:
            relative = group["lr"]
        scale = max(group["eps"][1], rms(param).item()) if group["scale_parameter"] else 1.0
        return relative * scale

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
                    raise RuntimeError("AdaFactor does not support sparse gradients")
                if param.dim() > 2:
                    raise ValueError(f"AdaFactor factors matrices (2-D) and keeps vectors whole; got a parameter "
                                     f"of shape {tuple(param.shape)}: reshape it to 2-D or use Adam for it")
                state = self.state[param]
                if not state:
                    self.init_state(state, param, group["beta1"] is not None)
                state["step"] += 1
                self.update(param, param.grad, state, group)
        return loss

    @staticmethod
    def init_state(state, param, momentum: bool):
        state["step"] = 0
        if param.dim() == 2:
            state["row"] = param.new_zeros(param.shape[0])    # R: (m,)
            state["col"] = param.new_zeros(param.shape[1])    # C: (n,)
        else:
            state["full"] = torch.zeros_like(param)           # v: a vector's full second moment
        if momentum:
            state["exp_avg"] = torch.zeros_like(param)

    def update(self, param, grad, state, group):
        """F12.3 for one parameter tensor, in place."""
        t = state["step"]
        eps1, _ = group["eps"]
        alpha = self.step_size(group, t, param)                              # α_t, from X_{t−1}
        # F12.3  β̂2_t = 1 − t^c
        beta2 = 1.0 - t ** group["decay_rate"]
        squared = grad.square().add_(eps1)                                   # G² + ε1
        # exercise: the factored second moment: R, C as running means of G² + ε1, then U = G / √V̂
        if param.dim() == 2:
            row, col = state["row"], state["col"]
            # F12.3  R_t = β̂2 R_{t−1} + (1 − β̂2) rowmean(G² + ε1),  C_t likewise over columns
            row.mul_(beta2).add_(squared.mean(dim=1), alpha=1 - beta2)      # (m,)
            col.mul_(beta2).add_(squared.mean(dim=0), alpha=1 - beta2)      # (n,)
            # F12.3  U = G / √V̂ with V̂ = R Cᵀ / mean(R), never formed: G · (R/mean R)^-½ · C^-½
            update = grad * (row / row.mean()).rsqrt()[:, None]              # (m, n)
            update.mul_(col.rsqrt()[None, :])
        else:
            full = state["full"]
            full.mul_(beta2).add_(squared, alpha=1 - beta2)
            update = grad / full.sqrt()
        # end exercise
        # F12.3  Û = U / max(1, RMS(U) / d)
        update.div_(max(1.0, rms(update).item() / group["clip_threshold"]))
        update.mul_(alpha)                                                   # α_t Û_t
        if group["beta1"] is not None:
            # m_t = β1 m_{t−1} + (1 − β1) α_t Û_t
            state["exp_avg"].mul_(group["beta1"]).add_(update, alpha=1 - group["beta1"])
            update = state["exp_avg"]
        if group["weight_decay"]:
            param.mul_(1 - alpha * group["weight_decay"])                  # X ← X − α λ X
        # F12.3  X_t = X_{t−1} − α_t Û_t
        param.sub_(update)
