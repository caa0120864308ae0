# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 5 — Optimisers, memory and the loss scale
#
# Seed 002 teaches the optimisers that make training work (F12): SGD, Adam, AdaFactor, mixed
# precision, warmup and decay, clipping, initialisation. Each is a few lines in
# `minipeft/optim/`, pinned to `torch.optim` by the tests. This lesson looks at them as *memory*:
#
# 1. the optimiser's state, counted on a live optimiser (F12.2: "Adam: 2× → 4× the parameters");
# 2. what mixed precision does and does not save (F12.4: "storage halved");
# 3. why PEFT shrinks all of it;
# 4. what the loss scale does: fp16 gradients underflowing, and surviving when scaled;
# 5. the learning-rate schedule and clipping (F12.5).
#
# Run as a script (`python lessons/05_optimisers_and_memory.py`); `MINIPEFT_FAST=1` picks a tiny
# model for the measured part.

# %%
import copy
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent))

import minipeft  # noqa: E402
from minipeft import T5Config, T5Model  # noqa: E402
from minipeft.optim import (SGD, LossScaler, Precision, WarmupCosine, build_optimizer,  # noqa: E402
                            bytes_per_parameter, clip_grad_norm_, state_bytes, training_state_bytes)

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)
MiB = 2 ** 20

# %% [markdown]
# ## 1. The optimiser's state, measured
#
# Adam (F12.2) keeps two running averages per parameter: `m` (the gradient's mean, momentum) and
# `v` (its mean square, the per-coordinate step size). SGD keeps nothing, SGD with momentum one
# buffer, AdaFactor (F12.3) one number per *row* and one per *column* of each matrix.
#
# One training step of a T5 with each optimiser, then `state_bytes(optimizer)`: the bytes held in
# the optimiser's state tensors.

# %%
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8)
shape = dict(T5_SMALL, vocab_size=512, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
             num_heads=4) if FAST else T5_SMALL
model = T5Model(T5Config(**shape, dropout_rate=0.0))
parameters = sum(p.numel() for p in model.parameters())
source = torch.randint(2, shape["vocab_size"], (8, 64))
labels = torch.randint(2, shape["vocab_size"], (8, 16))
print(f"T5 {'(tiny, MINIPEFT_FAST)' if FAST else '(t5-small shape)'}: {parameters:,} parameters, "
      f"{parameters * 4 / MiB:.1f} MiB in fp32")

print(f"\n{'optimiser':<16}{'state MiB':>10}{'state / weights':>17}")
for name, build in [("sgd", lambda p: SGD(p, lr=0.1)), ("sgd + momentum", lambda p: SGD(p, lr=0.1, momentum=0.9)),
                    ("adam", lambda p: build_optimizer("adam", p, lr=1e-4)),
                    ("adafactor", lambda p: build_optimizer("adafactor", p, lr=1e-3))]:
    optimizer = build(model.parameters())
    logits = model(input_ids=source, decoder_input_ids=model.shift_right(labels))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    print(f"{name:<16}{state_bytes(optimizer) / MiB:>10.2f}{state_bytes(optimizer) / (4 * parameters):>16.3f}×")
    del optimizer

# %% [markdown]
# Adam's state is 2× the weights; with the weights and the gradients that is the seed's "4× the
# parameters" (θ, g, m, v) where SGD needs 2× (θ, g). AdaFactor's state is a fraction of a percent:
# for a 512 × 2048 matrix it keeps 512 + 2048 numbers instead of 2 × 1,048,576.
#
# ## 2. Mixed precision: what is "halved"?
#
# The seed says mixed precision halves storage (F12.4). Count the bytes per *trained* parameter
# (`bytes_per_parameter`): fp16 weights and gradients (2 + 2), but the optimiser updates an fp32
# master copy (4) and keeps its state in fp32 (Adam: 4 + 4).

# %%
print(f"{'optimiser':<11}{'precision':<11}" + "".join(f"{kind:>17}" for kind in
      ("weights", "gradients", "fp32 masters", "optimizer state")) + f"{'total':>8}")
for optimizer_name in ("sgd", "adam", "adafactor"):
    for precision in ("fp32", "bf16", "fp16"):
        kinds = bytes_per_parameter(optimizer_name, precision)
        print(f"{optimizer_name:<11}{precision:<11}" + "".join(f"{value:>17}" for value in kinds.values())
              + f"{sum(kinds.values()):>8}")

# %% [markdown]
# Adam costs 16 bytes per trained parameter in fp32 *and* in fp16 with master weights: 4× the
# fp32 weights, 8× the fp16 ones. So the "halving" is not in these static bytes. It is in the
# activations kept for the backward pass (half the bytes each) and in the bytes every matrix
# product reads, which is where the speed comes from. bf16 autocast (the `bf16` rows) keeps the
# weights in fp32 and casts them per operation: no saving in static memory at all.
#
# ## 3. Why PEFT shrinks it
#
# A *frozen* parameter needs its weights and nothing else: no gradient, no master copy, no
# optimiser state. PEFT trains a few hundred thousand parameters beside 60 million frozen ones.
# Counts at t5-small shape: LoRA r = 8 on `q` and `v` (F6.4: `r (d + k)` per matrix, 18 attention
# layers with `q` and `v` each) and prefix tuning with m = 20 (F5.6: `m × C` for keys and for
# values, per attention layer). If `minipeft.get_peft` exists, the counts come from it.

# %%
t5_small = model if not FAST else T5Model(T5Config(**T5_SMALL))
t5_small_parameters = sum(p.numel() for p in t5_small.parameters())
attention_layers = 6 + 6 + 6                          # encoder self, decoder self, decoder cross
C, inner = T5_SMALL["d_model"], T5_SMALL["num_heads"] * T5_SMALL["d_kv"]
trainable = {
    "full": t5_small_parameters,
    "lora r=8 (q, v)": attention_layers * 2 * 8 * (C + inner),          # F6.4  r (d + k), for q and v
    "prefix m=20": attention_layers * 2 * 20 * inner,                    # F5.6  m × dim for keys and values
}
if hasattr(minipeft, "get_peft"):
    for method, options in (("lora r=8 (q, v)", dict(r=8, target_modules=["q", "v"])),
                            ("prefix m=20", dict(num_virtual_tokens=20))):
        peft_model = minipeft.get_peft(copy.deepcopy(t5_small), method.split()[0], **options)
        trainable[method] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

print(f"{'method':<17}{'precision':<11}{'trainable':>12}{'weights MiB':>13}{'grads MiB':>11}{'masters MiB':>13}"
      f"{'Adam state MiB':>16}{'total MiB':>11}")
for method, count in trainable.items():
    for precision in ("fp32", "fp16"):
        kinds = training_state_bytes(count, t5_small_parameters - count, "adam", precision)
        print(f"{method:<17}{precision:<11}{count:>12,}{kinds['weights'] / MiB:>13.1f}"
              f"{kinds['gradients'] / MiB:>11.1f}{kinds['fp32 masters'] / MiB:>13.1f}"
              f"{kinds['optimizer state'] / MiB:>16.1f}{kinds['total'] / MiB:>11.1f}")

# %% [markdown]
# Full fine-tuning with Adam needs ~4× the weights before any activation; with LoRA or a prefix
# the gradients, masters and optimiser state are a rounding error and the total is the frozen
# weights, which fp16 *does* halve now that nearly nothing is trained. Measured peaks of a real
# step are printed by `python -m minipeft.benchmarks.memory` (full fine-tuning with Adam:
# gradients + state ≈ 692 MiB above the 231 MiB of weights).
#
# ## 4. The loss scale
#
# fp16 has 5 exponent bits: its smallest number is 2⁻²⁴ ≈ 6·10⁻⁸, and with 10 mantissa bits,
# `1 + 10⁻⁴` is `1`. The first is why the loss is scaled, the second why the optimiser updates
# fp32 master weights.

# %%
fp16 = torch.finfo(torch.float16)
print(f"fp16: largest {fp16.max:.0f}, smallest normal {fp16.tiny:.2e}, smallest subnormal {2 ** -24:.2e}")
print("1e-8 in fp16:", torch.tensor(1e-8).half().item(), "   1e-8 × 65536 in fp16:",
      torch.tensor(1e-8 * 65536).half().item())
print("1 + 1e-4 in fp16:", (torch.tensor(1.0).half() + torch.tensor(1e-4).half()).item(),
      "   in fp32:", (torch.tensor(1.0) + torch.tensor(1e-4)).item())

# %% [markdown]
# A model whose gradients are that small: a small network fitting small targets (~10⁻³) with a
# small, frozen output layer. The gradient reaching its hidden layer, `∂L/∂h = W2ᵀ · 2(y − t)/N`,
# is ~10⁻⁹. The table counts, for the first layer's weight gradient, how many entries are exactly
# zero and how far it is from the fp32 gradient: without scaling, fp16 rounds `∂L/∂h` to 0, and
# every gradient computed from it is 0 too.

# %%
generator = torch.Generator().manual_seed(0)
x = torch.randn(512, 16, generator=generator)
target = 1e-3 * torch.sin(x @ torch.randn(16, 1, generator=generator))
torch.manual_seed(1)
student = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
with torch.no_grad():
    student[2].weight.mul_(1e-3)
    student[2].bias.zero_()
student[2].requires_grad_(False)


def mse(network):
    return (network(x.to(next(network.parameters()).dtype)).float() - target).pow(2).mean()


reference = copy.deepcopy(student).half().float()
mse(reference).backward()
reference_grad = reference[0].weight.grad
print(f"fp32 gradient of the first layer: |g| from {reference_grad.abs().min():.1e} "
      f"to {reference_grad.abs().max():.1e}")
print(f"{'loss scale S':>14}{'zero entries':>14}{'relative error':>16}")
for scale in (1.0, 2.0 ** 8, 2.0 ** 16, 2.0 ** 24):
    network = copy.deepcopy(student).half()
    (mse(network) * scale).backward()
    grad = network[0].weight.grad.float() / scale
    error = ((grad - reference_grad).norm() / reference_grad.norm()).item()
    print(f"{scale:>14.0f}{(grad == 0).float().mean().item():>14.1%}{error:>16.4f}")

# %% [markdown]
# And training: 30 Adam steps in fp16 with the fp32 masters, without scaling (S = 1, fixed) and
# with the dynamic scale (S = 2¹⁶), against fp32.

# %%
results = {}
for name, scaler in (("fp16, S = 1", LossScaler(init_scale=1.0, dynamic=False)), ("fp16, S = 2^16", LossScaler())):
    network = copy.deepcopy(student)
    precision = Precision("fp16", network, loss_scaler=scaler)
    optimizer = build_optimizer("adam", precision.parameters(), lr=1e-2)
    before = mse(network).item()
    for _ in range(30):
        precision.backward_and_step(mse(network), optimizer)
    results[name] = (before, mse(network).item())
network = copy.deepcopy(student)
optimizer = build_optimizer("adam", [p for p in network.parameters() if p.requires_grad], lr=1e-2)
before = mse(network).item()
for _ in range(30):
    optimizer.zero_grad()
    mse(network).backward()
    optimizer.step()
results["fp32"] = (before, mse(network).item())
print(f"{'':<16}{'loss before':>13}{'after 30 steps':>16}")
for name, (before, after) in results.items():
    print(f"{name:<16}{before:>13.4e}{after:>16.4e}")

# %% [markdown]
# Without scaling nothing moves; with it, fp16 learns what fp32 learns. Too large a scale
# overflows instead: start at S = 2²⁴ on a network with ordinary gradients and watch the dynamic
# scale skip steps and halve S until the scaled gradients fit in fp16 (65504), then count the
# skipped steps.

# %%
network = copy.deepcopy(student)
network[2].requires_grad_(True)
with torch.no_grad():
    network[2].weight.mul_(1e3)
precision = Precision("fp16", network, loss_scaler=LossScaler(init_scale=2.0 ** 24, growth_interval=5))
optimizer = build_optimizer("adam", precision.parameters(), lr=1e-3)
history = []
for step in range(30):
    stepped = precision.backward_and_step(mse(network), optimizer)
    history.append(f"{'✓' if stepped else '✗'}{math.log2(precision.loss_scale):.0f}")
print("each step (✓ stepped, ✗ skipped) and log2 S after it:")
print(" ".join(history))
print(f"skipped steps: {precision.skipped_steps}")

# %% [markdown]
# After the overflows S settles where the largest scaled gradient fits, doubling every
# `growth_interval` good steps to probe upward and halving on the next overflow.
#
# ## 5. Warmup, cosine decay and clipping (F12.5)
#
# GPT-3: linear warmup, then a cosine to 10% of the peak; clip the global gradient norm at c,
# `g ← g / max(1, ‖g‖/c)` (the seed's `min(1, ‖g‖)` is a slip: it would *enlarge* small gradients).

# %%
schedule = WarmupCosine(warmup_steps=10, total_steps=100, floor=0.1)
for step in (0, 4, 9, 10, 25, 55, 75, 99, 100, 150):
    print(f"step {step:>3}  lr × {schedule(step):.3f}  " + "█" * round(40 * schedule(step)))
parameter = torch.zeros(3, requires_grad=True)
for norm in (0.5, 5.0):
    parameter.grad = torch.tensor([norm, 0.0, 0.0])
    before = clip_grad_norm_([parameter], max_norm=1.0)
    print(f"‖g‖ = {before.item():.1f} → after clipping at c = 1: {parameter.grad.norm().item():.1f}")
