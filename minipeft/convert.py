"""Hugging Face checkpoint directory → our model: the key maps, written out, and strict loading.

A checkpoint directory holds ``config.json`` and the weights in ``model.safetensors``,
``pytorch_model.bin``, or shards listed in ``model.safetensors.index.json`` /
``pytorch_model.bin.index.json``. ``load_hf(path)`` reads the config into our frozen dataclass,
renames every tensor through the table below, and loads strictly: a missing, unexpected or
mis-shaped tensor is an error that lists every offender by name.

Three things a reader should notice in the tables:

* ``{i}`` stands for the block index: one line describes every layer.
* GPT-2's checkpoint stores ``c_attn``, ``c_proj`` and ``c_fc`` as ``Conv1D`` whose weight is
  (in, out), so ``y = x W + b``; ``nn.Linear`` stores (out, in) and computes ``y = x Wᵀ + b``.
  Those weights are transposed on the way in (``TRANSPOSED``).
* T5's relative position bias lives in the first block's self-attention in the checkpoint; here
  it belongs to the stack that shares it with every block.

Tensors that are only aliases of a tied weight (``encoder.embed_tokens``, a tied ``lm_head``)
and buffers some old checkpoints saved (GPT-2's ``attn.bias`` causal mask) are ignored by name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .gpt import GPT, GPTConfig
from .t5 import T5Config, T5Model

SUPPORTED_MODEL_TYPES = ("t5", "mt5", "gpt2")


class CheckpointError(ValueError):
    """The checkpoint does not fit the model: lists every missing, unexpected or mis-shaped tensor."""


# ---- the key maps: checkpoint name → our name -------------------------------------------------

T5_KEYS = {
    "shared.weight": "shared.weight",
    "lm_head.weight": "lm_head.weight",  # only when the embeddings are untied (v1.1, mT5)
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "encoder.position_bias.embedding.weight",
    "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "decoder.position_bias.embedding.weight",
    "encoder.final_layer_norm.weight": "encoder.final_layer_norm.weight",
    "decoder.final_layer_norm.weight": "decoder.final_layer_norm.weight",
}
T5_ENCODER_BLOCK_KEYS = {
    "encoder.block.{i}.layer.0.layer_norm.weight": "encoder.blocks.{i}.self_attn_norm.weight",
    "encoder.block.{i}.layer.0.SelfAttention.{proj}.weight": "encoder.blocks.{i}.self_attn.{proj}.weight",
    "encoder.block.{i}.layer.1.layer_norm.weight": "encoder.blocks.{i}.ffn_norm.weight",
    "encoder.block.{i}.layer.1.DenseReluDense.{ffn}.weight": "encoder.blocks.{i}.ffn.{ffn}.weight",
}
T5_DECODER_BLOCK_KEYS = {
    "decoder.block.{i}.layer.0.layer_norm.weight": "decoder.blocks.{i}.self_attn_norm.weight",
    "decoder.block.{i}.layer.0.SelfAttention.{proj}.weight": "decoder.blocks.{i}.self_attn.{proj}.weight",
    "decoder.block.{i}.layer.1.layer_norm.weight": "decoder.blocks.{i}.cross_attn_norm.weight",
    "decoder.block.{i}.layer.1.EncDecAttention.{proj}.weight": "decoder.blocks.{i}.cross_attn.{proj}.weight",
    "decoder.block.{i}.layer.2.layer_norm.weight": "decoder.blocks.{i}.ffn_norm.weight",
    "decoder.block.{i}.layer.2.DenseReluDense.{ffn}.weight": "decoder.blocks.{i}.ffn.{ffn}.weight",
}
T5_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

GPT2_KEYS = {
    "wte.weight": "wte.weight",
    "wpe.weight": "wpe.weight",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
}
GPT2_BLOCK_KEYS = {
    "h.{i}.ln_1.{param}": "blocks.{i}.ln_1.{param}",
    "h.{i}.attn.c_attn.{param}": "blocks.{i}.attn.c_attn.{param}",
    "h.{i}.attn.c_proj.{param}": "blocks.{i}.attn.c_proj.{param}",
    "h.{i}.ln_2.{param}": "blocks.{i}.ln_2.{param}",
    "h.{i}.mlp.c_fc.{param}": "blocks.{i}.mlp.c_fc.{param}",
    "h.{i}.mlp.c_proj.{param}": "blocks.{i}.mlp.c_proj.{param}",
}
# Conv1D weights, stored (in, out): transpose to nn.Linear's (out, in).
TRANSPOSED = re.compile(r"blocks\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
GPT2_IGNORED = re.compile(r"(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)")


def expand(templates: dict[str, str], n_layers: int, **choices: tuple[str, ...]) -> dict[str, str]:
    """Fill ``{i}`` with 0 … n_layers-1 and each other ``{name}`` with every value in ``choices``."""
    names = {}
    for source, target in templates.items():
        fills = [{}]
        for placeholder, values in {"i": tuple(map(str, range(n_layers))), **choices}.items():
            if "{" + placeholder + "}" in source:
                fills = [{**fill, placeholder: value} for fill in fills for value in values]
        for fill in fills:
            names[source.format(**fill)] = target.format(**fill)
    return names


def t5_key_map(config: T5Config) -> dict[str, str]:
    ffn = ("wi_0", "wi_1", "wo") if config.feed_forward_proj == "gated-gelu" else ("wi", "wo")
    proj = ("q", "k", "v", "o")
    key_map = dict(T5_KEYS)
    if config.tie_word_embeddings:
        del key_map["lm_head.weight"]
    key_map.update(expand(T5_ENCODER_BLOCK_KEYS, config.num_layers, proj=proj, ffn=ffn))
    key_map.update(expand(T5_DECODER_BLOCK_KEYS, config.num_decoder_layers, proj=proj, ffn=ffn))
    return key_map


def gpt2_key_map(config: GPTConfig) -> dict[str, str]:
    return {**GPT2_KEYS, **expand(GPT2_BLOCK_KEYS, config.n_layer, param=("weight", "bias"))}


# ---- configs ---------------------------------------------------------------------------------

def t5_config(hf: dict, checkpoint: dict[str, torch.Tensor]) -> T5Config:
    projection = hf.get("feed_forward_proj", "relu")
    if projection not in ("relu", "gated-gelu"):
        raise ValueError(f"feed_forward_proj={projection!r} is not supported: minipeft's T5 has 'relu' "
                         "(T5 v1.0) and 'gated-gelu' (T5 v1.1, flan-T5, mT5)")
    num_layers = hf["num_layers"]
    return T5Config(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
        num_layers=num_layers, num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
        num_heads=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=projection,
        tie_word_embeddings=head_is_tied(checkpoint),
        # The rescale: T5 v1.0 yes, v1.1 / flan / mT5 no. transformers 5 writes it out as
        # `scale_decoder_outputs`; older configs say it through `tie_word_embeddings`.
        scale_decoder_outputs=hf.get("scale_decoder_outputs",
                                     hf["model_type"] == "t5" and hf.get("tie_word_embeddings", True)),
        pad_token_id=hf.get("pad_token_id", 0), eos_token_id=_first(hf.get("eos_token_id", 1)),
        decoder_start_token_id=hf.get("decoder_start_token_id", 0),
    )


def gpt2_config(hf: dict) -> GPTConfig:
    unsupported = {key: hf[key] for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                                            "add_cross_attention") if hf.get(key)}
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        unsupported["activation_function"] = hf["activation_function"]
    if not hf.get("scale_attn_weights", True):
        unsupported["scale_attn_weights"] = False
    if not hf.get("tie_word_embeddings", True):
        unsupported["tie_word_embeddings"] = False
    if unsupported:
        raise ValueError(f"this GPT-2 checkpoint uses options minipeft's GPT does not implement: {unsupported}")
    eos = _first(hf.get("eos_token_id", 50256))
    return GPTConfig(
        vocab_size=hf["vocab_size"], n_positions=hf["n_positions"], n_embd=hf["n_embd"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_inner=hf.get("n_inner"), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        dropout=hf.get("resid_pdrop", 0.1), eos_token_id=eos, pad_token_id=hf.get("pad_token_id") or eos,
    )


def head_is_tied(checkpoint: dict[str, torch.Tensor]) -> bool:
    """The LM head is tied unless the checkpoint stores its own, different ``lm_head.weight``."""
    head = checkpoint.get("lm_head.weight")
    return head is None or ("shared.weight" in checkpoint and torch.equal(head, checkpoint["shared.weight"]))


def _first(token_id):
    return token_id[0] if isinstance(token_id, list) else token_id


# ---- reading the directory -------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def read_config(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file: load_hf expects the checkpoint *directory* "
                                 "that holds config.json and the weights")
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json: is it a Hugging Face checkpoint directory? "
                                "(save one with model.save_pretrained(dir))")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, whichever of the four layouts it uses."""
    for name in WEIGHT_FILES:
        if (path / name).exists():
            break
    else:
        raise FileNotFoundError(f"{path} has config.json but no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if name.endswith(".index.json"):
        weight_map = json.loads((path / name).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(f"{path / name} lists shards that are not in {path}: {missing}")
    else:
        files = [name]
    tensors = {}
    for file in files:
        tensors.update(_read_file(path / file))
    return tensors


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


# ---- loading -----------------------------------------------------------------------------------

def rename(checkpoint: dict[str, torch.Tensor], key_map: dict[str, str], ignored) -> tuple[dict, list[str]]:
    """Apply the key map; return our state dict and the checkpoint names nobody claimed."""
    state, unexpected = {}, []
    for name, tensor in checkpoint.items():
        if name in key_map:
            ours = key_map[name]
            state[ours] = tensor.t() if TRANSPOSED.fullmatch(ours) else tensor
        elif not ignored(name):
            unexpected.append(name)
    return state, unexpected


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], unexpected: list[str], dtype,
                      key_map: dict[str, str]):
    """Load ``state`` into ``model`` (built on the meta device), or raise one error listing every problem.

    Missing tensors are named as the checkpoint should have them, with our name after the arrow."""
    expected = model.state_dict()
    checkpoint_name = {ours: theirs for theirs, ours in key_map.items()}
    missing = [f"{checkpoint_name.get(name, '?')} (→ {name})" for name in sorted(set(expected) - set(state))]
    misshaped = [f"{name}: checkpoint {tuple(t.shape)}, model {tuple(expected[name].shape)}"
                 for name, t in state.items() if t.shape != expected[name].shape]
    if missing or unexpected or misshaped:
        problems = [("missing", missing), ("unexpected", sorted(unexpected)), ("mis-shaped", misshaped)]
        lines = [f"  {kind} ({len(names)}): " + ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
                 for kind, names in problems if names]
        raise CheckpointError("the checkpoint does not match the model built from its config.json:\n"
                              + "\n".join(lines))
    # Copy out of the file: safetensors hands out views into the memory-mapped file, whose data may be
    # misaligned for vector loads and is copied page by page on the first optimiser write.
    state = {name: tensor.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
             for name, tensor in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


def load_hf(path, dtype: torch.dtype = torch.float32):
    """Load a Hugging Face ``t5``/``mt5``/``gpt2`` checkpoint directory into a minipeft model (eval mode)."""
    path = Path(path)
    hf_config = read_config(path)
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} in {path / 'config.json'} is not supported; "
                         f"minipeft loads {', '.join(SUPPORTED_MODEL_TYPES)}")
    checkpoint = read_weights(path)
    if model_type in ("t5", "mt5"):
        config = t5_config(hf_config, checkpoint)
        with torch.device("meta"):
            model = T5Model(config)
        key_map = t5_key_map(config)
        tied_head = config.tie_word_embeddings
        state, unexpected = rename(checkpoint, key_map,
                                   lambda name: name in T5_IGNORED or (tied_head and name == "lm_head.weight"))
    else:
        checkpoint = {name.removeprefix("transformer."): tensor for name, tensor in checkpoint.items()}
        config = gpt2_config(hf_config)
        head = checkpoint.get("lm_head.weight")
        if head is not None and "wte.weight" in checkpoint and not torch.equal(head, checkpoint["wte.weight"]):
            raise CheckpointError("this GPT-2 checkpoint has an lm_head.weight different from wte.weight; "
                                  "minipeft's GPT ties its head to the token embeddings")
        with torch.device("meta"):
            model = GPT(config)
        key_map = gpt2_key_map(config)
        state, unexpected = rename(checkpoint, key_map, GPT2_IGNORED.fullmatch)
    load_state_strict(model, state, unexpected, dtype, key_map)
    return model.eval()
