"""save_hf: our model (LoRA folded in) → a Hugging Face checkpoint that transformers loads with the same logits."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import minipeft
from minipeft.export import ExportError, export_run, save_hf
from minipeft.training import PEFT_FILE, run

from conftest import ROOT, reference
from reference_models import hf_gpt2, hf_t5
from tiny_runs import make_gpt2_checkpoint, subprocess_pythonpath, t5_dir, task  # noqa: F401 (fixtures)
from test_training import config, quiet

SMALL_T5 = dict(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
SMALL_GPT2 = dict(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, eos_token_id=99, bos_token_id=99)


@pytest.fixture(scope="module")
def transformers():
    return reference("transformers")


def checkpoint(transformers, tmp_path, kind):
    """A `transformers` model with random weights, saved, and loaded by us."""
    if kind == "gpt2":
        hf = hf_gpt2(transformers, **SMALL_GPT2)
    elif kind == "flan-t5":      # gated-GELU FFN, a head of its own, no rescale
        hf = hf_t5(transformers, untied_head=True, **{**SMALL_T5, "feed_forward_proj": "gated-gelu"})
        hf.config.scale_decoder_outputs = False
    else:                        # t5 v1.0: ReLU FFN, tied head rescaled by d_model^-0.5
        hf = hf_t5(transformers, **SMALL_T5)
    hf.save_pretrained(tmp_path / "source")
    return minipeft.load_hf(tmp_path / "source")


def with_trained_lora(model, target_modules):
    """LoRA with B ≠ 0, so the exported weights differ from the base's."""
    peft = minipeft.get_peft(model, "lora", r=4, lora_alpha=8, target_modules=target_modules)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return peft


def logits(model, is_encoder_decoder, hf=False):
    x = torch.randint(2, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    y = torch.randint(2, 99, (2, 3), generator=torch.Generator().manual_seed(1))
    inputs = dict(input_ids=x, decoder_input_ids=y) if is_encoder_decoder else dict(input_ids=x)
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hf else out


@pytest.mark.parametrize("kind, targets", [("t5", ["q", "v"]), ("flan-t5", ["q", "v", "wi_0", "wo"]),
                                           ("gpt2", ["c_attn"])])
def test_lora_export_loads_in_transformers_with_the_same_logits(transformers, tmp_path, kind, targets):
    peft = with_trained_lora(checkpoint(transformers, tmp_path, kind), targets)
    encoder_decoder = peft.is_encoder_decoder
    save_hf(peft, tmp_path / "exported")
    hf_class = transformers.T5ForConditionalGeneration if encoder_decoder else transformers.GPT2LMHeadModel
    hf = hf_class.from_pretrained(tmp_path / "exported").eval()
    ours = logits(peft.eval(), encoder_decoder)
    assert (logits(hf, encoder_decoder, hf=True) - ours).abs().max() <= 1e-4
    reloaded = minipeft.load_hf(tmp_path / "exported")              # and back through our converter
    assert (logits(reloaded, encoder_decoder) - ours).abs().max() <= 1e-4  # W_0 + ΔW rounds: not bit-exact
    with peft.disabled():                                            # LoRA is in it: not the base's logits
        assert (logits(peft, encoder_decoder) - ours).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_adalora_export_with_pruned_triplets_loads_in_transformers(transformers, tmp_path, kind):
    """F7.1 folded: W = W_0 + (α/r) U diag(s) Vᵀ, with some s_i pruned to 0."""
    peft = minipeft.get_peft(checkpoint(transformers, tmp_path, kind), "adalora", init_r=4, target_r=2,
                             target_modules=["q", "v"] if kind == "t5" else ["c_attn"])
    with torch.no_grad():
        for layer in peft.allocator.layers.values():
            layer.lora_E.normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
            layer.lora_E[:2] = 0.0                                      # two triplets pruned
    encoder_decoder = peft.is_encoder_decoder
    save_hf(peft, tmp_path / "exported")
    hf_class = transformers.T5ForConditionalGeneration if encoder_decoder else transformers.GPT2LMHeadModel
    hf = hf_class.from_pretrained(tmp_path / "exported").eval()
    ours = logits(peft.eval(), encoder_decoder)
    assert (logits(hf, encoder_decoder, hf=True) - ours).abs().max() <= 1e-4
    with peft.disabled():
        assert (logits(peft, encoder_decoder) - ours).abs().max() > 1e-3


def test_export_does_not_change_the_model_and_merged_equals_unmerged(transformers, tmp_path):
    peft = with_trained_lora(checkpoint(transformers, tmp_path, "t5"), ["q", "v"])
    before = {name: param.clone() for name, param in peft.named_parameters()}
    save_hf(peft, tmp_path / "unmerged")
    assert not peft.merged
    assert all(torch.equal(param, before[name]) for name, param in peft.named_parameters())
    peft.merge()
    save_hf(peft, tmp_path / "merged")
    assert peft.merged
    unmerged = load_file(str(tmp_path / "unmerged" / "model.safetensors"))
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert unmerged.keys() == merged.keys()
    assert max((unmerged[k] - merged[k]).abs().max().item() for k in merged) <= 1e-6
    # the LoRA layers are folded: W = W_0 + (α/r) B A differs from the base's W_0
    base = load_file(str(tmp_path / "source" / "model.safetensors"))
    name = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert (merged[name] - base[name]).abs().max() > 1e-3
    assert torch.equal(merged["encoder.block.0.layer.0.SelfAttention.k.weight"],
                       base["encoder.block.0.layer.0.SelfAttention.k.weight"])


def test_plain_model_round_trip_writes_the_checkpoints_names(transformers, tmp_path):
    model = checkpoint(transformers, tmp_path, "gpt2")
    save_hf(model, tmp_path / "exported")
    source = load_file(str(tmp_path / "source" / "model.safetensors"))
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert exported.keys() <= source.keys()                          # the same names (no buffers, no lm_head)
    assert all(torch.equal(exported[name], source[name]) for name in exported)   # Conv1D transposed back


@pytest.mark.parametrize("kind, method, options", [("gpt2", "bitfit", {}), ("t5", "bitfit", {"bitfit_fallback": "layer_norm"}),
                                                    ("t5", "probe", {})])
def test_methods_that_train_base_weights_export(transformers, tmp_path, kind, method, options):
    peft = minipeft.get_peft(checkpoint(transformers, tmp_path, kind), method, **options)
    encoder_decoder = peft.is_encoder_decoder
    with torch.no_grad():
        for param in peft.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    save_hf(peft, tmp_path / "exported")
    ours = logits(peft.eval(), encoder_decoder)
    assert (logits(minipeft.load_hf(tmp_path / "exported"), encoder_decoder) - ours).abs().max() <= 1e-5
    hf_class = transformers.T5ForConditionalGeneration if encoder_decoder else transformers.GPT2LMHeadModel
    hf = hf_class.from_pretrained(tmp_path / "exported").eval()
    assert (logits(hf, encoder_decoder, hf=True) - ours).abs().max() <= 1e-4
    with peft.disabled():                                            # the trained values are in the file
        assert (logits(peft, encoder_decoder) - ours).abs().max() > 1e-3


@pytest.mark.parametrize("method, options, message", [
    ("adapter", {}, "cannot be folded"),
    ("prompt", {"num_virtual_tokens": 4}, "has no place for"),
    ("prefix", {"num_virtual_tokens": 4}, "has no place for"),
])
def test_methods_that_add_layers_or_inputs_are_refused(transformers, tmp_path, method, options, message):
    peft = minipeft.get_peft(checkpoint(transformers, tmp_path, "t5"), method, **options)
    with pytest.raises(ExportError, match=message) as error:
        save_hf(peft, tmp_path / "exported")
    assert "save_trained" in str(error.value)
    assert not (tmp_path / "exported").exists()                      # nothing written


def test_bad_targets_are_refused(transformers, tmp_path):
    peft = minipeft.get_peft(checkpoint(transformers, tmp_path, "gpt2"), "probe")
    with pytest.raises(ExportError, match="GPT-2 checkpoint has no place for one"):
        save_hf(peft, tmp_path / "exported")
    with pytest.raises(ExportError, match="switched off"):
        lora = with_trained_lora(checkpoint(transformers, tmp_path, "t5"), ["q"])
        with lora.disabled():
            save_hf(lora, tmp_path / "exported")
    with pytest.raises(ExportError, match="pass the PeftModel"):
        save_hf(lora.model, tmp_path / "exported")                   # the LoRA layers without their method
    with pytest.raises(ExportError, match="T5Model or a GPT"):
        save_hf(torch.nn.Linear(2, 2), tmp_path / "exported")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_hf(lora, tmp_path / "a_file")


def test_tokenizer_files_are_copied(transformers, tmp_path):
    tokenizers = reference("tokenizers")
    source = make_gpt2_checkpoint(transformers, tokenizers, tmp_path / "gpt2")
    tokenizer = minipeft.GPT2Tokenizer.from_dir(source)
    save_hf(minipeft.load_hf(source), tmp_path / "exported", tokenizer=tokenizer)
    again = minipeft.GPT2Tokenizer.from_dir(tmp_path / "exported")
    text = "the soup was lovely and the staff was ok"
    assert again.encode(text) == tokenizer.encode(text)
    assert transformers.GPT2TokenizerFast.from_pretrained(tmp_path / "exported")(text)["input_ids"] == tokenizer.encode(text)


def test_a_train_py_lora_run_exports_from_the_command_line(t5_dir, task, tmp_path):
    run(config(t5_dir, task, tmp_path / "run", method="lora", steps=3, lr=5e-2), log=quiet)
    result = subprocess.run([sys.executable, "-m", "minipeft.export", str(tmp_path / "run"), str(tmp_path / "hf")],
                            cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": subprocess_pythonpath(ROOT), "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "model.safetensors" in result.stdout and "spiece.model" in result.stdout
    exported = minipeft.load_hf(tmp_path / "hf")
    trained = minipeft.methods.base.load_trained(minipeft.load_hf(t5_dir), tmp_path / "run" / PEFT_FILE).eval()
    assert (logits(exported, True) - logits(trained, True)).abs().max() <= 1e-5
    assert (logits(minipeft.load_hf(t5_dir), True) - logits(trained, True)).abs().max() > 1e-4   # LoRA did train


def test_export_of_a_run_that_cannot_export_is_one_clear_error(t5_dir, task, tmp_path):
    run(config(t5_dir, task, tmp_path / "run", method="prompt", steps=1), log=quiet)
    with pytest.raises(ExportError, match="prompt"):
        export_run(tmp_path / "run", tmp_path / "hf")
    result = subprocess.run([sys.executable, "-m", "minipeft.export", str(tmp_path / "nothing"), str(tmp_path / "hf")],
                            cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": subprocess_pythonpath(ROOT), "PATH": ""})
    assert result.returncode == 2 and "no peft.safetensors" in result.stderr and "Traceback" not in result.stderr
