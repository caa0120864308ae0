"""LoRA (F6): the formula, its parameter count, parity with `peft` on `transformers`, merging.

Exercise: ``pytest tests/test_lora.py --exercise lora`` runs these against your copy of lora.py.
"""

import math

import pytest
import torch
from torch import nn

import minipeft
from minipeft.convert import gpt2_key_map, t5_key_map
from minipeft.functional import dropout
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained
from minipeft.methods.lora import LoRALinear

from conftest import reference
from reference_models import GPT2_SMALL_TEST, hf_gpt2, hf_t5
import tiny_models
from tiny_models import batch, empty_model

T5_PARITY = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def tiny(kind, seed=0):
    return tiny_models.tiny(kind, seed, decoder_layers=2)


def randomize_lora(peft, seed=0):
    """Trained-looking LoRA tensors: B non-zero, so the update really changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in peft.lora_layers():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=generator) * 0.3)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.3)
    return peft


# ---- the layer: F6.1, F6.2 ----------------------------------------------------------------------

def test_lora_layer_computes_w0_x_plus_scaled_b_a_x():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=6.0)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 4, 6)
    A, B = layer.lora_A.weight, layer.lora_B.weight                     # (r, k), (d, r)
    expected = x @ base.weight.T + base.bias + (6.0 / 2) * x @ A.T @ B.T  # F6.1 with α/r = 3
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 3.0 * B @ A)


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_lora_starts_as_the_base_layer_b_zero_a_random(init):
    """F6.2: ΔW = B A = 0 at the start, so the wrapped layer computes exactly what the frozen one did."""
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    layer = LoRALinear(base, rank=4, alpha=8.0, init=init)
    x = torch.randn(2, 32)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    A = layer.lora_A.weight
    assert A.std() > 0
    if init is True:   # peft: Kaiming-uniform with a=√5 → U(-1/√k, 1/√k)
        assert A.abs().max() <= 1 / math.sqrt(32)
    else:              # N(0, 1/r²)
        assert abs(A.std().item() - 1 / 4) < 0.08


def test_dropout_is_on_the_lora_path_only():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = LoRALinear(base, rank=2, alpha=2.0, dropout=0.5).train()
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 8)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    expected = base(x) + layer.lora_B(layer.lora_A(dropout(x, 0.5)))   # minipeft's dropout, same seed
    torch.testing.assert_close(out, expected)
    layer.eval()
    torch.testing.assert_close(layer(x), base(x) + layer.lora_B(layer.lora_A(x)))


# ---- choosing the layers, counting ---------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [("t5", {"q", "v"}), ("gpt", {"c_attn"})])
def test_default_targets_are_the_query_and_value_projections(kind, expected):
    peft = get_peft(tiny(kind), "lora")
    wrapped = {name for name, module in peft.model.named_modules() if isinstance(module, LoRALinear)}
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == expected
    n_attention = (2 + 2 * 2) if kind == "t5" else 2  # T5: encoder self, decoder self + cross; GPT: one per block
    assert len(wrapped) == n_attention * len(expected)


def test_targets_by_list_suffix_and_by_regex():
    peft = get_peft(tiny("t5"), "lora", target_modules=["self_attn.q", "wo"])
    wrapped = sorted(name for name, m in peft.model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted([f"{stack}.blocks.{i}.{leaf}" for stack in ("encoder", "decoder") for i in range(2)
                              for leaf in ("self_attn.q", "ffn.wo")])
    peft = get_peft(tiny("t5"), "lora", target_modules=r"decoder\.blocks\.\d+\.cross_attn\.(q|v)")
    wrapped = [name for name, m in peft.model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 4 and all(".cross_attn." in name for name in wrapped)


@pytest.mark.parametrize("target", [["query"], ["q", "value"], r"encoder\.q"])
def test_a_target_matching_no_layer_is_refused_with_the_layer_names(target):
    with pytest.raises(ValueError, match=r"matches no linear layer of T5Model; its linear layers are named "
                                         r"k, o, q, v, wi, wo"):
        get_peft(tiny("t5"), "lora", target_modules=target)


@pytest.mark.parametrize("kind, targets", [("t5", ["q", "v"]), ("t5", ["k", "wi", "wo"]), ("gpt", ["c_attn", "c_fc"])])
def test_trainable_count_is_r_times_d_plus_k_per_matrix(kind, targets):
    """F6.4: each wrapped (d, k) matrix adds r (d + k) parameters, and nothing else trains."""
    model = tiny(kind)
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets}
    r = 4
    expected = sum(r * (m.out_features + m.in_features) for m in linears.values())
    peft = get_peft(model, "lora", r=r, target_modules=targets)
    trainable, total = count_parameters(peft)
    assert trainable == expected
    assert total == sum(p.numel() for p in model.parameters())
    assert sorted(peft.trained_state_dict()) == sorted(
        f"model.{name}.lora_{ab}.weight" for name in linears for ab in "AB")


@pytest.fixture(scope="module")
def peft_counts():
    """peft's own counts on full-size transformers models (built on the meta device: shapes only)."""
    transformers, peft = reference("transformers"), reference("peft")
    from reference_models import T5_SMALL
    with torch.device("meta"):
        t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_SMALL))
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    return {"t5": peft.get_peft_model(t5, peft.LoraConfig(r=8, target_modules=["q", "v"])).get_nb_trainable_parameters(),
            "gpt": peft.get_peft_model(gpt2, peft.LoraConfig(r=8, target_modules=["c_attn"])).get_nb_trainable_parameters()}


def test_t5_small_q_v_rank_8_trains_294912_like_peft(peft_counts):
    from reference_models import T5_SMALL
    peft = get_peft(empty_model(minipeft.T5Config(**T5_SMALL)), "lora", r=8, target_modules=["q", "v"])
    # F6.4: 36 matrices (6 encoder self + 6 decoder self + 6 cross, q and v), each 512 × 512
    assert count_parameters(peft)[0] == 36 * 8 * (512 + 512) == 294_912 == peft_counts["t5"][0]
    assert count_parameters(peft)[1] == peft_counts["t5"][1]


def test_gpt2_c_attn_rank_8_trains_294912_like_peft(peft_counts):
    peft = get_peft(empty_model(minipeft.GPTConfig()), "lora", r=8)
    # F6.4: 12 fused projections, each 768 → 2304
    assert count_parameters(peft)[0] == 12 * 8 * (768 + 3 * 768) == 294_912 == peft_counts["gpt"][0]
    assert count_parameters(peft)[1] == peft_counts["gpt"][1]


# ---- training: only LoRA moves ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_only_lora_parameters_get_gradients(kind):
    peft = randomize_lora(get_peft(tiny(kind), "lora", r=2))
    peft.train()
    peft(**batch(kind)).square().mean().backward()
    for name, param in peft.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        assert param.requires_grad == is_lora, name
        assert (param.grad is not None) == is_lora, name


# ---- merge, unmerge, switching off -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_merged_equals_unmerged_and_unmerge_restores_w0(kind):
    model = tiny(kind)
    weights_before = {name: p.clone() for name, p in model.named_parameters()}
    peft = randomize_lora(get_peft(model, "lora", r=4, lora_alpha=16, target_modules=["q", "v", "wo"]
                                   if kind == "t5" else ["c_attn", "c_fc"]))
    inputs = batch(kind)
    with torch.no_grad():
        unmerged = peft(**inputs)
        peft.merge()
        merged = peft(**inputs)
    assert peft.merged and all(layer.merged for layer in peft.lora_layers())
    assert (merged - unmerged).abs().max() <= 1e-5
    layer = peft.lora_layers()[0]
    assert not torch.allclose(layer.base_layer.weight, weights_before[_base_name(peft, layer)])  # W changed
    peft.unmerge()
    for name, param in model.named_parameters():
        if ".lora_" not in name:
            original = weights_before[name.replace(".base_layer", "")]
            torch.testing.assert_close(param, original, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(peft(**inputs), unmerged)


def _base_name(peft, layer):
    name = next(n for n, m in peft.model.named_modules() if m is layer)
    return f"{name}.weight"


def test_eval_and_train_never_merge():
    peft = randomize_lora(get_peft(tiny("t5"), "lora"))
    weight = peft.lora_layers()[0].base_layer.weight.clone()
    peft.eval()
    peft.train()
    assert not peft.merged and torch.equal(peft.lora_layers()[0].base_layer.weight, weight)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_disabled_runs_the_frozen_base(kind):
    model = tiny(kind)
    inputs = batch(kind)
    with torch.no_grad():
        base = model(**inputs)
        peft = randomize_lora(get_peft(model, "lora"))
        adapted = peft(**inputs)
        with peft.disabled():
            assert torch.equal(peft(**inputs), base)
        assert torch.equal(peft(**inputs), adapted)
    assert (adapted - base).abs().max() > 1e-3


def test_merge_and_disable_refuse_each_other():
    peft = randomize_lora(get_peft(tiny("gpt"), "lora"))
    peft.merge()
    with pytest.raises(RuntimeError, match="merged into the base weights.*unmerge"):
        with peft.disabled():
            pass
    with pytest.raises(RuntimeError, match="already merged"):
        peft.merge()
    peft.unmerge()
    with pytest.raises(RuntimeError, match="not merged"):
        peft.unmerge()


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_save_then_load_reproduces_the_outputs(kind, tmp_path):
    peft = randomize_lora(get_peft(tiny(kind), "lora", r=3, lora_alpha=6, target_modules=["v"] if kind == "t5"
                                   else ["c_attn"]))
    path = tmp_path / "lora.safetensors"
    save_trained(peft, path)
    restored = load_trained(tiny(kind), path, method="lora")
    assert restored.options == peft.options
    inputs = batch(kind)
    with torch.no_grad():
        torch.testing.assert_close(restored(**inputs), peft(**inputs), rtol=0, atol=0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="target_modules is empty"):
        get_peft(tiny("t5"), "lora", target_modules=[])
    with pytest.raises(ValueError, match="r \\(the LoRA rank\\) must be a positive integer"):
        get_peft(tiny("t5"), "lora", r=0)
    with pytest.raises(ValueError, match="lora_dropout must be in"):
        get_peft(tiny("t5"), "lora", lora_dropout=1.0)


# ---- parity with peft on transformers ------------------------------------------------------------

def copy_lora_into_peft(ours, theirs, key_map):
    """Copy our A, B into peft's ``…lora_A.default.weight`` tensors, translating names through the
    checkpoint key map of convert.py. Every peft LoRA tensor must receive one of ours."""
    ours_state = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if ".lora_" not in name:
                continue
            module, ab = name.removeprefix("base_model.model.").removesuffix(".default.weight").rsplit(".", 1)
            base_key = key_map[module.removeprefix("transformer.") + ".weight"]       # our name of the base weight
            param.copy_(ours_state["model." + base_key.removesuffix(".weight") + f".{ab}.weight"])
            copied += 1
    assert copied == len(ours.trained_state_dict())


@pytest.mark.parametrize("r, alpha, targets", [(4, 8, ["q", "v"]), (2, 16, ["k", "o", "wi", "wo"])])
def test_t5_logits_match_peft(tmp_path, r, alpha, targets):
    transformers, peft_lib = reference("transformers"), reference("peft")
    hf = hf_t5(transformers, **T5_PARITY)
    hf.save_pretrained(tmp_path)
    ours = randomize_lora(get_peft(minipeft.load_hf(tmp_path), "lora", r=r, lora_alpha=alpha, target_modules=targets))
    theirs = peft_lib.get_peft_model(hf, peft_lib.LoraConfig(task_type="SEQ_2_SEQ_LM", r=r, lora_alpha=alpha,
                                                             target_modules=targets)).eval()
    copy_lora_into_peft(ours, theirs, t5_key_map(ours.config))
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    inputs = batch("t5", vocab=120)
    with torch.no_grad():
        expected = theirs(**inputs).logits
        assert (ours(**inputs) - expected).abs().max() <= 1e-4
        with theirs.disable_adapter():
            base = theirs(**inputs).logits
        assert (expected - base).abs().max() > 1e-2           # the update is not negligible
        ours.merge()
        assert (ours(**inputs) - expected).abs().max() <= 1e-4


def test_gpt2_logits_match_peft(tmp_path):
    transformers, peft_lib = reference("transformers"), reference("peft")
    hf = hf_gpt2(transformers, eos_token_id=999, bos_token_id=999, **GPT2_SMALL_TEST)
    hf.save_pretrained(tmp_path)
    ours = randomize_lora(get_peft(minipeft.load_hf(tmp_path), "lora", r=4, lora_alpha=32))
    theirs = peft_lib.get_peft_model(hf, peft_lib.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=32,
                                                             target_modules=["c_attn"], fan_in_fan_out=True)).eval()
    copy_lora_into_peft(ours, theirs, gpt2_key_map(ours.config))
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        with theirs.disable_adapter():
            base = theirs(input_ids=ids).logits
        assert (expected - base).abs().max() > 1e-2
        assert (ours(input_ids=ids) - expected).abs().max() <= 1e-4
        ours.merge()
        assert (ours(input_ids=ids) - expected).abs().max() <= 1e-4
