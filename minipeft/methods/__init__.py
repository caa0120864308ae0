"""The PEFT methods, one module each, behind one entry point: ``get_peft(model, method, **options)``.

Every method attaches to the frozen model at one of its seams (see README, "The four seams");
``base.py`` holds what they share (freezing, the parameter report, saving only the trained
tensors, switching the method off, merging).
"""

from .base import PeftModel, base_fingerprint, count_parameters, load_trained, save_trained, trainable_report
from .registry import METHODS, get_peft, method_names, register

# Importing a method module registers it.
from . import adapter, bitfit, full, lora, probe  # noqa: E402,F401  (isort: skip)
from . import fusion  # noqa: E402,F401  (after adapter, whose layers it fuses)
from . import adalora  # noqa: E402,F401  (after lora, whose class it extends)
from . import prefix, prompt, ptuning, ptuning_v2  # noqa: E402,F401  (isort: skip)
from .mixed import MixedBatch  # noqa: E402  (several prompts / prefixes in one batch, F2.5 / F5.8)

__all__ = ["PeftModel", "METHODS", "get_peft", "method_names", "register", "count_parameters",
           "trainable_report", "save_trained", "load_trained", "base_fingerprint", "MixedBatch"]
