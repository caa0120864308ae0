# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 7 — Bottleneck adapters: a small residual MLP after a frozen sublayer
#
# The T5 document (seed 000 §3.1.1) builds the adapter from two fully connected layers and a
# non-linearity, with a skip connection:
#
#     h = FC_down(x);   h = Non-linearity(h);   y = FC_up(h) + x
#
# > 其中 FC_down ∈ R^{d_model×d_adapter}，FC_up ∈ R^{d_adapter×d_model}，Non-linearity 通常选择 ReLU 函数
# > ("FC_down is d_model×d_adapter, FC_up is d_adapter×d_model, the non-linearity is usually ReLU")
#
# In the ledger's notation (F1.1, also seed 002 and seed 004 eq. 4.1):
# `Adapter(x) = x + W_up σ(W_down x)`, `W_down: d → r`, `W_up: r → d`, `r ≪ d`.
#
# * **Initialisation** (F1.4). Seed 001: the adapter must start close to the identity,
#   > Adapter Layer 中绿色的部分的输出需要接近 0，只让 skip-connection 起作用
#   > ("the output of the adapter's own branch must be close to 0, so only the skip connection acts")
#
#   Seed 003 §3.2.2 asks for Xavier initialisation, variance `2/(d_in + d_out)`. minipeft draws
#   `W_down` that way and sets `W_up` and both biases to **exactly zero**: the branch outputs 0,
#   so `Adapter(x) = x` bit for bit, and the gradient still reaches `W_up` (its input
#   `σ(W_down x)` is not zero) so training starts at once.
# * **Placement** (F1.5). Seed 000 fig. 2 puts one adapter after self-attention, before the FFN
#   (`adapter_placement="self_attn"`); seeds 003 §3.2.1 and 004 (Houlsby) put one after the
#   attention and one after the FFN (`"houlsby"`); Pfeiffer keeps only the one after the FFN
#   (`"pfeiffer"`). T5's decoder has a third sublayer, cross-attention; Houlsby's adapters were
#   defined for an encoder, and the `adapters` library leaves cross-attention out of its Houlsby
#   configuration. minipeft does the same and adds one there only with `cross_adapter=True`.
#   `adapter_stacks` chooses T5's stacks: on tiny-t5's sentiment task the dev set prefers
#   adapters in the decoder only, with the cross-attention one (`adapter_stacks="decoder"`), on
#   every one of ten seeds, so that is `train.py`'s setting there (README, Results).

# %%
import inspect
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent))

import minipeft  # noqa: E402
from minipeft.methods import count_parameters, get_peft  # noqa: E402
from minipeft.methods.adapter import AdapterAfter, BottleneckAdapter  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The code
#
# `BottleneckAdapter` is F1.1 and F1.4 (`branch` is what the adapter adds, `forward` adds it to its
# input); `AdapterAfter` wraps a sublayer (attention or FFN) and
# applies the adapter to its output, *inside* the block's residual: a T5 block then computes
# `x + dropout(Adapter(sublayer(norm(x))))`.

# %%
print(inspect.getsource(BottleneckAdapter.branch))
print(inspect.getsource(BottleneckAdapter.forward))
print(inspect.getsource(BottleneckAdapter.reset_parameters))
print(inspect.getsource(AdapterAfter.forward))

# %% [markdown]
# ## 2. Counting: the document's example, and a slip in it
#
# Seed 000 §4 works an example with `d_model = 768`, `d_adapter = 64` and counts the weights and
# biases of both layers (F1.2, `2dr + d + r`):
#
#     N_params = 768 × 64 + 64 + 64 × 768 + 768 = 100,096        (as printed in the seed)
#
# The sum of those four terms is 99,136, not 100,096: the printed total is an arithmetic slip
# (FORMULAS.md copied it). Our module has exactly the four tensors of the formula:

# %%
adapter = BottleneckAdapter(768, 64)
for name, param in adapter.named_parameters():
    print(f"  {name:<12} {tuple(param.shape)!s:<12} {param.numel():>7,}")
total = sum(p.numel() for p in adapter.parameters())
print(f"  total {total:,} = 2dr + d + r = {2 * 768 * 64 + 768 + 64:,};  the seed's terms sum to "
      f"{768 * 64 + 64 + 64 * 768 + 768:,} (it prints 100,096)")

# %% [markdown]
# Seed 000 §3.1.3 counts a whole model without biases, one adapter per layer (F1.3):
# `N = L · (d·r + r·d)`. For t5-small (L = 6 + 6 blocks, d = 512) with r = 64 the three placements
# give the numbers below; each is checked against `get_peft` on a small model of the same block
# structure (the count does not depend on the other sizes). These are the adapters alone
# (`train_layer_norms=False`): by default the layer norms train beside them (F1.5), a few hundred
# more parameters per block.

# %%
d, r, L_enc, L_dec = 512, 64, 6, 6
per_adapter = {True: 2 * d * r + d + r, False: 2 * d * r}
print(f"{'placement':<10}{'adapters':>9}{'with biases':>14}{'F1.3, no biases':>17}{'% of t5-small':>15}")
t5_small_total = 60_506_624
check = minipeft.T5Config(vocab_size=32, d_model=d, d_kv=4, d_ff=8, num_layers=L_enc, num_decoder_layers=L_dec,
                          num_heads=2, relative_attention_num_buckets=4, dropout_rate=0.0)
for placement, per_block in (("self_attn", 1), ("pfeiffer", 1), ("houlsby", 2)):
    n = per_block * (L_enc + L_dec)
    counted = count_parameters(get_peft(minipeft.T5Model(check), "adapter", adapter_placement=placement,
                                        adapter_size=r, train_layer_norms=False))[0]
    assert counted == n * per_adapter[True]
    print(f"{placement:<10}{n:>9}{counted:>14,}{n * per_adapter[False]:>17,}"
          f"{100 * counted / t5_small_total:>14.2f}%")

# %% [markdown]
# ## 3. Identity at initialisation, and where the adapters sit

# %%
config = minipeft.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                           num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
model = minipeft.T5Model(config).eval()
source = torch.randint(3, 64, (16, 8), generator=torch.Generator().manual_seed(0))
labels = torch.randint(3, 64, (16, 6), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    base_logits = model(input_ids=source, decoder_input_ids=model.shift_right(labels))
peft = get_peft(model, "adapter", adapter_placement="houlsby", adapter_size=8)
with torch.no_grad():
    same = torch.equal(peft(input_ids=source, decoder_input_ids=model.shift_right(labels)), base_logits)
print("logits identical to the base model at initialisation:", same)
print("adapted sublayers:", [name for name, m in peft.model.named_modules() if isinstance(m, AdapterAfter)])
print(peft.trainable_report())

# %% [markdown]
# ## 4. An experiment: train only the adapters
#
# The same fixed batch as lesson 6, fitted with Houlsby adapters (r = 8), and with Pfeiffer
# adapters, which have half as many. The base stays frozen; `disabled()` still gives the base.

# %%
steps = 40 if FAST else 150
for placement in ("houlsby", "pfeiffer"):
    torch.manual_seed(0)
    base = minipeft.T5Model(config)
    peft = get_peft(base, "adapter", adapter_placement=placement, adapter_size=8)
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps + 1):
        logits = peft(input_ids=source, decoder_input_ids=base.shift_right(labels))    # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"{placement:<9} {count_parameters(peft)[0]:>6,} trainable   loss {losses[0]:.3f} → {losses[-1]:.3f}")

with torch.no_grad():
    torch.manual_seed(0)
    fresh = minipeft.T5Model(config).eval()
    with peft.disabled():
        peft.eval()
        off = peft(input_ids=source, decoder_input_ids=base.shift_right(labels))
    print("disabled() equals the untouched base:",
          torch.equal(off, fresh(input_ids=source, decoder_input_ids=fresh.shift_right(labels))))

# %% [markdown]
# Adapters cannot be merged into the frozen weights (there is a non-linearity between `W_down`
# and `W_up`), so they cost extra work at inference, the latency seed 001 holds against them
# ("adapter增加了模型的层数，引入了额外的推理延迟": adapters add layers, and so latency).
# `python -m minipeft.benchmarks.methods` measures it against the base model at t5-small shape.
#
# ## Exercise
#
# `lessons/exercises/methods.adapter.py` is `minipeft/methods/adapter.py` without the initialisation and
# the forward formula. Fill them in, then run
#
#     pytest tests/test_adapter.py --exercise methods.adapter
