"""The machinery every method shares: registry, freezing, report, save/load, switching off."""

import pytest
import torch

import minipeft
from minipeft.methods import get_peft, load_trained, method_names, save_trained
from minipeft.methods.base import read_checkpoint

import tiny_models


def tiny(kind, seed=0):
    return tiny_models.tiny(kind, seed, decoder_layers=2)


def batch(kind):
    return tiny_models.batch(kind, length=5, decoder_length=3)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown method 'lorra'; available: .*full.*probe"):
        get_peft(tiny("t5"), "lorra")


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match="method 'full' has no option"):
        get_peft(tiny("t5"), "full", r=8)


def test_a_second_method_on_the_same_model_is_refused():
    peft = get_peft(tiny("t5"), "lora", target_modules=["q", "v"])
    with pytest.raises(ValueError, match="already has method 'lora' attached.*load the base again"):
        get_peft(peft, "prefix")
    with pytest.raises(ValueError, match="already has a method's layers attached"):
        get_peft(peft.model, "adapter")                   # the base, its LoRA layers still inside


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_full_trains_everything(kind):
    model = tiny(kind)
    peft = get_peft(model, "full")
    trainable, total = minipeft.methods.count_parameters(peft)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    assert peft.trainable_report() == f"trainable params: {total:,} || all params: {total:,} || trainable%: 100.0000"


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_probe_trains_only_a_head_copy_and_starts_at_the_base(kind):
    model = tiny(kind)
    inputs = batch(kind)
    expected = model(**inputs)
    peft = get_peft(model, "probe")
    trained = peft.trained_state_dict()
    assert list(trained) == ["model.lm_head.weight"]
    assert trained["model.lm_head.weight"].shape == (64, 16)
    torch.testing.assert_close(peft(**inputs), expected)
    # Training the copy must not move the frozen embedding.
    embedding = (model.shared if kind == "t5" else model.wte).weight.clone()
    with torch.no_grad():
        peft.model.lm_head.weight.add_(1.0)
    assert not torch.allclose(peft(**inputs), expected)
    assert torch.equal((model.shared if kind == "t5" else model.wte).weight, embedding)
    with peft.disabled():
        torch.testing.assert_close(peft(**inputs), expected)
    assert not torch.allclose(peft(**inputs), expected)


def test_full_cannot_be_switched_off():
    with pytest.raises(RuntimeError, match="no untouched base"):
        with get_peft(tiny("t5"), "full").disabled():
            pass


def test_merge_is_refused_by_methods_that_cannot_merge():
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        get_peft(tiny("gpt"), "probe").merge()


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_save_then_load_reproduces_the_outputs(kind, tmp_path):
    peft = get_peft(tiny(kind), "probe")
    with torch.no_grad():
        peft.model.lm_head.weight.normal_()
    inputs = batch(kind)
    path = tmp_path / "run" / "peft.safetensors"
    size = save_trained(peft, path)
    assert size == path.stat().st_size and not list(path.parent.glob("*.tmp"))
    metadata, tensors = read_checkpoint(path)
    assert metadata["method"] == "probe" and list(tensors) == ["model.lm_head.weight"]
    restored = load_trained(tiny(kind), path)
    torch.testing.assert_close(restored(**inputs), peft(**inputs))


def test_loading_onto_another_base_is_refused(tmp_path):
    path = tmp_path / "peft.safetensors"
    save_trained(get_peft(tiny("t5"), "probe"), path)
    with pytest.raises(ValueError, match="different base model"):
        load_trained(tiny("t5", seed=1), path)


def test_loading_a_checkpoint_of_another_method_is_refused(tmp_path):
    path = tmp_path / "peft.safetensors"
    save_trained(get_peft(tiny("t5"), "probe"), path)
    with pytest.raises(ValueError, match="holds a 'probe' checkpoint, not 'full'"):
        load_trained(tiny("t5"), path, method="full")


def test_missing_checkpoint_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="no PEFT checkpoint"):
        load_trained(tiny("t5"), tmp_path / "nothing.safetensors")


def test_mismatched_trained_tensors_are_listed():
    peft = get_peft(tiny("t5"), "probe")
    with pytest.raises(ValueError, match="missing: model.lm_head.weight(.|\n)*unexpected: extra"):
        peft.load_trained_state_dict({"extra": torch.zeros(1)})


def test_registry_has_the_baselines():
    assert {"full", "probe"} <= set(method_names())


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_generate_goes_through_the_method(kind):
    model = tiny(kind).eval()
    peft = get_peft(model, "probe")
    ids = batch(kind)["input_ids"]
    assert torch.equal(peft.generate(ids, max_new_tokens=3), model.generate(ids, max_new_tokens=3))
