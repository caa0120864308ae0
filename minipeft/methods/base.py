"""What every method shares: freezing, the parameter report, saving only the trained tensors,
switching the method off, and merging.

    peft = get_peft(model, "lora", r=8)      # freezes the model, attaches the method
    peft(input_ids=…, decoder_input_ids=…)   # called like the model
    peft.trainable_report()                  # "trainable params: N || all params: M || trainable%: P"
    with peft.disabled(): …                  # the frozen base, method switched off
    save_trained(peft, "out/peft.safetensors");  load_trained(fresh_model, "out/peft.safetensors")

A method subclasses :class:`PeftModel`, names itself, declares its ``Options`` (a frozen
dataclass whose field names follow the reference library where it has the same knob) and
attaches its parameters in ``attach``. Methods that work on the input seams (prompt, prefix)
override ``model_inputs``; methods that wrap layers (LoRA, adapters) insert :class:`MethodLayer`
modules, which ``disabled()`` switches off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..atomic import atomic_write

CHECKPOINT_FORMAT = "minipeft-peft/1"


class MethodLayer(nn.Module):
    """A layer a method inserts into the model; it adds the method's path only while ``enabled``."""

    enabled: bool = True


class PeftModel(nn.Module):
    name: ClassVar[str] = ""
    freezes_base: ClassVar[bool] = True
    builds_on_runs: ClassVar[bool] = False   # True: made from other runs' checkpoints (AdapterFusion)

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, model: nn.Module, options=None):
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.base_fingerprint = base_fingerprint(model)  # of the weights before the method touches them
        self.model = model
        if self.freezes_base:
            model.requires_grad_(False)
        self.enabled = True
        self._base_values: list[tuple[nn.Parameter, torch.Tensor]] = []  # see train_in_place
        self.attach()

    def attach(self):
        """Add the method's parameters to the model (or to ``self``). Subclasses override."""

    @torch.no_grad()
    def train_in_place(self, parameters):
        """Train these parameters *of the base model* (BitFit's biases, adapters' layer norms).

        Their present values are the base's: a copy is kept so that ``disabled()`` can still run the
        untouched base (it swaps the copies in, and the trained values back afterwards)."""
        for param in parameters:
            param.requires_grad_(True)
            self._base_values.append((param, param.detach().clone()))

    # -- called like the model ---------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def is_encoder_decoder(self) -> bool:
        return getattr(self.model, "is_encoder_decoder", False)

    def model_inputs(self, **inputs) -> dict:
        """The input seams: rewrite ``input_ids`` / ``inputs_embeds`` / ``attention_mask`` /
        ``prefix_kv`` before the model sees them. Identity unless the method works there."""
        return inputs

    def forward(self, **inputs):
        return self.model(**(self.model_inputs(**inputs) if self.enabled else inputs))

    def generate(self, input_ids=None, max_new_tokens: int = 20, attention_mask=None, **options):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
        if self.enabled:
            inputs = self.model_inputs(**inputs)
        return self.model.generate(max_new_tokens=max_new_tokens, **inputs, **options)

    # -- switching off, merging --------------------------------------------------------------------
    def set_enabled(self, enabled: bool):
        if enabled != self.enabled:
            self._swap_base_values()
        self.enabled = enabled
        for module in self.modules():
            if isinstance(module, MethodLayer):
                module.enabled = enabled

    @torch.no_grad()
    def _swap_base_values(self):
        """Exchange the trained values of in-place-trained base parameters with the kept ones."""
        for param, kept in self._base_values:
            current = param.detach().clone()
            param.copy_(kept)
            kept.copy_(current)

    @contextmanager
    def disabled(self):
        """Run the frozen base model with the method switched off (e.g. to compare outputs)."""
        if not self.freezes_base:
            raise RuntimeError(f"method {self.name!r} trains the base weights themselves: "
                               f"there is no untouched base to switch back to (load the base again instead)")
        previous = self.enabled
        self.set_enabled(False)
        try:
            yield self
        finally:
            self.set_enabled(previous)

    def merge(self):
        raise NotImplementedError(f"method {self.name!r} cannot be merged into the base weights "
                                  f"(only methods that add a linear map to a weight, such as LoRA, can)")

    def unmerge(self):
        raise NotImplementedError(f"method {self.name!r} cannot be merged, so there is nothing to unmerge")

    # -- hooks of the training loop (nothing to do unless a method needs them: AdaLoRA does) -------
    reads_gradients: ClassVar[bool] = False   # True: the loop calls after_optimizer_step, which reads .grad

    def prepare_training(self, total_steps: int):
        """Called once before the first step with the run's length (AdaLoRA's budget schedule)."""

    def regularization_loss(self) -> torch.Tensor | None:
        """A term added to the task loss before backward (AdaLoRA's orthogonality penalty), or None."""
        return None

    def after_optimizer_step(self, step: int):
        """Called after the optimiser has stepped, the gradients still in ``.grad`` (``step`` counts
        from 0): AdaLoRA scores its triplets and prunes to the budget here."""

    def training_state(self) -> dict:
        """State of the method that resuming needs besides the trained tensors (AdaLoRA's scores)."""
        return {}

    def load_training_state(self, state: dict):
        """Put back what :meth:`training_state` returned."""

    # -- what is trained ---------------------------------------------------------------------------
    def trainable_report(self) -> str:
        return trainable_report(self)

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the tensors training changes (what a checkpoint needs to hold)."""
        return {name: param.detach() for name, param in self.named_parameters() if param.requires_grad}

    @torch.no_grad()
    def load_trained_state_dict(self, state: dict[str, torch.Tensor]):
        """Copy trained tensors in; every expected name must be there with its shape, and nothing else."""
        expected = {name: param for name, param in self.named_parameters() if param.requires_grad}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mis_shaped = [f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
                      for name in sorted(set(expected) & set(state)) if state[name].shape != expected[name].shape]
        if missing or unexpected or mis_shaped:
            lines = [f"cannot load these trained tensors into method {self.name!r}:"]
            for title, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
                lines += [f"  {title}: {name}" for name in names]
            raise ValueError("\n".join(lines))
        for name, param in expected.items():
            param.copy_(state[name])


# -- counting ----------------------------------------------------------------------------------------

def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a tied weight counts once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_report(module: nn.Module) -> str:
    trainable, total = count_parameters(module)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}"


def base_fingerprint(model: nn.Module) -> str:
    """A short hash of every tensor of the model (names, shapes, dtypes, values).

    A checkpoint of trained tensors is only meaningful on the base it was trained from; the
    fingerprint lets :func:`load_trained` refuse any other base.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


# -- saving and loading only what was trained ----------------------------------------------------------

def save_trained(peft: PeftModel, path: str | os.PathLike, extra: dict | None = None) -> int:
    """Write the trained tensors, the method, its options and the base's fingerprint to one
    safetensors file, atomically (a temporary file renamed into place). Returns the file's size."""
    from safetensors.torch import save_file

    metadata = {
        "format": CHECKPOINT_FORMAT,
        "method": peft.name,
        "options": json.dumps(dataclasses.asdict(peft.options)),
        "base_fingerprint": peft.base_fingerprint,
        "model_config": json.dumps({"class": type(peft.model).__name__, **dataclasses.asdict(peft.config)}),
        "extra": json.dumps(extra or {}),
    }
    tensors = {name: tensor.contiguous().clone() for name, tensor in peft.trained_state_dict().items()}
    path = atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    return path.stat().st_size


def read_checkpoint(path: str | os.PathLike, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file written by :func:`save_trained`, with clear errors
    (``tensors=False``: the metadata only, and an empty dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no PEFT checkpoint at {path}: pass the file written by save_trained "
                                f"(train.py writes it into its --out directory)")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        trained = load_file(str(path)) if tensors else {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a minipeft PEFT checkpoint (format {metadata.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r})")
    return metadata, trained


def load_trained(model: nn.Module, path: str | os.PathLike, method: str | None = None) -> PeftModel:
    """Rebuild the method saved at ``path`` on ``model`` and load its trained tensors.

    Refuses a different base (fingerprint) and, when ``method`` is given, a checkpoint of another method.
    """
    from .registry import get_peft

    metadata, tensors = read_checkpoint(path)
    if method is not None and method != metadata["method"]:
        raise ValueError(f"{path} holds a {metadata['method']!r} checkpoint, not {method!r}: "
                         f"use --method {metadata['method']} (or train a {method!r} checkpoint)")
    fingerprint = base_fingerprint(model)
    if fingerprint != metadata["base_fingerprint"]:
        raise ValueError(f"{path} was trained on a different base model (fingerprint "
                         f"{metadata['base_fingerprint']}, this model's is {fingerprint}): load it onto the "
                         f"same base weights it was trained from")
    options = {key: tuple(value) if isinstance(value, list) else value
               for key, value in json.loads(metadata["options"]).items()}
    peft = get_peft(model, metadata["method"], **options)
    peft.load_trained_state_dict(tensors)
    return peft
