"""Benchmark: the PEFT methods, ours against `peft` on `transformers`, at t5-small shape, on this CPU.

    python -m minipeft.benchmarks.methods                    # full run: a few minutes on a quiet 2-core machine
    python -m minipeft.benchmarks.methods --quick            # smoke run, few repetitions
    python -m minipeft.benchmarks.methods --json out/methods.json

One set of random t5-small weights: transformers builds the model and saves it to a temporary
directory; every case loads a fresh copy on each side (``minipeft.load_hf`` and
``from_pretrained``), so both sides start from the same function.

Training step, per method: B=8, S=64, T=16, train mode (dropout 0.1, t5-small's), zero_grad,
forward, cross-entropy over the T target positions, backward, and ``torch.optim.AdamW`` (lr 1e-4)
over the trainable parameters only, the same on both sides:

    case            ours                                                  peft
    lora            get_peft(m, "lora", r=8, lora_alpha=8)  (q, v)        LoraConfig(r=8, lora_alpha=8, target_modules=["q", "v"])
    prompt          get_peft(m, "prompt", num_virtual_tokens=20)          PromptTuningConfig(num_virtual_tokens=20)
    prefix          get_peft(m, "prefix", num_virtual_tokens=20,          PrefixTuningConfig(num_virtual_tokens=20)
                             prefix_on=("decoder",), prefix_projection=False)   (peft prefixes the decoder only)
    prefix, paper   get_peft(m, "prefix", num_virtual_tokens=20)          no counterpart: the paper's full setting (every
                                                                          attention, MLP reparametrisation); its cost is
                                                                          given relative to our peft-configuration prefix
A method that is not registered (yet) is reported as "not available".

Inference, ours only: one forward pass (eval, no_grad, same shapes) of the base model against
merged LoRA (F6.3: should cost the same, ratio ≈ 1), unmerged LoRA, and Houlsby and Pfeiffer
adapters (the extra latency seed 001 attributes to adapters).

Inference runs ``INFERENCE_REPS_FACTOR`` times the repetitions of training: the differences it
measures are a few percent, as large as one run's noise on a shared CPU (merged LoRA read 0.987×
and 1.029× the base in two 10-repetition runs on 2026-12-06), and a forward pass is cheap.

Timing: the helpers of ``minipeft.benchmarks.models`` (warm-up calls, ABBA interleaving of the
sides, medians with min … max, the median of per-repetition ratios, the load average before and
after); see that module for why.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

import minipeft
from minipeft.methods import count_parameters, get_peft, method_names

from .models import BATCH, LEARNING_RATE, QUICK, SOURCE, T5_SMALL, TARGET, Settings, interleaved, paired_ratio, spread

NUM_VIRTUAL_TOKENS = 20
LORA = dict(r=8, lora_alpha=8, target_modules=["q", "v"])
INFERENCE_REPS_FACTOR = 3   # inference repetitions per training repetition (see the docstring)
PREFIX_PEFT_CONFIGURATION = dict(num_virtual_tokens=NUM_VIRTUAL_TOKENS, prefix_on=("decoder",), prefix_projection=False)
PREFIX_PAPER = dict(num_virtual_tokens=NUM_VIRTUAL_TOKENS)


# ---- the two sides of a case ---------------------------------------------------------------------

def ours_with(directory: Path, method: str | None, options: dict):
    """Our model from the checkpoint, with ``method`` attached (None: the bare model)."""
    model = minipeft.load_hf(directory)
    return model if method is None else get_peft(model, method, **options)


def peft_with(directory: Path, config_name: str, options: dict):
    import peft
    import transformers
    model = transformers.T5ForConditionalGeneration.from_pretrained(directory)
    config = getattr(peft, config_name)(task_type="SEQ_2_SEQ_LM", **options)
    return peft.get_peft_model(model, config)


def availability(method: str, options: dict) -> str | None:
    """None when ``get_peft(…, method, **options)`` can be built, else why not."""
    if method not in method_names():
        return f"method {method!r} is not registered"
    try:
        get_peft(minipeft.T5Model(minipeft.T5Config(vocab_size=8, d_model=8, d_kv=2, d_ff=8, num_layers=1,
                                                    num_heads=4, relative_attention_num_buckets=4)), method, **options)
    except (TypeError, ValueError) as error:
        return f"{method} {options}: {error}"
    return None


def training_step(module, forward, labels):
    """zero_grad, logits = forward() (B, T, V), cross-entropy, backward, AdamW over the trainable parameters."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=LEARNING_RATE)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = forward()                                                       # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        optimizer.step()
    return step


def copy_lora(ours, theirs) -> int:
    """Give both sides the same non-zero LoRA tensors: ours random, copied into peft's by name
    (peft's ``…SelfAttention.q.lora_A.default.weight`` → ours through convert.py's key map)."""
    from minipeft.convert import t5_key_map
    key_map = t5_key_map(ours.config)
    ours_tensors = dict(ours.named_parameters())
    generator = torch.Generator().manual_seed(0)
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if ".lora_" not in name:
                continue
            module, factor = name.removeprefix("base_model.model.").removesuffix(".default.weight").rsplit(".", 1)
            mine = ours_tensors["model." + key_map[module + ".weight"].removesuffix(".weight") + f".{factor}.weight"]
            mine.copy_(torch.randn(mine.shape, generator=generator) * 0.02)
            param.copy_(mine)
            copied += 1
    if copied != len(ours.trained_state_dict()):
        raise RuntimeError(f"copied {copied} LoRA tensors into peft, but ours has {len(ours.trained_state_dict())}")
    return copied


# ---- the cases --------------------------------------------------------------------------------------

def bench_training_case(directory, name, ours_spec, peft_spec, extra_ours, inputs, settings) -> dict:
    """Time our step against peft's (and, if given, extra variants of ours), interleaved."""
    source_ids, decoder_ids, labels = inputs
    missing = availability(*ours_spec) or next((availability(*spec) for spec in extra_ours.values()
                                                if availability(*spec)), None)
    if missing:
        return {"case": name, "available": False, "why": missing}
    sides = {"ours": ours_with(directory, *ours_spec)}
    sides.update({label: ours_with(directory, *spec) for label, spec in extra_ours.items()})
    sides["peft"] = peft_with(directory, *peft_spec)
    result = {"case": name, "available": True,
              "trainable": {label: count_parameters(model)[0] for label, model in sides.items()}}
    if ours_spec[0] == "lora":
        copy_lora(sides["ours"], sides["peft"])
        for model in sides.values():
            model.eval()
        with torch.no_grad():
            theirs = sides["peft"](input_ids=source_ids, decoder_input_ids=decoder_ids, use_cache=False).logits
            with sides["peft"].disable_adapter():
                base = sides["peft"](input_ids=source_ids, decoder_input_ids=decoder_ids, use_cache=False).logits
            ours = sides["ours"](input_ids=source_ids, decoder_input_ids=decoder_ids)
        result["max_abs_logit_delta"] = (ours - theirs).abs().max().item()
        result["lora_effect_max_abs"] = (theirs - base).abs().max().item()   # the update is not negligible
    steps = {}
    for label, model in sides.items():
        model.train()
        if label == "peft":
            # peft's prefix rides on the key/value cache; everything else gets use_cache=False as in models.py
            cache = {} if peft_spec[0] == "PrefixTuningConfig" else {"use_cache": False}
            forward = (lambda m=model, c=cache: m(input_ids=source_ids, decoder_input_ids=decoder_ids, **c).logits)
        else:
            forward = (lambda m=model: m(input_ids=source_ids, decoder_input_ids=decoder_ids))
        steps[label] = training_step(model, forward, labels)
    times = interleaved(steps, settings)
    result["times"] = times
    result["speedup_peft_over_ours"] = times["peft"]["median"] / times["ours"]["median"]
    result["speedup_paired"] = paired_ratio(times, "peft", "ours")
    for label in extra_ours:
        result[f"{label}_over_ours"] = paired_ratio(times, label, "ours")
    del sides, steps
    gc.collect()
    return result


def bench_inference(directory, inputs, settings) -> dict:
    """One forward pass, eval, no_grad: the base model against LoRA (merged, unmerged) and adapters."""
    source_ids, decoder_ids, _ = inputs
    models = {"base": ours_with(directory, None, {}),
              "lora_merged": ours_with(directory, "lora", LORA),
              "lora_unmerged": ours_with(directory, "lora", LORA),
              "adapter_houlsby": ours_with(directory, "adapter", dict(adapter_placement="houlsby")),
              "adapter_pfeiffer": ours_with(directory, "adapter", dict(adapter_placement="pfeiffer"))}
    with torch.no_grad():
        for label in ("lora_merged", "lora_unmerged"):   # the same trained-looking update (B ≠ 0) on both
            generator = torch.Generator().manual_seed(0)
            for layer in models[label].lora_layers():
                for factor in (layer.lora_A.weight, layer.lora_B.weight):
                    factor.copy_(torch.randn(factor.shape, generator=generator) * 0.02)
        models["lora_merged"].merge()
        logits = {label: model.eval()(input_ids=source_ids, decoder_input_ids=decoder_ids)
                  for label, model in models.items()}
        forwards = {label: (lambda m=model: m(input_ids=source_ids, decoder_input_ids=decoder_ids))
                    for label, model in models.items()}
        times = interleaved(forwards, replace(settings, reps=settings.reps * INFERENCE_REPS_FACTOR))
    result = {"times": times, "reps": settings.reps * INFERENCE_REPS_FACTOR,
              "merged_vs_unmerged_max_abs_delta": (logits["lora_merged"] - logits["lora_unmerged"]).abs().max().item(),
              "adapters_at_init_max_abs_delta": max((logits[k] - logits["base"]).abs().max().item()
                                                    for k in ("adapter_houlsby", "adapter_pfeiffer"))}
    result["ratio_to_base"] = {label: paired_ratio(times, label, "base") for label in models if label != "base"}
    del models
    gc.collect()
    return result


def run(settings: Settings, shape: dict = T5_SMALL) -> dict:
    """Every case at ``shape`` (transformers T5Config arguments; t5-small unless a test shrinks it)."""
    import transformers
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    vocab = shape["vocab_size"]
    source_ids = torch.randint(2, vocab, (BATCH, SOURCE))            # ids ≥ 2: no pad, no EOS
    labels = torch.randint(2, vocab, (BATCH, TARGET))
    decoder_ids = torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), labels[:, :-1]], dim=1)  # shift_right
    inputs = (source_ids, decoder_ids, labels)
    with tempfile.TemporaryDirectory() as workdir:
        directory = Path(workdir)
        transformers.T5ForConditionalGeneration(transformers.T5Config(
            **shape, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).save_pretrained(directory)
        training = [
            bench_training_case(directory, "lora r=8 q,v", ("lora", LORA), ("LoraConfig", LORA), {}, inputs, settings),
            bench_training_case(directory, f"prompt m={NUM_VIRTUAL_TOKENS}",
                                ("prompt", dict(num_virtual_tokens=NUM_VIRTUAL_TOKENS)),
                                ("PromptTuningConfig", dict(num_virtual_tokens=NUM_VIRTUAL_TOKENS)), {}, inputs, settings),
            bench_training_case(directory, f"prefix m={NUM_VIRTUAL_TOKENS} (peft's setting)",
                                ("prefix", PREFIX_PEFT_CONFIGURATION),
                                ("PrefixTuningConfig", dict(num_virtual_tokens=NUM_VIRTUAL_TOKENS)),
                                {"ours_paper": ("prefix", PREFIX_PAPER)}, inputs, settings),
        ]
        inference = bench_inference(directory, inputs, settings)
    return {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": asdict(settings),
        "shape": {"batch": BATCH, "source": SOURCE, "target": TARGET, **shape},
        "training": training,
        "inference": inference,
    }


# ---- report -------------------------------------------------------------------------------------

def report(r: dict) -> str:
    machine = r["machine"]
    lines = [f"PEFT methods, ours vs peft on transformers; t5-small shape, random weights; torch {machine['torch']}, "
             f"{machine['threads']} threads; load avg {machine['loadavg_before'][0]:.1f} → "
             f"{machine['loadavg_after'][0]:.1f}; {r['settings']['reps']} interleaved reps, medians (min … max)",
             "",
             f"training step B={BATCH} S={SOURCE} T={TARGET}, dropout 0.1, AdamW over the trainable parameters",
             f"  {'case':<34} {'trainable ours / peft':>24}   {'ours':>22}   {'peft':>22}   peft/ours (paired)"]
    for case in r["training"]:
        if not case["available"]:
            lines.append(f"  {case['case']:<34} not available ({case['why']})")
            continue
        t, n = case["times"], case["trainable"]
        lines.append(f"  {case['case']:<34} {n['ours']:>11,} / {n['peft']:<11,}  {spread(t['ours'])}  "
                     f"{spread(t['peft'])}   {case['speedup_peft_over_ours']:.2f}× ({case['speedup_paired']:.2f}×)")
        if "max_abs_logit_delta" in case:
            lines.append(f"  {'':<34} same LoRA tensors on both sides: max |Δ logits| = "
                         f"{case['max_abs_logit_delta']:.1e} (the update itself moves them by "
                         f"{case['lora_effect_max_abs']:.2f})")
        if "ours_paper" in t:
            lines.append(f"  {'prefix, paper setting (ours)':<34} {n['ours_paper']:>11,} {'':13} "
                         f"{spread(t['ours_paper'])}   cost {case['ours_paper_over_ours']:.2f}× our peft-setting prefix")
    inference = r["inference"]
    t = inference["times"]
    lines += ["", f"inference: one forward pass, eval, no_grad, B={BATCH} S={SOURCE} T={TARGET}  (ours; "
                  f"{inference['reps']} interleaved reps)",
              f"  {'base model':<20} {spread(t['base'])}"]
    for label, ratio in inference["ratio_to_base"].items():
        lines.append(f"  {label:<20} {spread(t[label])}   {ratio:.3f}× base (paired)")
    lines.append(f"  merged vs unmerged LoRA: max |Δ logits| = {inference['merged_vs_unmerged_max_abs_delta']:.1e}; "
                 f"adapters at initialisation vs base: {inference['adapters_at_init_max_abs_delta']:.1e}")
    if machine["loadavg_before"][0] > 1.0:
        lines.append("NOTE: other processes were using the CPU when this run started: times may be inflated")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else Settings())
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
