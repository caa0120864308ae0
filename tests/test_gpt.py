"""GPT-2: the decoder-only model against its definition and against `transformers` (parity)."""

import pytest
import torch

import minipeft
from minipeft import screening
from minipeft.gpt import GPT, GPTConfig

from conftest import reference
from reference_models import GPT2_SMALL_TEST, hf_gpt2

TINY = GPTConfig(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=4, eos_token_id=99, pad_token_id=99)


def test_head_is_tied_to_the_token_embeddings():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    x = torch.randint(0, 100, (2, 5))
    hidden = model.wte(x) + model.wpe(torch.arange(5))
    for block in model.blocks:
        hidden = block(hidden, mask=minipeft.attention.causal_mask(5, 5, torch.float32, "cpu"))
    torch.testing.assert_close(model(input_ids=x), model.ln_f(hidden) @ model.wte.weight.T)


def test_causal_a_later_token_does_not_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    x = torch.randint(0, 100, (1, 6))
    changed = x.clone()
    changed[0, 4] = (x[0, 4] + 1) % 100
    assert torch.equal(model(input_ids=x)[:, :4], model(input_ids=changed)[:, :4])
    assert not torch.equal(model(input_ids=x)[:, 4:], model(input_ids=changed)[:, 4:])


def test_cached_decoding_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    x = torch.randint(0, 100, (2, 7))
    full = model(input_ids=x)
    state, prompt = model.start_decoding(x[:, :3])
    steps = [model.decode_step(state, prompt)] + [model.decode_step(state, x[:, t:t + 1]) for t in range(3, 7)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 2:], rtol=1e-5, atol=1e-5)


def test_sequence_past_n_positions_is_refused():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="17 tokens is longer than this model's n_positions=16"):
        model(input_ids=torch.zeros(1, 17, dtype=torch.long))
    # Refused before decoding, whatever the random weights generate (an early end token used to let
    # this pass or fail by chance): 10 prompt + 8 new tokens feed 17 positions, 10 + 7 feed 16.
    with pytest.raises(ValueError, match="need 17 positions, more than this model's n_positions=16"):
        model.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=8)
    assert model.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=7).shape[1] <= 7


def test_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"token ids \[-1\] are outside the vocabulary"):
        GPT(TINY)(input_ids=torch.tensor([[3, -1]]))


# ---- parity with the reference implementation ----------------------------------------------

@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    transformers = reference("transformers")
    hf = hf_gpt2(transformers, eos_token_id=999, bos_token_id=999, **GPT2_SMALL_TEST)
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    return hf, minipeft.load_hf(path)


def test_conv1d_weights_are_transposed(gpt2_pair):
    hf, ours = gpt2_pair
    assert hf.transformer.h[0].attn.c_attn.weight.shape == (128, 384)    # Conv1D: (in, out)
    assert ours.blocks[0].attn.c_attn.weight.shape == (384, 128)         # Linear: (out, in)
    assert torch.equal(ours.blocks[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.weight.T)


def test_logits_match_transformers(gpt2_pair):
    hf, ours = gpt2_pair
    x = torch.randint(0, 1000, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(input_ids=x) - hf(input_ids=x).logits).abs().max() <= 1e-4


def test_logits_match_transformers_with_padding(gpt2_pair):
    hf, ours = gpt2_pair
    x = torch.randint(0, 1000, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, 12:] = 0  # right padding: compare the real positions
    mask[2, 5:] = 0
    with torch.no_grad():
        delta = (ours(input_ids=x, attention_mask=mask) - hf(input_ids=x, attention_mask=mask).logits).abs()
    assert delta[mask.bool()].max() <= 1e-4


@pytest.mark.parametrize("screened", [False, True], ids=["float32-head", "int8-screened-head"])
def test_greedy_generation_matches_transformers_with_left_padding(gpt2_pair, screened, monkeypatch):
    """This GPT's head is small, so the int8 screen (screening.py) is switched on by hand."""
    if screened:
        monkeypatch.setattr(screening, "MIN_HEAD_SIZE", 0)
    hf, ours = gpt2_pair
    x = torch.randint(0, 999, (3, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # left padding, as batched prompts are padded for generation
    expected = hf.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=999)[:, 10:]
    generated = ours.generate(x, max_new_tokens=10, attention_mask=mask)
    assert len(set(generated.flatten().tolist())) > 3  # the random model is not degenerate
    assert torch.equal(generated, expected)
