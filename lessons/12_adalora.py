# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 12 — AdaLoRA: the low-rank update in SVD form, and ranks that go where they are needed
#
# Seed 000 (§3.3, "Low-Rank Adaptation的原理与实现") writes a low-rank matrix as a singular value
# decomposition:
#
#     W = U · diag(s) · Vᵀ,   U ∈ R^{m×r},  V ∈ R^{n×r},  s ∈ R^r,  r ≪ min(m, n)             (F7.1)
#
# > 冻结T5预训练模型的所有参数，只训练低秩矩阵 U, V 和对角矩阵 diag(s) 的参数
# > ("freeze all of T5's pretrained parameters and train only U, V and diag(s)")
#
# and counts `L·(m·r + n·r + r)` trained numbers for `L` such matrices (F7.2). Seed 001 lists the
# paper that trains exactly this form, AdaLoRA (Zhang et al. 2023), which adds the point of it: each
# triplet `(u_i, s_i, v_i)` gets an importance score, and a budget of triplets that shrinks during
# training keeps only the best, wherever they are (F7.3). LoRA gives every layer the same `r`;
# AdaLoRA lets the training decide which layers need more.
#
# One reading to settle first. Seed 000 factorises `W` *itself* and uses the factors "in place of the
# original weight matrix". minipeft (like AdaLoRA and peft) trains the form as an **update beside the
# frozen weight**: `W = W_0 + U·diag(s)·Vᵀ`. Section 3 measures why.
#
# `MINIPEFT_FAST=1` makes every run below small.

# %%
import copy
import inspect
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# Make the repository root (for minipeft) and this folder (for copy_or_reverse) importable.
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
sys.path[:0] = [str(HERE.parent), str(HERE)]

import copy_or_reverse as task  # noqa: E402
import minipeft  # noqa: E402
from minipeft import bases  # noqa: E402
from minipeft.methods import count_parameters, get_peft  # noqa: E402
from minipeft.methods.adalora import RankAllocator, SVDLinear, budget_at  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The code: one wrapper layer with three trained tensors
#
# `SVDLinear` keeps the frozen `nn.Linear` as `base_layer` and adds peft's three tensors:
# `lora_A` is `Vᵀ` (r×n), `lora_E` is `s` (kept as an r×1 column), `lora_B` is `U` (m×r). The
# forward is F7.1 with LoRA's `α/r` scaling: `h = W_0 x + (α/r) U (s ⊙ (Vᵀ x))`. The singular
# values start at 0, so the model starts as the pretrained one (as LoRA's B = 0, F6.2); U and V
# start Gaussian and small.

# %%
print(inspect.getsource(SVDLinear.forward))
print(inspect.getsource(SVDLinear.delta_weight))
print(inspect.getsource(SVDLinear.reset_parameters))

# %% [markdown]
# ## 2. Counting: F7.2 against LoRA and against peft
#
# At t5-small shape, `q` and `v` appear in 36 attentions (6 encoder self, 6 decoder self, 6 cross),
# each 512×512. At peft's default `init_r = 12`: 36 · (512·12 + 512·12 + 12) = 442,800. LoRA at
# r = 12 has 36 · 12 · 1024 = 442,368: the difference is the 432 singular values. peft reports
# 442,836: it also counts a frozen-by-intent scalar per layer (`ranknum`, which holds r and is
# never trained) as trainable. (The model is built on the `meta` device: counting needs shapes.)

# %%
with torch.device("meta"):
    t5_small = minipeft.T5Model(minipeft.T5Config())
t5_small = t5_small.to_empty(device="cpu")
for method, options in (("adalora", dict(init_r=12)), ("lora", dict(r=12))):
    peft = get_peft(copy.deepcopy(t5_small), method, target_modules=["q", "v"], **options)
    print(f"{method:8} on q, v of t5-small: {count_parameters(peft)[0]:>8,} trainable")
del t5_small, peft

# %% [markdown]
# ## 3. Why an update beside W_0, not a factorisation of W
#
# Replace a pretrained weight by its own best rank-r approximation (the truncated SVD: by the
# Eckart–Young theorem no rank-r matrix is closer) and see what the model has left. The base is
# tiny-t5 (d_model 128, pretrained by span corruption on `data/corpus.txt`); the score is its
# accuracy on the hidden spans of held-out lines. Only `q` and `v` are replaced.

# %%
corpus = (HERE.parent / "data" / "corpus.txt").read_text(encoding="utf-8").splitlines()
held_out = corpus[-bases.PretrainConfig.held_out_lines:][: 60 if FAST else 150]
tiny_t5, tokenizer = bases.load_base("tiny-t5")


def truncated(model, rank):
    """A copy of ``model`` with every q and v weight replaced by U_r diag(s_r) V_rᵀ."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in ("q", "v"):
                u, s, vt = torch.linalg.svd(module.weight, full_matrices=False)   # (m, k), (k,), (k, n)
                module.weight.copy_(u[:, :rank] * s[:rank] @ vt[:rank])
    return model


score = bases.evaluate(tiny_t5, tokenizer, held_out)
print(f"{'pretrained tiny-t5':34} span accuracy {score['accuracy']:.1%}  loss {score['loss']:.2f}")
for rank in (4, 16, 64):
    score = bases.evaluate(truncated(tiny_t5, rank), tokenizer, held_out)
    print(f"{f'q, v replaced by rank {rank} (of 128)':34} span accuracy {score['accuracy']:.1%}  loss {score['loss']:.2f}")
adalora = get_peft(copy.deepcopy(tiny_t5), "adalora", init_r=4, target_r=4)
score = bases.evaluate(adalora.model, tokenizer, held_out)      # the SVDLinear wrappers sit inside .model
print(f"{'W_0 + U diag(s) Vᵀ, r = 4, s = 0':34} span accuracy {score['accuracy']:.1%}  loss {score['loss']:.2f}")

# %% [markdown]
# Even half the rank costs accuracy, and at r = 4 the model has lost most of what it knew: a
# pretrained weight is not low-rank. What *is* low-rank, the LoRA paper's hypothesis, is the
# *change* a task needs. So the form trains beside W_0 and starts at s = 0, exactly the base.
#
# ## 4. The budget: importance scores and a shrinking number of triplets (F7.3)
#
# After every optimiser step, `RankAllocator.observe` reads each trained entry's gradient:
# sensitivity `I = |w · ∂L/∂w|` (how much the loss would change if w were removed), smoothed
# `Ī ← β₁Ī + (1−β₁)I`, with its uncertainty `Ū ← β₂Ū + (1−β₂)|I − Ī|`. A triplet's score adds its
# s_i's `Ī·Ū` to the mean over U's column and Vᵀ's row:

# %%
print(inspect.getsource(RankAllocator.observe))
print(inspect.getsource(RankAllocator.triplet_scores))

# %% [markdown]
# The budget `b(t)` counts triplets over all layers. It stays at `L·init_r` for `tinit` steps, falls
# by a cube, and is `L·target_r` from step `T − tfinal` on, when the pruned set is fixed and the
# survivors train on. Pruning sets `s_i = 0` and leaves `u_i, v_i` training: a triplet pruned early
# can win its place back while the budget still moves. Here, 16 layers, init_r 8 → target_r 2:

# %%
steps = 150 if FAST else 300
tinit, tfinal = steps // 15, steps // 8
print("step  ", " ".join(f"{t:>5}" for t in range(0, steps + 1, steps // 10)))
print("budget", " ".join(f"{budget_at(t, steps, 16 * 8, 16 * 2, tinit, tfinal):>5}"
                         for t in range(0, steps + 1, steps // 10)))

# %% [markdown]
# The penalty `γ·R`, `R = ‖UᵀU − I‖² + ‖VᵀV − I‖²`, is added to the loss: it keeps U's and V's
# columns orthonormal, so that s_i measures the update along its own direction and cutting one
# triplet leaves the others as they were. With N(0, 0.02²) entries, `UᵀU ≈ 0`, so R starts near
# 2r per layer and training pulls it down.
#
# ## 5. Experiment: where do the ranks go?
#
# The copy-or-reverse base of lesson 9, task word hidden: the frozen base sees only `c a d b e` and
# must learn to reverse it. AdaLoRA on `q`, `v` and the FFN's `wo`, init_r = 8, pruned to an average
# of target_r = 2; beside it, LoRA at r = 2 on the same layers (the same final rank on average, but
# spread evenly). The loop is the usual one plus AdaLoRA's three calls: `prepare_training(T)` once,
# the penalty in the loss, `update_and_allocate(step)` after `optimizer.step()` and before
# `zero_grad()` (it reads this step's gradients). `train.py --method adalora` does the same.

# %%
base = task.pretrain(steps=300 if FAST else 800)
print(f"base without the task word: reverse {task.accuracy(base):.0%}")


def fine_tune(peft, lr):
    generator = torch.Generator().manual_seed(1)
    adaptive = hasattr(peft, "update_and_allocate")
    if adaptive:
        peft.prepare_training(steps)
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=lr)
    peft.train()
    for step in range(steps):
        input_ids, labels = task.make_batch(64, 5, generator, "reverse", task_word=False)
        logits = peft(input_ids=input_ids, decoder_input_ids=base.shift_right(labels))     # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        if adaptive:
            loss = loss + peft.regularization_loss()                                       # + γ·R (F7.3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if adaptive:
            peft.update_and_allocate(step)                                                 # score, prune
    return peft.eval()


torch.manual_seed(1)
adalora = get_peft(copy.deepcopy(base), "adalora", init_r=8, target_r=2, tinit=tinit, tfinal=tfinal,
                   target_modules=["q", "v", "wo"])
penalty_before = adalora.regularization_loss().item()
fine_tune(adalora, lr=1e-2)
torch.manual_seed(1)
lora = fine_tune(get_peft(copy.deepcopy(base), "lora", r=2, target_modules=["q", "v", "wo"]), lr=1e-2)
print(f"AdaLoRA 8 → 2: reverse {task.accuracy(adalora):.0%}   γ·R {penalty_before:.2f} → "
      f"{adalora.regularization_loss().item():.2f}   ({count_parameters(adalora)[0]:,} trained)")
print(f"LoRA r = 2:    reverse {task.accuracy(lora):.0%}   ({count_parameters(lora)[0]:,} trained)")
pattern = adalora.rank_pattern()
print(f"triplets kept: {sum(pattern.values())} of {8 * len(pattern)} (budget {2 * len(pattern)})")
for stack in ("encoder", "decoder"):
    kept = {name.split(".", 1)[1]: rank for name, rank in pattern.items() if name.startswith(stack)}
    print(f"  {stack} ({sum(kept.values())}):", ", ".join(f"{name} {rank}" for name, rank in kept.items()))

# %% [markdown]
# Small-scale, one seed: read it as a picture, not a benchmark. Both reach the task; the point is
# *where* AdaLoRA put its ranks. The instruction is missing from the input, and the allocation
# leans to where the input is read: the encoder. (AdaLoRA trains more numbers than LoRA at its
# target rank: all `init_r` triplets are kept in memory and go on training, pruned ones included.)
#
# After training the method is a plain low-rank update again: `merge()` folds
# `(α/r) U diag(s) Vᵀ` into W_0 as LoRA's does, and `minipeft.save_hf` writes that into an ordinary
# checkpoint. `save_trained` keeps U, s, V (the pruned `s_i` are zeros in it);
# `train.py` also saves the allocator's Ī and Ū in its resume state, so a resumed run prunes exactly
# as an uninterrupted one.

# %%
x = torch.tensor([[5, 6, 7, 8, 9, 1]])
with torch.no_grad():
    unmerged = adalora(input_ids=x, decoder_input_ids=torch.tensor([[0, 9, 8]]))
    adalora.merge()
    merged = adalora(input_ids=x, decoder_input_ids=torch.tensor([[0, 9, 8]]))
    adalora.unmerge()
print(f"max |merged − unmerged| = {(merged - unmerged).abs().max().item():.1e}")

# %% [markdown]
# ## Exercise
#
# `lessons/exercises/methods.adalora.py` is `minipeft/methods/adalora.py` with the formula lines
# taken out: the update, the forward, the penalty, the sensitivity averages and the triplet score.
# Fill them in, then run
#
#     pytest tests/test_adalora.py --exercise methods.adalora
#
# The tests check your layer against F7.1, your scores and pruning against peft's `RankAllocator`,
# and your AdaLoRA T5 and GPT-2 against `peft` on `transformers`.
