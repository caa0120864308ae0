"""Mixed precision (F12.4): compute in half precision, keep fp32 master weights, scale the loss.

Micikevicius et al., "Mixed Precision Training" (2018); seed 002 §混合精度训练.

Why each piece is needed, for fp16 (1 sign, 5 exponent, 10 mantissa bits):

* Range. The smallest fp16 number is 2⁻²⁴ ≈ 6·10⁻⁸ (subnormal; normal ones start at 2⁻¹⁴ ≈ 6·10⁻⁵),
  the largest 65504. "Any value below 2⁻²⁴ becomes 0" (seed): many gradients are that small.
* Loss scaling. Backpropagate ``S · L`` instead of ``L``: every gradient is multiplied by ``S``
  (the chain rule is linear), lifting the small ones out of the underflow zone. Divide by ``S`` in
  fp32 before the update.
* Dynamic scale. Too large an ``S`` overflows to ``inf``. So: if any scaled gradient is inf or
  NaN, *skip* the step and halve ``S``; after ``growth_interval`` good steps in a row, double it.
  Skipped steps are counted (``LossScaler.skipped_steps``): a run that skips many is in trouble.
* Master weights. With 10 mantissa bits, ``1 + 10⁻⁴`` rounds to ``1`` in fp16: small updates to
  fp16 weights vanish. The optimiser updates an fp32 copy θ₃₂ (and keeps its state in fp32); the
  model computes with ``θ₁₆ = fp16(θ₃₂)``, copied after each step.

One step, F12.4 written out (``Precision.backward_and_step`` does exactly this):

    (S · L).backward()                         fp16 gradients S·g₁₆ in the model
    g₃₂ = fp32(S · g₁₆) / S                    into the masters (MasterWeights.unscale_grads_into_masters)
    if not all finite: skip, S ← S/2           (LossScaler.update)
    else: clip g₃₂, optimizer.step() on θ₃₂, θ₁₆ ← fp16(θ₃₂); every growth_interval steps S ← 2S

bf16 has fp32's 8 exponent bits (range 10⁻³⁸ … 3·10³⁸) and only 7 mantissa bits: nothing
underflows, so it needs no loss scaling. ``torch.autocast`` runs the matrix products in bf16 while
the parameters, gradients and optimiser stay fp32 (they are the master weights).

Memory (the seed: "storage halved"): what halves is activations and the weights the matrix
products read. Per trainable parameter with Adam the static state is 2 (θ₁₆) + 2 (g₁₆) + 4 (θ₃₂)
+ 8 (m, v) = 16 bytes, the same as fp32 training's 4 + 4 + 8. See ``memory.py`` and lesson 05.
"""

from __future__ import annotations

import contextlib

import torch

from .clipping import clip_grad_norm_

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(precision: str, device_type: str = "cpu"):
    """Context for the forward pass: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``/``"fp16"``.

    (fp16 here runs a model whose weights *are* fp16, see ``Precision``, so it needs no autocast.)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LossScaler:
    """F12.4 dynamic loss scale ``S``: halve and skip on overflow, double after ``growth_interval`` good steps.

    ``dynamic=False`` keeps ``S`` fixed (``init_scale=1.0, dynamic=False`` is "no loss scaling"),
    still skipping steps whose gradients are not finite. The schedule of ``S`` follows
    ``torch.amp.GradScaler`` (tests compare the two).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, dynamic: bool = True):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        if not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError(f"need growth_factor > 1 and 0 < backoff_factor < 1, "
                             f"got {growth_factor}, {backoff_factor}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be ≥ 1, got {growth_interval}")
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval, self.dynamic = growth_interval, dynamic
        self.good_steps = 0      # finite steps since the last change of S
        self.skipped_steps = 0   # steps skipped because of inf/NaN gradients, in total

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """S · L: backpropagate this instead of L."""
        return loss * self.scale

    def update(self, grads_are_finite: bool) -> bool:
        """Record one step; return True if the optimiser should step (gradients finite)."""
        if not grads_are_finite:
            self.skipped_steps += 1
            self.good_steps = 0
            if self.dynamic:
                self.scale *= self.backoff_factor                    # overflow: S ← S/2
            return False
        self.good_steps += 1
        if self.dynamic and self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor                         # N good steps: S ← 2S
            self.good_steps = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps, self.skipped_steps = state["scale"], state["good_steps"], state["skipped_steps"]


class MasterWeights:
    """fp32 copies of a half-precision model's *trainable* parameters (F12.4).

    Build the optimiser on ``masters.params``. Frozen parameters (PEFT) get no copy: they never
    change, so they stay in half precision and cost 2 bytes each.
    """

    def __init__(self, model_params):
        self.model_params = [p for p in model_params if p.requires_grad]
        if not self.model_params:
            raise ValueError("MasterWeights: no parameter requires a gradient; nothing would be trained")
        self.params = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]

    @torch.no_grad()
    def unscale_grads_into_masters(self, scale: float) -> bool:
        """g₃₂ = fp32(S·g₁₆) / S for every parameter; return whether all of them are finite."""
        finite = True
        for model_param, master in zip(self.model_params, self.params):
            if model_param.grad is None:
                master.grad = None
                continue
            master.grad = model_param.grad.float().div_(scale)
            finite = finite and bool(torch.isfinite(master.grad).all())
        return finite

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """θ₁₆ ← fp16(θ₃₂) after the optimiser stepped the masters."""
        for model_param, master in zip(self.model_params, self.params):
            model_param.copy_(master)

    def zero_grad(self) -> None:
        for param in self.model_params + self.params:
            param.grad = None


class Precision:
    """The training step in one of ``PRECISIONS``, for a training loop to call (F12.4):

        precision = Precision("fp16", model)       # fp16: casts the model to fp16, keeps fp32 masters
        optimizer = build_optimizer("adamw", precision.parameters(), lr=1e-4)
        with precision.autocast():
            loss = cross_entropy(model(...).float(), labels)
        stepped = precision.backward_and_step(loss, optimizer, max_grad_norm=1.0)

    ``fp32``: plain. ``bf16``: fp32 weights, bf16 autocast. ``fp16``: the model's floating-point
    parameters and buffers become fp16 (``model.half()``), the optimiser updates fp32 masters, and
    the loss is scaled by a ``LossScaler`` (``loss_scaler=LossScaler(...)`` to change its settings).
    """

    def __init__(self, precision: str, model: torch.nn.Module, loss_scaler: LossScaler | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if loss_scaler is not None and precision != "fp16":
            raise ValueError(f"loss scaling is for fp16 only; {precision} does not underflow")
        self.precision = precision
        parameter = next(model.parameters())
        self.device_type = parameter.device.type
        self.masters = None
        self.scaler = None
        if precision == "fp16":
            model.half()
            self.masters = MasterWeights(model.parameters())
            self.scaler = loss_scaler or LossScaler()
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def parameters(self) -> list[torch.Tensor]:
        """What the optimiser updates: the fp32 masters (fp16) or the model's trainable parameters."""
        return self.masters.params if self.masters is not None else self.trainable

    def autocast(self):
        return autocast(self.precision, self.device_type)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because the fp16 gradients overflowed (always 0 in fp32 and bf16)."""
        return self.scaler.skipped_steps if self.scaler is not None else 0

    @property
    def loss_scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def backward_and_step(self, loss: torch.Tensor, optimizer, max_grad_norm: float | None = None,
                          after_step=None) -> bool:
        """Backward, (unscale, overflow check,) clip, step, zero the gradients; True if the optimiser stepped.

        ``after_step()``, if given, runs after the optimiser step while the gradients are still there
        (fp32 and bf16 only: in fp16 the model's parameters are copies of the masters the optimiser
        updates)."""
        if self.masters is None:
            loss.backward()
            if max_grad_norm is not None:
                clip_grad_norm_(self.trainable, max_grad_norm)
            optimizer.step()
            if after_step is not None:
                after_step()
            optimizer.zero_grad(set_to_none=True)
            return True
        if after_step is not None:
            raise ValueError("after_step reads the model's gradients, which fp16 training keeps on fp32 masters: "
                             "train in fp32 or bf16")
        # F12.4  backward from S · L
        self.scaler.scale_loss(loss).backward()
        # F12.4  g₃₂ = fp32(S·g₁₆) / S, checked for inf/NaN
        finite = self.masters.unscale_grads_into_masters(self.scaler.scale)
        stepped = self.scaler.update(finite)
        if stepped:
            if max_grad_norm is not None:
                clip_grad_norm_(self.masters.params, max_grad_norm)
            optimizer.step()
            self.masters.copy_to_model()
        self.masters.zero_grad()
        return stepped
