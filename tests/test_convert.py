"""The converter: every checkpoint layout loads, every bad input gets one clear error."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import minipeft
from minipeft.convert import CheckpointError, gpt2_config, gpt2_key_map, rename, GPT2_IGNORED

from conftest import reference
from reference_models import hf_gpt2, hf_t5

SMALL_T5 = dict(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def transformers():
    return reference("transformers")


@pytest.fixture(scope="module")
def small_t5(transformers, tmp_path_factory):
    hf = hf_t5(transformers, **SMALL_T5)
    path = tmp_path_factory.mktemp("small_t5")
    hf.save_pretrained(path)
    return hf, path


def copy_checkpoint(source, destination, edit=None):
    """Copy config.json and model.safetensors, letting ``edit`` change the tensors."""
    destination.mkdir(exist_ok=True)
    (destination / "config.json").write_text((source / "config.json").read_text())
    tensors = load_file(str(source / "model.safetensors"))
    if edit:
        edit(tensors)
    save_file(tensors, str(destination / "model.safetensors"))
    return destination


def assert_same_logits(hf, ours, vocab_size):
    x = torch.randint(2, vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    y = torch.randint(2, vocab_size, (2, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(input_ids=x, decoder_input_ids=y) - hf(input_ids=x, decoder_input_ids=y).logits).abs().max() <= 1e-4


# ---- layouts ---------------------------------------------------------------------------------

def test_sharded_safetensors(transformers, tmp_path):
    hf = hf_t5(transformers, **SMALL_T5)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_same_logits(hf, minipeft.load_hf(tmp_path), 200)


def test_pytorch_bin_single_and_sharded(small_t5, tmp_path):
    hf, _ = small_t5
    state = {name: tensor.clone() for name, tensor in hf.state_dict().items()}  # includes tied aliases, like old .bin files
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text(json.dumps(hf.config.to_dict()))
    torch.save(state, single / "pytorch_model.bin")
    assert_same_logits(hf, minipeft.load_hf(single), 200)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(hf.config.to_dict()))
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, keys in halves.items():
        torch.save({key: state[key] for key in keys}, sharded / file)
    weight_map = {key: file for file, keys in halves.items() for key in keys}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_logits(hf, minipeft.load_hf(sharded), 200)


def test_mt5(transformers, tmp_path):
    config = transformers.MT5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                    feed_forward_proj="gated-gelu", **SMALL_T5)
    from reference_models import randomize
    hf = randomize(transformers.MT5ForConditionalGeneration(config)).eval()
    hf.save_pretrained(tmp_path)
    ours = minipeft.load_hf(tmp_path)
    assert not ours.config.scale_decoder_outputs
    assert_same_logits(hf, ours, 200)


@pytest.mark.parametrize("size", [dict(n_embd=768, n_layer=12, n_head=12), dict(n_embd=1024, n_layer=24, n_head=16),
                                  dict(n_embd=1280, n_layer=36, n_head=20), dict(n_embd=1600, n_layer=48, n_head=25)],
                         ids=["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_key_map_covers_every_gpt2_size(transformers, size):
    """Every tensor of each GPT-2 size finds its place, with the right shape (built on the meta device)."""
    hf_config = transformers.GPT2Config(**size)
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(hf_config)
        ours = minipeft.GPT(gpt2_config(hf_config.to_dict()))
    checkpoint = {name.removeprefix("transformer."): t for name, t in hf.state_dict().items()}
    state, unexpected = rename(checkpoint, gpt2_key_map(ours.config), GPT2_IGNORED.fullmatch)
    assert unexpected == []
    expected = ours.state_dict()
    assert set(state) == set(expected)
    assert all(state[name].shape == expected[name].shape for name in state)


# ---- bad input --------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minipeft.load_hf(tmp_path / "nowhere")


def test_a_file_instead_of_a_directory(small_t5):
    _, path = small_t5
    with pytest.raises(NotADirectoryError, match="expects the checkpoint \\*directory\\*"):
        minipeft.load_hf(path / "config.json")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        minipeft.load_hf(tmp_path)


def test_config_without_weights(small_t5, tmp_path):
    _, path = small_t5
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights: expected one of model.safetensors"):
        minipeft.load_hf(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' .* not supported; minipeft loads t5, mt5, gpt2"):
        minipeft.load_hf(tmp_path)


def test_missing_tensor_is_named(small_t5, tmp_path):
    _, path = small_t5
    broken = copy_checkpoint(path, tmp_path / "broken", lambda t: t.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight \(→ encoder\.blocks\.1\.ffn\.wo\.weight\)"):
        minipeft.load_hf(broken)


def test_misshaped_and_unexpected_tensors_are_all_listed(small_t5, tmp_path):
    _, path = small_t5

    def edit(tensors):
        tensors["decoder.block.0.layer.1.EncDecAttention.q.weight"] = torch.zeros(32, 16)
        tensors["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(1)

    broken = copy_checkpoint(path, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError) as error:
        minipeft.load_hf(broken)
    message = str(error.value)
    assert "unexpected (1): encoder.block.0.layer.0.SelfAttention.extra.weight" in message
    assert "mis-shaped (1): decoder.blocks.0.cross_attn.q.weight: checkpoint (32, 16), model (32, 32)" in message


def test_missing_shard_is_named(transformers, tmp_path):
    hf = hf_t5(transformers, **SMALL_T5)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"lists shards that are not in .*{shard.name}"):
        minipeft.load_hf(tmp_path)


def test_unsupported_feed_forward(small_t5, tmp_path):
    _, path = small_t5
    broken = copy_checkpoint(path, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["feed_forward_proj"] = "gated-silu"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="feed_forward_proj='gated-silu' is not supported"):
        minipeft.load_hf(broken)


def test_gpt2_with_unsupported_options(transformers, tmp_path):
    hf = hf_gpt2(transformers, vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2,
                 scale_attn_by_inverse_layer_idx=True)
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        minipeft.load_hf(tmp_path)


def test_demo_with_a_bad_checkpoint_says_why(small_t5, transformers, tmp_path, capsys):
    from minipeft import demo
    assert demo.main(["--weights", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    hf_gpt2(transformers, vocab_size=100, n_positions=16, n_embd=16, n_layer=1, n_head=2,
            eos_token_id=99, bos_token_id=99).save_pretrained(tmp_path / "gpt2")
    assert demo.main(["--weights", str(tmp_path / "gpt2")]) == 2
    assert "holds a GPT; the demo runs a T5 checkpoint" in capsys.readouterr().err
    _, path = small_t5                                     # a T5 without spiece.model
    assert demo.main(["--weights", str(path)]) == 2
    assert "spiece.model not found" in capsys.readouterr().err
