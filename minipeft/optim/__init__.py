"""Optimisation from the formulas of seed 002 (F12): what makes training work, one idea per file.

    sgd.py              F12.1  SGD (momentum, Nesterov, L2 decay as torch.optim.SGD)
    adam.py             F12.2  Adam (L2 weight decay) and AdamW (decoupled weight decay)
    adafactor.py        F12.3  AdaFactor: factored second moment, O(m + n) per matrix
    mixed_precision.py  F12.4  bf16 autocast; fp16 with fp32 master weights and dynamic loss scaling
    schedules.py        F12.5  warmup, then cosine (GPT-3: to 10%), linear or constant
    clipping.py         F12.5  clipping by global norm, g ← g / max(1, ‖g‖/c)
    init.py             F12.6  fan-in init, GPT-2's 1/√N residual scaling, T5's folded 1/√d
    memory.py           F12.2, F12.4  bytes per parameter: the optimiser state as memory
    build.py            build_optimizer / build_schedule by name, for train.py

Each optimiser is a ``torch.optim.Optimizer`` with its ``torch.optim`` counterpart's arguments;
the tests pin them to ``torch.optim`` (and AdaFactor to ``torch.optim.Adafactor`` and Hugging
Face's) parameter for parameter.
"""

from .adafactor import AdaFactor
from .adam import Adam, AdamW
from .build import OPTIMIZERS, build_optimizer, weight_decay_groups
from .clipping import clip_grad_norm_, global_grad_norm
from .memory import bytes_per_parameter, state_bytes, training_state_bytes
from .mixed_precision import PRECISIONS, LossScaler, MasterWeights, Precision, autocast
from .schedules import SCHEDULES, Warmup, WarmupCosine, WarmupLinear, build_schedule
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "AdaFactor", "build_optimizer", "build_schedule", "weight_decay_groups",
           "OPTIMIZERS", "SCHEDULES", "PRECISIONS", "clip_grad_norm_", "global_grad_norm", "Warmup", "WarmupCosine",
           "WarmupLinear", "LossScaler", "MasterWeights", "Precision", "autocast", "state_bytes",
           "bytes_per_parameter", "training_state_bytes"]
