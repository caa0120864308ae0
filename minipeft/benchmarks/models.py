"""Benchmark: minipeft's T5 against transformers' T5 at t5-small shape, on this machine's CPU.

    python -m minipeft.benchmarks.models                    # full run: ~80 s on a quiet 2-core machine
    python -m minipeft.benchmarks.models --quick            # smoke run: ~30 s, few repetitions
    python -m minipeft.benchmarks.models --json out/models.json --profile

One process, one set of random weights: transformers builds a t5-small-shaped
``T5ForConditionalGeneration``, saves it to a temporary directory and ``minipeft.load_hf`` loads
it, so both models compute the same function (the max |Δ logits| is printed). Then:

    generate  greedy, 32 new tokens with the key/value cache; B=8, S=64; eval mode, no_grad
    train     B=8, S=64, T=16: zero_grad, forward, cross-entropy, backward, AdamW step (lr 1e-4);
              train mode, dropout 0.1 on both sides
    roofline  peak matmul GFLOP/s and memory bandwidth GB/s, measured in this run, next to what
              the training step and a decoding step achieve (formulas: ``train_flops``,
              ``decode_step_cost``)

How we time, and why:

* Warm up first. The first calls pay once for allocator growth, oneDNN/MKL kernel selection and
  lazy initialisation; a training loop does not pay that per step. (The warm-up times are kept
  in the JSON as ``first_call_s``.)
* Interleave. The machine is shared (2 cores, other jobs: ±10 %) and its load drifts slowly.
  Timing ours ×10 and then HF ×10 would measure each side under a different load; alternating
  ours, HF, HF, ours, … (ABBA, so neither side always runs second) puts both under the same drift.
* Medians. One repetition descheduled by another job inflates a mean, barely a median. The
  spread (min … max) is printed next to it, so a noisy run shows itself. The speed-up is given
  twice: the ratio of the medians, and the median of the per-repetition ratios (each pair of
  timings ran back to back, under the same load).
* Load. With 2 threads on 2 cores, any other busy process stalls the threads' barriers: whole
  runs slow down by up to 2× (all four figures together). The load average before and after is
  printed and kept in the JSON; compare runs only at similar load.
* Same work. Both sides get the same decoder input (``shift_right(labels)``) and the same loss,
  computed from the logits (what HF's ``labels=`` does inside); HF gets ``use_cache=False`` in
  training (otherwise its decoder fills a key/value cache nobody reads). Generation is checked to
  give the same 32 tokens on both sides. HF's ``min_new_tokens=32`` costs it a small logits
  processor per step that ours does not run; with random weights no row emits end-of-sequence,
  so ours runs all 32 steps too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import minipeft
from minipeft.packing import packed_for_decoding

# t5-small (transformers' T5Config defaults): 6 + 6 layers, C=512, H=8, D=64, F=2048, V=32128.
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                num_heads=8, feed_forward_proj="relu", dropout_rate=0.1, tie_word_embeddings=True)
BATCH, SOURCE, TARGET, NEW_TOKENS = 8, 64, 16, 32
LEARNING_RATE = 1e-4
BYTES_PER_PARAM = 4  # float32


@dataclass(frozen=True)
class Settings:
    warmup: int = 2        # untimed calls per function before timing
    reps: int = 10         # timed calls per function, interleaved
    probe_reps: int = 10   # timed calls of the matmul and bandwidth probes


QUICK = Settings(warmup=1, reps=2, probe_reps=3)


# ---- timing ------------------------------------------------------------------------------------

def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(functions: dict, settings: Settings) -> dict:
    """Time every function ``settings.reps`` times, alternating A B … B A … (ABBA) between them.

    Returns ``{name: {"median", "min", "max", "times", "first_call_s"}}`` in seconds.
    """
    names = list(functions)
    first_call = {name: [seconds(functions[name]) for _ in range(settings.warmup)] for name in names}
    times = {name: [] for name in names}
    for rep in range(settings.reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            times[name].append(seconds(functions[name]))
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "times": t,
                   "first_call_s": first_call[name][0] if first_call[name] else None}
            for name, t in times.items()}


def paired_ratio(times: dict, slow: str, fast: str) -> float:
    """Median over repetitions of time[slow] / time[fast], each pair timed back to back (same load)."""
    return statistics.median(s / f for s, f in zip(times[slow]["times"], times[fast]["times"]))


# ---- the two models, same weights ---------------------------------------------------------------

def build_models(workdir: Path):
    """A random t5-small-shaped HF model, saved and loaded into ours: identical weights."""
    import transformers
    transformers.logging.set_verbosity_error()
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**T5_SMALL, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    hf.save_pretrained(workdir)
    ours = minipeft.load_hf(workdir)
    return ours, hf.eval()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- roofline: what this machine can do, measured now -------------------------------------------

def peak_matmul_gflops(settings: Settings, n: int = 2048) -> float:
    """Median GFLOP/s of an n×n by n×n float32 matmul: 2·n³ FLOPs each."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    times = interleaved({"mm": lambda: torch.mm(a, b, out=out)}, Settings(warmup=1, reps=settings.probe_reps))["mm"]
    return 2 * n**3 / times["median"] / 1e9


def read_bandwidth_gbs(settings: Settings, megabytes: int = 256) -> float:
    """Median GB/s of summing a float32 tensor far larger than the caches: a pure read stream,
    like reading weights once per decoding step."""
    x = torch.randn(megabytes * 2**20 // BYTES_PER_PARAM)
    times = interleaved({"sum": lambda: x.sum()}, Settings(warmup=1, reps=settings.probe_reps))["sum"]
    return x.nbytes / times["median"] / 1e9


def matmul_weights(c) -> dict:
    """Entries of the weight matrices of one block, by where they are applied (c: T5Config)."""
    attention = c.d_model * c.num_heads * c.d_kv            # one of q, k, v, o: C × H·D
    ffn = c.d_model * c.d_ff * (3 if c.feed_forward_proj == "gated-gelu" else 2)
    return {"encoder_block": 4 * attention + ffn,            # self q k v o, FFN
            "decoder_block": 6 * attention + ffn,            # self q k v o, cross q o, FFN: on decoder tokens
            "cross_kv": 2 * attention,                       # cross k v: on encoder tokens
            "lm_head": c.d_model * c.vocab_size}


def train_flops(c, batch: int, source: int, target: int) -> float:
    """FLOPs of one training step (forward + backward) of T5, counting matmuls only.

    A weight matrix with P entries costs 2·P FLOPs per token in the forward pass; backward costs
    twice that (one matmul for the input gradient, one for the weight gradient), so

        train ≈ 3 × forward,   forward = 2·[ N_s·(L_e·P_enc_block + L_d·P_cross_kv)
                                             + N_t·(L_d·P_dec_block + C·V) ] + attention
        attention = Σ_layers 2·2·B·H·T_q·T_k·D   (Q Kᵀ and P V; encoder S×S, decoder T×T, cross T×S;
                                                   the causal mask is not exploited by SDPA with a float mask)

    with N_s = B·S encoder tokens, N_t = B·T decoder tokens. Left out: norms, softmax, dropout,
    ReLU, the loss, AdamW: memory-bound elementwise work, < 1 % of the FLOPs (but not of the time).
    """
    w = matmul_weights(c)
    enc_tokens, dec_tokens = batch * source, batch * target
    linear = 2 * (enc_tokens * (c.num_layers * w["encoder_block"] + c.num_decoder_layers * w["cross_kv"])
                  + dec_tokens * (c.num_decoder_layers * w["decoder_block"] + w["lm_head"]))
    qk_and_pv = 2 * 2 * batch * c.num_heads * c.d_kv
    attention = qk_and_pv * (c.num_layers * source * source
                             + c.num_decoder_layers * (target * target + target * source))
    return 3 * (linear + attention)


def decode_step_cost(c, batch: int, source: int, past: int) -> dict:
    """Bytes read and FLOPs of one greedy decoding step (one new token per row, ``past`` cached).

    Bytes: every weight the step multiplies by is read once from memory (it does not fit in cache):
        L_d·P_dec_block  self q k v o, cross q o, FFN (cross k v ran once, at the first step)
        + C·V            the LM head: the tied embedding, the whole matrix (every logit is computed)
        + B·C            the embedding rows of the B input tokens
        + L_d·2·B·H·D·(S + past)   the cached cross and self keys/values
    RMSNorm weights and the (32, H) position-bias table are left out (< 0.01 %).
    FLOPs: 2·B per weight entry, plus attention 2·2·B·H·D·(S + past + 1) per layer.
    """
    w = matmul_weights(c)
    weights = c.num_decoder_layers * w["decoder_block"] + w["lm_head"]
    cache = c.num_decoder_layers * 2 * batch * c.num_heads * c.d_kv * (source + past)
    return {"weight_bytes": weights * BYTES_PER_PARAM,
            "bytes": (weights + batch * c.d_model + cache) * BYTES_PER_PARAM,
            "flops": 2 * batch * weights
                     + c.num_decoder_layers * 2 * 2 * batch * c.num_heads * c.d_kv * (source + past + 1)}


def counted_train_flops(model, source_ids, decoder_ids, labels) -> float:
    """The same count by torch's own ``FlopCounterMode`` over one forward + backward: a check of
    ``train_flops`` (it counts matmuls, and SDPA's math kernel, which training uses)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        logits = model(input_ids=source_ids, decoder_input_ids=decoder_ids)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ---- the workloads ------------------------------------------------------------------------------

def training_step(model, forward, labels):
    """One step: zero_grad, logits = forward(), cross-entropy, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = forward()                                                       # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        optimizer.step()
    return step


def bench_generation(ours, hf, source_ids, settings: Settings) -> dict:
    """Greedy generation, and the encoder alone, so (generate - encode) / N is the decoding loop."""
    def ours_generate():
        return ours.generate(source_ids, max_new_tokens=NEW_TOKENS)

    def hf_generate():
        return hf.generate(source_ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           do_sample=False, num_beams=1)

    with torch.no_grad():
        ours_tokens, hf_tokens = ours_generate(), hf_generate()[:, 1:]          # HF returns the start token too
        times = interleaved({"ours": ours_generate, "hf": hf_generate,
                             "ours_encode": lambda: ours.encode(source_ids),
                             "hf_encode": lambda: hf.encoder(input_ids=source_ids)}, settings)
    same = ours_tokens.shape == hf_tokens.shape and torch.equal(ours_tokens, hf_tokens)
    return {"times": times, "ours_new_tokens": ours_tokens.shape[1], "hf_new_tokens": hf_tokens.shape[1],
            "identical_tokens": bool(same)}


def bench_training(ours, hf, source_ids, labels, settings: Settings) -> dict:
    decoder_ids = ours.shift_right(labels)  # what HF's _shift_right gives: start token 0, then labels
    ours.train(), hf.train()
    steps = {"ours": training_step(ours, lambda: ours(input_ids=source_ids, decoder_input_ids=decoder_ids), labels),
             "hf": training_step(hf, lambda: hf(input_ids=source_ids, decoder_input_ids=decoder_ids,
                                                use_cache=False).logits, labels)}
    return {"times": interleaved(steps, settings), "steps": steps}


# ---- profiling (--profile) ----------------------------------------------------------------------

def profile_table(fn, title: str, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile
    fn()                                                            # warm: profile a steady-state call
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"\n=== {title} ===\n{table}"


def decoding_steps_at(ours, hf, source_ids, past: int):
    """Two callables, each running ONE decoding step with ``past`` tokens already cached."""
    import transformers
    state, tokens = ours.start_decoding(source_ids)
    for _ in range(past):
        tokens = ours.decode_step(state, tokens).argmax(-1, keepdim=True)
    encoder_outputs = hf.get_encoder()(input_ids=source_ids)
    cache = transformers.EncoderDecoderCache(transformers.DynamicCache(), transformers.DynamicCache())
    hf_tokens = torch.zeros(source_ids.shape[0], 1, dtype=torch.long)
    for _ in range(past):
        logits = hf(encoder_outputs=encoder_outputs, decoder_input_ids=hf_tokens, past_key_values=cache,
                    use_cache=True).logits
        hf_tokens = logits[:, -1].argmax(-1, keepdim=True)
    # Cache lengths grow by one per call; profiling two calls (warm + measured) moves past by 2: negligible.
    return (lambda: ours.decode_step(state, tokens),
            lambda: hf(encoder_outputs=encoder_outputs, decoder_input_ids=hf_tokens, past_key_values=cache,
                       use_cache=True))


def profile_all(ours, hf, source_ids, training) -> str:
    parts = [profile_table(training["steps"]["ours"], "training step: ours"),
             profile_table(training["steps"]["hf"], "training step: HF")]
    ours.eval(), hf.eval()
    # as generate() runs a step: in inference mode, from the weights packed for this batch size
    with torch.inference_mode(), packed_for_decoding(ours, rows=source_ids.shape[0]):
        ours_step, hf_step = decoding_steps_at(ours, hf, source_ids, past=NEW_TOKENS // 2)
        parts += [profile_table(ours_step, f"one decoding step (past={NEW_TOKENS // 2}): ours"),
                  profile_table(hf_step, f"one decoding step (past={NEW_TOKENS // 2}): HF model call")]
    return "\n".join(parts)


# ---- report ------------------------------------------------------------------------------------

def spread(t: dict) -> str:
    return f"{t['median'] * 1e3:8.1f} ms  ({t['min'] * 1e3:.0f} … {t['max'] * 1e3:.0f})"


def run(settings: Settings, profile: bool) -> tuple[dict, str]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    # The probes run before and after the workloads; the roofline uses the better of the two
    # (a peak is what the machine can do, and a busy spell only ever lowers it).
    probes_before = (peak_matmul_gflops(settings), read_bandwidth_gbs(settings))

    with tempfile.TemporaryDirectory() as workdir:
        ours, hf = build_models(Path(workdir))
    config = ours.config
    source_ids = torch.randint(2, config.vocab_size, (BATCH, SOURCE))   # ids ≥ 2: no pad, no EOS
    labels = torch.randint(2, config.vocab_size, (BATCH, TARGET))
    with torch.no_grad():
        decoder_ids = ours.shift_right(labels)
        max_delta = (ours(input_ids=source_ids, decoder_input_ids=decoder_ids)
                     - hf(input_ids=source_ids, decoder_input_ids=decoder_ids).logits).abs().max().item()

    generation = bench_generation(ours, hf, source_ids, settings)        # before training changes the weights
    ours.train()
    counted_flops = counted_train_flops(ours, source_ids, decoder_ids, labels)
    training = bench_training(ours, hf, source_ids, labels, settings)
    profiles = profile_all(ours, hf, source_ids, training) if profile else ""
    probes_after = (peak_matmul_gflops(settings), read_bandwidth_gbs(settings))
    peak, bandwidth = max(probes_before[0], probes_after[0]), max(probes_before[1], probes_after[1])

    flops = train_flops(config, BATCH, SOURCE, TARGET)
    gen = generation["times"]
    step_ms = {name: (gen[name]["median"] - gen[f"{name}_encode"]["median"]) / NEW_TOKENS * 1e3
               for name in ("ours", "hf")}
    # The average decoding step has NEW_TOKENS / 2 tokens in its self-attention cache.
    step = decode_step_cost(config, BATCH, SOURCE, past=NEW_TOKENS // 2)
    bound_ms = max(step["bytes"] / (bandwidth * 1e9), step["flops"] / (peak * 1e9)) * 1e3
    train_t = training["times"]
    results = {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": asdict(settings),
        "shape": {"batch": BATCH, "source": SOURCE, "target": TARGET, "new_tokens": NEW_TOKENS, **T5_SMALL},
        "params": {"ours": count_params(ours), "hf": count_params(hf)},
        "max_abs_logit_delta": max_delta,
        "roofline": {"peak_matmul_gflops": peak, "read_bandwidth_gbs": bandwidth,
                     "probes_before": probes_before, "probes_after": probes_after},
        "train": {"ours": train_t["ours"], "hf": train_t["hf"],
                  "speedup_hf_over_ours": train_t["hf"]["median"] / train_t["ours"]["median"],
                  "speedup_paired": paired_ratio(train_t, "hf", "ours"),
                  "flops_per_step": flops, "flops_per_step_flop_counter": counted_flops,
                  "ours_gflops": flops / train_t["ours"]["median"] / 1e9,
                  "hf_gflops": flops / train_t["hf"]["median"] / 1e9},
        "generate": {**{k: v for k, v in generation.items() if k != "times"}, **gen,
                     "speedup_hf_over_ours": gen["hf"]["median"] / gen["ours"]["median"],
                     "speedup_paired": paired_ratio(gen, "hf", "ours"),
                     "ours_tokens_per_s": BATCH * NEW_TOKENS / gen["ours"]["median"],
                     "hf_tokens_per_s": BATCH * NEW_TOKENS / gen["hf"]["median"],
                     "ours_step_ms": step_ms["ours"], "hf_step_ms": step_ms["hf"],
                     "step_bytes": step["bytes"], "step_weight_bytes": step["weight_bytes"],
                     "step_flops": step["flops"], "step_bound_ms": bound_ms},
    }
    return results, profiles


def report(r: dict) -> str:
    t, g, roof = r["train"], r["generate"], r["roofline"]
    peak = roof["peak_matmul_gflops"]
    ok = "yes" if g["identical_tokens"] else "NO"
    lines = [
        f"minipeft vs transformers, t5-small shape, random weights; torch {r['machine']['torch']}, "
        f"{r['machine']['threads']} threads; load avg {r['machine']['loadavg_before'][0]:.1f} → "
        f"{r['machine']['loadavg_after'][0]:.1f}; {r['settings']['reps']} interleaved reps, medians (min … max)",
        f"params: ours {r['params']['ours']:,}  HF {r['params']['hf']:,};  "
        f"max |Δ logits| = {r['max_abs_logit_delta']:.2e}",
        "",
        f"roofline   peak matmul (2048² fp32) {peak:7.1f} GFLOP/s    "
        f"read bandwidth {roof['read_bandwidth_gbs']:.1f} GB/s    (best of before/after: "
        f"{roof['probes_before'][0]:.0f}/{roof['probes_after'][0]:.0f} GFLOP/s, "
        f"{roof['probes_before'][1]:.1f}/{roof['probes_after'][1]:.1f} GB/s)",
        "",
        f"train step B={BATCH} S={SOURCE} T={TARGET}, AdamW, dropout 0.1  ({t['flops_per_step'] / 1e9:.1f} GFLOP/step; "
        f"torch FlopCounterMode: {t['flops_per_step_flop_counter'] / 1e9:.1f})",
        f"  ours   {spread(t['ours'])}   {t['ours_gflops']:6.1f} GFLOP/s = {t['ours_gflops'] / peak:5.1%} of peak",
        f"  HF     {spread(t['hf'])}   {t['hf_gflops']:6.1f} GFLOP/s = {t['hf_gflops'] / peak:5.1%} of peak",
        f"  ours is {t['speedup_hf_over_ours']:.2f}× as fast as HF (HF median / our median; "
        f"median of per-rep HF/ours: {t['speedup_paired']:.2f}×)",
        "",
        f"generate greedy, {NEW_TOKENS} new tokens, KV cache, B={BATCH} S={SOURCE}; "
        f"new tokens: ours {g['ours_new_tokens']}, HF {g['hf_new_tokens']}, identical: {ok}",
        f"  ours   {spread(g['ours'])}   {g['ours_tokens_per_s']:6.1f} tokens/s   "
        f"encoder {g['ours_encode']['median'] * 1e3:.0f} ms, {g['ours_step_ms']:.1f} ms/step",
        f"  HF     {spread(g['hf'])}   {g['hf_tokens_per_s']:6.1f} tokens/s   "
        f"encoder {g['hf_encode']['median'] * 1e3:.0f} ms, {g['hf_step_ms']:.1f} ms/step",
        f"  ours is {g['speedup_hf_over_ours']:.2f}× as fast as HF (HF median / our median; "
        f"median of per-rep HF/ours: {g['speedup_paired']:.2f}×)",
        f"  step bound: {g['step_bytes'] / 1e6:.0f} MB read ({g['step_weight_bytes'] / 1e6:.0f} MB weights) / "
        f"{roof['read_bandwidth_gbs']:.1f} GB/s, {g['step_flops'] / 1e9:.2f} GFLOP / peak → "
        f"{g['step_bound_ms']:.1f} ms;  ours reaches {g['step_bound_ms'] / g['ours_step_ms']:.0%} of it, "
        f"HF {g['step_bound_ms'] / g['hf_step_ms']:.0%}",
    ]
    if r["machine"]["loadavg_before"][0] > 1.0:   # after the run, the load includes this process's own threads
        lines.append("NOTE: other processes were using the CPU when this run started: times may be inflated")
    if g["ours_new_tokens"] != NEW_TOKENS:
        lines.append(f"  NOTE: ours stopped after {g['ours_new_tokens']} tokens (every row emitted end-of-sequence)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run under a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler tables of one training step and one decoding step")
    args = parser.parse_args(argv)
    results, profiles = run(QUICK if args.quick else Settings(), args.profile)
    print(report(results))
    if profiles:
        print(profiles)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
