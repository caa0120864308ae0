"""Print the parity figures of the README: our models vs `transformers` with the same random weights.

    python tests/parity_report.py        (needs the test extras: pip install -r requirements-test.txt)

The same comparisons as tests/test_t5.py and tests/test_gpt.py (which assert them), printed as a
table: max |Δ logits| in float32 without and with padding, and whether greedy / beam-search ids
are identical.
"""

import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: minipeft
import minipeft  # noqa: E402
from reference_models import FLAN_T5_SMALL, GPT2_SMALL_TEST, T5_SMALL, hf_gpt2, hf_t5

transformers.logging.set_verbosity_error()


def t5_row(name, hf, ours):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 32000, (3, 13), generator=generator)
    decoder_ids = torch.randint(2, 32000, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:], mask[2, 4:] = 0, 0
    with torch.no_grad():
        deltas = [(ours(input_ids=ids, decoder_input_ids=decoder_ids, attention_mask=m)
                   - hf(input_ids=ids, decoder_input_ids=decoder_ids, attention_mask=m).logits).abs().max().item()
                  for m in (None, mask)]
    mask = mask.flip(1)  # left padding for generation, as batched prompts are padded
    greedy = torch.equal(ours.generate(ids, max_new_tokens=8, attention_mask=mask),
                         hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)[:, 1:])
    beam = torch.equal(ours.generate(ids, max_new_tokens=6, attention_mask=mask, num_beams=3),
                       hf.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=3, do_sample=False)[:, 1:])
    return name, *deltas, greedy, beam


def gpt2_row(hf, ours):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (3, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:], mask[2, 5:] = 0, 0  # right padding: transformers' forward numbers positions 0, 1, … regardless
    with torch.no_grad():
        deltas = [(ours(input_ids=ids, attention_mask=m) - hf(input_ids=ids, attention_mask=m).logits)
                  [mask.bool() if m is not None else slice(None)].abs().max().item() for m in (None, mask)]
    mask = mask.flip(1)  # left padding for generation, as batched prompts are padded
    greedy = torch.equal(ours.generate(ids, max_new_tokens=8, attention_mask=mask),
                         hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                     pad_token_id=hf.config.eos_token_id)[:, ids.shape[1]:])
    return "gpt2 (3 layers, C=128)", *deltas, greedy, None


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, untied in (("t5-small (v1.0, ReLU, tied)", T5_SMALL, False),
                                     ("flan-t5-small (gated-GELU, untied)", FLAN_T5_SMALL, True)):
            hf = hf_t5(transformers, untied_head=untied, **config)
            hf.save_pretrained(f"{tmp}/{len(rows)}")
            rows.append(t5_row(name, hf, minipeft.load_hf(f"{tmp}/{len(rows)}")))
        hf = hf_gpt2(transformers, eos_token_id=999, bos_token_id=999, **GPT2_SMALL_TEST)
        hf.save_pretrained(f"{tmp}/gpt2")
        rows.append(gpt2_row(hf, minipeft.load_hf(f"{tmp}/gpt2")))
    print("| model (random weights) | max abs Δ logits | with padding | greedy ids equal | beam ids equal |")
    print("|---|---|---|---|---|")
    for name, plain, padded, greedy, beam in rows:
        print(f"| {name} | {plain:.1e} | {padded:.1e} | {'yes' if greedy else 'NO'} | "
              f"{'-' if beam is None else 'yes' if beam else 'NO'} |")


if __name__ == "__main__":
    main()
