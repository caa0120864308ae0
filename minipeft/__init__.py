"""minipeft: parameter-efficient fine-tuning, built from scratch to be read.

Public API:
    load_hf(path)            a Hugging Face t5 / mt5 / gpt2 checkpoint directory → our model
    save_hf(model, path)     and back: our model (LoRA folded in) → a checkpoint directory (export.py)
    T5Model, T5Config        the encoder-decoder (t5.py)
    GPT, GPTConfig           the decoder-only model (gpt.py)
    T5Tokenizer, GPT2Tokenizer
    get_peft(model, method, **options)   a PEFT method attached to a frozen model (methods/)
    MixedBatch(model, {task: peft})      trained prompts / prefixes of one base, one per example (F2.5, F5.8)
    ProxyTuned(base, expert, anti_expert)   a model steered by a tuned pair's logits at decoding (F9.1)
"""

from .convert import CheckpointError, load_hf
from .gpt import GPT, GPTConfig
from .methods import MixedBatch, get_peft
from . import optim  # noqa: F401  (minipeft.optim.AdamW, …)
from .proxy import ProxyTuned
from .shapes import Dims, ShapeError, check_shape
from .t5 import T5Config, T5Model
from .tokenizers import GPT2Tokenizer, T5Tokenizer

__all__ = ["load_hf", "save_hf", "CheckpointError", "ExportError", "T5Model", "T5Config", "GPT", "GPTConfig", "Dims", "ShapeError",
           "check_shape", "T5Tokenizer", "GPT2Tokenizer", "get_peft",
           "MixedBatch", "ProxyTuned"]


def __getattr__(name):
    """``minipeft.save_hf`` and ``minipeft.ExportError``, imported on first use: export.py is also a
    command (``python -m minipeft.export``), which runpy warns about if the package imported it already."""
    if name in ("save_hf", "ExportError"):
        from . import export
        return getattr(export, name)
    raise AttributeError(f"module 'minipeft' has no attribute {name!r}")
