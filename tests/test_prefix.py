"""Prefix tuning (F5): where the prefixes go, their count, the reparametrisation and its folding,
init from real words, generation, checkpoints, and parity with `peft`.

Exercise: ``pytest tests/test_prefix.py --exercise methods.prefix`` runs these against your copy.
"""

import copy

import pytest
import torch

import minipeft
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained
from minipeft.methods.prefix import PrefixTuning, infix_visibility

from conftest import reference
from reference_models import hf_gpt2, hf_t5
import tiny_models
from tiny_models import assert_same_until_eos, padded_batch as batch


def tiny(kind, seed=0):
    return tiny_models.tiny(kind, seed, wide=True)


# ---- where the prefixes go (F5.2, F5.3), the reparametrisation (F5.5), the count (F5.6) -----------------

def test_gpt_gets_one_key_value_prefix_per_block_laid_out_as_in_peft():
    """F5.3: P_θ (m, L·2·C) read as [layer][key|value][head][head dim], each (B, H, m, D)."""
    peft = get_peft(tiny("gpt"), "prefix", num_virtual_tokens=3, prefix_projection=False)
    prefix = peft.prefix_kv(batch=2)
    table = peft.prefix_table.view(3, 2, 2, 4, 4)                           # (m, L, key|value, H, D)
    assert len(prefix) == 2
    for layer, (keys, values) in enumerate(prefix):
        assert keys.shape == values.shape == (2, 4, 3, 4)
        torch.testing.assert_close(keys[1], table[:, layer, 0].transpose(0, 1))
        torch.testing.assert_close(values[0], table[:, layer, 1].transpose(0, 1))


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_fold_keeps_the_outputs_and_drops_the_mlp(kind):
    peft = get_peft(tiny(kind), "prefix", num_virtual_tokens=4)
    before = peft(**batch(kind))
    torch.testing.assert_close(peft.prefix_matrix(), peft.prefix_mlp(peft.prefix_embedding))
    peft.merge()  # folding is prefix tuning's merge
    assert [name for name, p in peft.named_parameters() if p.requires_grad] == ["prefix_table"]
    assert not hasattr(peft, "prefix_mlp") and peft.options.prefix_projection is False
    torch.testing.assert_close(peft(**batch(kind)), before)
    with pytest.raises(NotImplementedError, match="resume training"):
        peft.unmerge()


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_gradients_reach_the_reparametrisation(kind):
    peft = get_peft(tiny(kind), "prefix", num_virtual_tokens=4)
    peft(**batch(kind)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in peft.parameters() if p.requires_grad)


@pytest.mark.parametrize("places", [("encoder", "decoder", "cross"), ("decoder",), ("encoder",), ("cross",),
                                    ("encoder", "cross")])
def test_t5_prefixes_exactly_the_chosen_attentions_with_the_f5_6_count(places):
    """F5.6: m · 2 · H·D per prefixed attention layer; T5 has L_enc + L_dec + L_dec of them."""
    model = tiny("t5")
    expected = model(**batch("t5"))
    peft = get_peft(model, "prefix", num_virtual_tokens=5, prefix_on=places, prefix_projection=False)
    layers = {"encoder": 2, "decoder": 3, "cross": 3}
    assert count_parameters(peft)[0] == 5 * 2 * 16 * sum(layers[place] for place in places)
    prefix = peft.prefix_kv(batch=2)
    assert ("encoder" in prefix) == ("encoder" in places)
    if "decoder" in places or "cross" in places:
        kinds = {kind for layer in prefix["decoder"] for kind in layer}
        assert kinds == {kind for place, kind in (("decoder", "self"), ("cross", "cross")) if place in places}
    assert not torch.allclose(peft(**batch("t5")), expected)


def test_reparametrised_count_is_the_embedding_plus_the_mlp():
    """F5.5: P'_θ (m, C) and MLP C → h → W (tanh), W = S·2·H·D."""
    peft = get_peft(tiny("t5"), "prefix", num_virtual_tokens=5, encoder_hidden_size=24)
    width = (2 + 3 + 3) * 2 * 16
    assert count_parameters(peft)[0] == 5 * 16 + (16 * 24 + 24) + (24 * width + width)


def test_gpt_prefix_on_must_include_its_decoder():
    with pytest.raises(ValueError, match="GPT has only decoder self-attention"):
        get_peft(tiny("gpt"), "prefix", prefix_on=("encoder",))
    with pytest.raises(ValueError, match="prefix_on must name some of"):
        get_peft(tiny("t5"), "prefix", prefix_on=("decoder", "ffn"))


def test_prefix_length_must_be_positive_but_takes_no_positions():
    """Decision: a prefix is keys and values only (F5.3); it uses up none of GPT's n_positions."""
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_virtual_tokens must be a positive integer"):
            get_peft(tiny("gpt"), "prefix", num_virtual_tokens=bad)
    peft = get_peft(tiny("gpt"), "prefix", num_virtual_tokens=40, prefix_projection=False)  # n_positions = 32
    assert peft(input_ids=torch.randint(2, 64, (1, 32))).shape == (1, 32, 64)
    with pytest.raises(ValueError, match="do not fit in this model's n_positions=32"):
        get_peft(tiny("gpt"), "prefix", num_virtual_tokens=40, embedding_only=True)  # in the input it does


# ---- checkpoints --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_checkpoint_holds_what_resumes_training_and_what_inference_needs(kind, tmp_path):
    peft = get_peft(tiny(kind), "prefix", num_virtual_tokens=4)
    expected = peft(**batch(kind))
    path = tmp_path / "prefix.safetensors"
    save_trained(peft, path)
    resumed = load_trained(tiny(kind), path)                       # P'_θ and the MLP: training can go on
    assert resumed.options.prefix_projection and hasattr(resumed, "prefix_mlp")
    torch.testing.assert_close(resumed(**batch(kind)), expected)
    folded = PrefixTuning.load_folded(tiny(kind), path)            # only P_θ: inference
    assert not hasattr(folded, "prefix_mlp") and count_parameters(folded)[0] == folded.prefix_table.numel()
    torch.testing.assert_close(folded(**batch(kind)), expected)
    save_trained(folded, tmp_path / "folded.safetensors")          # a folded method saves a plain table
    torch.testing.assert_close(load_trained(tiny(kind), tmp_path / "folded.safetensors")(**batch(kind)), expected)


def test_a_folded_prefix_that_disagrees_with_its_mlp_is_refused():
    peft = get_peft(tiny("gpt"), "prefix", num_virtual_tokens=4)
    state = peft.trained_state_dict()
    state["prefix_table"] = state["prefix_table"] + 1.0
    with pytest.raises(ValueError, match="folded prefix_table is not MLP"):
        get_peft(tiny("gpt"), "prefix", num_virtual_tokens=4).load_trained_state_dict(state)


def test_checkpoints_of_other_methods_are_refused(tmp_path):
    path = tmp_path / "prefix.safetensors"
    save_trained(get_peft(tiny("t5"), "prefix", num_virtual_tokens=4, prefix_projection=False), path)
    with pytest.raises(ValueError, match="holds a 'prefix' checkpoint, not 'ptuning_v2'"):
        load_trained(tiny("t5"), path, method="ptuning_v2")
    with pytest.raises(ValueError, match="holds a 'prefix' checkpoint, not 'ptuning_v2'"):
        minipeft.methods.ptuning_v2.PTuningV2.load_folded(tiny("t5"), path)
    prompt_state = get_peft(tiny("t5"), "prompt", num_virtual_tokens=4).trained_state_dict()
    with pytest.raises(ValueError, match="into method 'prefix'(.|\n)*missing: prefix_embedding"):
        get_peft(tiny("t5"), "prefix", num_virtual_tokens=4).load_trained_state_dict(prompt_state)


# ---- generation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_greedy_generation_equals_a_full_recomputation(kind):
    model = tiny(kind)
    peft = get_peft(model, "prefix", num_virtual_tokens=4)
    ids, mask = batch("t5")["input_ids"], batch("t5")["attention_mask"]
    if kind == "gpt":
        mask = None
    out = peft.generate(ids, max_new_tokens=6, attention_mask=mask)
    assert len(set(out.flatten().tolist())) > 2
    if kind == "t5":
        start = torch.zeros(2, 1, dtype=torch.long)
        logits = peft(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.cat([start, out[:, :-1]], dim=1))
    else:
        logits = peft(input_ids=torch.cat([ids, out[:, :-1]], dim=1))[:, ids.shape[1] - 1:]
    assert_same_until_eos(logits.argmax(-1), out, eos=1)
    with peft.disabled():
        assert torch.equal(peft.generate(ids, max_new_tokens=6, attention_mask=mask),
                           model.generate(ids, max_new_tokens=6, attention_mask=mask))


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_beam_search_carries_the_shared_prefix_like_a_materialised_one(kind):
    """The prefix is one tensor expanded over the batch (no copy); beam search reorders it like a real one."""
    model = tiny(kind)
    peft = get_peft(model, "prefix", num_virtual_tokens=4)
    ids = batch(kind)["input_ids"]
    with torch.no_grad():
        prefix = peft.prefix_kv(batch=2)
    if kind == "t5":
        copied = {stack: [{kind: tuple(t.clone() for t in kv) for kind, kv in layer.items()} for layer in layers]
                  for stack, layers in prefix.items()}
    else:
        copied = [tuple(t.clone() for t in kv) for kv in prefix]
    beams = peft.generate(ids, max_new_tokens=5, num_beams=3)
    assert torch.equal(beams, model.generate(ids, max_new_tokens=5, num_beams=3, prefix_kv=copied))
    assert not torch.equal(beams, model.generate(ids, max_new_tokens=5, num_beams=3))


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_disabled_is_the_base_model(kind):
    model = tiny(kind)
    expected = model(**batch(kind))
    peft = get_peft(model, "prefix", num_virtual_tokens=4)
    assert not torch.allclose(peft(**batch(kind)), expected)
    with peft.disabled():
        torch.testing.assert_close(peft(**batch(kind)), expected)


# ---- F5.7: init from real words, embedding-only ablation ------------------------------------------------------

@pytest.mark.parametrize("projection", [False, True])
def test_init_from_words_is_the_model_having_read_them(projection):
    """P_θ = the keys/values of the words: with the input placed after them (positions m …), the
    logits equal the frozen model's on [words; x]. Through the MLP the fit is exact when m ≤ h."""
    model = tiny("gpt")
    words = torch.tensor([[5, 17, 33]])
    peft = get_peft(model, "prefix", num_virtual_tokens=3, prefix_projection=projection, prefix_init_token_ids=(5, 17, 33))
    ids = batch("gpt")["input_ids"]
    logits = peft(input_ids=ids, position_ids=torch.arange(3, 9)[None])
    expected = model(input_ids=torch.cat([words.expand(2, 3), ids], dim=1))[:, 3:]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_init_from_words_on_t5_uses_the_activations_of_every_prefixed_attention():
    model = tiny("t5")
    peft = get_peft(model, "prefix", num_virtual_tokens=4, prefix_projection=False, prefix_init_token_ids=(5, 17))
    prefix = peft.prefix_kv(batch=1)
    ids = torch.tensor([[5, 17, 5, 17]])
    encoder_keys = model.encoder.blocks[1].self_attn.k(model.encoder.blocks[1].self_attn_norm(
        model.encoder.blocks[0](model.embed(ids), self_mask=model.encoder.position_bias(4, 4))))
    torch.testing.assert_close(prefix["encoder"][1]["self"][0], encoder_keys.view(1, 4, 4, 4).transpose(1, 2))
    encoder_out = model.encode(ids)
    cross_values = model.decoder.blocks[2].cross_attn.v(encoder_out)
    torch.testing.assert_close(prefix["decoder"][2]["cross"][1], cross_values.view(1, 4, 4, 4).transpose(1, 2))


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_embedding_only_ablation_is_a_prompt_on_the_input(kind):
    places = ("encoder",) if kind == "t5" else ("decoder",)
    peft = get_peft(tiny(kind), "prefix", num_virtual_tokens=4, embedding_only=True, prefix_on=places,
                    prefix_projection=False)
    assert count_parameters(peft)[0] == 4 * 16
    prompt = get_peft(tiny(kind), "prompt", num_virtual_tokens=4)
    with torch.no_grad():
        prompt.prompt.copy_(peft.prefix_table)
    torch.testing.assert_close(peft(**batch(kind)), prompt(**batch(kind)))
    with pytest.raises(ValueError, match="pass prefix_on=\\('encoder',\\)"):
        get_peft(tiny("t5"), "prefix", embedding_only=True)


# ---- F5.7: prefix [PREFIX; x; y] against infix [x; INFIX; y] (decoder-only) ----------------------------------

def literal_infix_logits(model, peft, x, y):
    """The infix written out as a sequence: the frozen model reads x, the infix's keys and values go
    into every layer's cache after x's, and then y is read at the positions that follow x."""
    cache = model.new_cache()
    x_logits = model(input_ids=x[None], cache=cache)
    for layer_cache, (keys, values) in zip(cache, peft.prefix_kv(batch=1)):
        layer_cache.append(keys, values)
    y_logits = model(input_ids=y[None], cache=cache, position_ids=torch.arange(len(x), len(x) + len(y))[None])
    return torch.cat([x_logits, y_logits], dim=1)[0]                                   # (n, V)


def test_infix_is_the_frozen_model_reading_x_then_the_infix_then_y():
    """Rows ``x </s> y </s>``, right-padded: x is read as without any method, and from x's end token on
    every position attends to the infix as to m keys placed between x and y."""
    model = tiny("gpt")
    peft = get_peft(model, "prefix", num_virtual_tokens=3, infix=True)
    rows = [torch.tensor([7, 8, 9, 10, 1, 20, 21, 1]), torch.tensor([7, 8, 1, 30, 31, 32, 1])]
    ids = torch.zeros(2, 8, dtype=torch.long)
    mask = torch.zeros(2, 8, dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
    with torch.no_grad():
        logits = peft(input_ids=ids, attention_mask=mask)                              # (2, 8, V)
        base = model(input_ids=ids, attention_mask=mask)
        for row, (tokens, end) in enumerate(zip(rows, (4, 2))):
            expected = literal_infix_logits(model, peft, tokens[:end], tokens[end:])
            torch.testing.assert_close(logits[row, :len(tokens)], expected, atol=1e-5, rtol=1e-5)
            # x is read as without the method, up to float32 rounding: the attention kernel sums over the m
            # masked infix columns too, and AVX-512 kernels block that sum differently (9.5e-7 on a logit of
            # 4.4, an Intel Xeon, 2026-12-06; bit-equal on AVX2). Seeing the infix moves them by > 1e-2 (below).
            torch.testing.assert_close(logits[row, :end], base[row, :end], atol=1e-5, rtol=1e-5)
            assert (logits[row, end:len(tokens)] - base[row, end:len(tokens)]).abs().amax() > 1e-2


def test_infix_seen_from_everywhere_is_the_prefix_and_from_nowhere_the_base():
    model = tiny("gpt")
    infix = get_peft(copy.deepcopy(model), "prefix", num_virtual_tokens=3, infix=True)
    prefix = get_peft(copy.deepcopy(model), "prefix", num_virtual_tokens=3)
    prefix.load_state_dict(infix.state_dict())
    assert count_parameters(infix) == count_parameters(prefix)
    ids = batch("gpt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(infix(input_ids=ids, infix_from=torch.tensor([0, 0])), prefix(input_ids=ids))
        torch.testing.assert_close(infix(input_ids=ids, infix_from=torch.tensor([6, 6])), model(input_ids=ids))


def test_infix_generation_equals_a_full_recomputation():
    """A prompt ``x </s>`` (left-padded): its end token and every generated token see the infix."""
    model = tiny_models.tiny("gpt", seed=1, wide=True)    # one whose greedy tokens do not end at once
    peft = get_peft(model, "prefix", num_virtual_tokens=3, infix=True)
    prompt = torch.tensor([[0, 7, 8, 9, 1], [5, 6, 7, 8, 1]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = peft.generate(prompt, max_new_tokens=6, attention_mask=mask)
    assert len(set(out.flatten().tolist())) > 2
    full = torch.cat([prompt, out[:, :-1]], dim=1)
    logits = peft(input_ids=full, attention_mask=torch.cat([mask, torch.ones_like(out[:, :-1])], dim=1))
    assert_same_until_eos(logits[:, prompt.shape[1] - 1:].argmax(-1), out, eos=1)
    as_prefix = get_peft(copy.deepcopy(model), "prefix", num_virtual_tokens=3)
    as_prefix.load_state_dict(peft.state_dict())
    assert not torch.equal(out, as_prefix.generate(prompt, max_new_tokens=6, attention_mask=mask))
    # beam search carries the prompt's visibility like a materialised one, and it matters there too
    beams = peft.generate(prompt, max_new_tokens=4, attention_mask=mask, num_beams=3)
    with torch.no_grad():
        copied = [tuple(t.clone() for t in kv) for kv in peft.prefix_kv(batch=2)]
    visible = infix_visibility(prompt, mask, eos_token_id=1)
    assert torch.equal(beams, model.generate(prompt, max_new_tokens=4, attention_mask=mask, num_beams=3,
                                             prefix_kv=copied, prefix_visible=visible))
    assert not torch.equal(beams, model.generate(prompt, max_new_tokens=4, attention_mask=mask, num_beams=3,
                                                 prefix_kv=copied))


def test_on_train_pys_gpt_batches_the_infix_starts_where_the_first_target_token_is_predicted():
    """train.py lays a decoder-only example out as ``x </s> y </s>`` with the loss on y: the infix
    must be visible exactly from the position whose output predicts y's first token."""
    from minipeft import bases
    from minipeft.taskdata import Batcher, Example
    model, tokenizer = bases.load_base("tiny-gpt")
    batcher = Batcher(tokenizer, is_encoder_decoder=False, max_length=64,
                      pad_token_id=model.config.pad_token_id, eos_token_id=model.config.eos_token_id)
    batch = batcher.training_batch([Example("The soup was cold and bland.", "negative"),
                                    Example("Lovely staff.", "positive")])
    visible = infix_visibility(batch["input_ids"], batch["attention_mask"], model.config.eos_token_id)
    first_target = (batch["labels"] != -100).int().argmax(dim=1)                      # (B,)
    assert torch.equal(visible.int().argmax(dim=1), first_target - 1)
    assert visible[:, -1].all()


def test_infix_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="prefix_on=\\('decoder', 'cross'\\)"):
        get_peft(tiny("t5"), "prefix", infix=True)
    with pytest.raises(ValueError, match="choose one"):
        get_peft(tiny("gpt"), "prefix", infix=True, embedding_only=True)
    with pytest.raises(ValueError, match="infix=False"):
        get_peft(tiny("gpt"), "prefix")(input_ids=batch("gpt")["input_ids"], infix_from=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="infix_from"):
        get_peft(tiny("gpt"), "prefix", infix=True)(input_ids=batch("gpt")["input_ids"], infix_from=torch.tensor([1]))


# ---- parity with peft ------------------------------------------------------------------------------------------------

def test_gpt2_small_prefix_count_is_368640_as_in_peft():
    """F5.6 with peft's configuration: 20 tokens, no reparametrisation, GPT-2 small's 12 layers × 768."""
    shape = dict(vocab_size=64, n_positions=32, n_embd=768, n_layer=12, n_head=12, n_inner=4)  # FFN shrunk: not counted
    peft = get_peft(minipeft.GPT(minipeft.GPTConfig(**shape, eos_token_id=1, pad_token_id=0)), "prefix",
                    num_virtual_tokens=20, prefix_projection=False)
    assert count_parameters(peft)[0] == 20 * 2 * 768 * 12 == 368_640
    transformers, reference_peft = reference("transformers"), reference("peft")
    with torch.device("meta"):  # counting needs shapes only
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape, bos_token_id=1, eos_token_id=1))
    theirs = reference_peft.get_peft_model(hf, reference_peft.PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                                 num_virtual_tokens=20))
    assert theirs.get_nb_trainable_parameters()[0] == 368_640


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    transformers = reference("transformers")
    hf = hf_gpt2(transformers, vocab_size=1000, n_positions=64, n_embd=64, n_layer=3, n_head=4,
                 eos_token_id=999, bos_token_id=999)
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    return hf, path


def copy_peft_prefix(theirs, ours, projection):
    """peft's prefix encoder → ours: the same table, or the same embedding and MLP."""
    encoder = theirs.prompt_encoder.default
    with torch.no_grad():
        if projection:
            ours.prefix_embedding.copy_(encoder.embedding.weight)
            for index in (0, 2):
                ours.prefix_mlp[index].weight.copy_(encoder.transform[index].weight)
                ours.prefix_mlp[index].bias.copy_(encoder.transform[index].bias)
        else:
            ours.prefix_table.copy_(encoder.embedding.weight)


@pytest.mark.parametrize("projection", [False, True])
def test_logits_match_peft_on_gpt2_with_its_positions(gpt2_dir, projection):
    """peft's prefix sits in the generation cache, so transformers puts the input at positions m … (padding
    or not); with those positions given, our logits equal peft's (with left padding too)."""
    peft = reference("peft")
    hf, path = gpt2_dir
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, prefix_projection=projection,
                                     encoder_hidden_size=40)
    theirs = peft.get_peft_model(copy.deepcopy(hf), config).eval()
    ours = get_peft(minipeft.load_hf(path), "prefix", num_virtual_tokens=6, prefix_projection=projection,
                    encoder_hidden_size=40).eval()
    copy_peft_prefix(theirs, ours, projection)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    ids = torch.randint(0, 999, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    positions = 6 + torch.arange(10)[None]
    with torch.no_grad():
        delta = (ours(input_ids=ids, position_ids=positions) - theirs(input_ids=ids).logits).abs()
        assert delta.max() <= 1e-4
        delta = (ours(input_ids=ids, attention_mask=mask, position_ids=positions)
                 - theirs(input_ids=ids, attention_mask=mask).logits).abs()
        assert delta[mask.bool()].max() <= 1e-4


def t5_pair_without_decoder_position_bias(tmp_path, layers):
    transformers = reference("transformers")
    hf = hf_t5(transformers, vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=layers, num_heads=4)
    with torch.no_grad():
        hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
    hf.save_pretrained(tmp_path)
    return hf, minipeft.load_hf(tmp_path)


def peft_t5_prefix(hf, ours, m):
    """peft's T5 prefix and ours with prefix_on=("decoder",), holding the same trained rows.

    peft builds an (m, L·2·C) table, doubles it along the layer axis for the cross-attention and
    regroups it four slots per layer, so decoder layer l's self-attention reads the table's layer
    (2l mod L); the rows that land in the cross-attention cache are thrown away with that cache.
    """
    peft = reference("peft")
    theirs = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=m)).eval()
    ours = get_peft(ours, "prefix", num_virtual_tokens=m, prefix_on=("decoder",), prefix_projection=False).eval()
    layers = len(hf.decoder.block)
    table = theirs.prompt_encoder.default.embedding.weight.view(m, layers, -1)
    with torch.no_grad():
        ours.prefix_table.copy_(torch.stack([table[:, (2 * layer) % layers] for layer in range(layers)], 1).flatten(1))
    return theirs, ours


@pytest.mark.parametrize("layers", [2, 3])
def test_logits_match_peft_on_t5_decoder_prefix_without_position_bias(tmp_path, layers):
    hf, model = t5_pair_without_decoder_position_bias(tmp_path, layers)
    theirs, ours = peft_t5_prefix(hf, model, m=5)
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0] == 5 * layers * 2 * 32
    generator = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(2, 99, (3, 9), generator=generator), torch.randint(2, 99, (3, 4), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=labels).logits
        assert (ours(input_ids=ids, attention_mask=mask, decoder_input_ids=labels) - expected).abs().max() <= 1e-4


def test_peft_t5_prefix_also_gets_position_bias_ours_does_not(tmp_path):
    """The one difference left on T5: transformers adds the relative position bias to peft's prefix
    columns (they look like m earlier decoder tokens); our prefix has no position."""
    hf, model = t5_pair_without_decoder_position_bias(tmp_path, 2)
    with torch.no_grad():
        bias = torch.randn(hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.shape)
        hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.copy_(bias)
        model.decoder.position_bias.embedding.weight.copy_(bias)
    ids, labels = torch.randint(2, 99, (2, 9)), torch.randint(2, 99, (2, 4))
    with torch.no_grad():  # the base models agree …
        base_delta = (model(input_ids=ids, decoder_input_ids=labels) - hf(input_ids=ids, decoder_input_ids=labels).logits)
    assert base_delta.abs().max() <= 1e-4
    theirs, ours = peft_t5_prefix(hf, model, m=5)
    with torch.no_grad():
        delta = (ours(input_ids=ids, decoder_input_ids=labels)
                 - theirs(input_ids=ids, decoder_input_ids=labels).logits).abs().max()
    assert delta > 1e-2  # … the prefixed ones differ by the bias on the prefix columns
