# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 9 — Prompt tuning
#
# Prompt tuning (Lester et al. 2021) freezes the whole model and trains only a few *soft tokens*:
# vectors as wide as a token embedding, put in front of the input. The model reads them like
# words that are not in its vocabulary. From `../shared/FORMULAS.md`:
#
#     F2.1  X' = [P; X] ∈ R^{(m+n)×C},  P ∈ R^{m×C};  only P trains: m·C parameters
#           (T5-XXL, C = 4096, m = 5 → 20,480)
#     F2.2  init: random; from the 5,000 most frequent vocabulary tokens; from the class-label words
#     F2.3  length 1–200, about 20 is usually enough
#
# The code is `minipeft/methods/prompt.py`. Shape legend: `B` batch, `n` input tokens, `m` prompt
# tokens, `C` width, `V` vocabulary. `MINIPEFT_FAST=1` makes every run below small.

# %%
import inspect
import os
import sys
from pathlib import Path

import torch

# Make the repository root (for minipeft) and this folder (for copy_or_reverse) importable.
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
sys.path[:0] = [str(HERE.parent), str(HERE)]

import copy_or_reverse as task  # noqa: E402
from minipeft import T5Config, T5Model, get_peft  # noqa: E402
from minipeft.methods import count_parameters  # noqa: E402
from minipeft.methods.prompt import prepend_prompt  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The seam: input embeddings
#
# The model offers `inputs_embeds` as an input: instead of ids, give it the vectors its
# embedding table would have produced. A method overrides `model_inputs` to rewrite the inputs
# before the model sees them. Prompt tuning's rewrite is F2.1, one concatenation, plus the
# attention mask: m ones in front, so every token may look at the prompt.

# %%
print(inspect.getsource(prepend_prompt))

# %% [markdown]
# `prompt.expand(batch, m, -1)` makes the (m, C) parameter look like (B, m, C) without copying
# it: every row of the batch reads the same memory, and the gradients of all rows add up in P.

# %%
base = task.pretrain(steps=300 if FAST else 800)
peft = get_peft(base, "prompt", num_virtual_tokens=4)
ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
inputs = peft.model_inputs(input_ids=ids, attention_mask=mask)
print("input_ids", tuple(ids.shape), "→ inputs_embeds", tuple(inputs["inputs_embeds"].shape))
print("attention_mask\n", inputs["attention_mask"])
print(peft.trainable_report())

# %% [markdown]
# On T5 the prompt goes in front of the *encoder* input; the decoder is untouched. On GPT there
# is one stack, so the prompt goes in front of its input, and generation continues after
# `[P; x]`. GPT's learned position table then has m fewer rows left for the text:
# `get_peft(gpt, "prompt", num_virtual_tokens=m)` refuses an m that leaves no room, and a forward
# refuses m + n > `n_positions`.
#
# ## 2. Counting (F2.1)
#
# m·C, whatever the depth of the model. The document's example, a T5 as wide as T5-XXL
# (C = 4096) with a prompt of 5 tokens (every other size is shrunk: the count does not depend on it):

# %%
wide = T5Model(T5Config(vocab_size=8, d_model=4096, d_kv=2, d_ff=2, num_layers=1, num_decoder_layers=1,
                        num_heads=1, relative_attention_num_buckets=4))
print("trainable:", count_parameters(get_peft(wide, "prompt", num_virtual_tokens=5))[0], "= 5 × 4096")
del wide

# %% [markdown]
# The reference library `peft` reports twice that on an encoder-decoder: it allocates 2·m prompt
# rows (`num_transformer_submodules=2`) and uses only the first m. Same function, same trained
# values, a different count (tests/test_prompt.py pins both, and checks our logits against
# peft's to 1e-4 on T5 and GPT-2).
#
# ## 3. Experiment: can four vectors say "reverse"?
#
# The base was pretrained from scratch (lessons/copy_or_reverse.py) to copy or reverse a string
# of letters, depending on a task word in front. Now we hide the task word. Without it the
# frozen base guesses; a prompt trained on reversal examples has to learn to stand in for the
# missing word.

# %%
method_steps = 80 if FAST else 300
print(f"base with the task word:     reverse {task.accuracy(base, task_word=True):.0%}, "
      f"copy {task.accuracy(base, 'copy', task_word=True):.0%}")
print(f"base without the task word:  reverse {task.accuracy(base):.0%}")
results = {}
for init, options in (("random", {}), ("text", {"prompt_tuning_init_token_ids": (task.REVERSE,)})):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    peft = get_peft(task.pretrain(steps=300 if FAST else 800), "prompt", num_virtual_tokens=4,
                    prompt_tuning_init=init, **options)
    start = task.accuracy(peft)
    task.train(peft, method_steps, 0.3, generator, "reverse", task_word=False)
    results[init] = peft
    print(f"prompt tuning, init {init!r:8}: reverse {start:.0%} before, {task.accuracy(peft):.0%} after "
          f"{method_steps} steps ({count_parameters(peft)[0]} parameters)")

# %% [markdown]
# The "text" init (F2.2, from the class-label words) copies the embedding of the word REVERSE
# into each of the four prompt vectors: the model starts by reading "REVERSE REVERSE REVERSE
# REVERSE", which is already close to the instruction it was pretrained on. A random prompt
# has to find its way there. (Prompt tuning wants a large learning rate, here 0.3: the few
# parameters move the whole model only through the attention it pays to them.)
#
# Generation goes through the same seam: `peft.generate` prepends the prompt and the model's
# own decoding loop does the rest. `peft.disabled()` gives back the untouched base.

# %%
peft = results["text"]
source = torch.tensor([[5, 6, 7, 8, 9, 1]])
letters = "abcdefgh"
show = lambda ids: " ".join(letters[i - task.FIRST_LETTER] for i in ids.tolist() if i >= task.FIRST_LETTER)  # noqa: E731
print("input:          ", show(source[0]))
print("with the prompt:", show(peft.generate(source, max_new_tokens=6)[0]))
with peft.disabled():
    print("base, no prompt:", show(peft.generate(source, max_new_tokens=6)[0]))

# %% [markdown]
# How long should the prompt be? The document (F2.3) tries 1, 5, 20, 100 and 150 vectors and finds
# little gained past 20. Here, random prompts of four lengths, the same steps and rate:

# %%
for length in (1, 4, 16, 64):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    peft = get_peft(task.pretrain(steps=300 if FAST else 800), "prompt", num_virtual_tokens=length)
    task.train(peft, method_steps, 0.3, generator, "reverse", task_word=False)
    print(f"{length:3} prompt vectors: reverse {task.accuracy(peft):.0%} ({count_parameters(peft)[0]:,} parameters)")

# %% [markdown]
# One vector already carries most of the instruction here (a single word, REVERSE, is all it has
# to stand for), a few carry all of it, and more add nothing but cost: every vector is one more
# position in every layer's attention. On the embedded sentiment task one vector is far from
# enough (none of tiny-t5-lm's answers is a label after 300 steps) and 20 to 100 are needed
# (README, Results, "Prompt length").
#
# On the embedded tasks the base matters as much as the method. `python train.py --method prompt`
# prompt-tunes the span-corruption tiny-t5 on sentiment to 58.8 % test accuracy; the same command
# with `--model tiny-t5-lm`, tiny-t5 after 3,000 steps of prefix LM ("LM adaptation", which
# Lester et al. give T5 before prompt tuning it, lesson 4), reaches 87.5 % (seed 0; full
# fine-tuning 82.2 and 94.5 %). A decoder that was only ever asked to fill in hidden spans does
# not readily answer after a prompt; one trained to continue what its encoder read does.

# %% [markdown]
# ## 4. Many tasks in one batch (F2.5)
#
# The trained prompt is all that reversal needs; the model itself did not change. So one copy of
# the model can serve several tasks at once: F2.5, "one frozen model, a different prompt per
# example in one batch". Train a second prompt, for copying (started from the word COPY), and
# stack the two: `MixedBatch` (`minipeft/methods/mixed.py`) picks each example's prompt by its
# task, P_{t_b}, and the rest is F2.1 with a (B, m, C) prompt instead of an expanded (m, C) one.

# %%
from minipeft import MixedBatch  # noqa: E402

generator = torch.Generator().manual_seed(2)
torch.manual_seed(2)
copy_prompt = get_peft(task.pretrain(steps=300 if FAST else 800), "prompt", num_virtual_tokens=4,
                       prompt_tuning_init="text", prompt_tuning_init_token_ids=(task.COPY,))
task.train(copy_prompt, method_steps, 0.3, generator, "copy", task_word=False)
print(f"copy prompt alone: copy {task.accuracy(copy_prompt, 'copy'):.0%}")

frozen = results["text"].model      # every prompt above was trained on a copy of the same base weights
mixed = MixedBatch(frozen, {"reverse": results["text"], "copy": copy_prompt})
print("tables:", tuple(mixed.tables.shape), "(tasks, m, C)")
sources = torch.tensor([[5, 6, 7, 8, 9, 1], [9, 5, 8, 6, 7, 1], [5, 6, 7, 8, 9, 1], [7, 7, 5, 6, 8, 1]])
tasks = ["reverse", "copy", "copy", "reverse"]
for source, name, output in zip(sources, tasks, mixed.generate(sources, tasks=tasks, max_new_tokens=6)):
    print(f"{name:8} {show(source)}  →  {show(output)}")

# %% [markdown]
# Each row gets what its own prompt gives it alone (tests/test_mixed.py checks the logits to 1e-5,
# and greedy and beam-search tokens exactly). Scored on the 200 unseen strings of each task, in
# one mixed batch of 400:

# %%
reverse_ids, reverse_labels = task.make_batch(200, 5, torch.Generator().manual_seed(1234), "reverse", False)
copy_ids, copy_labels = task.make_batch(200, 5, torch.Generator().manual_seed(1234), "copy", False)
output = mixed.generate(torch.cat([reverse_ids, copy_ids]), tasks=["reverse"] * 200 + ["copy"] * 200,
                        max_new_tokens=6)
right = (output == torch.cat([reverse_labels, copy_labels])).all(dim=1).float()
print(f"mixed batch: reverse {right[:200].mean():.0%}, copy {right[200:].mean():.0%}  "
      f"(alone: reverse {task.accuracy(results['text']):.0%}, copy {task.accuracy(copy_prompt, 'copy'):.0%})")

# %% [markdown]
# ## 5. Several prompts for one task: the ensemble (F2.4)
#
# The document's table compares, over several prompts trained for the same task, the *average*
# prompt, the *best* one, and their *ensemble*: every prompt answers, the majority wins. A mixed
# batch makes the ensemble one call: `vote` repeats each input once per prompt, generates all
# of them in one batch, and returns the answer most prompts gave (a tie goes to the first prompt).

# %%
members = {}
for seed in (3, 4, 5):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    member = get_peft(task.pretrain(steps=300 if FAST else 800), "prompt", num_virtual_tokens=4)
    task.train(member, method_steps, 0.3, generator, "reverse", task_word=False)
    members[f"seed {seed}"] = member
scores = {name: task.accuracy(member) for name, member in members.items()}
ensemble = MixedBatch(frozen, members)
reverse_right = (ensemble.vote(reverse_ids, max_new_tokens=6) == reverse_labels).all(dim=1).float().mean()
print("each prompt:", ", ".join(f"{name} {score:.0%}" for name, score in scores.items()))
print(f"average {sum(scores.values()) / len(scores):.0%}, best {max(scores.values()):.0%}, "
      f"ensemble (majority vote) {reverse_right:.0%}")

# %% [markdown]
# A vote helps where the prompts err on different inputs: where one prompt is wrong and two are
# right, the two outvote it. Where they all fail alike, it cannot, and that is what happens here:
# three prompts trained on the same examples from different random starts miss the same strings,
# so the vote is at most about a point above the best prompt (at 800 base steps all three are
# already at or near 100 %). Lester et al. report their five-prompt ensemble above the average
# prompt on SuperGLUE, with T5-XXL (11 billion parameters, this base has 166 thousand).
#
# The same works for prefixes (F5.8, one prefix per user in one batch) and for P-tuning v2:
# `MixedBatch` stacks their folded tables and hands each example its own keys and values. A LoRA
# or an adapter cannot be mixed this way: it changes layers that every example goes through.
# `MixedBatch.load(model, {"copy": "runs/copy/peft.safetensors", …})` mixes saved checkpoints.
#
# ## 6. Where soft prompts came from: a discrete prompt and an answer mapping (F10.5)
#
# Before any prompt was trained, seed 003 §3.1.1 prompts with words: a *template* turns the input
# into text the model knows from pretraining, and an *answer mapping* turns each label into words,
#
# > 分类型(classification)：如"[X] It was [MASK]."  人工定义：如 "positive"→"great", "negative"→"terrible"
#
# and the model's most probable filling of `[MASK]` is the answer. Nothing trains.
# `minipeft.discrete_prompt.DiscretePrompt` does it with the shipped decoder-only base on the
# sentiment reviews (`python -m minipeft.discrete_prompt` is the same on the command line):

# %%
from minipeft import bases  # noqa: E402
from minipeft.discrete_prompt import DiscretePrompt  # noqa: E402
from minipeft.taskdata import load_task  # noqa: E402

gpt, gpt_tokenizer = bases.load_base("tiny-gpt")
reviews = load_task("sentiment").test[:60 if FAST else 300]
inputs, labels = [review.input for review in reviews], [review.target for review in reviews]
# The text the model reads; the blank is written as T5's sentinel, and a left-to-right model reads
# the text before it and scores each label's words as what comes next.
print(DiscretePrompt("[X] It was [MASK].", {"positive": "great", "negative": "terrible"}).text(inputs[0]))
for template in ("[X] It was [MASK].", "[X] Overall it was [MASK]."):
    for positive, negative in (("great", "terrible"), ("good", "bad")):
        prompt = DiscretePrompt(template, {"positive": positive, "negative": negative})
        print(f"{template!r:32} {positive + '/' + negative:<16} zero-shot accuracy "
              f"{prompt.accuracy(gpt, gpt_tokenizer, inputs, labels):.0%}")

# %% [markdown]
# The base was never trained on the task, and the words alone carry it well above chance (50 %).
# But which words is a matter of trial: a template that reads one word differently, a mapping to
# other adjectives, and the score moves by many points. That brittleness, and the work of searching
# for the wording, is what prompt tuning removes: the m vectors of F2.1 are found by gradient
# descent instead of by hand, and need not be words at all. (A span-corruption T5 such as tiny-t5
# answers such a blank with one label for every review, 50 %: it was trained to fill gaps inside
# a text, not to end one, the reason Lester et al. LM-adapt T5 before prompt tuning it;
# README, "Before soft prompts", has the measured table.)
#
# ## 7. Exercise
#
# `lessons/exercises/methods.prompt.py` is `prompt.py` with F2.1 taken out. Write it, then:
#
#     pytest tests/test_prompt.py --exercise methods.prompt
#
# `lessons/exercises/methods.mixed.py` takes out the choice of each example's table and the vote:
#
#     pytest tests/test_mixed.py --exercise methods.mixed
#
# `lessons/exercises/discrete_prompt.py` takes out the text a discrete prompt gives the model:
#
#     pytest tests/test_discrete_prompt.py --exercise discrete_prompt
