"""One registry for every method: ``get_peft(model, "lora", r=8)`` and ``train.py --method lora``.

A method is a :class:`~minipeft.methods.base.PeftModel` subclass with a ``name`` and an
``Options`` dataclass; ``@register`` puts it here. Nothing else in the project lists methods, so a
new method is one new file plus one import line in ``methods/__init__.py``.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .base import MethodLayer, PeftModel

METHODS: dict[str, type] = {}


def register(cls):
    """Class decorator: make ``cls`` available as ``get_peft(model, cls.name)``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice ({METHODS[cls.name].__module__}, {cls.__module__})")
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(METHODS)


def method_class(method: str):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(method_names())}")
    return METHODS[method]


def make_options(method: str, options: dict):
    """``{"r": 8}`` → ``LoRA.Options(r=8)``, naming any option the method does not have."""
    cls = method_class(method)
    known = {field.name for field in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"method {method!r} has no option(s) {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(known)) or '(none)'}")
    return cls.Options(**options)


def get_peft(model: nn.Module, method: str, **options):
    """Attach ``method`` to ``model`` (frozen where the method says so) and return the wrapper.

    The wrapper is an ``nn.Module`` called like the model; its parameters with
    ``requires_grad`` are exactly the ones the method trains.
    """
    if isinstance(model, PeftModel):
        refuse_second_method(f"method {model.name!r}", method)
    if any(isinstance(module, MethodLayer) for module in model.modules()):
        refuse_second_method("a method's layers", method)
    return method_class(method)(model, make_options(method, options))


def refuse_second_method(attached: str, method: str):
    raise ValueError(f"this model already has {attached} attached: get_peft attaches one method to a base "
                     f"model; load the base again (load_hf, bases.load_base) for {method!r}")
