# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 14 — AdapterFusion: attention over adapters that were trained for other tasks
#
# An adapter (lesson 7) holds what one task needs and leaves the base untouched, so adapters of
# many tasks can sit on one base. Seed 004 (§4.2.2, fig. 4.6) asks the next question: can a new task
# *combine* what they know? AdapterFusion (Pfeiffer et al. 2021) learns in two stages:
#
# > 第一阶段：知识提取。给定 N 个任务，首先对每个任务分别训练适配器模块
# > ("stage 1, knowledge extraction: given N tasks, first train an adapter for each")       (F8.1)
# >
# > 第二阶段：知识组合。……语言模型的参数以及 N 个适配器的参数被固定，仅微调AdapterFusion模块的参数
# > ("stage 2, knowledge composition: the LM and all N adapters are frozen, only the fusion trains")
#
#     Ψ ← argmin_Ψ L_n(D_n; Θ, Φ_1, …, Φ_N, Ψ)                                   (F8.2, eq. 4.2)
#
# and says what the fusion is:
#
# > 全连接层的输出当作Query，适配器的输出当作Key和Value，计算注意力得到联合多个适配器的输出结果
# > ("the output of the feed-forward layer is the Query, the adapters' outputs are Keys and Values;
# > attention over them gives the combined output")                                  (F8.3)
#
# Written out for one token, with `h` the sublayer's output and `δ_t = W_up,t σ(W_down,t h)` what
# adapter t adds (F1.1):
#
#     q = h W_Q + b_Q,   k_t = δ_t W_K + b_K,   v_t = δ_t W_V,
#     s_t = softmax_t(q · k_t),   o = h + Σ_t s_t v_t
#
# It is attention as in lesson 1, but over N adapters instead of T positions: each token, in each
# layer, chooses how much of each adapter to take.
#
# `MINIPEFT_FAST=1` makes every run below small.

# %%
import inspect
import os
import sys
import tempfile
from pathlib import Path

import torch

# Make the repository root (for minipeft) and this folder (for copy_or_reverse) importable.
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
sys.path[:0] = [str(HERE.parent), str(HERE)]

import copy_or_reverse as task  # noqa: E402
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained  # noqa: E402
from minipeft.methods.fusion import FusedAdapters, FusionAttention  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The code: one attention over N branches
#
# `FusedAdapters` replaces an adapted sublayer: it runs the sublayer, then every frozen adapter's
# `branch` (F1.1 without the skip connection), stacks them on a new axis N, and hands them to
# `FusionAttention`, whose three linear maps are all that trains.

# %%
print(inspect.getsource(FusedAdapters.forward))
print(inspect.getsource(FusionAttention.forward))

# %% [markdown]
# **One reading to settle.** The seed makes the adapters' *outputs* Keys and Values; an output is
# `h + δ_t`. In the Key, `h` adds the same `q · (h W_K)` to all N scores, and a softmax does not
# change when every score moves by one constant: keys from `δ_t` or from `h + δ_t` weight the
# adapters identically. Checked on random numbers:

# %%
fusion = FusionAttention(8)
with torch.no_grad():
    for linear in (fusion.query, fusion.key):
        linear.weight.normal_(0, 0.5)
h, branches = torch.randn(1, 4, 8), torch.randn(1, 4, 3, 8)                # (B, T, C), (B, T, N, C)
_, weights = fusion(h, branches)
q = fusion.query(h)
weights_with_h = (fusion.key(branches + h.unsqueeze(-2)) @ q.unsqueeze(-1)).squeeze(-1).softmax(-1)
print(f"max |s(δ) − s(h + δ)| = {(weights - weights_with_h).abs().max().item():.1e}")

# %% [markdown]
# In the Value it matters: `Σ_t s_t (h + δ_t) W_V` sends `h` through `W_V` too. minipeft follows the
# reference library (AdapterHub, `residual_before=False`): `h` goes around the fusion and `W_V`
# mixes only what the adapters add. `residual_before=True` is the seed's literal reading.
#
# **Initialisation** (AdapterHub's "dynamic" fusion). `W_Q`, `W_K` are drawn N(0, 0.02²), so every
# score starts near 0 and every `s_t` near `1/N`: the fused model starts as the *average* of its
# adapters. `W_V` starts as the identity, and the loss gets `0.01 · ‖I − W_V‖²` per fusion
# (`regularization`), which keeps it there unless the task pays for moving it.
#
# ## 2. Counting: attention is not cheap
#
# Each fused place trains `W_Q`, `W_K` (C×C and a bias each) and `W_V` (C×C): `3C² + 2C`. An adapter
# of bottleneck r has `2Cr + C + r`. With r ≪ C the fusion is the larger: at t5-small's C = 512, one
# fusion has 787,456 numbers, twelve adapters of r = 64. Seed 004's remedy:
#
# > 在不同的适配器模块间参数共享融合模块，可以进一步减少参数数量
# > ("sharing the fusion module's parameters across the adapter modules reduces the count further")
#
# is `share_fusion=True`: one Ψ for every place.

# %%
C, r = 512, 64
print(f"t5-small, one place: fusion 3C²+2C = {3 * C * C + 2 * C:,}, adapter 2Cr+C+r = {2 * C * r + C + r:,}")
print(f"t5-small, Houlsby (24 places): fusion {24 * (3 * C * C + 2 * C):,} trained, shared: {3 * C * C + 2 * C:,}")

# %% [markdown]
# ## 3. Experiment: stage 1, two adapters for two tasks
#
# The copy-or-reverse base of lesson 9, task word hidden: the frozen base sees only `c a d b e`.
# Stage 1 trains one adapter to copy and one to reverse (ST-A, each on its own data). Both keep the
# base's layer norms frozen (`train_layer_norms=False`): the N adapters share one base, and a norm
# each had tuned for itself would have no place in the fused model, so `adapter_fusion` refuses
# checkpoints that trained them.

# %%
base_steps = 300 if FAST else 800
stage_steps = 40 if FAST else 150
work = Path(tempfile.mkdtemp(prefix="minipeft-fusion-"))
checkpoints = {}
for name, seed in (("copy", 1), ("reverse", 1), ("copy, another seed", 3)):
    adapter = get_peft(task.pretrain(base_steps), "adapter", adapter_size=16, train_layer_norms=False)
    task.train(adapter, stage_steps, 1e-2, torch.Generator().manual_seed(seed), name.split(",")[0], task_word=False)
    checkpoints[name] = str(work / f"{name.replace(', ', '_').replace(' ', '_')}.safetensors")
    save_trained(adapter, checkpoints[name])
    print(f"{name:>18} adapter: copy {task.accuracy(adapter, 'copy'):.0%}, "
          f"reverse {task.accuracy(adapter, 'reverse'):.0%}")

# %% [markdown]
# ## 4. Stage 2: fuse copy and reverse, train on reversal
#
# `get_peft(base, "adapter_fusion", adapters=(…))` reads the checkpoints, checks that they come from
# this base and sit in the same places, loads them frozen, and puts a fusion at each place. The loop
# is the usual one plus the value penalty, `peft.regularization_loss()` (train.py adds it itself).

# %%
def fuse(names, steps, **options):
    fused = get_peft(task.pretrain(base_steps), "adapter_fusion",
                     adapters=tuple(checkpoints[name] for name in names), **options)
    start = task.accuracy(fused, "reverse")
    generator = torch.Generator().manual_seed(2)
    optimizer = torch.optim.AdamW([p for p in fused.parameters() if p.requires_grad], lr=1e-3)
    fused.train()
    for _ in range(steps):
        input_ids, labels = task.make_batch(64, 5, generator, "reverse", task_word=False)
        logits = fused(input_ids=input_ids, decoder_input_ids=fused.model.shift_right(labels))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        penalty = fused.regularization_loss()          # 0.01 Σ ‖I − W_V‖², None without W_V
        loss = loss + penalty if penalty is not None else loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fused.eval()
    trainable, _ = count_parameters(fused)
    print(f"fusion of {' + '.join(names)} ({trainable:,} trained): reverse {start:.0%} at the start "
          f"(the average of the adapters), {task.accuracy(fused, 'reverse'):.0%} after {steps} steps")
    return fused


fused = fuse(("copy", "reverse"), stage_steps)

# %% [markdown]
# Which adapter did it choose? `FusedAdapters.last_weights` keeps the `s` of the last call, (B, T, N).
# On reversal examples, teacher-forced, the mean weight each place gives the reverse adapter:

# %%
input_ids, labels = task.make_batch(64, 5, torch.Generator().manual_seed(5), "reverse", task_word=False)
with torch.no_grad():
    fused(input_ids=input_ids, decoder_input_ids=fused.model.shift_right(labels))
for place, weights in fused.adapter_weights().items():
    print(f"  {place:<28} copy {weights[0]:.2f}   reverse {weights[1]:.2f}")

# %% [markdown]
# The encoder, where the string is read, leans hardest on the reverse adapter (0.89–0.96 at every
# place in the full run); the decoder's places lean less, its last FFN hardly at all (0.5–0.55):
# there the two adapters' branches are alike, and the softmax has little to choose between.
#
# ## 5. Composition, and what else the fusion can learn
#
# Fusion chooses among what the adapters know, but "dynamic" fusion also trains a C×C value matrix
# at every place: a layer of its own, more numbers than the adapters. Give it two copy adapters (two
# seeds) and the same reversal data and steps, once with `W_V` and once without (`value=False`,
# AdapterHub's "static" fusion, where only the weights s can change); then one fusion shared by all
# places (`share_fusion=True`, 12,416 numbers here instead of 99,328) over copy and reverse:

# %%
fuse(("copy", "copy, another seed"), stage_steps)
fuse(("copy", "copy, another seed"), stage_steps, value=False)
shared = fuse(("copy", "reverse"), stage_steps, share_fusion=True)

# %% [markdown]
# Without a reverse adapter to choose, the static fusion has only a mix of two copiers and stays at
# their 3–4 %. The dynamic one's value matrices can learn part of the task themselves, fine-tuning
# by another name: with the weaker adapters of a `MINIPEFT_FAST=1` run they reached 32 %, with the
# full run's (100 % copiers) 3 %. The fusion that has the reverse adapter to choose reaches what that
# adapter does (full run: 100 %, shared or not) in the same steps.
#
# %% [markdown]
# A fusion checkpoint holds Ψ only and refers to its adapters by path, with a hash of each file:
# loading it after an adapter was retrained is refused (the fusion would be choosing among adapters
# it never saw). On the command line the two stages are
#
#     python train.py --method adapter --task sentiment --option train_layer_norms=false \
#         --option cross_adapter=true --option adapter_stacks=encoder,decoder --out runs/a_sentiment
#     python train.py --method adapter --task e2e --option train_layer_norms=false \
#         --option cross_adapter=true --out runs/a_e2e
#     python train.py --method adapter --task nli --option train_layer_norms=false --out runs/a_nli
#     python train.py --method adapter_fusion --task nli \
#         --option adapters=runs/a_sentiment/peft.safetensors,runs/a_e2e/peft.safetensors,runs/a_nli/peft.safetensors
#
# (the fused adapters must sit in the same places, so the options spell out nli's own placement;
# README, "Combining adapters", has what that gives on the embedded tasks.)

# %%
save_trained(shared, work / "fusion.safetensors")
again = load_trained(task.pretrain(base_steps), work / "fusion.safetensors")
print(f"reloaded fusion: reverse {task.accuracy(again, 'reverse'):.0%} "
      f"(saved {(work / 'fusion.safetensors').stat().st_size:,} bytes)")

# %% [markdown]
# ## Exercise
#
# `lessons/exercises/methods.fusion.py` is `minipeft/methods/fusion.py` with F8.3 taken out: the
# query, keys, values, weights and mixture. Fill them in, then run
#
#     pytest tests/test_fusion.py --exercise methods.fusion
#
# The tests check your fusion against F8.3 computed one token at a time with plain loops, a static
# fusion of copies of one adapter against that adapter alone, and what trains.
