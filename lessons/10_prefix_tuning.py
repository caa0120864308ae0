# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 10 — Prefix tuning
#
# Prompt tuning (lesson 9) adds vectors at the input only; the model's own layers decide what
# they become higher up. Prefix tuning (Li & Liang 2021) trains what every attention layer sees:
# m extra keys and values in front of the layer's own, at every layer. From `../shared/FORMULAS.md`:
#
#     F5.1  h_i = P_θ[i, :] if i ∈ P_idx, else LM_φ(z_i, h_<i)          φ frozen
#     F5.2  decoder-only z = [PREFIX; x; y];  encoder-decoder z = [PREFIX; x; PREFIX'; y]
#     F5.3  K_prefix = [P_key; K],  V_prefix = [P_value; V],  head = Attn-op(Q, K_prefix, V_prefix)
#     F5.5  P_θ[i, :] = MLP_θ(P'_θ[i, :]); after training the MLP is dropped, only P_θ is kept
#     F5.6  parameters |P_idx| × dim(h) per layer, for the keys and for the values
#     F5.7  ablations: embedding-only vs every layer; prefix [PREFIX; x; y] vs infix [x; INFIX; y];
#           init from real words vs random
#
# The code is `minipeft/methods/prefix.py`. Shape legend: `B` batch, `H` heads, `D` head width,
# `m` prefix length, `S` number of prefixed attention layers, `C` width.

# %%
import copy
import inspect
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
sys.path[:0] = [str(HERE.parent), str(HERE)]

import copy_or_reverse as task  # noqa: E402
from minipeft import GPT, GPTConfig, T5Config, T5Model, bases, get_peft  # noqa: E402
from minipeft.attention import attend, prepend_prefix  # noqa: E402
from minipeft.methods import count_parameters  # noqa: E402
from minipeft.methods.prefix import PrefixTuning, infix_visibility, split_prefix_tables  # noqa: E402
from minipeft.training import TrainConfig, run  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The seam: extra keys and values in every attention
#
# Attention already accepts `prefix_kv = (P_key, P_value)`, each (B, H, m, D), and puts them in
# front of its keys and values (F5.3). The mask gets m zero columns: every query may look at
# the prefix. The prefix has no position: it is not a token, just m more things to attend to.

# %%
print(inspect.getsource(prepend_prefix))

# %% [markdown]
# The method stores all prefixes of all layers in one matrix P_θ of shape (m, S·2·H·D) and, once
# per forward, cuts it into one (key, value) pair per prefixed layer (`split_prefix_tables`, which
# also serves a batch with one table per example, section 5's end). `expand` lends the same
# memory to every row of the batch (no copy):

# %%
print(inspect.getsource(split_prefix_tables))
print(inspect.getsource(PrefixTuning.prefix_kv))

# %% [markdown]
# ## 2. Where the prefixes go, and what that costs (F5.6)
#
# GPT: every block's self-attention. T5 has three kinds of attention: the encoder's
# self-attention, the decoder's self-attention, the decoder's cross-attention. F5.2 puts a
# PREFIX before x (encoder) and a PREFIX' before y (decoder); with our seam that is all three,
# `prefix_on=("encoder", "decoder", "cross")`, the default here.
#
# The widely used reference library, `peft`, does something else on T5, and it is worth knowing
# exactly what (tests/test_prefix.py pins each point against peft 0.21 / transformers 5):
#
# * it builds the same (m, L·2·C) table as for GPT and passes it to the *decoder* as its
#   generation cache (`past_key_values`), so the encoder gets nothing;
# * it then empties the cross-attention cache (the encoder output must fill it), which throws
#   away the cross-attention half: what is left is a prefix on the decoder's self-attention,
#   `prefix_on=("decoder",)` here;
# * because of how the table is doubled and regrouped, decoder layer l reads the rows meant for
#   layer 2l mod L: with an even number of layers (t5-small: 6) half of the table is never used;
# * being "cache", the prefix looks like m earlier tokens to transformers: T5 adds its relative
#   position bias to the prefix columns and GPT-2 shifts the input's positions by m. Our prefix
#   has no position. On GPT-2 we match peft's logits exactly when we are given its positions
#   (`position_ids = m, m+1, …`); on T5 exactly once the decoder's position bias is zero.
#
# Here are the counts on a t5-small-shaped model (vocabulary and FFN shrunk: they do not count)
# and on GPT-2 small, for 20 prefix tokens:

# %%
t5_small = T5Model(T5Config(vocab_size=32, d_model=512, d_kv=64, d_ff=4, num_layers=6, num_decoder_layers=6,
                            num_heads=8))
gpt2_small = GPT(GPTConfig(vocab_size=32, n_positions=32, n_embd=768, n_layer=12, n_head=12, n_inner=4,
                           eos_token_id=1, pad_token_id=0))
settings = [
    ("GPT-2 small, peft's setting (no MLP)", gpt2_small, dict(prefix_projection=False)),
    ("t5-small, peft's setting: decoder self-attention, no MLP", t5_small,
     dict(prefix_on=("decoder",), prefix_projection=False)),
    ("t5-small, the paper's setting, no MLP", t5_small, dict(prefix_projection=False)),
    ("t5-small, the paper's setting with the MLP (h = C), training", t5_small, {}),
]
for title, model, options in settings:
    peft = get_peft(copy.deepcopy(model), "prefix", num_virtual_tokens=20, **options)
    trainable = count_parameters(peft)[0]
    folded = count_parameters(peft.fold())[0]
    print(f"{title:64} {trainable:>10,} trainable, {folded:>9,} after fold()")
del t5_small, gpt2_small

# %% [markdown]
# F5.6 by hand: m · 2 · H·D per prefixed layer. GPT-2 small: 20 · 2 · 768 · 12 = 368,640 (peft's
# number). t5-small, decoder only: 20 · 2 · 512 · 6 = 122,880; all three kinds: 6 + 6 + 6 = 18
# layers, 368,640. The MLP of F5.5 (C → h → W, tanh, W = S·2·H·D = 18,432) makes training much
# larger: m·C + (C·h + h) + (h·W + W) = 10,240 + 262,656 + 9,455,616 = 9,728,512 with h = C = 512.
# `fold()` computes P_θ = MLP(P'_θ) once and drops the MLP: what inference keeps is the table.
#
# ## 3. The reparametrisation and folding (F5.5)
#
# The paper found that training P_θ directly is unstable and trains P'_θ through an MLP
# instead (`prefix_projection=True`, our default; peft's default is off). After training:

# %%
base = task.pretrain(steps=300 if FAST else 800)
peft = get_peft(copy.deepcopy(base), "prefix", num_virtual_tokens=4)
x = torch.tensor([[5, 6, 7, 8, 9, 1]])
decoder_input = torch.tensor([[0, 9, 8]])
before = peft(input_ids=x, decoder_input_ids=decoder_input)
print("before fold:", count_parameters(peft)[0], "trainable parameters")
peft.fold()
after = peft(input_ids=x, decoder_input_ids=decoder_input)
print("after fold: ", count_parameters(peft)[0], "trainable parameters; max |Δ logits| =",
      f"{(after - before).abs().max().item():.1e}")

# %% [markdown]
# `save_trained` writes both, so one file serves two purposes: P'_θ and the MLP to resume
# training (`load_trained`), and the folded `prefix_table` for inference
# (`PrefixTuning.load_folded` builds the method without the MLP and reads only the table).
#
# ## 4. Experiment: which attention needs the prefix?
#
# The copy-or-reverse base of lesson 9, task word hidden. Each setting trains its prefix on
# reversal examples for the same number of steps; then greedy decoding on unseen strings. The
# embedding-only ablation of F5.7 puts the prefix in the encoder input only (then it is prompt
# tuning with the MLP).

# %%
method_steps = 80 if FAST else 300
print(f"base without the task word: reverse {task.accuracy(base):.0%}")
experiments = [
    ("peft's setting: decoder self-attention, no MLP", dict(prefix_on=("decoder",), prefix_projection=False), 0.05),
    ("the paper's: encoder + decoder + cross, MLP", {}, 1e-2),
    ("infix [x; INFIX; y] (F5.7): decoder + cross, MLP", dict(prefix_on=("decoder", "cross")), 1e-2),
    ("encoder self-attention only, MLP", dict(prefix_on=("encoder",)), 1e-2),
    ("embedding-only ablation (F5.7), MLP", dict(prefix_on=("encoder",), embedding_only=True), 1e-2),
    ("the paper's, init from the word REVERSE (F5.7)", dict(prefix_init_token_ids=(task.REVERSE,)), 1e-2),
]
for title, options, lr in experiments:
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    peft = get_peft(copy.deepcopy(base), "prefix", num_virtual_tokens=4, **options)
    task.train(peft, method_steps, lr, generator, "reverse", task_word=False)
    print(f"{title:50} reverse {task.accuracy(peft):>4.0%}   ({count_parameters(peft)[0]:,} trained parameters)")

# %% [markdown]
# The instruction is missing from the *input*, and the decoder-only prefix never touches the
# encoder: the decoder has to undo, from the cross-attention alone, an encoding made without the
# instruction. A prefix that reaches the encoder can put the instruction back where the base
# model expects it. (Small-scale, one seed: read the numbers as a demonstration, not a benchmark.)
#
# Generation runs on the model's own cache: the prefix goes into every decoding step, and beam
# search reorders it with the rest of the state.

# %%
print("greedy:", peft.generate(x, max_new_tokens=6).tolist(), " beams:", peft.generate(x, max_new_tokens=6,
                                                                                     num_beams=3).tolist())

# %% [markdown]
# ### Prefix or infix (F5.7)
#
# The document compares `[PREFIX; x; y]` with `[x; INFIX; y]` and finds the prefix slightly
# better, "because a prefix can influence both x and y, an infix only y". On an encoder-decoder
# the infix is already in the table above: F5.2's PREFIX' sits before y on the decoder side
# (decoder and cross-attention), and x is encoded without it. On a decoder-only model x and y are
# one sequence, so `infix=True` keeps the same trained keys and values but lets only the positions
# that predict y attend to them: from the end token of x on, in train.py's layout `x </s> y </s>`.
# The positions of x then read exactly what the frozen model computes. On the embedded tiny GPT:

# %%
gpt, gpt_tokenizer = bases.load_base("tiny-gpt")
x_ids = gpt_tokenizer.encode("the soup was cold", add_eos=True)                    # x </s>
y_ids = gpt_tokenizer.encode("negative", add_eos=True)                              # y </s>
ids = torch.tensor([x_ids + y_ids])
print("sees the infix:", infix_visibility(ids, None, gpt.config.eos_token_id).int().tolist()[0])
infix = get_peft(copy.deepcopy(gpt), "prefix", num_virtual_tokens=4, infix=True)
with torch.no_grad():
    delta = (infix(input_ids=ids) - gpt(input_ids=ids)).abs().amax(-1)[0]          # per position
print("max |Δ logits| against the frozen GPT, per position:", [f"{d:.0e}" for d in delta.tolist()])

# %% [markdown]
# Trained on the sentiment task with `train.py`'s loop, same seed and settings, only `infix` apart
# (the command line: `python train.py --model tiny-gpt --method prefix --option infix=true`):

# %%
gpt_steps = 60 if FAST else 300
for title, options in (("prefix [PREFIX; x; y]", {}), ("infix  [x; INFIX; y]", {"infix": True})):
    out = Path(tempfile.mkdtemp(prefix="minipeft-infix-"))
    record = run(TrainConfig(method="prefix", model="tiny-gpt", task="sentiment", steps=gpt_steps,
                             eval_every=gpt_steps, options=options, out=str(out)),
                 log=lambda *args, **kwargs: None)
    shutil.rmtree(out)
    print(f"{title}: test accuracy {record['score']:.1%} after {gpt_steps} steps")

# %% [markdown]
# One seed is one draw (README: over ten seeds the infix trails the prefix on every one, 90.5
# against 97.1 % on average). The
# infix reaches the label only through the positions after x: every layer's reading of the review
# is the frozen model's, which is what the document's explanation says.

# %% [markdown]
# ## 5. What a prefix can change: a gate on each query
#
# Write out F5.3–F5.4 for one query q (a row of Q), with the scale left out as in T5. Its scores
# against the prefix keys and against the input's keys sit in one softmax, so the head splits
# into two attentions and a gate λ(q) between them (He et al. 2022 read prefix tuning this way:
# an adapter beside the attention, gated by the frozen query):
#
#     head(q) = (1 − λ(q)) · softmax(q Kᵀ) V  +  λ(q) · softmax(q P_keyᵀ) P_value
#     λ(q)    = Σᵢ exp(q·P_key,i) / (Σᵢ exp(q·P_key,i) + Σⱼ exp(q·K_j))      (the prefix's share)
#
# The first term is the frozen layer's own attention, untouched. Checked on random tensors:

# %%
B, H, T, m, D = 2, 4, 6, 3, 8
query, key, value = torch.randn(B, H, T, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
prefix_key, prefix_value = torch.randn(B, H, m, D), torch.randn(B, H, m, D)
keys, values = prepend_prefix(key, value, (prefix_key, prefix_value))
with_prefix = attend(query, keys, values, scale=1.0)                                      # (B, H, T, D)
prefix_mass = (query @ prefix_key.transpose(-2, -1)).logsumexp(-1, keepdim=True)         # (B, H, T, 1)
input_mass = (query @ key.transpose(-2, -1)).logsumexp(-1, keepdim=True)                 # (B, H, T, 1)
gate = torch.sigmoid(prefix_mass - input_mass)                                            # λ(q), (B, H, T, 1)
gated = (1 - gate) * attend(query, key, value, scale=1.0) + gate * attend(query, prefix_key, prefix_value, scale=1.0)
print(f"max |head with prefix − gated sum| = {(with_prefix - gated).abs().max().item():.1e}")
weights = (query @ keys.transpose(-2, -1)).softmax(-1)[..., m:]                          # on the input's keys
renormalised = weights / weights.sum(-1, keepdim=True)
print(f"max |Δ| of the weights on the input, renormalised, with and without the prefix: "
      f"{(renormalised - (query @ key.transpose(-2, -1)).softmax(-1)).abs().max().item():.1e}")

# %% [markdown]
# So, within one layer, a prefix cannot change *which* input tokens a query looks at, or in what
# proportions: it can only turn the query partly away from all of them, by λ(q), towards a
# mixture of its own m values. The layers above see shifted hidden states, so their queries and
# keys do move, but only along what those m values add. LoRA on the query and key projections
# changes q Kᵀ itself. Petrov et al. (ICLR 2024) argue from this that prefix tuning can bring
# out a skill the frozen model has but not teach it a new attention pattern.
#
# The embedded nli task may be such a case (README, Results): the hypothesis has to be matched
# with the right fact of the premise, which none of the tiny bases does before fine-tuning (their
# frozen probes stay near chance). There, prefix tuning with its best setting found on dev (10
# tokens at a lower rate than the other tasks want) keeps about 85 % of full fine-tuning's score,
# and LoRA, which can redirect attention, about 98 % (three seeds, 3,000 steps). On sentiment and
# e2e, where the frozen base already carries what the task reads, prefix tuning is close to full.
# Trained on nli, the prefix takes much of the encoder's attention, λ near 1 for some queries and
# near 0 for others (README): where it is used, the layer's own attention is switched off, not
# redirected.

# %% [markdown]
# One property the document lists (F5.8): since the model is untouched, N prefixes, one per user
# or task, can run in one batch, each example reading its own keys and values. `MixedBatch`
# (lesson 9, section 4) stacks the folded tables P_θ and cuts each example's into its layers'
# keys and values with the same `split_prefix_tables`, one table per row. `python -m minipeft.serve` runs the
# embedded tasks' prefix runs so and finds every prediction equal to each run's own (README).
#
# ## 6. Exercise
#
# `lessons/exercises/methods.prefix.py` is `prefix.py` with F5.5 and the cutting of P_θ into
# per-layer keys and values taken out. Write them, then:
#
#     pytest tests/test_prefix.py --exercise methods.prefix
