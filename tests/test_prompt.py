"""Prompt tuning (F2): the soft prompt, its count, its inits, generation, and parity with `peft`.

Exercise: ``pytest tests/test_prompt.py --exercise methods.prompt`` runs these against your copy.
"""

import copy

import pytest
import torch

import minipeft
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained

from conftest import reference
from reference_models import hf_gpt2, hf_t5
import tiny_models
from tiny_models import assert_same_until_eos, padded_batch as batch


def tiny(kind, seed=0):
    return tiny_models.tiny(kind, seed, decoder_layers=2, wide=True)


# ---- the formula ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_prompt_is_prepended_to_the_input_embeddings_and_the_mask(kind):
    """F2.1  X' = [P; X]; the mask gets m ones in front."""
    model = tiny(kind)
    peft = get_peft(model, "prompt", num_virtual_tokens=3)
    ids = torch.randint(2, 64, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    inputs = peft.model_inputs(input_ids=ids, attention_mask=mask)
    assert inputs.get("input_ids") is None
    torch.testing.assert_close(inputs["inputs_embeds"][:, :3], peft.prompt.expand(2, 3, 16))
    torch.testing.assert_close(inputs["inputs_embeds"][:, 3:], model.embed(ids))
    assert inputs["attention_mask"].tolist() == [[1] * 8, [1] * 6 + [0, 0]]


def test_parameter_count_is_m_times_C_including_the_t5_xxl_example():
    """F2.1  m·C trainable parameters; T5-XXL's width C = 4096 with m = 5 gives 20,480."""
    wide = minipeft.T5Config(vocab_size=8, d_model=4096, d_kv=2, d_ff=2, num_layers=1, num_decoder_layers=1,
                             num_heads=1, relative_attention_num_buckets=4)
    peft = get_peft(minipeft.T5Model(wide), "prompt", num_virtual_tokens=5)
    assert count_parameters(peft)[0] == 5 * 4096 == 20_480
    assert count_parameters(get_peft(tiny("gpt"), "prompt", num_virtual_tokens=7))[0] == 7 * 16


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_only_the_prompt_trains_and_gradients_reach_it(kind):
    peft = get_peft(tiny(kind), "prompt", num_virtual_tokens=4)
    assert [name for name, p in peft.named_parameters() if p.requires_grad] == ["prompt"]
    peft(**batch(kind)).sum().backward()
    assert peft.prompt.grad is not None and peft.prompt.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_disabled_is_the_base_model(kind):
    model = tiny(kind)
    expected = model(**batch(kind))
    peft = get_peft(model, "prompt", num_virtual_tokens=4)
    assert not torch.allclose(peft(**batch(kind)), expected)
    with peft.disabled():
        torch.testing.assert_close(peft(**batch(kind)), expected)


def test_gpt_logits_are_those_of_the_input_tokens():
    """On GPT the prompt positions are dropped: logits (B, n, V) aligned with input_ids."""
    model = tiny("gpt")
    peft = get_peft(model, "prompt", num_virtual_tokens=4)
    ids = batch("gpt")["input_ids"]
    full = model(inputs_embeds=torch.cat([peft.prompt.expand(2, 4, 16), model.embed(ids)], dim=1))
    torch.testing.assert_close(peft(input_ids=ids), full[:, 4:])


# ---- initialisation (F2.2) ----------------------------------------------------------------------------

def test_random_init_has_the_scale_of_the_embedding_table():
    model = tiny("gpt")
    peft = get_peft(model, "prompt", num_virtual_tokens=20)
    assert 0.5 < peft.prompt.std() / model.wte.weight.std() < 2


def test_vocab_init_copies_frequent_token_embeddings():
    model = tiny("t5")
    peft = get_peft(model, "prompt", num_virtual_tokens=6, prompt_tuning_init="vocab", prompt_tuning_init_vocab_size=10)
    frequent = model.shared.weight[2:10]  # the first ids, without pad (0) and eos (1)
    for row in peft.prompt:
        assert (frequent - row).abs().sum(-1).min() == 0


def test_text_init_uses_the_label_words_repeated_to_m():
    model = tiny("gpt")
    peft = get_peft(model, "prompt", num_virtual_tokens=5, prompt_tuning_init="TEXT",
                    prompt_tuning_init_token_ids=(7, 9))
    torch.testing.assert_close(peft.prompt, model.wte.weight[[7, 9, 7, 9, 7]])


def test_text_init_needs_words_and_a_tokenizer():
    with pytest.raises(ValueError, match="goes with prompt_tuning_init_text"):
        get_peft(tiny("gpt"), "prompt", prompt_tuning_init="text")
    with pytest.raises(ValueError, match="needs tokenizer_name_or_path"):
        get_peft(tiny("gpt"), "prompt", prompt_tuning_init="text", prompt_tuning_init_text="positive negative")
    with pytest.raises(ValueError, match="SAMPLE_VOCAB"):
        get_peft(tiny("gpt"), "prompt", prompt_tuning_init="SAMPLE_VOCAB")
    with pytest.raises(ValueError, match=r"ids in \[0, 64\)"):
        get_peft(tiny("gpt"), "prompt", prompt_tuning_init="text", prompt_tuning_init_token_ids=(70,))


def test_text_init_reads_the_tokenizer_the_directory_holds(tmp_path):
    """A tiny base keeps a SentencePiece model even for GPT; GPT-2 checkpoints keep vocab.json."""
    from minipeft.bases import random_base
    from minipeft.world import DATA_DIR
    model, tokenizer = random_base("tiny-gpt")
    peft = get_peft(model, "prompt", num_virtual_tokens=3, prompt_tuning_init="TEXT",
                    prompt_tuning_init_text="positive negative", tokenizer_name_or_path=str(DATA_DIR))
    ids = tokenizer.encode("positive negative", add_eos=False)
    torch.testing.assert_close(peft.prompt, model.wte.weight[(ids * 3)[:3]])
    with pytest.raises(ValueError, match="no tokenizer in"):
        get_peft(model, "prompt", prompt_tuning_init="TEXT", prompt_tuning_init_text="positive",
                 tokenizer_name_or_path=str(tmp_path))


# ---- bad input ----------------------------------------------------------------------------------------

def test_prompt_length_must_be_positive_and_fit_gpt_positions():
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive integer"):
        get_peft(tiny("t5"), "prompt", num_virtual_tokens=0)
    with pytest.raises(ValueError, match="n_positions=32"):
        get_peft(tiny("gpt"), "prompt", num_virtual_tokens=32)
    peft = get_peft(tiny("gpt"), "prompt", num_virtual_tokens=20)
    with pytest.raises(ValueError, match="20 virtual tokens \\+ 13 input tokens do not fit"):
        peft(input_ids=torch.randint(2, 64, (1, 13)))
    get_peft(tiny("t5"), "prompt", num_virtual_tokens=200)(**batch("t5"))  # relative positions: no limit


# ---- generation, checkpoints --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_greedy_generation_equals_a_full_recomputation(kind):
    model = tiny(kind)
    peft = get_peft(model, "prompt", num_virtual_tokens=4)
    ids = batch(kind)["input_ids"]
    out = peft.generate(ids, max_new_tokens=5)
    assert len(set(out.flatten().tolist())) > 2
    if kind == "t5":
        start = torch.zeros(2, 1, dtype=torch.long)
        logits = peft(input_ids=ids, decoder_input_ids=torch.cat([start, out[:, :-1]], dim=1))
    else:
        logits = peft(input_ids=torch.cat([ids, out[:, :-1]], dim=1))[:, ids.shape[1] - 1:]
    assert_same_until_eos(logits.argmax(-1), out, eos=1)
    with peft.disabled():
        assert torch.equal(peft.generate(ids, max_new_tokens=5), model.generate(ids, max_new_tokens=5))
    assert peft.generate(ids, max_new_tokens=5, num_beams=3).shape[0] == 2


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_save_then_load_gives_the_same_outputs(kind, tmp_path):
    peft = get_peft(tiny(kind), "prompt", num_virtual_tokens=4)
    path = tmp_path / "prompt.safetensors"
    save_trained(peft, path)
    restored = load_trained(tiny(kind), path)
    assert restored.name == "prompt" and restored.options == peft.options
    torch.testing.assert_close(restored(**batch(kind)), peft(**batch(kind)))


def test_a_prompt_checkpoint_is_refused_by_other_methods(tmp_path):
    path = tmp_path / "prompt.safetensors"
    save_trained(get_peft(tiny("t5"), "prompt", num_virtual_tokens=4), path)
    with pytest.raises(ValueError, match="holds a 'prompt' checkpoint, not 'prefix'"):
        load_trained(tiny("t5"), path, method="prefix")
    prefix = get_peft(tiny("t5"), "prefix", num_virtual_tokens=4, prefix_projection=False)
    with pytest.raises(ValueError, match="into method 'prefix'(.|\n)*missing: prefix_table(.|\n)*unexpected: prompt"):
        prefix.load_trained_state_dict(get_peft(tiny("t5"), "prompt", num_virtual_tokens=4).trained_state_dict())


# ---- parity with peft -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    transformers = reference("transformers")
    t5 = hf_t5(transformers, vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    gpt2 = hf_gpt2(transformers, vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                   eos_token_id=999, bos_token_id=999)
    pairs = {}
    for kind, hf in (("t5", t5), ("gpt", gpt2)):
        path = tmp_path_factory.mktemp(kind)
        hf.save_pretrained(path)
        pairs[kind] = (hf, path)
    return pairs


def peft_prompt(hf_pair, kind, m):
    """(peft's model with a random prompt, ours with the same prompt copied in)."""
    peft = reference("peft")
    hf, path = hf_pair[kind]
    task = "SEQ_2_SEQ_LM" if kind == "t5" else "CAUSAL_LM"
    theirs = peft.get_peft_model(copy.deepcopy(hf), peft.PromptTuningConfig(task_type=task, num_virtual_tokens=m))
    ours = get_peft(minipeft.load_hf(path), "prompt", num_virtual_tokens=m)
    table = theirs.prompt_encoder.default.embedding.weight
    with torch.no_grad():
        table.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
        ours.prompt.copy_(table[:m])  # on T5 peft allocates 2m rows and uses the first m
    return theirs.eval(), ours.eval()


def test_logits_match_peft_on_t5(hf_pair):
    theirs, ours = peft_prompt(hf_pair, "t5", m=5)
    generator = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(2, 99, (3, 9), generator=generator), torch.randint(2, 99, (3, 4), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=labels).logits
        delta = (ours(input_ids=ids, attention_mask=mask, decoder_input_ids=labels) - expected).abs().max()
    assert delta <= 1e-4


def test_logits_and_generation_match_peft_on_gpt2(hf_pair):
    theirs, ours = peft_prompt(hf_pair, "gpt", m=5)
    ids = torch.randint(0, 999, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits[:, 5:]   # peft returns the m prompt positions too
        assert (ours(input_ids=ids) - expected).abs().max() <= 1e-4
        # use_cache=False: with its cache, peft 0.21.2's generate leaves its own forward's greedy path
        # after the first new token (as reported in huggingface/peft#1391); uncached, the two agree.
        generated = theirs.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=999,
                                    use_cache=False)
    assert torch.equal(ours.generate(ids, max_new_tokens=6), generated[:, ids.shape[1]:])


def test_peft_counts_two_prompts_on_t5_and_uses_one(hf_pair):
    """The documented count difference: peft allocates 2·m·C on an encoder-decoder, F2.1 says m·C."""
    theirs, ours = peft_prompt(hf_pair, "t5", m=5)
    assert theirs.get_nb_trainable_parameters()[0] == 2 * 5 * 32
    assert count_parameters(ours)[0] == 5 * 32
