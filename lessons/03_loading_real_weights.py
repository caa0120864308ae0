# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 3 — Loading real weights
#
# A pretrained model is a directory: `config.json` (the sizes) and `model.safetensors` (named
# tensors). `minipeft.load_hf(path)` reads both into our own `T5Model` or `GPT` through a key
# map written out as a table (`minipeft/convert.py`), and refuses a checkpoint that does not fit.
#
# To stay offline we build small T5 and GPT-2 models with `transformers`, random weights, save
# them with `save_pretrained`, and check that our models, loaded from those files, compute the
# same logits. `MINIPEFT_FAST=1` picks tiny sizes.

# %%
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

# Make the repository root importable when the lesson runs from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent))

import minipeft  # noqa: E402
from minipeft import convert  # noqa: E402

try:
    import transformers
    from safetensors.torch import load_file, save_file
except ImportError:
    print("This lesson compares minipeft with Hugging Face transformers, which is not installed.\n"
          "Install it with:   pip install transformers safetensors\n"
          "Skipping the lesson.")
    sys.exit(0)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)  # models this small run fastest on one thread
workdir = Path(tempfile.mkdtemp(prefix="minipeft_lesson3_"))

# %% [markdown]
# ## 1. A checkpoint directory
#
# A T5 shaped like `t5-small` (T5 v1.0: ReLU feed-forward, tied head), only smaller.

# %%
sizes = dict(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4) if FAST else \
        dict(vocab_size=1024, d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8)
hf_t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(**sizes)).eval()
hf_t5.save_pretrained(workdir / "t5")
print(sorted(p.name for p in (workdir / "t5").iterdir()))
print((workdir / "t5" / "config.json").read_text())

# %%
checkpoint = load_file(workdir / "t5" / "model.safetensors")
print(f"{len(checkpoint)} tensors, for example:")
for name in sorted(checkpoint)[:4] + sorted(checkpoint)[-3:]:
    print(f"  {name:68s} {tuple(checkpoint[name].shape)}")
print("relative position bias tables:", [name for name in checkpoint if "relative_attention_bias" in name])

# %% [markdown]
# ## 2. The key map
#
# The checkpoint's names follow the reference library's module tree; ours follow `t5.py`. The
# map is a table of templates: `{i}` is the block index, `{proj}` one of `q, k, v, o`, `{ffn}`
# the feed-forward matrices (`wi, wo`, or `wi_0, wi_1, wo` for gated GELU). One line describes
# every layer. The relative position bias sits in block 0 of the checkpoint; here it belongs to
# the stack, which shares it with every block (lesson 1).

# %%
for source, target in convert.T5_DECODER_BLOCK_KEYS.items():
    print(f"  {source:58s} → {target}")

# %%
hf_config = json.loads((workdir / "t5" / "config.json").read_text())
our_config = convert.t5_config(hf_config, checkpoint)
key_map = convert.t5_key_map(our_config)
print(f"expanded for {our_config.num_layers} + {our_config.num_decoder_layers} blocks: {len(key_map)} names")
for source in ("encoder.block.1.layer.0.SelfAttention.q.weight", "decoder.block.0.layer.1.EncDecAttention.k.weight",
               "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"):
    print(f"  {source:66s} → {key_map[source]}")
print("the map names exactly the checkpoint's tensors:", set(key_map) == set(checkpoint))
print("ignored by name (aliases of shared.weight some checkpoints also store):", convert.T5_IGNORED)

# %% [markdown]
# ## 3. GPT-2's transposed weights
#
# GPT-2's checkpoint stores `c_attn`, `c_proj` and `c_fc` as `Conv1D`, which computes
# `y = x W + b` with `W` of shape (in, out). `nn.Linear` stores (out, in) and computes
# `y = x Wᵀ + b`. Same numbers, transposed: `x @ W == F.linear(x, Wᵀ)`. The converter transposes
# those weights (`convert.TRANSPOSED`) and copies everything else as is.

# %%
gpt_sizes = dict(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=4) if FAST else \
            dict(vocab_size=1024, n_positions=256, n_embd=256, n_layer=4, n_head=8)
hf_gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
    **gpt_sizes, bos_token_id=gpt_sizes["vocab_size"] - 1, eos_token_id=gpt_sizes["vocab_size"] - 1)).eval()
hf_gpt.save_pretrained(workdir / "gpt2")
gpt = minipeft.load_hf(workdir / "gpt2")

conv1d = hf_gpt.transformer.h[0].attn.c_attn
linear = gpt.blocks[0].attn.c_attn
print(f"checkpoint {type(conv1d).__name__}: weight {tuple(conv1d.weight.shape)} (in, out)")
print(f"minipeft   {type(linear).__name__}: weight {tuple(linear.weight.shape)} (out, in)")
print("our weight == checkpoint weightᵀ:", torch.equal(linear.weight, conv1d.weight.T))
x = torch.randn(3, gpt_sizes["n_embd"])
with torch.no_grad():
    print("max |x @ W + b − F.linear(x, Wᵀ, b)|:", (x @ conv1d.weight + conv1d.bias
                                                    - F.linear(x, conv1d.weight.T, conv1d.bias)).abs().max().item())
    print("max |Conv1D(x) − our Linear(x)|:    ", (conv1d(x) - linear(x)).abs().max().item())
for source, target in list(convert.GPT2_BLOCK_KEYS.items())[1:3]:
    print(f"  {source:28s} → {target}")
print("transposed on the way in:", convert.TRANSPOSED.pattern)

# %% [markdown]
# ## 4. T5 v1.0's rescaled decoder output
#
# With a tied head, one matrix is both the input embedding (entries of size ≈ 1) and the output
# projection. The decoder output has rms ≈ 1 after its final RMSNorm, so its dot product with an
# embedding row has standard deviation ≈ `√d_model`. T5 v1.0 multiplies the decoder output by
# `d_model^-½` before the head, bringing the logits back to ≈ 1. T5 v1.1, flan-T5 and mT5 use a
# separate head and no rescale.
#
# Older configs said "rescale" through `tie_word_embeddings`. transformers 5 writes the
# rescale down as its own field, `scale_decoder_outputs`, and always ties the head: a v1.1
# config saved by transformers 5 can describe a tied head *without* the rescale. minipeft keeps
# both settings.

# %%
v11 = transformers.T5Config(**sizes, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
print(f"v1.0 config: tie_word_embeddings={hf_t5.config.tie_word_embeddings}, "
      f"scale_decoder_outputs={hf_t5.config.scale_decoder_outputs}")
print(f"v1.1 config: tie_word_embeddings={v11.tie_word_embeddings}, scale_decoder_outputs={v11.scale_decoder_outputs}")

t5 = minipeft.load_hf(workdir / "t5")
print(f"loaded by minipeft: tie_word_embeddings={t5.config.tie_word_embeddings}, "
      f"scale_decoder_outputs={t5.config.scale_decoder_outputs}")
input_ids = torch.randint(2, sizes["vocab_size"], (2, 9))                 # (B, S)
attention_mask = torch.ones_like(input_ids)
attention_mask[1, 6:] = 0                                                 # the second row is padded
decoder_input_ids = torch.randint(2, sizes["vocab_size"], (2, 5))         # (B, T)
with torch.no_grad():
    scaled = t5(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    t5.config = dataclasses.replace(t5.config, scale_decoder_outputs=False)
    unscaled = t5(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    t5.config = dataclasses.replace(t5.config, scale_decoder_outputs=True)
print(f"logit std with the rescale {scaled.std():.2f}, without {unscaled.std():.2f} "
      f"(√d_model = {sizes['d_model'] ** 0.5:.2f})")

# %% [markdown]
# ## 5. Loading, checked against the reference
#
# `load_hf` builds the model on the `meta` device (no memory), renames every tensor through the
# map, transposes where needed, and loads strictly. The logits of both implementations agree
# to float rounding. (Both run dropout only in training mode; `load_hf` returns `eval()` models.)

# %%
hf_v11 = transformers.T5ForConditionalGeneration(v11).eval()
hf_v11.save_pretrained(workdir / "t5_v11")
t5_v11 = minipeft.load_hf(workdir / "t5_v11")
print(f"v1.1 loaded by minipeft: feed_forward_proj={t5_v11.config.feed_forward_proj!r}, "
      f"tie_word_embeddings={t5_v11.config.tie_word_embeddings}, "
      f"scale_decoder_outputs={t5_v11.config.scale_decoder_outputs}")

with torch.no_grad():
    for name, reference, ours in (("T5 v1.0", hf_t5, t5), ("T5 v1.1", hf_v11, t5_v11)):
        expected = reference(input_ids=input_ids, attention_mask=attention_mask,
                             decoder_input_ids=decoder_input_ids).logits
        got = ours(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        print(f"{name}: logits {tuple(got.shape)}, max |Δ| vs transformers {(got - expected).abs().max():.1e}")
    gpt_ids = torch.randint(0, gpt_sizes["vocab_size"], (2, 12))
    got, expected = gpt(gpt_ids), hf_gpt(gpt_ids).logits
    print(f"GPT-2:   logits {tuple(got.shape)}, max |Δ| vs transformers {(got - expected).abs().max():.1e}")

# %% [markdown]
# ## 6. A checkpoint that does not fit
#
# Loading is strict: a missing, unexpected or mis-shaped tensor is a `CheckpointError` that
# lists every offender, never a silent partial load. We damage a copy of the T5 checkpoint in
# three ways: delete a tensor, cut a column off another, and add one the model does not have.
# Missing and mis-shaped tensors are named as in our model (the key map's right-hand side);
# an unexpected one has no name of ours, so it keeps the checkpoint's.

# %%
broken = workdir / "t5_broken"
shutil.copytree(workdir / "t5", broken)
damaged = dict(checkpoint)
del damaged["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
query_weight = "encoder.block.0.layer.0.SelfAttention.q.weight"
damaged[query_weight] = damaged[query_weight][:, :-1]                      # one input column short
damaged["encoder.block.0.layer.0.SelfAttention.q.bias"] = torch.zeros(sizes["num_heads"] * sizes["d_kv"])
save_file({name: tensor.contiguous() for name, tensor in damaged.items()}, broken / "model.safetensors",
          metadata={"format": "pt"})

try:
    minipeft.load_hf(broken)
except minipeft.CheckpointError as error:
    print("CheckpointError:", error)

# %% [markdown]
# ## 7. And back: `save_hf`
#
# The key map read from right to left writes our model as a checkpoint again (`export.py`): every
# tensor under the checkpoint's name, GPT-2's four projections transposed back to Conv1D's
# (in, out), T5's relative position bias returned to block 0's self-attention, a tied head written
# once. transformers loads the result, so a model fine-tuned here can leave (lesson 6 exports a
# LoRA model, folded into its weights).

# %%
minipeft.save_hf(gpt, workdir / "gpt2_exported")
exported = load_file(workdir / "gpt2_exported" / "model.safetensors")
original = load_file(workdir / "gpt2" / "model.safetensors")
print(f"the names transformers wrote: {sorted(exported) == sorted(original)} ({len(exported)} tensors), "
      f"the same numbers: {all(torch.equal(exported[name], original[name]) for name in original)}")
print("c_attn stored (in, out) again:", tuple(exported["transformer.h.0.attn.c_attn.weight"].shape))
back = transformers.GPT2LMHeadModel.from_pretrained(workdir / "gpt2_exported").eval()
with torch.no_grad():
    print(f"transformers on the exported directory: max |Δ logits| {(back(gpt_ids).logits - gpt(gpt_ids)).abs().max():.1e}")

# %%
shutil.rmtree(workdir)

# %% [markdown]
# ## Exercise
#
# The key map is the part of the converter you would extend for a new model. Rebuild the T5
# block in `lessons/exercises/t5.py` and check it, including the comparison with transformers:
#
#     pytest tests/test_t5.py --exercise t5
#
# Then: which lines of `convert.T5_DECODER_BLOCK_KEYS` would change for a decoder block that
# had no cross-attention?
