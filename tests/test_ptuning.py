"""P-tuning v1 (F3: template and LSTM prompt encoder) and v2 (F4: deep prompts on prefix machinery).

Exercise: ``pytest tests/test_ptuning.py --exercise methods.ptuning`` runs these against your copy.
"""

import copy

import pytest
import torch

import minipeft
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained
from minipeft.methods.ptuning import apply_template

from conftest import reference
from reference_models import hf_gpt2
import tiny_models
from tiny_models import padded_batch as batch


def tiny(kind, seed=0):
    return tiny_models.tiny(kind, seed, decoder_layers=2, wide=True)


# ---- P-tuning v1: the template (F3.1) ---------------------------------------------------------------

def test_template_puts_i_vectors_before_x_and_the_rest_right_after_each_rows_tokens():
    """F3.1  {h_0 … h_i, e(x), h_i+1 … h_m}: the trailing vectors follow each row's last real token."""
    prompt = torch.arange(1, 5, dtype=torch.float).view(4, 1) * 100        # h_0 … h_3 = 100 … 400
    embeds = torch.arange(1, 6, dtype=torch.float).view(1, 5, 1).repeat(2, 1, 1)   # e(x) = 1 … 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out, new_mask = apply_template(prompt, embeds, mask, before=1)
    assert out[..., 0].tolist() == [[100, 1, 2, 3, 4, 5, 200, 300, 400], [100, 1, 2, 3, 200, 300, 400, 4, 5]]
    assert new_mask.tolist() == [[1] * 9, [1] * 7 + [0, 0]]
    out, new_mask = apply_template(prompt, embeds, torch.tensor([[0, 0, 1, 1, 1]] * 2), before=4)  # all before x
    assert out[0, :, 0].tolist() == [100, 200, 300, 400, 1, 2, 3, 4, 5]
    assert new_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1]


def test_trailing_vectors_need_right_padding_and_a_t5():
    with pytest.raises(ValueError, match="need right-padded inputs"):
        apply_template(torch.zeros(4, 1), torch.zeros(1, 3, 1), torch.tensor([[0, 1, 1]]), before=2)
    with pytest.raises(ValueError, match="would fall between x and y"):
        get_peft(tiny("gpt"), "ptuning", num_virtual_tokens=4, virtual_tokens_before_input=2)


# ---- P-tuning v1: the prompt encoder (F3.2) and its cache ---------------------------------------------

def test_each_encoded_vector_depends_on_every_trained_vector():
    """F3.2  h'_i = MLP([LSTM→(h_0:i) : LSTM←(h_i:m)]): the bidirectional LSTM lets each h'_i see all h."""
    peft = get_peft(tiny("t5"), "ptuning", num_virtual_tokens=5)
    (first,) = torch.autograd.grad(peft.encode_prompt()[0].sum(), peft.prompt_embedding)   # ∂h'_0 / ∂h
    (last,) = torch.autograd.grad(peft.encode_prompt()[4].sum(), peft.prompt_embedding)    # ∂h'_4 / ∂h
    assert first[4].abs().sum() > 0 and last[0].abs().sum() > 0  # h'_0 sees h_4 (←), h'_4 sees h_0 (→)
    assert peft.encode_prompt().shape == (5, 16)


def test_the_encoder_output_is_cached_for_inference_and_recomputed_for_training():
    peft = get_peft(tiny("t5"), "ptuning", num_virtual_tokens=5).eval()
    with torch.no_grad():
        cached = peft.prompt()
        assert peft.prompt() is cached                           # computed once
        torch.testing.assert_close(cached, peft.encode_prompt())
        peft.mlp_head[2].bias.add_(1.0)                          # a weight changes (an optimizer step, a load) …
        assert peft.prompt() is not cached                       # … and the cache follows
        torch.testing.assert_close(peft.prompt(), peft.encode_prompt())
    assert peft.prompt().requires_grad                           # gradients wanted: always recomputed
    peft.train()
    assert peft.prompt().requires_grad and peft.prompt() is not peft.prompt()


def test_v1_parameter_count():
    """m·C + bidirectional 2-layer LSTM (4 gates, two bias vectors) + MLP 2h → 2h → C."""
    C, h, m = 16, 12, 5
    peft = get_peft(tiny("t5"), "ptuning", num_virtual_tokens=m, encoder_hidden_size=h)
    lstm = 2 * (4 * h * (C + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
    mlp = (2 * h * 2 * h + 2 * h) + (2 * h * C + C)
    assert count_parameters(peft)[0] == m * C + lstm + mlp
    mlp_only = get_peft(tiny("t5"), "ptuning", num_virtual_tokens=m, encoder_hidden_size=h,
                        encoder_reparameterization_type="mlp")
    assert count_parameters(mlp_only)[0] == m * C + (C * h + h) + (h * h + h) + (h * C + C)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_v1_generation_equals_a_full_recomputation_and_disabled_is_the_base(kind):
    model = tiny(kind)
    split = dict(virtual_tokens_before_input=2) if kind == "t5" else {}
    peft = get_peft(model, "ptuning", num_virtual_tokens=4, **split).eval()
    inputs = batch(kind)
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    out = peft.generate(ids, max_new_tokens=5, attention_mask=mask)
    assert len(set(out.flatten().tolist())) > 2
    with torch.no_grad():
        if kind == "t5":
            start = torch.zeros(2, 1, dtype=torch.long)
            logits = peft(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.cat([start, out[:, :-1]], 1))
        else:
            logits = peft(input_ids=torch.cat([ids, out[:, :-1]], dim=1))[:, ids.shape[1] - 1:]
    after_eos = (out == 1).long().cumsum(1) - (out == 1).long() > 0
    assert torch.equal(logits.argmax(-1).masked_fill(after_eos, -1), out.masked_fill(after_eos, -1))
    expected = model(**inputs)
    assert not torch.allclose(peft(**inputs), expected)
    with peft.disabled():
        torch.testing.assert_close(peft(**inputs), expected)


def test_v1_save_then_load_gives_the_same_outputs(tmp_path):
    peft = get_peft(tiny("t5"), "ptuning", num_virtual_tokens=4, virtual_tokens_before_input=1)
    save_trained(peft, tmp_path / "ptuning.safetensors")
    restored = load_trained(tiny("t5"), tmp_path / "ptuning.safetensors")
    torch.testing.assert_close(restored(**batch("t5")), peft(**batch("t5")))
    with pytest.raises(ValueError, match="holds a 'ptuning' checkpoint, not 'prompt'"):
        load_trained(tiny("t5"), tmp_path / "ptuning.safetensors", method="prompt")


def test_v1_bad_options_are_named():
    with pytest.raises(ValueError, match="virtual_tokens_before_input must be in \\[0, num_virtual_tokens=4\\]"):
        get_peft(tiny("t5"), "ptuning", num_virtual_tokens=4, virtual_tokens_before_input=5)
    with pytest.raises(ValueError, match="encoder_reparameterization_type must be one of"):
        get_peft(tiny("t5"), "ptuning", encoder_reparameterization_type="GRU")
    with pytest.raises(ValueError, match="do not fit in this model's n_positions=32"):
        get_peft(tiny("gpt"), "ptuning", num_virtual_tokens=32)


# ---- P-tuning v2 (F4): prefix machinery, its own defaults -------------------------------------------------

def test_v2_is_deep_prompts_without_reparametrisation_by_default():
    """F4.1 every layer, F4.2 no MLP and a short prompt; F5.6's count: m · 2 · H·D per attention layer."""
    peft = get_peft(tiny("t5"), "ptuning_v2")
    assert peft.options.num_virtual_tokens == 16 and not peft.options.prefix_projection
    assert [name for name, p in peft.named_parameters() if p.requires_grad] == ["prefix_table"]
    assert count_parameters(peft)[0] == 16 * 2 * 16 * (2 + 2 + 2)
    assert set(peft.prefix_kv(batch=1)) == {"encoder", "decoder"}
    with pytest.raises(ValueError, match="P-tuning v2 puts prompts at every layer"):
        get_peft(tiny("t5"), "ptuning_v2", embedding_only=True)
    with pytest.raises(ValueError, match="use method 'prefix' with infix=True"):
        get_peft(tiny("gpt"), "ptuning_v2", infix=True)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_v2_computes_what_prefix_tuning_computes_with_the_same_table(kind):
    v2 = get_peft(tiny(kind), "ptuning_v2", num_virtual_tokens=4)
    prefix = get_peft(tiny(kind), "prefix", num_virtual_tokens=4, prefix_projection=False)
    with torch.no_grad():
        prefix.prefix_table.copy_(v2.prefix_table)
    torch.testing.assert_close(v2(**batch(kind)), prefix(**batch(kind)))


def test_v2_and_prefix_checkpoints_are_not_interchangeable(tmp_path):
    path = tmp_path / "v2.safetensors"
    save_trained(get_peft(tiny("gpt"), "ptuning_v2", num_virtual_tokens=4), path)
    assert load_trained(tiny("gpt"), path).name == "ptuning_v2"
    with pytest.raises(ValueError, match="holds a 'ptuning_v2' checkpoint, not 'prefix'"):
        load_trained(tiny("gpt"), path, method="prefix")


# ---- parity with peft's P-tuning (all vectors before x, as peft places them) ------------------------------

@pytest.mark.parametrize("encoder_type", ["LSTM", "MLP"])
def test_v1_logits_match_peft_on_gpt2(tmp_path, encoder_type):
    transformers, peft = reference("transformers"), reference("peft")
    hf = hf_gpt2(transformers, vocab_size=1000, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                 eos_token_id=999, bos_token_id=999)
    hf.save_pretrained(tmp_path)
    config = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=48,
                                      encoder_reparameterization_type=encoder_type)
    theirs = peft.get_peft_model(copy.deepcopy(hf), config).eval()
    ours = get_peft(minipeft.load_hf(tmp_path), "ptuning", num_virtual_tokens=5, encoder_hidden_size=48,
                    encoder_reparameterization_type=encoder_type).eval()
    encoder = theirs.prompt_encoder.default
    with torch.no_grad():
        ours.prompt_embedding.copy_(encoder.embedding.weight)
        for name, tensor in encoder.state_dict().items():
            if not name.startswith("embedding."):
                ours.get_parameter(name).copy_(tensor)     # lstm_head.*, mlp_head.*: peft's names
        assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
        ids = torch.randint(0, 999, (3, 9), generator=torch.Generator().manual_seed(0))
        assert (ours(input_ids=ids) - theirs(input_ids=ids).logits[:, 5:]).abs().max() <= 1e-4
