# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 1 — Attention and the T5 block
#
# Every PEFT method in minipeft attaches to one Transformer. This lesson takes that Transformer
# apart: the attention formula (F5.4), why T5 drops the `1/√D` (F12.6), T5's relative position
# buckets, RMSNorm, and the path of a token from ids to logits through `minipeft/t5.py`.
#
# Shape legend (used everywhere): `B` batch, `T` target length, `S` source length, `C` model
# width, `H` heads, `D` head width, `V` vocabulary.
#
# Run as a script (`python lessons/01_attention_and_the_t5_block.py`) or open it as a notebook
# with jupytext. `MINIPEFT_FAST=1` picks tiny sizes.

# %%
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# Make the repository root importable when the lesson runs from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent))

from minipeft import T5Config, T5Model  # noqa: E402
from minipeft.attention import attend, causal_mask, padding_mask  # noqa: E402
from minipeft.t5 import RMSNorm, relative_position_bucket  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)  # models this small run fastest on one thread
torch.set_printoptions(precision=3, sci_mode=False, linewidth=120)

# %% [markdown]
# ## 1. The attention formula, written out
#
# F5.4, row-wise as PyTorch stores tensors:
#
#     Attn-op(Q, K, V) = softmax(Q Kᵀ · scale + M) V        Q (B, H, T, D);  K, V (B, H, S, D)
#
# `M` is an additive mask (B|1, H|1, T, S): 0 where a query may look, the dtype's minimum where it
# may not (padding, the future). minipeft computes it with one fused kernel,
# `scaled_dot_product_attention`; here we write the formula out in three lines and compare.

# %%
B, H, T, S, D = 2, 4, 5, 7, 16
query = torch.randn(B, H, T, D)
key = torch.randn(B, H, S, D)
value = torch.randn(B, H, S, D)
tokens = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                       [1, 1, 1, 1, 0, 0, 0]])          # (B, S): the second row has 3 padding positions
mask = padding_mask(tokens, torch.float32)              # (B, 1, 1, S), broadcast over H and T
scale = D ** -0.5

# F5.4 written out
scores = query @ key.transpose(-2, -1) * scale + mask   # (B, H, T, S)
weights = scores.softmax(dim=-1)                        # each row sums to 1
written_out = weights @ value                           # (B, H, T, D)

fused = attend(query, key, value, mask, scale=scale)
print("output shape          ", tuple(fused.shape))
print("max |Δ| fused vs formula", (fused - written_out).abs().max().item())
print("rows sum to 1:         ", torch.allclose(weights.sum(-1), torch.ones(B, H, T)))
print("weight on padding (row 2):", weights[1, :, :, 4:].abs().max().item())

# %% [markdown]
# ## 2. Why T5 has no `1/√D`
#
# If the entries of a query and a key have variance 1, their dot product sums `D` such terms:
# its standard deviation is `√D`, and a softmax over scores that large is nearly one-hot (and its
# gradient nearly zero). GPT-2 divides by `√D`. T5 uses `scale = 1` and instead initialises the
# query projection `q` with standard deviation `(C·D)^-½` and `k` with `C^-½` (F12.6, "T5 folds
# `1/√d` into init"), so the *unscaled* scores already have variance ≈ 1.
#
# Below: scores of unit-variance Q, K with and without the scale, and T5's initialisation.
# (`T5Model.init_weights` applies exactly this scheme when a model is built from scratch; it
# matters for training from scratch, not when pretrained weights are loaded. Lesson 05 and
# `minipeft/optim/init.py` show all of F12.6.)

# %%
C = 512
for head_width in (16, 64, 256):
    q, k = torch.randn(4096, head_width), torch.randn(4096, head_width)
    raw = (q * k).sum(-1)
    x = F.rms_norm(torch.randn(4096, C), (C,))                   # a normed hidden state, rms 1
    w_q = torch.randn(head_width, C) * (C * head_width) ** -0.5  # T5 init of q (one head)
    w_k = torch.randn(head_width, C) * C ** -0.5                 # T5 init of k
    t5_scores = ((x @ w_q.T) * (x @ w_k.T)).sum(-1)
    print(f"D={head_width:3d}  std(q·k)={raw.std():6.2f}  std(q·k/√D)={(raw * head_width ** -0.5).std():5.2f}"
          f"  T5 init, scale 1: std={t5_scores.std():5.2f}")

# %% [markdown]
# ## 3. Relative position buckets
#
# T5 has no position embeddings. Each head learns one scalar per *bucket* of the distance
# `key_position − query_position`, added to the scores through `M`. Small distances get a
# bucket each; larger ones share log-spaced buckets up to `max_distance`. The encoder is
# bidirectional (half the buckets for keys to the left, half for the right); the decoder is
# causal (keys to the right are masked anyway and share bucket 0).

# %%
distance = torch.arange(-20, 21)                       # key_position − query_position
bidirectional = relative_position_bucket(distance, bidirectional=True, num_buckets=32, max_distance=128)
causal = relative_position_bucket(distance, bidirectional=False, num_buckets=32, max_distance=128)
print("distance       " + " ".join(f"{d:3d}" for d in distance.tolist()))
print("bidirectional  " + " ".join(f"{b:3d}" for b in bidirectional.tolist()))
print("causal         " + " ".join(f"{b:3d}" for b in causal.tolist()))

# %% [markdown]
# The log spacing: the distance at which each causal bucket starts. Buckets 0–15 are exact;
# from there the bucket width grows geometrically, and every key 113 or more positions back
# shares the last bucket.

# %%
distances = torch.arange(0, 200)
buckets = relative_position_bucket(-distances, bidirectional=False, num_buckets=32, max_distance=128)
starts = [int(distances[buckets == b][0]) for b in buckets.unique().tolist()]
print("first distance of each bucket:", starts)
print("bucket widths:                ", [b - a for a, b in zip(starts, starts[1:])])

# %% [markdown]
# ## 4. RMSNorm vs LayerNorm
#
# LayerNorm subtracts the mean and divides by the standard deviation, then adds a bias.
# T5's RMSNorm only divides by the root mean square, `y = w · x / √(mean(x²) + ε)`: no mean
# subtraction, no bias. Its output has rms 1 but keeps the sign of the input's mean.

# %%
width = 64
x = torch.randn(3, width) * 3.0 + 2.0                  # rows with mean ≈ 2, std ≈ 3
layer_norm = torch.nn.LayerNorm(width)
rms_norm = RMSNorm(width, eps=1e-6)
with torch.no_grad():
    for name, y in (("input", x), ("LayerNorm", layer_norm(x)), ("RMSNorm", rms_norm(x))):
        print(f"{name:10s} mean {y.mean(-1).mean():6.3f}   std {y.std(-1).mean():6.3f}"
              f"   rms {y.pow(2).mean(-1).sqrt().mean():6.3f}")

# %% [markdown]
# ## 5. One token from ids to logits
#
# A tiny T5. Forward hooks print every stage as it runs, in order: the embedding (used by both
# stacks), each encoder block, the encoder's final norm, the decoder's blocks (self-attention,
# cross-attention over the encoder output, FFN), and the tied LM head.

# %%
config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                  dropout_rate=0.1) if FAST else \
         T5Config(vocab_size=256, d_model=128, d_kv=32, d_ff=512, num_layers=4, num_decoder_layers=4, num_heads=4,
                  dropout_rate=0.1)
model = T5Model(config).eval()
print(f"T5: C={config.d_model}, H={config.num_heads}, D={config.d_kv}, "
      f"{config.num_layers}+{config.num_decoder_layers} layers, "
      f"{sum(p.numel() for p in model.parameters()):,} parameters")

input_ids = torch.randint(2, config.vocab_size, (2, 6))          # (B, S)
attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
labels = torch.randint(2, config.vocab_size, (2, 4))             # (B, T)
decoder_input_ids = model.shift_right(labels)                    # [start, y_0, y_1, y_2]
print("input_ids        ", tuple(input_ids.shape), input_ids[0].tolist())
print("decoder_input_ids", tuple(decoder_input_ids.shape), decoder_input_ids[0].tolist(), "(starts with pad = 0)")

stages = {"shared": "embedding", "encoder.blocks.0": "encoder block 0", "encoder": "encoder output",
          "decoder.blocks.0": "decoder block 0", "decoder": "decoder output"}
masks = {}


def show_stage(name):
    def hook(module, args, output):
        first = " ".join(f"{v:6.3f}" for v in output[0, 0, :4].tolist())
        print(f"  {name:16s} {str(tuple(output.shape)):14s} token 0: [{first} …]")
    return hook


def keep_masks(stack_name):
    def hook(module, args, kwargs):
        masks[stack_name] = kwargs
    return hook


handles = [model.get_submodule(path).register_forward_hook(show_stage(name)) for path, name in stages.items()]
for stack in ("encoder", "decoder"):
    for i, block in enumerate(model.get_submodule(stack).blocks):
        handles.append(block.register_forward_pre_hook(keep_masks(f"{stack}.{i}"), with_kwargs=True))
with torch.no_grad():
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
for handle in handles:
    handle.remove()
print(f"  {'logits':16s} {str(tuple(logits.shape)):14s} (B, T, V)")

# %% [markdown]
# ### The mask that carries the position bias
#
# A stack computes `M` once — relative position bias (1, H, T, S) + causal (T, S) + padding
# (B, 1, 1, S) — and hands the same tensor to every block. The encoder's is (B, H, S, S) because
# of the padding; the decoder's self-attention mask is (1, H, T, T); cross-attention only masks
# the encoder's padding, (B, 1, 1, S). The bias is constant along each diagonal: it depends only
# on the distance `key_position − query_position`, not on where the pair sits.

# %%
encoder_mask = masks["encoder.0"]["self_mask"]
decoder_mask = masks["decoder.0"]["self_mask"]
print("encoder self-attention mask", tuple(encoder_mask.shape))
print("decoder self-attention mask", tuple(decoder_mask.shape))
print("decoder cross-attention mask", tuple(masks["decoder.0"]["cross_mask"].shape))
print("same mask in every encoder block:",
      all(torch.equal(masks[f"encoder.{i}"]["self_mask"], encoder_mask) for i in range(config.num_layers)))


def readable(mask):
    """Print the dtype's minimum (the 'may not look' value) as -inf."""
    return mask.masked_fill(mask == torch.finfo(mask.dtype).min, float("-inf"))


print("causal part alone, (T, T):")
print(readable(causal_mask(4, 4, torch.float32, "cpu")))
print("decoder mask, head 0: position bias on and below the diagonal, -inf above:")
print(readable(decoder_mask[0, 0]))

# %% [markdown]
# ## 6. Dropout: off in `eval()`, on in `train()`
#
# T5 applies dropout to the embeddings, after every sublayer and inside the FFN. `model.eval()`
# turns it off, so two forward passes agree exactly; in `model.train()` each pass drops different
# units. Generation does not switch modes for you: call `eval()` first.

# %%
def forward():
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


model.eval()
print("eval():  two forwards equal:", torch.equal(forward(), forward()))
model.train()
first, second = forward(), forward()
print("train(): two forwards equal:", torch.equal(first, second), f"(max |Δ| = {(first - second).abs().max():.3f})")
model.eval()

# %% [markdown]
# ## Exercise
#
# `lessons/exercises/attention.py` and `lessons/exercises/t5.py` are copies of the library with
# the key lines removed. Fill them in, then run the library's own tests against your copy:
#
#     pytest tests/test_attention.py --exercise attention
#     pytest tests/test_t5.py --exercise t5
#
# Start with `attend` (F5.4) and `relative_position_bucket`; the tables above are what your
# version should reproduce.
