"""Training memory as bytes per parameter (F12.2, F12.4): what the optimiser and precision cost.

Seed 002: "Adam raises storage from 2× the parameters (θ, g) to 4× (θ, g, m, v)" (F12.2) and
"mixed precision halves storage" (F12.4). Per parameter, in bytes:

    precision   weights θ   gradient g   fp32 master   state (per fp32 copy)   Adam total
    fp32        4           4            –             4 · copies              16  (= 4 × 4 bytes)
    bf16        4           4            –             4 · copies              16  (autocast: activations halve)
    fp16        2           2            4             4 · copies              16  (2 + 2 + 4 + 8)

copies: SGD 0, SGD with momentum 1, Adam/AdamW 2, AdaFactor ≈ 0 for a matrix ((m + n)/(m·n)
of a copy; vectors 1). So mixed precision with Adam keeps 16 bytes per trained parameter, 8× the
2-byte weights: the "halving" is in activations and in the matrix products' reads, not in the
optimiser state. What does shrink the state is training fewer parameters: a *frozen* parameter
costs only its weight bytes (4, or 2 in fp16), no gradient, no master, no state. That is PEFT.

``state_bytes(optimizer)`` measures the same thing on a live optimiser; lesson 05 and
``python -m minipeft.benchmarks.memory`` compare the two.
"""

from __future__ import annotations

import torch

STATE_COPIES = {"sgd": 0, "sgd+momentum": 1, "adam": 2, "adamw": 2, "adafactor": 0}
WEIGHT_BYTES = {"fp32": 4, "bf16": 4, "fp16": 2}   # bf16 here is autocast: the weights stay fp32


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimiser's state tensors (moments, buffers; step counters excluded)."""
    return tensor_bytes(value for state in optimizer.state.values() for value in state.values()
                        if torch.is_tensor(value) and value.numel() > 1)


def bytes_per_parameter(optimizer: str, precision: str) -> dict[str, float]:
    """F12.2 / F12.4 bytes kept per *trained* parameter, by kind (AdaFactor's factored state ≈ 0)."""
    if optimizer not in STATE_COPIES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(STATE_COPIES)}")
    if precision not in WEIGHT_BYTES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(WEIGHT_BYTES)}")
    weight = WEIGHT_BYTES[precision]
    return {"weights": weight, "gradients": weight, "fp32 masters": 4 if precision == "fp16" else 0,
            "optimizer state": 4 * STATE_COPIES[optimizer]}


def training_state_bytes(trainable: int, frozen: int, optimizer: str, precision: str) -> dict[str, float]:
    """Static training memory of a model with ``trainable`` and ``frozen`` parameters (no activations)."""
    per_parameter = bytes_per_parameter(optimizer, precision)
    kinds = {kind: trainable * size for kind, size in per_parameter.items()}
    kinds["weights"] += frozen * WEIGHT_BYTES[precision]                # frozen: weights only
    kinds["total"] = sum(kinds.values())
    return kinds
