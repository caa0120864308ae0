"""BitFit (F10.3): only the biases train; T5, which has none, is refused unless a fallback is chosen.

Exercise: ``pytest tests/test_bitfit.py --exercise bitfit`` runs these against your copy of bitfit.py.
"""

import pytest
import torch

import minipeft
from minipeft.convert import gpt2_key_map
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained

from conftest import reference
from reference_models import GPT2_SMALL_TEST, T5_SMALL, hf_gpt2
from tiny_models import empty_model, tiny


def gpt_inputs():
    return dict(input_ids=torch.randint(2, 64, (2, 6), generator=torch.Generator().manual_seed(1)))


def train_biases(peft, seed=0):
    """Stand-in for training: move every trainable tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return peft


def test_gpt_trains_exactly_its_biases():
    peft = get_peft(tiny("gpt"), "bitfit")
    trained = sorted(name.removeprefix("model.") for name in peft.trained_state_dict())
    per_block = ["attn.c_attn.bias", "attn.c_proj.bias", "ln_1.bias", "ln_2.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"]
    assert trained == sorted([f"blocks.{i}.{name}" for i in range(2) for name in per_block] + ["ln_f.bias"])


def test_gpt_count_is_the_sum_of_the_bias_sizes():
    """Per block: c_attn 3C, attn c_proj C, c_fc 4C, mlp c_proj C, ln_1 C, ln_2 C = 11C; plus ln_f C."""
    C, L = 16, 2
    assert count_parameters(get_peft(tiny("gpt"), "bitfit"))[0] == L * 11 * C + C


def test_gpt2_small_trains_102144_biases_like_transformers():
    transformers = reference("transformers")
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    hf_biases = sum(p.numel() for name, p in hf.named_parameters() if name.endswith(".bias"))
    trainable, total = count_parameters(get_peft(empty_model(minipeft.GPTConfig()), "bitfit"))
    assert trainable == 12 * 11 * 768 + 768 == 102_144 == hf_biases
    assert trainable / total < 0.01   # F10.4: lightweight methods train < 1 %


def test_t5_has_no_biases_and_is_refused_with_the_alternative():
    with pytest.raises(ValueError, match=r"T5Model has no bias terms.*bitfit_fallback='layer_norm'"):
        get_peft(tiny("t5"), "bitfit")


def test_t5_layer_norm_fallback_trains_every_norm_scale():
    peft = get_peft(tiny("t5"), "bitfit", bitfit_fallback="layer_norm")
    # 2 norms per encoder block, 3 per decoder block, one final norm per stack; C = 16
    assert count_parameters(peft)[0] == (2 * 2 + 3 * 3 + 2) * 16
    assert all(name.endswith("norm.weight") for name in peft.trained_state_dict())


def test_t5_small_fallback_count_equals_peft_ln_tuning():
    transformers, peft_lib = reference("transformers"), reference("peft")
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_SMALL))
    theirs = peft_lib.get_peft_model(hf, peft_lib.LNTuningConfig(task_type="SEQ_2_SEQ_LM"))
    ours = get_peft(empty_model(minipeft.T5Config(**T5_SMALL)), "bitfit", bitfit_fallback="layer_norm")
    assert count_parameters(ours)[0] == (6 * 2 + 6 * 3 + 2) * 512 == 16_384 == theirs.get_nb_trainable_parameters()[0]


def test_the_fallback_is_not_used_when_there_are_biases():
    assert (count_parameters(get_peft(tiny("gpt"), "bitfit", bitfit_fallback="layer_norm"))
            == count_parameters(get_peft(tiny("gpt"), "bitfit")))


def test_only_biases_get_gradients():
    peft = get_peft(tiny("gpt"), "bitfit").train()
    peft(**gpt_inputs()).square().mean().backward()
    for name, param in peft.named_parameters():
        assert (param.grad is not None) == name.endswith(".bias"), name


def test_disabled_runs_the_untouched_base_and_switches_back():
    model = tiny("gpt")
    with torch.no_grad():
        base = model(**gpt_inputs())
        peft = train_biases(get_peft(model, "bitfit"))
        tuned = peft(**gpt_inputs())
        with peft.disabled():
            assert torch.equal(peft(**gpt_inputs()), base)
        assert torch.equal(peft(**gpt_inputs()), tuned)
    assert (tuned - base).abs().max() > 1e-3


def test_save_then_load_reproduces_the_outputs(tmp_path):
    peft = train_biases(get_peft(tiny("gpt"), "bitfit"))
    path = tmp_path / "bitfit.safetensors"
    save_trained(peft, path)
    restored = load_trained(tiny("gpt"), path, method="bitfit")
    with torch.no_grad():
        assert torch.equal(restored(**gpt_inputs()), peft(**gpt_inputs()))


def test_tuned_biases_give_the_same_logits_in_transformers(tmp_path):
    """Parity: copy our trained biases into transformers' GPT-2 by name; the logits must agree."""
    transformers = reference("transformers")
    hf = hf_gpt2(transformers, eos_token_id=999, bos_token_id=999, **GPT2_SMALL_TEST)
    hf.save_pretrained(tmp_path)
    peft = train_biases(get_peft(minipeft.load_hf(tmp_path), "bitfit"))
    ours_name = gpt2_key_map(peft.config)
    trained = peft.trained_state_dict()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith(".bias"):
                param.copy_(trained["model." + ours_name[name.removeprefix("transformer.")]])
        ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
        assert (peft(input_ids=ids) - hf(input_ids=ids).logits).abs().max() <= 1e-4
