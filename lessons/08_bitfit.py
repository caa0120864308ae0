# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 8 — BitFit: train only the biases
#
# Seed 002 closes its survey of adaptation ("Adaptation 总结") with lightweight fine-tuning:
#
# > 冻结（灰色）：整个/大部分语言模型；优化（蓝色，根据任务变化）：少量额外参数（参数的<1%）
# > ("frozen: all or most of the language model; optimised, per task: a few extra parameters,
# > < 1 % of them")   (F10.4)
#
# and lists BitFit beside LoRA as such a method (F10.3). BitFit adds nothing: of the model's own
# parameters `θ = (W, b)` it freezes every weight matrix `W` and trains only the bias vectors `b`
# (in GPT-2: the biases of `c_attn`, `c_proj`, `c_fc`, and the shifts of the LayerNorms, as in the
# BitFit paper).
#
# Two consequences that the code has to handle:
#
# * The trained tensors belong to the base model, so training changes the base in place.
#   minipeft keeps a copy of the original biases so that `disabled()` still runs the untouched
#   base, and a checkpoint holds only the biases.
# * **T5 has no biases.** Its linear layers are `bias=False` and RMSNorm has a scale but no shift:
#   BitFit would train nothing. minipeft refuses, and offers the documented alternative: the layer
#   norms, which the documents list as trainable beside adapters (F1.5, seed 004), with
#   `bitfit_fallback="layer_norm"` (what peft calls LN tuning).

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
from minipeft.methods.bitfit import BitFit, bias_parameters  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The code: choosing parameters, nothing more

# %%
print(inspect.getsource(bias_parameters))
print(inspect.getsource(BitFit.attach))

# %% [markdown]
# ## 2. What BitFit trains in GPT-2, and how little it is
#
# Per block: `c_attn` 3C, attention `c_proj` C, `c_fc` 4C, MLP `c_proj` C, `ln_1` and `ln_2` C
# each, 11C in all; plus `ln_f`'s C. For GPT-2 small (L = 12, C = 768):

# %%
L, C = 12, 768
print(f"12 · 11 · 768 + 768 = {L * 11 * C + C:,} biases")
with torch.device("meta"):   # counting needs shapes only: build without initialising, give it empty memory
    gpt2_small = minipeft.GPT(minipeft.GPTConfig())
peft = get_peft(gpt2_small.to_empty(device="cpu"), "bitfit")
print(peft.trainable_report())

# %% [markdown]
# ## 3. T5: refused, with the alternative

# %%
t5_config = minipeft.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                              num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
try:
    get_peft(minipeft.T5Model(t5_config), "bitfit")
except ValueError as error:
    print("ValueError:", error)
t5 = get_peft(minipeft.T5Model(t5_config), "bitfit", bitfit_fallback="layer_norm")
print(t5.trainable_report())
print("trained:", [name.removeprefix("model.") for name in t5.trained_state_dict()][:5], "…")

# %% [markdown]
# ## 4. An experiment: what can biases alone learn?
#
# PEFT adapts a *pretrained* model, so first a tiny GPT is pretrained (full training, a few
# seconds) on one rule: every sequence counts up by 1 (`7 8 9 10 …`, tokens 2 … 63, cyclic). The
# new task changes the rule to steps of 2 (`7 9 11 …`). From the same pretrained weights we adapt
# with BitFit, and for comparison with LoRA (lesson 6) of about the same size. The weight matrices
# stay exactly as they were, and `disabled()` gives the pretrained model back.

# %%
import copy  # noqa: E402

config = minipeft.GPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, dropout=0.0,
                            eos_token_id=1, pad_token_id=0)


def counting(step: int, rows: int, seed: int):
    """Sequences (rows, 12) of tokens 2 … 63 that go up by ``step``, cyclic, from random starts."""
    start = torch.randint(0, 62, (rows, 1), generator=torch.Generator().manual_seed(seed))
    return 2 + (start + step * torch.arange(12)) % 62


def fit(module, sequences, steps: int, lr: float):
    """Next-token cross-entropy (F11.1) with AdamW on the trainable parameters; (first, last) loss."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps + 1):
        logits = module(input_ids=sequences[:, :-1])                         # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), sequences[:, 1:].flatten())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses[0], losses[-1]


torch.manual_seed(0)
pretrained = minipeft.GPT(config)
first, last = fit(get_peft(pretrained, "full"), counting(1, 64, seed=1), steps=80 if FAST else 150, lr=3e-3)
print(f"pretraining on +1:  loss {first:.3f} → {last:.3f}")

new_task = counting(2, 32, seed=3)
for method, options in (("bitfit", {}), ("lora", dict(r=2, lora_alpha=4))):
    base = copy.deepcopy(pretrained)
    matrices_before = {n: p.clone() for n, p in base.named_parameters() if not n.endswith("bias")}
    peft = get_peft(base, method, **options)
    trainable, total = count_parameters(peft)
    first, last = fit(peft, new_task, steps=40 if FAST else 100, lr=3e-2)
    print(f"adapting to +2 with {method:<7} {trainable:>5,} trainable ({100 * trainable / total:.1f} %)   "
          f"loss {first:.3f} → {last:.3f}")
    if method == "bitfit":
        unchanged = all(torch.equal(p, matrices_before[n]) for n, p in base.named_parameters() if not n.endswith("bias"))
        print("    weight matrices unchanged:", unchanged)
        with torch.no_grad(), peft.disabled():
            print("    disabled() equals the pretrained model:",
                  torch.equal(peft(input_ids=new_task), pretrained(input_ids=new_task)))

# %% [markdown]
# ## Exercise
#
# `lessons/exercises/methods.bitfit.py` is `minipeft/methods/bitfit.py` without the line that picks the
# biases. Write it, then run
#
#     pytest tests/test_bitfit.py --exercise methods.bitfit
