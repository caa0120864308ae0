"""Our model → a Hugging Face checkpoint directory: the converter's key maps read backwards.

``load_hf`` renames a checkpoint's tensors into ours through one table (``convert.py``);
``save_hf`` walks the same table the other way, so a model fine-tuned here, LoRA folded in,
loads in `transformers` (``T5ForConditionalGeneration.from_pretrained(dir)``,
``GPT2LMHeadModel.from_pretrained(dir)``) and back in minipeft (``load_hf(dir)``):

    peft = get_peft(load_hf("t5-small"), "lora", r=8)
    …train…
    save_hf(peft, "t5-small-lora-merged", tokenizer=T5Tokenizer.from_dir("t5-small"))

What a plain checkpoint can hold is a set of weight matrices of the base's shapes. So a method
can be exported only when it changes those weights and adds nothing else:

* full fine-tuning, BitFit, the linear probe (a T5 head of its own): their trained tensors *are*
  base weights;
* LoRA and AdaLoRA: each adapted layer is written with ``W = W_0 + ΔW``, ``ΔW = (α/r) B A``
  (F6.3 with F6.5's scaling) or ``(α/r) U diag(s) Vᵀ`` (F7.1), the layer's ``delta_weight``,
  merged or not; the live model is left as it is;
* adapters (fused or not), prompt, prefix and P-tuning add layers, tokens or keys that no T5 or GPT-2
  checkpoint has a place for: refused (save their trained tensors with ``save_trained``).

The same three conventions as on the way in: GPT-2's Conv1D weights are stored (in, out), so ours
are transposed back; T5's relative position bias goes back into the first block's
self-attention; a tied head is written once, as ``shared.weight`` / ``wte.weight``. An mT5 is
written with ``model_type`` ``t5``: the same architecture, which our config does not tell apart.
Each file is written to a temporary name and renamed into place, so an interrupted export never
leaves a half-written ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write, write_json
from .convert import TRANSPOSED, gpt2_key_map, t5_key_map
from .gpt import GPT
from .methods.base import MethodLayer, PeftModel
from .t5 import T5Model
from .tokenizers import GPT2Tokenizer, T5Tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class ExportError(ValueError):
    """The model cannot be written as a plain Hugging Face checkpoint (and why)."""


# ---- which weights -----------------------------------------------------------------------------

def base_state(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(the base model, its state dict with every foldable method folded in), in our names."""
    if not isinstance(model, PeftModel):
        return check_base(model), dict(model.state_dict())
    peft = model
    in_base = {id(param) for param in peft.model.parameters()}
    extra = [name for name, param in peft.named_parameters() if id(param) not in in_base]
    if type(peft).model_inputs is not PeftModel.model_inputs or extra:
        raise ExportError(
            f"method {peft.name!r} adds {'inputs' if not extra else 'parameters'} a plain "
            f"{type(peft.model).__name__} checkpoint has no place for: only methods that change the base "
            f"weights (full, bitfit, lora, adalora) export; save its trained tensors with save_trained instead")
    if not peft.enabled:
        raise ExportError(f"method {peft.name!r} is switched off (inside disabled()): export the base "
                          f"model itself (peft.model) or leave the context first")
    state = dict(peft.model.state_dict())
    for name, module in peft.model.named_modules():
        if not isinstance(module, MethodLayer):
            continue
        if not hasattr(module, "delta_weight"):
            raise ExportError(f"method {peft.name!r} inserts {type(module).__name__} at {name}, a layer "
                              f"that cannot be folded into the base weights (a non-linearity sits in between): "
                              f"save its trained tensors with save_trained instead")
        weight = module.base_layer.weight.detach()
        if not module.merged:                                   # F6.3, F7.1  W = W_0 + ΔW
            weight = weight + module.delta_weight().detach()
        for key in [key for key in state if key.startswith(f"{name}.")]:
            del state[key]
        state[f"{name}.weight"] = weight
        if module.base_layer.bias is not None:
            state[f"{name}.bias"] = module.base_layer.bias.detach()
    return check_base(peft.model), state


def check_base(model: nn.Module) -> nn.Module:
    if not isinstance(model, (T5Model, GPT)):
        raise ExportError(f"save_hf writes a T5Model or a GPT (or a PeftModel around one), got {type(model).__name__}")
    if isinstance(model, GPT) and model.lm_head is not None:
        raise ExportError("this GPT has a head of its own (a linear probe's?), and a GPT-2 checkpoint has no "
                          "place for one: its head is always the token embedding wte")
    return model


# ---- the configs, as transformers writes them ---------------------------------------------------

def t5_hf_config(model: T5Model) -> dict:
    c = model.config
    gated = c.feed_forward_proj == "gated-gelu"
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": c.vocab_size, "d_model": c.d_model, "d_kv": c.d_kv, "d_ff": c.d_ff,
        "num_layers": c.num_layers, "num_decoder_layers": c.num_decoder_layers, "num_heads": c.num_heads,
        "relative_attention_num_buckets": c.relative_attention_num_buckets,
        "relative_attention_max_distance": c.relative_attention_max_distance,
        "dropout_rate": c.dropout_rate, "layer_norm_epsilon": c.layer_norm_epsilon,
        "feed_forward_proj": c.feed_forward_proj, "dense_act_fn": "gelu_new" if gated else "relu",
        "is_gated_act": gated, "is_encoder_decoder": True,
        "tie_word_embeddings": model.lm_head is None, "scale_decoder_outputs": c.scale_decoder_outputs,
        "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
    }


def gpt2_hf_config(model: GPT) -> dict:
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": c.vocab_size, "n_positions": c.n_positions, "n_embd": c.n_embd, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": c.n_inner, "layer_norm_epsilon": c.layer_norm_epsilon,
        "activation_function": "gelu_new",
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "tie_word_embeddings": True, "bos_token_id": c.eos_token_id, "eos_token_id": c.eos_token_id,
        "pad_token_id": None if c.pad_token_id == c.eos_token_id else c.pad_token_id,
    }


# ---- renaming ------------------------------------------------------------------------------------

def hf_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict → the checkpoint's names (the inverse of ``convert.rename``)."""
    if isinstance(model, T5Model):
        config = model.config
        if model.lm_head is not None and config.tie_word_embeddings:   # a probe's own head
            config = dataclasses.replace(config, tie_word_embeddings=False)
        key_map, prefix = t5_key_map(config), ""
    else:
        key_map, prefix = gpt2_key_map(model.config), "transformer."
    ours_to_theirs = {ours: theirs for theirs, ours in key_map.items()}
    left_over = sorted(set(state) - set(ours_to_theirs))
    if left_over:
        raise ExportError(f"tensors with no place in a {type(model).__name__} checkpoint: {left_over[:10]} "
                          f"(a method's layers? pass the PeftModel that get_peft returned, not its .model)")
    tensors = {}
    for ours, theirs in ours_to_theirs.items():
        tensor = state[ours].detach()
        if TRANSPOSED.fullmatch(ours):
            tensor = tensor.t()                                   # nn.Linear (out, in) → Conv1D (in, out)
        name = theirs if theirs == "lm_head.weight" else prefix + theirs
        tensors[name] = tensor.to("cpu").contiguous().clone()
    return tensors


# ---- writing -------------------------------------------------------------------------------------

def tokenizer_files(tokenizer) -> dict[str, Path]:
    """The files a tokenizer was read from, under the names a checkpoint directory gives them."""
    if isinstance(tokenizer, T5Tokenizer):
        return {"spiece.model": tokenizer.path}
    if isinstance(tokenizer, GPT2Tokenizer):
        return {"vocab.json": tokenizer.vocab_file, "merges.txt": tokenizer.merges_file}
    raise ExportError(f"tokenizer must be a minipeft T5Tokenizer or GPT2Tokenizer, got {type(tokenizer).__name__}")


def save_hf(model: nn.Module, path, tokenizer=None) -> Path:
    """Write ``model`` (a T5Model, a GPT, or a PeftModel whose method folds into them) as a Hugging Face
    checkpoint directory: ``config.json``, ``model.safetensors`` and, if given, the tokenizer's files."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file: save_hf writes a checkpoint *directory*")
    base, state = base_state(model)
    config = t5_hf_config(base) if isinstance(base, T5Model) else gpt2_hf_config(base)
    tensors = hf_tensors(base, state)
    files = tokenizer_files(tokenizer) if tokenizer is not None else {}
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_FILE, lambda temporary: save_file(tensors, temporary, metadata={"format": "pt"}))
    for name, source in files.items():
        atomic_write(path / name, lambda temporary, source=source: shutil.copyfile(source, temporary))
    # config.json last: a directory without it is an unfinished export, and load_hf says so
    write_json(path / CONFIG_FILE, config)
    return path


# ---- a train.py run → a checkpoint directory ----------------------------------------------------

def export_run(run_dir, out_dir) -> Path:
    """Rebuild a train.py run (its base and ``peft.safetensors``) and write it with :func:`save_hf`."""
    from .methods.base import load_trained
    from .training import PEFT_FILE, TrainingError, build_base, config_for_resume

    run_dir = Path(run_dir)
    if not (run_dir / PEFT_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {PEFT_FILE}: give the --out directory of a train.py run")
    config = config_for_resume(run_dir, {})
    torch.manual_seed(config.seed)              # as train.py does, so a --random-base run rebuilds its base
    base, tokenizer = build_base(config)
    try:
        peft = load_trained(base, run_dir / PEFT_FILE, method=config.method)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    return save_hf(peft, out_dir, tokenizer=tokenizer)


def main(argv=None) -> int:
    import argparse
    import sys

    from .training import TrainingError

    parser = argparse.ArgumentParser(
        prog="python -m minipeft.export",
        description="Write a train.py run (full, bitfit, lora or adalora; the low-rank update folded into the "
                    "weights) as a Hugging "
                    "Face checkpoint directory that transformers and minipeft.load_hf both load.")
    parser.add_argument("run_dir", help="the --out directory of a train.py run (holds peft.safetensors)")
    parser.add_argument("out_dir", help="the checkpoint directory to write (config.json, model.safetensors, tokenizer)")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run_dir, args.out_dir)
    except (ExportError, TrainingError, FileNotFoundError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(sorted(p.name for p in path.iterdir()))} to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
