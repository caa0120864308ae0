"""Proxy-tuning (F9.1): s̃ = s_M + s_M⁺ − s_M⁻ at every decoding step, the three models side by side.

There is no reference implementation in `transformers` or `peft`; the checks are the formula itself
(against the three models called separately) and decoding against teacher-forced recomputation.

Exercise: ``pytest tests/test_proxy.py --exercise proxy`` runs these against your copy.
"""

import dataclasses

import pytest
import torch

import minipeft
from minipeft import ProxyTuned
from minipeft.methods import get_peft

import tiny_models
from tiny_models import GPT_TINY, T5_TINY, batch


def trio(kind):
    """(M, M⁺, M⁻): three different tiny models of one vocabulary; M⁺ is M⁻ with LoRA B ≠ 0."""
    base = tiny_models.tiny(kind, seed=0, wide=True)
    anti_expert = tiny_models.tiny(kind, seed=1, wide=True)
    expert = get_peft(tiny_models.tiny(kind, seed=1, wide=True), "lora", r=2,
                      target_modules=["q", "v"] if kind == "t5" else ["c_attn"])
    with torch.no_grad():
        for name, param in expert.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    return base, expert.eval(), anti_expert


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_scores_are_the_base_plus_alpha_times_expert_minus_anti_expert(kind, alpha):
    base, expert, anti_expert = trio(kind)
    inputs = batch(kind)
    with torch.no_grad():
        steered = ProxyTuned(base, expert, anti_expert, alpha=alpha)(**inputs)
        expected = base(**inputs) + alpha * (expert(**inputs) - anti_expert(**inputs))
    assert steered.shape == expected.shape
    assert torch.allclose(steered, expected, atol=1e-6)
    assert (expert(**inputs) - anti_expert(**inputs)).abs().max() > 1e-2      # the steer is not zero


def recompute_greedy(proxy, kind, input_ids, steps):
    """Greedy decoding the slow way: the whole sequence through every model, every step."""
    if kind == "t5":
        decoded = torch.zeros(input_ids.shape[0], 1, dtype=torch.long)            # the start token, pad = 0
        for _ in range(steps):
            scores = proxy(input_ids=input_ids, decoder_input_ids=decoded)[:, -1]
            decoded = torch.cat([decoded, scores.argmax(-1, keepdim=True)], 1)
        return decoded[:, 1:]
    sequence = input_ids
    for _ in range(steps):
        scores = proxy(input_ids=sequence)[:, -1]
        sequence = torch.cat([sequence, scores.argmax(-1, keepdim=True)], 1)
    return sequence[:, input_ids.shape[1]:]


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_cached_greedy_decoding_equals_the_argmax_of_the_recomputed_steered_scores(kind):
    base, expert, anti_expert = trio(kind)
    proxy = ProxyTuned(base, expert, anti_expert)
    input_ids = batch(kind)["input_ids"]
    generated = proxy.generate(input_ids, max_new_tokens=6)
    with torch.no_grad():
        recomputed = recompute_greedy(proxy, kind, input_ids, generated.shape[1])
    tiny_models.assert_same_until_eos(recomputed, generated, eos=1)
    assert not torch.equal(generated, base.generate(input_ids, max_new_tokens=6)[:, :generated.shape[1]])


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_an_expert_that_learned_nothing_leaves_the_base_as_it_was(kind):
    """M⁺ = M⁻ makes the steer 0; alpha = 0 switches it off: both decode as M alone."""
    base, expert, anti_expert = trio(kind)
    input_ids = batch(kind)["input_ids"]
    alone = base.generate(input_ids, max_new_tokens=6)
    assert torch.equal(ProxyTuned(base, anti_expert, anti_expert).generate(input_ids, max_new_tokens=6), alone)
    assert torch.equal(ProxyTuned(base, expert, anti_expert, alpha=0.0).generate(input_ids, max_new_tokens=6), alone)


def test_a_prompt_tuned_expert_decodes_through_its_own_input_seam():
    """The expert's soft prompt goes into its encoder only; decoding still matches recomputation."""
    base, _, anti_expert = trio("t5")
    expert = get_peft(tiny_models.tiny("t5", seed=1, wide=True), "prompt", num_virtual_tokens=3)
    with torch.no_grad():
        expert.prompt.normal_(0, 1.0, generator=torch.Generator().manual_seed(4))
    proxy = ProxyTuned(base, expert.eval(), anti_expert)
    input_ids = batch("t5")["input_ids"]
    generated = proxy.generate(input_ids, max_new_tokens=5)
    with torch.no_grad():
        recomputed = recompute_greedy(proxy, "t5", input_ids, generated.shape[1])
    tiny_models.assert_same_until_eos(recomputed, generated, eos=1)


def test_padded_prompts_decode_like_each_row_alone():
    base, expert, anti_expert = trio("t5")
    proxy = ProxyTuned(base, expert, anti_expert)
    ids = batch("t5")["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    together = proxy.generate(ids, max_new_tokens=5, attention_mask=mask)
    alone = proxy.generate(ids[1:, :4], max_new_tokens=5)
    assert torch.equal(together[1, :alone.shape[1]], alone[0])


def test_sampling_draws_from_the_steered_softmax():
    base, expert, anti_expert = trio("gpt2")
    proxy = ProxyTuned(base, expert, anti_expert)
    ids = batch("gpt2")["input_ids"]
    greedy = proxy.generate(ids, max_new_tokens=5)
    assert torch.equal(proxy.generate(ids, max_new_tokens=5, do_sample=True, top_k=1), greedy)
    first = proxy.generate(ids, max_new_tokens=5, do_sample=True, generator=torch.Generator().manual_seed(0))
    again = proxy.generate(ids, max_new_tokens=5, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again)


def test_models_of_another_vocabulary_or_kind_are_refused_by_name():
    t5, gpt = tiny_models.tiny("t5"), tiny_models.tiny("gpt2")
    wider = minipeft.T5Model(dataclasses.replace(T5_TINY, vocab_size=80)).eval()
    with pytest.raises(ValueError, match=r"vocab_size differ: base 64, expert 80, anti_expert 64"):
        ProxyTuned(t5, wider, t5)
    with pytest.raises(ValueError, match="must be of one kind.*expert: decoder-only"):
        ProxyTuned(t5, gpt, t5)
    other_eos = minipeft.GPT(dataclasses.replace(GPT_TINY, eos_token_id=2)).eval()
    with pytest.raises(ValueError, match="eos_token_id differ"):
        ProxyTuned(gpt, gpt, other_eos)


def test_bad_generation_arguments_are_refused():
    base, expert, anti_expert = trio("gpt2")
    proxy = ProxyTuned(base, expert, anti_expert)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        proxy.generate(batch("gpt2")["input_ids"], max_new_tokens=0)
    with pytest.raises(ValueError, match=r"input_ids must be \(B, S\)"):
        proxy.generate(torch.tensor([5, 6, 7]), max_new_tokens=2)
    with pytest.raises(ValueError, match="positions"):
        proxy.generate(torch.randint(2, 60, (1, 30)), max_new_tokens=10)          # 40 > n_positions = 32
