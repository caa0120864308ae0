# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Lesson 2 — GPT and generation with a cache
#
# The decoder-only model of `minipeft/gpt.py`, and the decoding loop of `minipeft/generate.py`:
# greedy decoding with a key/value cache, sampling with a temperature and top-k, beam search.
# The last section shows the seam that prefix tuning (F5.3) will use: extra keys and values
# handed to every attention layer.
#
# Shape legend: `B` batch, `T` new tokens, `S` keys (past + new), `C` width, `H` heads,
# `D` head width, `m` prefix length, `V` vocabulary. `MINIPEFT_FAST=1` picks tiny sizes.

# %%
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Make the repository root importable when the lesson runs from a checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent))

from minipeft import GPT, GPTConfig, ShapeError, T5Config, T5Model  # noqa: E402
from minipeft.attention import causal_mask  # noqa: E402
from minipeft.functional import gelu_tanh  # noqa: E402

FAST = os.environ.get("MINIPEFT_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)  # models this small run fastest on one thread, and the timings below are steadier
torch.set_printoptions(precision=3, sci_mode=False, linewidth=120)

# %% [markdown]
# ## 1. The model
#
#     ids (B, T) → wte + wpe → blocks → ln_f → wteᵀ → logits (B, T, V)
#     block:  x = x + attn(ln_1(x));   x = x + c_proj(GELU_tanh(c_fc(ln_2(x))))
#
# Positions are a learned table `wpe` of `n_positions` rows; the LayerNorm comes *before* each
# sublayer (pre-LN); the head is *tied*: the output projection is the token embedding matrix,
# so there is no separate `lm_head` parameter.

# %%
# A small vocabulary needs its own end-of-text id (GPT-2's is 50256): the last one.
config = GPTConfig(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4, eos_token_id=255, pad_token_id=255) \
    if FAST else GPTConfig(vocab_size=256, n_positions=512, n_embd=128, n_layer=4, n_head=4, eos_token_id=255,
                           pad_token_id=255)
model = GPT(config).eval()
# GPT-2's initialisation (std 0.02, F12.6) gives an untrained model nearly uniform logits, so
# every decoding strategy below would pick near-random tokens for the same reason. Widen the
# embedding table so the logits have std ≈ 2, closer to a trained model's confidence.
with torch.no_grad():
    model.wte.weight.normal_(0.0, 2.0 / config.n_embd ** 0.5)
print(model.blocks[0])
print(f"{sum(p.numel() for p in model.parameters()):,} parameters; "
      f"wte {tuple(model.wte.weight.shape)}, wpe {tuple(model.wpe.weight.shape)}")

# %% [markdown]
# The tied head, checked: capture the input of `ln_f` with a hook and apply the formula
# `logits = ln_f(x) · wteᵀ` (F11.1 `Softmax(E·φ(x))` with `E` the embedding matrix).

# %%
prompt = torch.randint(0, config.vocab_size, (2, 8))              # (B, T)
captured = {}
hook = model.ln_f.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
with torch.no_grad():
    logits = model(prompt)                                        # (B, T, V)
    by_hand = model.ln_f(captured["x"]) @ model.wte.weight.T      # (B, T, C) · (C, V)
hook.remove()
print("logits", tuple(logits.shape), " max |Δ| vs ln_f(x) · wteᵀ:", (logits - by_hand).abs().max().item())

# %% [markdown]
# GPT-2 was trained with the `tanh` approximation of GELU,
# `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, which minipeft writes out in
# `minipeft.functional.gelu_tanh`. It is close to, but not equal to, the exact GELU: a checkpoint
# must be run with the one it was trained with.

# %%
z = torch.linspace(-4, 4, 801)
print("max |gelu_tanh − F.gelu (exact)| on [-4, 4]:", (gelu_tanh(z) - F.gelu(z)).abs().max().item())
print("max |gelu_tanh − F.gelu (tanh)|  on [-4, 4]:", (gelu_tanh(z) - F.gelu(z, approximate="tanh")).abs().max().item())

# %% [markdown]
# ## 2. The causal mask
#
# Query `i` may look at keys `0 … i` only: `M` holds the dtype's minimum above the diagonal.
# Consequence: changing token `t` cannot change the logits at positions before `t`.

# %%
mask = causal_mask(5, 5, torch.float32, "cpu")
print(mask.masked_fill(mask == torch.finfo(mask.dtype).min, float("-inf")))

changed = prompt.clone()
changed[:, 5] = (changed[:, 5] + 1) % config.vocab_size           # change token 5
with torch.no_grad():
    delta = (model(changed) - logits).abs().amax(dim=(0, 2))      # (T,) largest change per position
print("max |Δ logits| per position after changing token 5:", [f"{d:.2g}" for d in delta.tolist()])

# %% [markdown]
# ## 3. Greedy decoding: with the cache and without
#
# Without a cache, step `t` runs the whole sequence of length `P + t` through the model to get
# one new token. With a cache (`minipeft.attention.KVCache`), each layer keeps the keys and
# values it has computed, so step `t` feeds only the newest token: one query row against `S`
# cached keys. The library's loop (`minipeft/generate.py`) is built on two calls:
#
#     state, tokens = model.start_decoding(prompt)      # GPT: the prompt is the first step
#     logits = model.decode_step(state, tokens)         # (B, V) for the next token
#
# First the cache growing, step by step (layer 0's keys, (B, H, S, D)):

# %%
state, tokens = model.start_decoding(prompt)
cached_logits, cached_tokens = [], []
with torch.no_grad():
    for step in range(6):
        step_logits = model.decode_step(state, tokens)            # (B, V)
        tokens = step_logits.argmax(-1, keepdim=True)             # (B, 1): feed only the new token
        cached_logits.append(step_logits)
        cached_tokens.append(tokens)
        print(f"step {step}: fed {tuple((prompt if step == 0 else tokens).shape)}, "
              f"cache keys {tuple(state['cache'][0].keys.shape)}")

# %% [markdown]
# The same six steps without a cache, re-running the growing sequence; the next-token logits
# agree to float rounding, so the tokens agree.

# %%
sequence = prompt
with torch.no_grad():
    for step in range(6):
        step_logits = model(sequence)[:, -1]                      # the whole sequence, every step
        print(f"step {step}: fed {tuple(sequence.shape)}, "
              f"max |Δ logits| vs cached {(step_logits - cached_logits[step]).abs().max():.1e}")
        sequence = torch.cat([sequence, step_logits.argmax(-1, keepdim=True)], dim=1)
print("same tokens:", torch.equal(sequence[:, prompt.shape[1]:], torch.cat(cached_tokens, dim=1)))
print("tokens     :", sequence[0, prompt.shape[1]:].tolist())

# %% [markdown]
# Now the timing, over a longer generation. `model.generate` runs the cached loop.

# %%
prompt_length, new_tokens = (8, 32) if FAST else (16, 240)
long_prompt = torch.randint(0, config.vocab_size, (1, prompt_length))


def generate_without_cache(prompt, max_new_tokens):
    sequence = prompt
    with torch.no_grad():
        for _ in range(max_new_tokens):
            sequence = torch.cat([sequence, model(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequence[:, prompt.shape[1]:]


def best_time(function, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


with_cache_s, with_cache = best_time(lambda: model.generate(long_prompt, max_new_tokens=new_tokens))
without_cache_s, without_cache = best_time(lambda: generate_without_cache(long_prompt, new_tokens))
print(f"prompt {prompt_length} tokens, {new_tokens} new tokens")
print(f"with cache   : {new_tokens / with_cache_s:8.1f} tokens/s")
print(f"without cache: {new_tokens / without_cache_s:8.1f} tokens/s")
print(f"speed-up {without_cache_s / with_cache_s:.1f}×, same tokens: {torch.equal(with_cache, without_cache)}")

# %% [markdown]
# Without the cache, step `t` costs `O(P + t)` rows through every layer, so a whole generation
# costs `O(N²)`; with it, each step is one row, `O(N)` in total (plus attention over the cached
# keys). For a model this small, fixed per-step overhead hides part of the gain; it grows with
# the length and the width.
#
# ### Greedy's head: screened in int8, decided in float32
#
# `decode_step` is the LM head applied to `model.step_features(state, tokens)`, the (B, C) hidden
# state of the newest position. Greedy decoding needs only the argmax of the V logits, and on a
# real model reading the (V, C) head is the biggest single cost of a step (66 MB for t5-small).
# `minipeft/screening.py` reads an int8 copy instead (a quarter of the bytes: each row as 8-bit
# integers times one scale), recomputes its 64 best tokens in float32, and keeps the answer only
# if a bound on the int8 rounding proves that no other token could beat it; otherwise it falls
# back to the float32 head. So the tokens are the float32 argmax's. `generate` does this for
# heads of 4 M numbers or more; here is one of t5-small's size, with hidden states that favour a
# few tokens, as a trained model's do:

# %%
from minipeft import screening  # noqa: E402

head = torch.randn(32128, 512) * 0.05                              # (V, C), a t5-small-sized head
hidden = head[torch.arange(8) * 1000] * 20 + torch.randn(8, 512) * 0.5   # (B, C), one step's features
screen = screening.screen_for(head)
if screen is None:
    print("this CPU has no int8 matmul (fbgemm) for torch: generate uses the float32 head")
else:
    with torch.no_grad():
        float32_argmax = (hidden @ head.T).argmax(-1)
        screened = screening.greedy_tokens(hidden, head, screen=screen)
        rounded, span, int8_logits = screening.screened_logits(hidden, screen.packed)
    print("screened tokens == float32 argmax:", torch.equal(screened, float32_argmax))
    print(f"row 0: logit {(hidden[0] @ head.T).max():.3f}, int8 screen's {int8_logits[0].max():.3f}; "
          f"bound on the screen's error {screen.max_row_norm * (hidden[0] - rounded[0]).norm():.4f}"
          f" + {screen.max_rounding_norm * rounded[0].norm():.4f} + rounding"
          f"  (logits spread {(hidden[0] @ head.T).std():.2f})")

# %% [markdown]
# ## 4. Temperature and top-k
#
# Sampling draws the next token from `softmax(logits / temperature)`, optionally restricted to
# the `k` highest logits. Low temperature → nearly greedy; high temperature → nearly uniform
# (entropy `log V`); top-k caps the entropy at `log k`.

# %%
next_logits = logits[0, -1]                                       # (V,)
print(f"logit std {next_logits.std():.1f},  log V = {math.log(config.vocab_size):.2f} nats")
for temperature in (0.25, 0.5, 1.0, 2.0, 4.0, 16.0):
    probs = torch.softmax(next_logits / temperature, dim=-1)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum()
    top5 = torch.softmax((next_logits / temperature).topk(5).values, dim=-1)
    top5_entropy = -(top5 * top5.log()).sum()
    print(f"T={temperature:5.2f}  entropy {entropy:5.2f} nats   top-k=5 entropy {top5_entropy:4.2f} (≤ log 5 = 1.61)")

# %%
generator = torch.Generator().manual_seed(0)
for temperature, top_k in ((0.25, None), (1.0, None), (4.0, None), (4.0, 5)):
    sampled = model.generate(prompt[:1], max_new_tokens=12, do_sample=True, temperature=temperature, top_k=top_k,
                             generator=generator)
    print(f"T={temperature}, top_k={top_k}:", sampled[0].tolist())
top1 = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=4.0, top_k=1, generator=generator)
print("sampling with top_k=1 is greedy:", torch.equal(top1, model.generate(prompt, max_new_tokens=12)))

# %% [markdown]
# ## 5. Beam search (on a tiny T5)
#
# Greedy keeps one hypothesis; beam search keeps the `num_beams` best partial sequences by total
# log-probability and, when a hypothesis ends, scores it `log p / length^length_penalty`.
# We score each result with one teacher-forced forward pass.

# %%
t5_config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4) if FAST else \
            T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=256, num_layers=3, num_heads=4)
t5 = T5Model(t5_config).eval()
with torch.no_grad():
    t5.shared.weight.mul_(0.5)       # with N(0, 1) rows (T5's init) an untrained tied head mostly copies its input
source = torch.randint(2, t5_config.vocab_size, (4, 10))           # (B, S)


def total_log_prob(source_ids, output):
    """Σ log p(y_t | y_<t, x) of one generated sequence, (S,) and (T,), cut after end-of-sequence."""
    ends = (output == t5_config.eos_token_id).nonzero()
    output = output[: ends[0, 0] + 1] if len(ends) else output
    with torch.no_grad():
        logits = t5(input_ids=source_ids[None], decoder_input_ids=t5.shift_right(output[None]))   # (1, T, V)
    return logits[0].log_softmax(-1).gather(-1, output[:, None]).sum().item(), output


print("greedy == num_beams=1:", torch.equal(t5.generate(source, max_new_tokens=8),
                                              t5.generate(source, max_new_tokens=8, num_beams=1)))
print("total log p   " + "".join(f"   row {row}" for row in range(len(source))))
best = {}
for num_beams in (1, 2, 4, 8):
    outputs = t5.generate(source, max_new_tokens=8, num_beams=num_beams, length_penalty=0.0)
    scored = [total_log_prob(source[row], outputs[row]) for row in range(len(source))]
    best[num_beams] = scored
    print(f"num_beams={num_beams}  " + "".join(f"{log_prob:8.2f}" for log_prob, _ in scored))
for row in range(len(source)):
    print(f"row {row}: greedy {best[1][row][1].tolist()}  →  8 beams {best[8][row][1].tolist()}")

# %% [markdown]
# With `length_penalty=0` the score is the plain total log-probability. Greedy commits to the
# locally best token and keeps repeating the decoder-start token; wider beams find more likely
# sequences (here; in general beam search is still a heuristic, not a guarantee). A beam may
# also stop at once with end-of-sequence (id 1): every token adds a negative `log p`, so the
# plain total favours short outputs, which `length_penalty > 0` corrects. (An untrained model
# repeats itself; only the scores matter here.)
#
# ## 6. The `prefix_kv` seam
#
# Every attention layer accepts extra keys and values, `prefix_kv = (P_key, P_value)`, each
# (B, H, m, D), prepended along the key axis (F5.3):
#
#     K_prefix = [P_key; K],   V_prefix = [P_value; V],   head = Attn-op(Q, K_prefix, V_prefix)
#
# Every query may attend to the `m` prefix positions. Random prefixes change the output:

# %%
heads, head_dim, prefix_length = config.n_head, config.n_embd // config.n_head, 3
prefix_kv = [(torch.randn(2, heads, prefix_length, head_dim), torch.randn(2, heads, prefix_length, head_dim))
             for _ in range(config.n_layer)]                       # one (P_key, P_value) per layer
with torch.no_grad():
    with_prefix = model(prompt, prefix_kv=prefix_kv)
print("one (P_key, P_value) per layer, each", tuple(prefix_kv[0][0].shape), "(B, H, m, D)")
print("max |Δ logits| with vs without prefix:", (with_prefix - logits).abs().max().item())

# %% [markdown]
# A prefix is a cache of keys and values for tokens that do not exist. Filled with the cached
# keys/values of a real prompt, it reproduces running that prompt (the positions of the new
# tokens continue after it). This is F5.7's "initialise the prefix from the activations of real
# words".

# %%
cache = model.new_cache()
with torch.no_grad():
    model(prompt, cache=cache)                                     # fills every layer's KVCache
    prompt_as_prefix = [(layer.keys, layer.values) for layer in cache]
    continuation = torch.randint(0, config.vocab_size, (2, 4))
    positions = torch.arange(prompt.shape[1], prompt.shape[1] + 4)[None]
    via_prefix = model(continuation, prefix_kv=prompt_as_prefix, position_ids=positions)
    via_prompt = model(torch.cat([prompt, continuation], dim=1))[:, prompt.shape[1]:]
print("max |Δ| prefix-from-prompt vs running the prompt:", (via_prefix - via_prompt).abs().max().item())

# %% [markdown]
# Prefix tuning (F5.1–F5.3) makes `P_key, P_value` trainable parameters and freezes the model:
# the gradient reaches the prefix through this seam. A prefix of the wrong shape is caught at
# the boundary, with an error that names the formula.

# %%
trainable = [(k.clone().requires_grad_(), v.clone().requires_grad_()) for k, v in prefix_kv]
for parameter in model.parameters():
    parameter.requires_grad_(False)
loss = F.cross_entropy(model(prompt, prefix_kv=trainable)[:, :-1].flatten(0, 1), prompt[:, 1:].flatten())
loss.backward()
print(f"loss {loss.item():.3f}; |grad P_key| in layer 0: {trainable[0][0].grad.norm():.3f}; "
      f"model gradients: {sum(p.grad is not None for p in model.parameters())}")

try:
    model(prompt, prefix_kv=[(k[..., :-1], v) for k, v in prefix_kv])
except ShapeError as error:
    print("ShapeError:", error)

# %% [markdown]
# ## Exercise
#
# The cache is part of attention (`KVCache`, the `cache=` argument of `T5Attention` and
# `GPTAttention`). Fill in `lessons/exercises/attention.py` and check it with
#
#     pytest tests/test_attention.py --exercise attention
#
# Then answer from the numbers above: how many rows of attention does generating `N` tokens
# from a `P`-token prompt compute with the cache, and how many without?
