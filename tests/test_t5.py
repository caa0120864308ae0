"""T5: its parts against their formulas, the whole model against `transformers` (parity).

Exercise: ``pytest tests/test_t5.py --exercise t5`` runs these against your copy of t5.py.
"""

import math

import pytest
import torch

import minipeft
from minipeft import screening
from minipeft.t5 import FeedForward, RMSNorm, T5Block, T5Config, T5Model, relative_position_bucket

from conftest import reference
from reference_models import FLAN_T5_SMALL, T5_SMALL, hf_t5

TINY = T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)


# ---- the parts --------------------------------------------------------------------------------

def test_rms_norm_has_no_mean_subtraction_and_no_bias():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8) + 5.0  # a large mean: LayerNorm would remove it, RMSNorm keeps it
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert (norm(x) > 0).all()


def test_relative_position_buckets_match_the_reference():
    transformers = reference("transformers")
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    relative = torch.arange(-300, 301)[None, :] - torch.arange(0, 5)[:, None]
    for bidirectional in (True, False):
        ours = relative_position_bucket(relative, bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(ours, bucket(relative, bidirectional=bidirectional, num_buckets=32, max_distance=128))


def test_buckets_are_exact_near_and_log_spaced_far():
    distance = -torch.arange(0, 200)  # keys before the query, causal decoder
    buckets = relative_position_bucket(distance, bidirectional=False, num_buckets=32, max_distance=128)
    assert buckets[:16].tolist() == list(range(16))          # one bucket per small distance
    assert buckets[128:].eq(31).all()                        # everything past max_distance shares the last
    assert (buckets[1:] >= buckets[:-1]).all()                # monotone
    future = relative_position_bucket(torch.arange(1, 10), bidirectional=False, num_buckets=32, max_distance=128)
    assert future.eq(0).all()                                 # the decoder cannot tell future keys apart


@pytest.mark.parametrize("projection", ["relu", "gated-gelu"])
def test_feed_forward_formula(projection):
    ffn = FeedForward(T5Config(d_model=16, d_ff=32, feed_forward_proj=projection, dropout_rate=0.0))
    x = torch.randn(2, 3, 16)
    if projection == "relu":
        expected = ffn.wo(torch.relu(ffn.wi(x)))
    else:
        gate = ffn.wi_0(x)
        gelu = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate ** 3)))
        expected = ffn.wo(gelu * ffn.wi_1(x))
    torch.testing.assert_close(ffn(x), expected)


def test_block_is_identity_when_its_sublayers_output_zero():
    """Residual structure: x + f(norm(x)) for every sublayer."""
    block = T5Block(TINY, is_decoder=True).eval()
    with torch.no_grad():
        for linear in (block.self_attn.o, block.cross_attn.o, block.ffn.wo):
            linear.weight.zero_()
    x, encoder_out = torch.randn(2, 4, 32), torch.randn(2, 6, 32)
    torch.testing.assert_close(block(x, self_mask=None, encoder_out=encoder_out), x)


def test_encoder_position_bias_is_shared_by_all_layers():
    model = T5Model(TINY)
    names = [name for name, _ in model.named_parameters() if "position_bias" in name]
    assert names == ["encoder.position_bias.embedding.weight", "decoder.position_bias.embedding.weight"]


def test_dropout_is_active_in_train_and_off_in_eval():
    torch.manual_seed(0)
    model = T5Model(TINY)
    x, y = torch.randint(0, 120, (2, 5)), torch.randint(0, 120, (2, 3))
    model.train()
    assert not torch.equal(model(input_ids=x, decoder_input_ids=y), model(input_ids=x, decoder_input_ids=y))
    model.eval()
    assert torch.equal(model(input_ids=x, decoder_input_ids=y), model(input_ids=x, decoder_input_ids=y))


def test_dropout_keeps_1_minus_p_scales_by_its_inverse_and_passes_gradients_through_the_mask():
    from minipeft.functional import Dropout, dropout
    x = torch.randn(1_000_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.1)
    kept = y != 0
    keep = 1 - round(0.1 * 2 ** 15) / 2 ** 15                         # p rounded to a step of 2^-15
    assert abs(keep - 0.9) < 2 ** -16
    assert abs(kept.float().mean().item() - keep) < 0.002            # binomial sd is 0.0003
    for half in (kept[0::2], kept[1::2]):                             # both halves of each random word
        assert abs(half.float().mean().item() - keep) < 0.003
    torch.testing.assert_close(y[kept], x[kept] / keep)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / keep)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1), y)                            # same seed, same mask
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    assert dropout(x.detach().bfloat16(), 0.5).dtype == torch.bfloat16
    module = Dropout(0.3).eval()
    assert module(x) is x and isinstance(module, torch.nn.Dropout)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)


def test_shift_right_starts_with_pad_and_replaces_ignored_labels():
    labels = torch.tensor([[5, 6, -100]])
    assert T5Model(TINY).shift_right(labels).tolist() == [[0, 5, 6]]


def test_tied_head_rescales_by_d_model():
    torch.manual_seed(0)
    model = T5Model(TINY).eval()
    x, y = torch.randint(0, 120, (2, 5)), torch.randint(0, 120, (2, 3))
    hidden = model.decoder(model.shared(y), encoder_out=model.encode(x))
    torch.testing.assert_close(model(input_ids=x, decoder_input_ids=y), hidden * 32 ** -0.5 @ model.shared.weight.T)


def test_cached_decoding_equals_full_decoding():
    torch.manual_seed(0)
    model = T5Model(TINY).eval()
    x, y = torch.randint(0, 120, (2, 5)), torch.randint(0, 120, (2, 4))
    full = model(input_ids=x, decoder_input_ids=y)
    state, _ = model.start_decoding(x)
    steps = torch.stack([model.decode_step(state, y[:, t:t + 1]) for t in range(4)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


def test_ids_outside_the_vocabulary_are_refused():
    model = T5Model(TINY)
    with pytest.raises(ValueError, match=r"token ids \[120\] are outside the vocabulary \[0, 120\)"):
        model(input_ids=torch.tensor([[1, 120]]), decoder_input_ids=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="needs decoder_input_ids"):
        model(input_ids=torch.tensor([[1, 2]]))


# ---- parity with the reference implementation ----------------------------------------------

@pytest.fixture(scope="module", params=["t5-small", "flan-t5-small", "flan-t5-small-untied"])
def t5_pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its saved checkpoint directory)."""
    transformers = reference("transformers")
    config = T5_SMALL if request.param == "t5-small" else FLAN_T5_SMALL
    hf = hf_t5(transformers, untied_head=request.param.endswith("untied"), **config)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, minipeft.load_hf(path)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 32000, (3, 13), generator=generator)
    decoder_input_ids = torch.randint(2, 32000, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    attention_mask[2, 4:] = 0
    return input_ids, decoder_input_ids, attention_mask


@pytest.mark.parametrize("padded", [False, True])
def test_logits_match_transformers(t5_pair, batch, padded):
    hf, ours = t5_pair
    input_ids, decoder_input_ids, attention_mask = batch
    mask = attention_mask if padded else None
    with torch.no_grad():
        expected = hf(input_ids=input_ids, decoder_input_ids=decoder_input_ids, attention_mask=mask).logits
        logits = ours(input_ids=input_ids, decoder_input_ids=decoder_input_ids, attention_mask=mask)
    assert logits.shape == expected.shape == (3, 7, 32128)
    assert (logits - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("screened", [True, False], ids=["int8-screened-head", "float32-head"])
def test_greedy_generation_matches_transformers(t5_pair, batch, screened, monkeypatch):
    """t5-small's head (16 M numbers) is screened in int8 where the CPU can (screening.py)."""
    if not screened:
        monkeypatch.setattr(screening, "MIN_HEAD_SIZE", float("inf"))
    hf, ours = t5_pair
    input_ids, _, attention_mask = batch
    expected = hf.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False)[:, 1:]
    generated = ours.generate(input_ids, max_new_tokens=8, attention_mask=attention_mask)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("t5_pair", ["flan-t5-small-untied"], indirect=True)  # its random outputs vary most
def test_beam_search_matches_transformers(t5_pair, batch):
    hf, ours = t5_pair
    input_ids, _, attention_mask = batch
    expected = hf.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=3,
                           do_sample=False)[:, 1:]
    generated = ours.generate(input_ids, max_new_tokens=6, attention_mask=attention_mask, num_beams=3)
    assert torch.equal(generated, expected)
