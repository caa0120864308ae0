"""Decoding: greedy, sampling, beam search, and the seams generation must carry (embeddings, prefix)."""

import pytest
import torch

from minipeft import GPT, GPTConfig, T5Config, T5Model
from minipeft.shapes import ShapeError

T5_TINY = T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
GPT_TINY = GPTConfig(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4, eos_token_id=49, pad_token_id=49)


@pytest.fixture(params=["t5", "gpt"])
def model(request):
    torch.manual_seed(0)
    model = T5Model(T5_TINY) if request.param == "t5" else GPT(GPT_TINY)
    with torch.no_grad():  # spread the weights so that decoding is not degenerate
        for param in model.parameters():
            param.normal_(0, 0.5)
    return model.eval()


def test_returns_only_new_tokens(model):
    x = torch.randint(2, 48, (3, 6))
    out = model.generate(x, max_new_tokens=5)
    assert out.shape[0] == 3 and 1 <= out.shape[1] <= 5


def test_greedy_is_the_argmax_of_a_full_forward(model):
    x = torch.randint(2, 48, (2, 6))
    out = model.generate(x, max_new_tokens=4)
    for t in range(out.shape[1]):
        if model.is_encoder_decoder:
            decoder_input = torch.cat([torch.zeros(2, 1, dtype=torch.long), out[:, :t]], dim=1)
            logits = model(input_ids=x, decoder_input_ids=decoder_input)[:, -1]
        else:
            logits = model(input_ids=torch.cat([x, out[:, :t]], dim=1))[:, -1]
        finished = (out[:, :t] == model.config.eos_token_id).any(dim=1)
        assert torch.equal(out[~finished, t], logits.argmax(-1)[~finished])


def test_finished_rows_are_padded(model):
    x = torch.randint(2, 48, (4, 6))
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    out = model.generate(x, max_new_tokens=12, do_sample=True, temperature=3.0,
                         generator=torch.Generator().manual_seed(0))
    for row in out.tolist():
        if eos in row:
            assert all(token == pad for token in row[row.index(eos) + 1:])


def test_sampling_is_reproducible_with_a_generator_and_top_k_1_is_greedy(model):
    x = torch.randint(2, 48, (2, 6))
    sample = lambda seed: model.generate(x, max_new_tokens=6, do_sample=True, temperature=2.0,
                                         generator=torch.Generator().manual_seed(seed))
    assert torch.equal(sample(1), sample(1))
    assert not all(torch.equal(sample(1), sample(seed)) for seed in range(2, 6))
    top1 = model.generate(x, max_new_tokens=6, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, model.generate(x, max_new_tokens=6))


def test_one_beam_is_greedy(model):
    x = torch.randint(2, 48, (2, 6))
    assert torch.equal(model.generate(x, max_new_tokens=5, num_beams=1), model.generate(x, max_new_tokens=5))


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    torch.manual_seed(0)
    model = T5Model(T5_TINY).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    x = torch.randint(2, 48, (3, 6))

    def log_prob(out):
        decoder_input = torch.cat([torch.zeros(3, 1, dtype=torch.long), out[:, :-1]], dim=1)
        logp = torch.log_softmax(model(input_ids=x, decoder_input_ids=decoder_input), -1)
        return logp.gather(-1, out[..., None]).squeeze(-1).sum(-1)

    greedy = model.generate(x, max_new_tokens=4)
    beam = model.generate(x, max_new_tokens=4, num_beams=4, length_penalty=0.0)
    if greedy.shape == beam.shape == (3, 4) and not (greedy == 1).any() and not (beam == 1).any():
        assert (log_prob(beam) >= log_prob(greedy) - 1e-5).all()


def test_generation_from_embeddings_equals_from_ids(model):
    x = torch.randint(2, 48, (2, 6))
    embeds = model.embed(x)
    assert torch.equal(model.generate(inputs_embeds=embeds, max_new_tokens=5), model.generate(x, max_new_tokens=5))


def test_prefix_kv_reaches_every_decoding_step():
    """The generation cache carries a per-layer prefix (F5.3): step logits equal a full forward with it."""
    torch.manual_seed(0)
    model = GPT(GPT_TINY).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    prefix = [(torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)) for _ in model.blocks]
    x = torch.randint(2, 48, (2, 6))
    out = model.generate(x, max_new_tokens=4, prefix_kv=prefix)
    assert not torch.equal(out, model.generate(x, max_new_tokens=4))
    logits = model(input_ids=torch.cat([x, out[:, :-1]], dim=1), prefix_kv=prefix)[:, 5:]
    assert torch.equal(out, logits.argmax(-1))


def test_bad_arguments(model):
    x = torch.randint(2, 48, (2, 6))
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        model.generate(x, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(x, max_new_tokens=2, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="needs input_ids"):
        model.generate(max_new_tokens=2)
    with pytest.raises(ValueError, match="num_beams must be at least 1"):
        model.generate(x, max_new_tokens=2, num_beams=0)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        model.generate(x, max_new_tokens=2, do_sample=True, top_k=0)
    with pytest.raises(ValueError, match=r"input_ids must be \(B, S\), got shape \(6,\).*ids\[None\]"):
        model.generate(x[0], max_new_tokens=2)
    with pytest.raises(ShapeError, match="attention_mask has shape \\(2, 5\\).*dimension S is 5 but 6"):
        model.generate(x, max_new_tokens=2, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ShapeError, match="attention_mask has shape \\(3, 6\\).*dimension B is 3 but 2"):
        decoder = dict(decoder_input_ids=x[:, :2]) if model.is_encoder_decoder else {}
        model(input_ids=x, attention_mask=torch.ones(3, 6, dtype=torch.long), **decoder)
