"""Bottleneck adapters (F1): the formula, its parameter counts, placement, identity at initialisation.

No reference library in requirements-test.txt implements bottleneck adapters, so the reference
here is the formula itself (F1.1–F1.5) and, for "identity at init" and "disabled", the base model.

Exercise: ``pytest tests/test_adapter.py --exercise adapter`` runs these against your copy of adapter.py.
"""

import pytest
import torch
from torch import nn

import minipeft
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained
from minipeft.methods.adapter import AdapterAfter, BottleneckAdapter
from minipeft.t5 import RMSNorm

from tiny_models import batch, tiny

PLACEMENTS = ["houlsby", "pfeiffer", "self_attn"]


def randomize_adapters(peft, seed=0):
    """Trained-looking adapters: W_up non-zero, so they change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in peft.adapters():
            for param in adapter.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return peft


def wrapped_sublayers(peft):
    return sorted(name for name, module in peft.model.named_modules() if isinstance(module, AdapterAfter))


# ---- the module: F1.1, F1.2, F1.4 ---------------------------------------------------------------

@pytest.mark.parametrize("non_linearity, sigma", [("relu", torch.relu), ("tanh", torch.tanh),
                                                  ("sigmoid", torch.sigmoid)])
def test_adapter_computes_h_plus_w_up_sigma_w_down_h(non_linearity, sigma):
    torch.manual_seed(0)
    adapter = BottleneckAdapter(width=12, bottleneck=3, non_linearity=non_linearity)
    nn.init.normal_(adapter.up.weight)
    nn.init.normal_(adapter.up.bias)
    h = torch.randn(2, 5, 12)
    W_down, b_down, W_up, b_up = adapter.down.weight, adapter.down.bias, adapter.up.weight, adapter.up.bias
    expected = h + sigma(h @ W_down.T + b_down) @ W_up.T + b_up      # F1.1, seed 000 §4
    torch.testing.assert_close(adapter(h), expected)


def test_adapter_is_exactly_the_identity_at_initialisation():
    """F1.4: W_up = 0 and b_up = 0, so the branch is 0; W_down is Xavier-normal, var 2/(d_in + d_out)."""
    torch.manual_seed(0)
    adapter = BottleneckAdapter(width=768, bottleneck=64)
    h = torch.randn(3, 768)
    assert torch.equal(adapter(h), h)
    assert torch.count_nonzero(adapter.up.weight) == 0 and torch.count_nonzero(adapter.up.bias) == 0
    assert abs(adapter.down.weight.var().item() - 2 / (768 + 64)) < 0.1 * 2 / (768 + 64)


def test_one_adapter_has_2dr_plus_d_plus_r_parameters_the_seeds_worked_example():
    """F1.2 and the seed's worked example (000 §4), term by term: W_down, b_down, W_up, b_up.

    The seed prints the total of ``768 × 64 + 64 + 64 × 768 + 768`` as 100,096; the sum is 99,136
    (49,152 + 64 + 49,152 + 768): an arithmetic slip in the seed, which FORMULAS.md F1.2 copied.
    The count follows the formula, and the lesson shows the sum.
    """
    d, r = 768, 64
    seed_terms = {"down.weight": 768 * 64, "down.bias": 64, "up.weight": 64 * 768, "up.bias": 768}
    adapter = BottleneckAdapter(d, r)
    assert {name: p.numel() for name, p in adapter.named_parameters()} == seed_terms
    assert sum(p.numel() for p in adapter.parameters()) == 2 * d * r + d + r == sum(seed_terms.values()) == 99_136
    assert sum(p.numel() for p in BottleneckAdapter(d, r, bias=False).parameters()) == 2 * d * r


# ---- on the models: placement, counts ------------------------------------------------------------

def test_placements_on_t5():
    names = {placement: wrapped_sublayers(get_peft(tiny("t5"), "adapter", adapter_placement=placement,
                                                   adapter_size=4))
             for placement in PLACEMENTS}
    blocks = [f"encoder.blocks.{i}" for i in range(2)] + [f"decoder.blocks.{i}" for i in range(3)]
    assert names["houlsby"] == sorted(f"{b}.{s}" for b in blocks for s in ("self_attn", "ffn"))
    assert names["pfeiffer"] == sorted(f"{b}.ffn" for b in blocks)
    assert names["self_attn"] == sorted(f"{b}.self_attn" for b in blocks)
    with_cross = wrapped_sublayers(get_peft(tiny("t5"), "adapter", adapter_size=4, cross_adapter=True))
    assert sorted(set(with_cross) - set(names["houlsby"])) == [f"decoder.blocks.{i}.cross_attn" for i in range(3)]


def test_adapter_stacks_choose_the_encoder_or_the_decoder_of_t5():
    both = wrapped_sublayers(get_peft(tiny("t5"), "adapter", adapter_size=4, cross_adapter=True))
    decoder = wrapped_sublayers(get_peft(tiny("t5"), "adapter", adapter_size=4, cross_adapter=True,
                                         adapter_stacks="decoder"))                  # a string, as --option gives it
    encoder = wrapped_sublayers(get_peft(tiny("t5"), "adapter", adapter_size=4, adapter_stacks=("encoder",)))
    assert decoder == [f"decoder.blocks.{i}.{s}" for i in range(3) for s in ("cross_attn", "ffn", "self_attn")]
    assert encoder == [f"encoder.blocks.{i}.{s}" for i in range(2) for s in ("ffn", "self_attn")]
    assert sorted(decoder + encoder) == both
    peft = get_peft(tiny("t5"), "adapter", adapter_stacks=["decoder", "encoder"])
    assert peft.options.adapter_stacks == ("encoder", "decoder")                     # one order, as saved
    model = get_peft(tiny("t5"), "adapter", adapter_size=4, adapter_stacks="decoder").model
    assert all(param.requires_grad for name, param in model.named_parameters() if "norm" in name)   # all norms


def test_placements_on_gpt():
    names = {placement: wrapped_sublayers(get_peft(tiny("gpt"), "adapter", adapter_placement=placement,
                                                   adapter_size=4))
             for placement in PLACEMENTS}
    assert names["houlsby"] == [f"blocks.{i}.{s}" for i in range(2) for s in ("attn", "mlp")]
    assert names["pfeiffer"] == [f"blocks.{i}.mlp" for i in range(2)]
    assert names["self_attn"] == [f"blocks.{i}.attn" for i in range(2)]


def test_the_adapter_acts_on_the_sublayer_output_inside_the_residual():
    """T5 block, self_attn placement: x + Adapter(self_attn(norm(x))), then the FFN as before."""
    peft = randomize_adapters(get_peft(tiny("t5"), "adapter", adapter_placement="self_attn", adapter_size=4))
    block = peft.model.encoder.blocks[0]
    x = torch.randn(2, 5, 16)
    attention = block.self_attn.base_layer(block.self_attn_norm(x), mask=None)
    h = x + block.self_attn.adapter(attention)
    expected = h + block.ffn(block.ffn_norm(h))
    torch.testing.assert_close(block(x, self_mask=None), expected)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_trainable_count_is_n_adapters_times_2dr_plus_d_plus_r(kind, placement):
    """F1.2 per adapter; houlsby has 2 adapters per block, pfeiffer and self_attn 1."""
    d, r = 16, 4
    n_blocks = 5 if kind == "t5" else 2
    per_block = 2 if placement == "houlsby" else 1
    peft = get_peft(tiny(kind), "adapter", adapter_placement=placement, adapter_size=r, train_layer_norms=False)
    assert count_parameters(peft)[0] == n_blocks * per_block * (2 * d * r + d + r)


def test_whole_model_count_without_biases_is_L_times_2dr():
    """F1.3 (seed 000 §3.1.3): one adapter per layer (after self-attention), no biases: N = L·(d·r + r·d)."""
    config = minipeft.T5Config(vocab_size=32, d_model=768, d_kv=8, d_ff=8, num_layers=2, num_decoder_layers=2,
                               num_heads=2, dropout_rate=0.0)
    torch.manual_seed(0)
    model = minipeft.T5Model(config)
    peft = get_peft(model, "adapter", adapter_placement="self_attn", adapter_size=64, adapter_bias=False,
                    train_layer_norms=False)
    L, d, r = 4, 768, 64
    assert count_parameters(peft)[0] == L * (d * r + r * d) == 393_216
    peft = get_peft(minipeft.T5Model(config), "adapter", adapter_placement="self_attn",  # default r = 64, biases
                    train_layer_norms=False)
    assert count_parameters(peft)[0] == L * (2 * d * r + d + r) == 4 * 99_136


def test_reduction_factor_sets_the_bottleneck():
    peft = get_peft(tiny("gpt"), "adapter", reduction_factor=4)
    assert {adapter.down.out_features for adapter in peft.adapters()} == {16 // 4}


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_train_layer_norms_adds_exactly_the_norms(kind):
    """F1.5: the layer norms train beside the adapters, by default."""
    without = count_parameters(get_peft(tiny(kind), "adapter", adapter_size=4, train_layer_norms=False))[0]
    peft = get_peft(tiny(kind), "adapter", adapter_size=4)
    if kind == "t5":   # RMSNorm scales: 2 per encoder block, 3 per decoder block, 2 final
        norms = (2 * 2 + 3 * 3 + 2) * 16
    else:              # LayerNorm scale and shift: ln_1, ln_2 per block, ln_f
        norms = (2 * 2 + 1) * 2 * 16
    assert count_parameters(peft)[0] == without + norms


# ---- behaviour -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_model_is_unchanged_at_initialisation(kind, placement):
    model = tiny(kind)
    inputs = batch(kind)
    with torch.no_grad():
        base = model(**inputs)
        peft = get_peft(model, "adapter", adapter_placement=placement, adapter_size=4, cross_adapter=kind == "t5")
        assert torch.equal(peft(**inputs), base)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
@pytest.mark.parametrize("train_layer_norms", [False, True])
def test_only_adapter_parameters_and_the_norms_get_gradients(kind, train_layer_norms):
    peft = randomize_adapters(get_peft(tiny(kind), "adapter", adapter_size=4,
                                       train_layer_norms=train_layer_norms)).train()
    norms = {id(p) for m in peft.modules() if isinstance(m, (RMSNorm, nn.LayerNorm)) for p in m.parameters()}
    peft(**batch(kind)).square().mean().backward()
    for name, param in peft.named_parameters():
        trained = ".adapter." in name or (train_layer_norms and id(param) in norms)
        assert param.requires_grad == trained, name
        assert (param.grad is not None) == trained, name


@pytest.mark.parametrize("kind", ["t5", "gpt"])
@pytest.mark.parametrize("train_layer_norms", [False, True])
def test_disabled_runs_the_untouched_base(kind, train_layer_norms):
    model = tiny(kind)
    inputs = batch(kind)
    with torch.no_grad():
        base = model(**inputs)
        peft = randomize_adapters(get_peft(model, "adapter", adapter_size=4, train_layer_norms=train_layer_norms))
        if train_layer_norms:   # training moved the norms, which belong to the base model
            for name, param in peft.named_parameters():
                if param.requires_grad and ".adapter." not in name:
                    param.mul_(1.5)
        adapted = peft(**inputs)
        with peft.disabled():
            assert torch.equal(peft(**inputs), base)
        assert torch.equal(peft(**inputs), adapted)
    assert (adapted - base).abs().max() > 1e-3


def test_generation_goes_through_the_adapters():
    model = tiny("t5")
    ids = batch("t5")["input_ids"]
    base_tokens = model.generate(ids, max_new_tokens=4)
    peft = get_peft(model, "adapter", adapter_size=4)
    assert torch.equal(peft.generate(ids, max_new_tokens=4), base_tokens)   # identity at init
    randomize_adapters(peft)
    start = torch.zeros(ids.shape[0], 1, dtype=torch.long)                 # decoder start token
    with torch.no_grad():
        first_logits = peft(input_ids=ids, decoder_input_ids=start)[:, -1]  # (B, V), through the adapters
        with peft.disabled():
            assert torch.equal(peft.generate(ids, max_new_tokens=4), base_tokens)
            base_logits = peft(input_ids=ids, decoder_input_ids=start)[:, -1]
    assert (first_logits - base_logits).abs().max() > 1e-3
    assert torch.equal(peft.generate(ids, max_new_tokens=1)[:, 0], first_logits.argmax(-1))


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_save_then_load_reproduces_the_outputs(kind, tmp_path):
    peft = randomize_adapters(get_peft(tiny(kind), "adapter", adapter_placement="pfeiffer", adapter_size=3,
                                       non_linearity="gelu", train_layer_norms=True))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if param.requires_grad and ".adapter." not in name:
                param.add_(0.25)
    path = tmp_path / "adapter.safetensors"
    save_trained(peft, path)
    restored = load_trained(tiny(kind), path, method="adapter")
    assert restored.options == peft.options
    with torch.no_grad():
        assert torch.equal(restored(**batch(kind)), peft(**batch(kind)))


def test_adapters_cannot_be_merged():
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        get_peft(tiny("gpt"), "adapter").merge()


@pytest.mark.parametrize("options, message", [
    (dict(adapter_placement="after_everything"), "adapter_placement must be one of houlsby, pfeiffer, self_attn"),
    (dict(non_linearity="softmax"), "non_linearity must be one of"),
    (dict(adapter_size=8, reduction_factor=2), "either as adapter_size .* or as reduction_factor"),
    (dict(adapter_size=0), "adapter_size must be a positive integer"),
    (dict(reduction_factor=32), "larger than the model width 16"),
    (dict(cross_adapter=True), "GPT has no cross-attention"),
    (dict(adapter_stacks="middle"), "adapter_stacks must name some of"),
    (dict(adapter_stacks=()), "adapter_stacks must name some of"),
    (dict(adapter_stacks="encoder"), "leaves GPT no block to adapt"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        get_peft(tiny("gpt"), "adapter", **options)
