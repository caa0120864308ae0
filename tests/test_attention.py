"""Attention (F5.3, F5.4), its masks and the two seams: prefix keys/values and the KV cache.

Exercise: ``pytest tests/test_attention.py --exercise attention`` runs these against your copy.
"""

import math

import pytest
import torch

from minipeft.attention import (KVCache, T5Attention, attend, causal_mask, padding_mask, prepend_prefix,
                                with_prefix_columns)
from minipeft.shapes import ShapeError


def written_out_attention(query, key, value, mask=None, scale=None):
    """F5.4 exactly as the formula reads: softmax(Q Kᵀ · scale + M) V."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = query @ key.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ value


@pytest.fixture
def qkv():
    torch.manual_seed(0)
    return torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)


def test_attend_equals_the_written_out_formula(qkv):
    query, key, value = qkv
    torch.testing.assert_close(attend(query, key, value), written_out_attention(query, key, value))


def test_attend_with_dropout_drops_probabilities_and_is_unbiased(qkv):
    query, key, value = qkv
    bias = torch.randn(1, 3, 5, 7)
    exact = written_out_attention(query, key, value, bias, scale=1.0)
    torch.manual_seed(1)
    once = attend(query, key, value, bias, scale=1.0, dropout=0.5)
    assert not torch.allclose(once, exact)                    # the mask is applied…
    # …without bias: E[output] = exact. The mean of n draws is off by ~1/√n per element (about 0.016
    # at n = 4,000, so 3.7σ over 240 elements failed by chance); 16,000 draws put 0.06 at ~7σ.
    mean = sum(attend(query, key, value, bias, scale=1.0, dropout=0.5) for _ in range(16000)) / 16000
    torch.testing.assert_close(mean, exact, atol=0.06, rtol=0)
    # …to the probabilities, not the output: with every value row all ones, each output row is the
    # sum of the kept probabilities (one number repeated D times), which dropout of the output would break.
    ones = attend(query, key, torch.ones_like(value), bias, scale=1.0, dropout=0.5)   # (B, H, T, D)
    assert torch.allclose(ones, ones[..., :1].expand_as(ones)) and not torch.allclose(ones, torch.ones_like(ones))


def test_attend_with_t5_scale_1_and_an_additive_bias(qkv):
    query, key, value = qkv
    bias = torch.randn(1, 3, 5, 7)
    torch.testing.assert_close(attend(query, key, value, bias, scale=1.0),
                               written_out_attention(query, key, value, bias, scale=1.0))


def test_a_blocked_key_gets_no_weight(qkv):
    query, key, value = qkv
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7]), torch.float32)  # (B, 1, 1, S)
    changed = value.clone()
    changed[0, :, 5:] = 100.0  # the padded positions of row 0
    torch.testing.assert_close(attend(query, key, value, mask), attend(query, key, changed, mask))


def test_causal_mask_lets_each_query_see_itself_and_the_past():
    mask = causal_mask(3, 5, torch.float32, "cpu")  # 3 new queries after 2 cached keys
    visible = mask == 0
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(visible, expected)
    assert mask.min() == torch.finfo(torch.float32).min


def test_padding_mask_is_additive_and_broadcastable():
    mask = padding_mask(torch.tensor([[1, 1, 0]]), torch.float32)
    assert mask.shape == (1, 1, 1, 3)
    assert mask[0, 0, 0, :2].eq(0).all() and mask[0, 0, 0, 2] == torch.finfo(torch.float32).min


def test_prefix_is_prepended_on_the_source_axis():
    keys, values = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    prefix = (torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8))
    new_keys, new_values = prepend_prefix(keys, values, prefix)
    assert new_keys.shape == (2, 3, 10, 8)
    assert torch.equal(new_keys[:, :, :6], prefix[0]) and torch.equal(new_keys[:, :, 6:], keys)
    assert torch.equal(new_values[:, :, :6], prefix[1]) and torch.equal(new_values[:, :, 6:], values)


def test_prefix_equals_attending_over_extra_tokens():
    """F5.3: a prefix is exactly a set of extra keys/values every query may attend to."""
    torch.manual_seed(0)
    layer = T5Attention(d_model=16, n_heads=2, head_dim=8, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    extra_keys, extra_values = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)
    out = layer(x, prefix_kv=(extra_keys, extra_values))
    # The same by hand: project, prepend, attend with scale 1, project out.
    split = lambda t: t.view(2, 5, 2, 8).transpose(1, 2)
    keys = torch.cat([extra_keys, split(layer.k(x))], dim=2)
    values = torch.cat([extra_values, split(layer.v(x))], dim=2)
    heads = written_out_attention(split(layer.q(x)), keys, values, scale=1.0)
    torch.testing.assert_close(out, layer.o(heads.transpose(1, 2).reshape(2, 5, 16)))


def test_prefix_columns_are_visible():
    mask = causal_mask(2, 2, torch.float32, "cpu")
    padded = with_prefix_columns(mask, 3)
    assert padded.shape == (2, 5) and padded[:, :3].eq(0).all() and torch.equal(padded[:, 3:], mask)


def test_prefix_with_wrong_head_width_names_the_equation():
    keys = values = torch.randn(2, 3, 4, 8)
    with pytest.raises(ShapeError, match=r"F5\.3.*dimension D is 4 but 8"):
        prepend_prefix(keys, values, (torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)))


def test_attend_shape_error_names_formula_and_dimension(qkv):
    query, key, value = qkv
    with pytest.raises(ShapeError, match=r"F5\.4.*key.*dimension D is 4 but 8"):
        attend(query, key[..., :4], value)


def test_cache_step_by_step_equals_one_pass():
    """Decoding token by token with a KV cache gives the outputs of one causal pass."""
    torch.manual_seed(0)
    layer = T5Attention(d_model=16, n_heads=2, head_dim=8, dropout=0.0).eval()
    x = torch.randn(2, 6, 16)
    full = layer(x, mask=causal_mask(6, 6, torch.float32, "cpu"))
    cache = KVCache()
    steps = [layer(x[:, t:t + 1], cache=cache) for t in range(6)]
    assert cache.length == 6 and cache.keys.shape == (2, 2, 6, 8)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_cache_reorder_keeps_rows():
    cache = KVCache()
    cache.append(torch.arange(3.0).view(3, 1, 1, 1), torch.arange(3.0).view(3, 1, 1, 1))
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.keys.flatten().tolist() == [2.0, 2.0, 0.0]
