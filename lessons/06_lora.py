# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 6 — LoRA: a low-rank update beside a frozen weight
#
# The document (seed 001, "LoRA") writes fine-tuning as `W = W_0 + ΔW` and then restricts the
# update to a product of two thin matrices:
#
#     W = W_0 + ΔW = W_0 + B A,   W_0 ∈ R^{d×k},  B ∈ R^{d×r},  A ∈ R^{r×k},  r ≪ min(d, k)      (F6.1)
#
# > 在训练过程中，W_0 被冻住（不通过梯度进行更新），而需要训练的参数为 A、B 两个矩阵
# > ("during training W_0 is frozen, receives no gradient; only A and B are trained")
#
# > 作者将 A 矩阵用随机高斯分布初始化，将 B 矩阵初始化为 0 矩阵，保证训练开始时旁路矩阵为 0 矩阵
# > ("A is initialised from a Gaussian and B with zeros, so the bypass is 0 when training starts")  (F6.2)
#
# > 在推理阶段，只需要将模型的改变和预训练模型相加 … W = W_0 + BA，不会带来额外的参数和推理延迟
# > ("for inference just add the change into the pretrained weight, W = W_0 + BA: no extra
# > parameters, no extra latency")  (F6.3)
#
# Applied to an input, with the `α/r` scaling that the reference library exposes as
# `lora_alpha` (F6.5): `h = W_0 x + (α/r) · B A x`. Each wrapped `d×k` matrix adds `r(d + k)`
# trainable numbers (F6.4) instead of `d·k`.
#
# Two notes on the documents. Seed 003 writes `W + AB` with the letters swapped (its `A` is
# `d×r`); minipeft uses seed 001's names, which are the paper's and peft's. And the paper's
# "A Gaussian" is not what peft does by default: peft draws A Kaiming-uniform; minipeft follows
# peft (`init_lora_weights=True`) and offers `init_lora_weights="gaussian"`. Either way B = 0.

# %%
import inspect
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent))

import minipeft  # noqa: E402
from minipeft.methods import count_parameters, get_peft  # noqa: E402
from minipeft.methods.lora import LoRALinear  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The code: one wrapper layer
#
# `LoRALinear` holds the frozen `nn.Linear` as `base_layer` (peft's name) and adds `lora_A`
# (r×k) and `lora_B` (d×r). Its forward is the formula, with dropout on the LoRA path only:

# %%
print(inspect.getsource(LoRALinear.forward))
print(inspect.getsource(LoRALinear.reset_lora_parameters))

# %% [markdown]
# `get_peft(model, "lora", …)` freezes the model and replaces every chosen linear layer by such a
# wrapper. Layers are chosen by name like peft: a list is matched against the end of each full
# name (`["q", "v"]`), a string is a regex over the full name. The default is the attention
# query and value projections (`q`, `v` in T5, including cross-attention; the fused `c_attn` in GPT-2).

# %%
config = minipeft.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                           num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
model = minipeft.T5Model(config).eval()
peft = get_peft(model, "lora", r=4, lora_alpha=8)
print(peft.model.encoder.blocks[0].self_attn)
print(peft.trainable_report())
print("trained tensors:", list(peft.trained_state_dict())[:4], "…")

# %% [markdown]
# A target that matches nothing is refused, with the names that exist:

# %%
try:
    get_peft(minipeft.T5Model(config), "lora", target_modules=["query", "value"])
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# ## 2. Counting: F6.4 against peft's numbers
#
# At t5-small shape (6 + 6 layers, C = 512), `q` and `v` appear in 6 encoder self-attentions,
# 6 decoder self-attentions and 6 cross-attentions: 36 matrices of 512×512, each `r(d + k)`.
# peft reports 294,912 trainable parameters for r = 8; so does our count. (The model is built on
# the `meta` device and given uninitialised memory: counting needs shapes, not values.)

# %%
def empty_t5_small():
    with torch.device("meta"):
        big = minipeft.T5Model(minipeft.T5Config())
    return big.to_empty(device="cpu")


print(f"{'targets':<22}{'r':>3}{'trainable':>12}{'F6.4 Σ r(d+k)':>16}{'trainable %':>13}")
rows = [(("q", "v"), 8), (("q", "v"), 16), (("q", "k", "v", "o"), 8), (("q", "k", "v", "o", "wi", "wo"), 8)]
for targets, r in rows[:2] if FAST else rows:
    small = get_peft(empty_t5_small(), "lora", r=r, target_modules=list(targets))
    trainable, total = count_parameters(small)
    formula = sum(r * (layer.base_layer.in_features + layer.base_layer.out_features) for layer in small.lora_layers())
    print(f"{','.join(targets):<22}{r:>3}{trainable:>12,}{formula:>16,}{100 * trainable / total:>12.3f}%")

# %% [markdown]
# ## 3. An experiment: fine-tune only A and B
#
# A tiny T5 (random weights stand in for a pretrained base) is fitted to a fixed batch of
# input → output pairs with LoRA r = 2 on `q`, `v` and the FFN's `wo`. We watch three things:
# the loss falls, the frozen weights do not move, and the learned update `ΔW = (α/r) B A` of
# every layer has rank ≤ r even though it is a full `d×k` matrix.

# %%
torch.manual_seed(0)
base = minipeft.T5Model(config)
frozen_before = {name: p.clone() for name, p in base.named_parameters()}
peft = get_peft(base, "lora", r=2, lora_alpha=4, target_modules=["q", "v", "wo"])
generator = torch.Generator().manual_seed(0)
source = torch.randint(3, 64, (16, 8), generator=generator)
labels = torch.randint(3, 64, (16, 6), generator=generator)
optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
steps = 40 if FAST else 150
for step in range(steps + 1):
    logits = peft(input_ids=source, decoder_input_ids=base.shift_right(labels))    # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    if step % (steps // 4) == 0:
        print(f"step {step:4d}  loss {loss.item():.3f}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

moved = [name for name, p in base.named_parameters()
         if ".lora_" not in name and not torch.equal(p, frozen_before[name.replace(".base_layer", "")])]
print("frozen weights that moved:", moved or "none")
ranks = {torch.linalg.matrix_rank(layer.delta_weight().detach()).item() for layer in peft.lora_layers()}
shapes = {tuple(layer.delta_weight().shape) for layer in peft.lora_layers()}
print(f"ΔW shapes {sorted(shapes)}, ranks {sorted(ranks)} (r = 2)")

# %% [markdown]
# ## 4. Merging: no extra latency at inference (F6.3)
#
# `merge()` adds `(α/r) B A` into each `W_0`; the wrapper then only calls the frozen layer.
# It is explicit: `eval()` never merges (loralib merges on `eval()`, a side effect we avoid).
# Merged and unmerged outputs agree to float rounding; `unmerge()` subtracts the update again.
# `disabled()` runs the base without LoRA (refused while merged: the base weights hold the update).

# %%
peft.eval()
with torch.no_grad():
    unmerged = peft(input_ids=source, decoder_input_ids=base.shift_right(labels))
    with peft.disabled():
        without = peft(input_ids=source, decoder_input_ids=base.shift_right(labels))
    peft.merge()
    merged = peft(input_ids=source, decoder_input_ids=base.shift_right(labels))
    peft.unmerge()
print(f"max |merged − unmerged| = {(merged - unmerged).abs().max().item():.1e}")
print(f"max |LoRA − base|       = {(unmerged - without).abs().max().item():.2f}")
restored = max((p - frozen_before[n.replace('.base_layer', '')]).abs().max().item()
               for n, p in base.named_parameters() if ".lora_" not in n)
print(f"after unmerge, max |W − W_0| = {restored:.1e}")

# %% [markdown]
# ## 5. Taking the result elsewhere: a Hugging Face checkpoint
#
# Because LoRA only adds `(α/r) B A` to weights the base already has, the trained model fits in an
# ordinary checkpoint of the base's architecture. `minipeft.save_hf` writes `W_0 + (α/r) B A` for each
# adapted layer (merged or not, leaving `peft` as it is) under the checkpoint's own names, the
# converter's key map read backwards; `transformers`' `from_pretrained` or our `load_hf` read it.

# %%
with tempfile.TemporaryDirectory() as directory:
    minipeft.save_hf(peft, directory)
    exported = minipeft.load_hf(directory)
    with torch.no_grad():
        reloaded = exported(input_ids=source, decoder_input_ids=base.shift_right(labels))
    print(f"max |reloaded − LoRA| = {(reloaded - unmerged).abs().max().item():.1e}")

# %% [markdown]
# The inference cost is measured, not assumed: `python -m minipeft.benchmarks.methods` times a
# forward pass of merged LoRA, unmerged LoRA and the base model at t5-small shape.
#
# ## Exercise
#
# `lessons/exercises/methods.lora.py` is `minipeft/methods/lora.py` with the formula lines taken out
# (the initialisation, `ΔW`, and the forward). Fill them in, then run
#
#     pytest tests/test_lora.py --exercise methods.lora
#
# The tests compare your layer with the formula and your LoRA T5 and GPT-2 with `peft` on
# `transformers`.
