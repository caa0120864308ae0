"""Shape-checked equations.

Every formula in minipeft is written for tensors of known shape, e.g. F5.4
``Attn-op(Q, K, V) = softmax(Q Kᵀ · scale + bias) V`` needs Q of shape (B, H, T, D) and K, V of
shape (B, H, S, D). A wrong shape rarely fails where the mistake is: it fails three modules later
inside torch with ``mat1 and mat2 shapes cannot be multiplied``. ``Dims`` checks shapes at the
boundary of the module that implements the formula, and its error names the formula and the
dimension that disagrees:

    >>> dims = Dims("F5.4 attention", D=64)
    >>> dims.check("query", q, "B H T D")      # binds B, H, T from q; D must be 64
    >>> dims.check("key", k, "B H S D")        # B, H, D must agree with q; binds S
    ShapeError: F5.4 attention: key has shape (2, 8, 5, 32), expected (B, H, S, D):
                dimension D is 32 but 64 was expected (given)

The shape legend used everywhere (../shared/STYLE.md): ``B`` batch, ``T`` target length, ``S`` source
length, ``C`` model width, ``H`` heads, ``D`` head width, ``F`` feed-forward width, ``r`` rank,
``m`` prompt/prefix length, ``V`` vocabulary. A spec may contain integers (``"B 1 T"``) and may
start with ``...`` to allow any number of leading dimensions (``"... C"``).
"""

from __future__ import annotations

import torch


class ShapeError(ValueError):
    """A tensor's shape does not match the equation it is used in."""


class Dims:
    """Named dimensions of one equation, bound as tensors are checked against it."""

    def __init__(self, equation: str, **known: int):
        self.equation = equation
        self.sizes: dict[str, int] = dict(known)
        self._bound_by: dict[str, str] = {name: "given" for name in known}

    def check(self, name: str, tensor: torch.Tensor, spec: str) -> torch.Tensor:
        """Check ``tensor`` against ``spec`` (e.g. ``"B H T D"``); return it unchanged."""
        names = spec.split()
        shape = tuple(tensor.shape)
        leading = names[0] == "..."
        if leading:
            names = names[1:]
        rank_ok = len(shape) >= len(names) if leading else len(shape) == len(names)
        if not rank_ok:
            self._fail(name, shape, spec, f"it has {len(shape)} dimensions, the equation needs {len(names)}")
        for dim_name, size in zip(names, shape[len(shape) - len(names):]):
            if dim_name.isdigit():
                if size != int(dim_name):
                    self._fail(name, shape, spec, f"a dimension is {size} but {dim_name} was expected")
            elif dim_name not in self.sizes:
                self.sizes[dim_name] = size
                self._bound_by[dim_name] = name
            elif self.sizes[dim_name] != size:
                self._fail(
                    name, shape, spec,
                    f"dimension {dim_name} is {size} but {self.sizes[dim_name]} was expected "
                    f"({self._bound_by[dim_name]})",
                )
        return tensor

    def __getitem__(self, dim_name: str) -> int:
        return self.sizes[dim_name]

    def _fail(self, name: str, shape: tuple, spec: str, reason: str) -> None:
        expected = ", ".join(spec.split())
        raise ShapeError(f"{self.equation}: {name} has shape {shape}, expected ({expected}): {reason}")


def check_shape(tensor: torch.Tensor, spec: str, equation: str, name: str = "input", **known: int) -> torch.Tensor:
    """One-shot form of ``Dims(equation, **known).check(name, tensor, spec)``."""
    return Dims(equation, **known).check(name, tensor, spec)
