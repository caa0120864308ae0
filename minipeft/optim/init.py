"""Initialisation (F12.6): variances that keep activations at unit scale through depth.

Seed 002 §初始化:

    F12.6   W ∈ R^{m×n}:  W_ij ~ N(0, 1/n)       "Xavier" in the seed; n = fan-in, the input width
            GPT-2, GPT-3: residual projections × 1/√N,  N = number of residual layers
            T5: the attention matrices carry an extra 1/√d (its attention has no 1/√d)

Why 1/n: ``y = W x`` sums n products; with ``Var(x_j) = 1`` and ``Var(W_ij) = 1/n`` each ``y_i``
has variance 1 again. (What the seed calls Xavier is the fan-in, "LeCun", rule; Glorot & Bengio's
Xavier uses ``2/(n_in + n_out)``, F1.4: ``xavier_normal_`` below.)

Why 1/√N for GPT-2: each of the N = 2L sublayers (attention and MLP of L blocks) *adds* its output
to the residual stream; N unit-variance additions give variance ~N. Scaling the projection into
the stream (``c_proj``) by 1/√N keeps the sum at the scale of one.

Why T5's 1/√d: T5 computes attention scores ``q·k`` with no ``1/√d`` (F5.4); initialising the query
projection with std ``(C·d)^-½`` instead of ``C^-½`` puts that factor in the weights, so the scores
start with variance ≈ 1 all the same.

The tables ``t5_init_std`` and ``gpt2_init_std`` say what each parameter of ``minipeft.T5Model``
and ``minipeft.GPT`` gets, by name; ``init_from_table_`` applies one. Tables only need the model's
config and parameter names, so t5.py and gpt.py can call them without an import cycle:

    T5Model.init_weights:   minipeft.optim.init.t5_init_(self)
    GPT.init_weights:       minipeft.optim.init.gpt2_init_(self)

Symbols → variables: n → ``fan_in``, N → ``2 · n_layer``, d → ``d_kv``, C → ``d_model``.
"""

from __future__ import annotations

import torch


def fan_in_std(weight: torch.Tensor) -> float:
    """F12.6 std ``1/√n`` of ``W_ij ~ N(0, 1/n)`` for an ``nn.Linear`` weight (out, in): n = in."""
    if weight.dim() != 2:
        raise ValueError(f"fan_in_std needs a matrix (out, in), got shape {tuple(weight.shape)}")
    return weight.shape[1] ** -0.5


@torch.no_grad()
def fan_in_normal_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """F12.6 ``W_ij ~ N(0, gain²/n)``, in place."""
    return weight.normal_(0.0, gain * fan_in_std(weight))


@torch.no_grad()
def xavier_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Glorot & Bengio's Xavier (F1.4): ``W_ij ~ N(0, 2/(n_in + n_out))``, in place."""
    fan_out, fan_in = weight.shape
    return weight.normal_(0.0, (2.0 / (fan_in + fan_out)) ** 0.5)


def residual_std(std: float, n_residual_layers: int) -> float:
    """F12.6 GPT-2: a projection into the residual stream gets ``std / √N``."""
    return std / n_residual_layers ** 0.5


def t5_init_std(name: str, shape: torch.Size, config) -> float | None:
    """T5's std for parameter ``name`` of ``shape``; None for a norm weight (it starts at 1).

    Every matrix N(0, 1/fan_in) (F12.6); the query also × 1/√d (T5's folded attention scale);
    the token embedding (and an untied head) N(0, 1); the relative position bias N(0, 1/C).
    """
    kind = name.split(".")[-2]                      # "q", "wo", "shared", "self_attn_norm", …
    if kind.endswith("norm"):
        return None
    if kind == "q":
        # F12.6  T5 folds attention's 1/√d into the query: std = (1/√C) · (1/√d) = (C · d)^-1/2
        return (shape[1] * config.d_kv) ** -0.5
    if kind in ("k", "v", "o", "wi", "wi_0", "wi_1", "wo"):
        # F12.6  W_ij ~ N(0, 1/n), n = fan-in
        return shape[1] ** -0.5
    if kind == "embedding":                         # relative position bias (buckets, H)
        return config.d_model ** -0.5
    if kind in ("shared", "lm_head"):
        return 1.0
    raise ValueError(f"t5_init_std has no rule for parameter {name!r}; add one to the table")


def gpt2_init_std(name: str, shape: torch.Size, config, std: float = 0.02) -> float | None:
    """GPT-2's std for parameter ``name``; 0.0 for biases (zeros), None for LayerNorm weights (ones).

    N(0, 0.02²) everywhere, except the projections into the residual stream (``c_proj``), which
    get ``0.02/√N`` with N = 2·n_layer residual layers (F12.6).
    """
    if name.endswith("bias"):
        return 0.0
    if name.startswith("ln_") or ".ln_" in name:
        return None
    if name.endswith("c_proj.weight"):
        # F12.6  residual projections × 1/√N, N = 2L
        return residual_std(std, 2 * config.n_layer)
    return std


@torch.no_grad()
def init_parameter_(param: torch.Tensor, std: float | None) -> torch.Tensor:
    """One table entry applied: a std (normal), 0.0 (zeros) or None (ones)."""
    if std is None:
        return param.fill_(1.0)
    if std == 0.0:
        return param.zero_()
    return param.normal_(0.0, std)


@torch.no_grad()
def init_from_table_(model: torch.nn.Module, std_of, named_parameters=None) -> torch.nn.Module:
    """Initialise every parameter from ``std_of(name, shape)``, in the order of ``named_parameters``
    (default: the model's)."""
    for name, param in named_parameters if named_parameters is not None else model.named_parameters():
        init_parameter_(param, std_of(name, param.shape))
    return model


def t5_init_(model: torch.nn.Module) -> torch.nn.Module:
    """T5's scheme (F12.6) on a ``minipeft.T5Model``, in place: the blocks first, then the token
    embedding (and an untied head), the order the shipped tiny-t5 was pretrained from."""
    parameters = list(model.named_parameters())
    embeddings = [(n, p) for n, p in parameters if n.split(".")[0] in ("shared", "lm_head")]
    blocks = [(n, p) for n, p in parameters if n.split(".")[0] not in ("shared", "lm_head")]
    return init_from_table_(model, lambda name, shape: t5_init_std(name, shape, model.config), blocks + embeddings)


def gpt2_init_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """GPT-2's scheme (F12.6) on a ``minipeft.GPT``, in place."""
    return init_from_table_(model, lambda name, shape: gpt2_init_std(name, shape, model.config, std))
