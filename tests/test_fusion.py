"""AdapterFusion (F8): attention over N frozen adapters, against the formula written out token by
token, its parameter counts, what trains, and what is refused.

No library in requirements-test.txt implements AdapterFusion (peft has no fusion), so the reference
is F8.3 itself computed with plain loops, and the adapters alone (a fusion that can only choose
between copies of one adapter is that adapter).

Exercise: ``pytest tests/test_fusion.py --exercise methods.fusion`` runs these against your copy of fusion.py.
"""

import importlib.util
import json

import pytest
import torch

from conftest import ROOT
from tiny_runs import write_task

from minipeft.methods import count_parameters, get_peft, load_trained, save_trained
from minipeft.methods.fusion import FusedAdapters, FusionAttention

from tiny_models import batch, tiny

C = 16   # the tiny models' width


def adapter_checkpoint(kind, path, seed, wide=False, **options):
    """A trained-looking adapter run on tiny(kind): random non-zero weights, saved as train.py would."""
    peft = get_peft(tiny(kind, wide=wide), "adapter", adapter_size=4, train_layer_norms=False, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in peft.adapters():
            for param in adapter.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    save_trained(peft, path)
    return path


@pytest.fixture(params=["t5", "gpt"])
def kind(request):
    return request.param


@pytest.fixture
def checkpoints(kind, tmp_path):
    return tuple(str(adapter_checkpoint(kind, tmp_path / f"adapter{seed}.safetensors", seed)) for seed in range(3))


def randomize(module, seed=0, scale=0.3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module


def fused_places(peft):
    return sorted(peft.fused_layers())


# ---- the module: F8.3 ----------------------------------------------------------------------------

def fusion_by_loops(fusion, h, branches, residual_before=False):
    """F8.3 one token at a time: q = W_Q h + b_Q, k_t = W_K δ_t + b_K, v_t = W_V δ_t, s = softmax(q·k)."""
    B, T, N, _ = branches.shape
    out, weights = torch.empty_like(h), torch.empty(B, T, N)
    W_V = fusion.value.weight if fusion.value is not None else torch.eye(h.shape[-1])
    for b in range(B):
        for i in range(T):
            q = fusion.query.weight @ h[b, i] + fusion.query.bias
            scores = torch.stack([q @ (fusion.key.weight @ branches[b, i, t] + fusion.key.bias) for t in range(N)])
            s = torch.softmax(scores, dim=0)
            values = [W_V @ (branches[b, i, t] + (h[b, i] if residual_before else 0)) for t in range(N)]
            mixed = sum(s[t] * values[t] for t in range(N))
            out[b, i] = mixed if residual_before else h[b, i] + mixed
            weights[b, i] = s
    return out, weights


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("residual_before", [False, True])
def test_fusion_computes_softmax_over_adapters_of_query_key_products(value, residual_before):
    torch.manual_seed(0)
    fusion = randomize(FusionAttention(8, value=value))
    h, branches = torch.randn(2, 3, 8), torch.randn(2, 3, 4, 8)
    out, weights = fusion(h, branches, residual_before)
    expected_out, expected_weights = fusion_by_loops(fusion, h, branches, residual_before)
    assert out.shape == (2, 3, 8) and weights.shape == (2, 3, 4)
    torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))


def test_at_initialisation_the_fusion_is_close_to_the_average_of_the_branches():
    """W_Q, W_K ~ N(0, 0.02²) make every score near 0, and W_V ≈ I: o ≈ h + mean_t δ_t."""
    torch.manual_seed(0)
    fusion = FusionAttention(32)
    h, branches = torch.randn(2, 5, 32), torch.randn(2, 5, 3, 32)
    out, weights = fusion(h, branches)
    assert (weights - 1 / 3).abs().max() < 0.05                          # s_t ≈ 1/N
    assert (out - (h + (weights.unsqueeze(-1) * branches).sum(-2))).abs().max() < 1e-3   # W_V ≈ I
    identity = torch.eye(32)
    assert (fusion.value.weight - identity).abs().max() <= 1e-6 and fusion.value.weight.diagonal().eq(1).all()
    assert fusion.query.bias.eq(0).all() and fusion.key.bias.eq(0).all()
    assert 0.01 < fusion.query.weight.std() < 0.03 and 0.01 < fusion.key.weight.std() < 0.03


def test_keys_with_or_without_the_shared_residual_give_the_same_weights():
    """The docstring's claim: h is in every adapter output, so q·(h W_K) is one constant the softmax drops."""
    torch.manual_seed(0)
    fusion = randomize(FusionAttention(8))
    h, branches = torch.randn(2, 3, 8), torch.randn(2, 3, 4, 8)
    _, weights = fusion(h, branches)
    q = fusion.query(h)
    scores_with_h = (fusion.key(branches + h.unsqueeze(-2)) @ q.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(weights, scores_with_h.softmax(-1), atol=1e-5, rtol=1e-5)


def test_a_wrong_width_names_the_equation():
    fusion = FusionAttention(8)
    with pytest.raises(ValueError, match="F8.3 AdapterFusion"):
        fusion(torch.randn(2, 3, 8), torch.randn(2, 3, 4, 6))


# ---- on the models ---------------------------------------------------------------------------------

def test_a_static_fusion_of_copies_of_one_adapter_is_that_adapter(kind, tmp_path):
    """With W_V = I the output is h + Σ s_t δ_t; N copies of one δ give h + δ whatever the weights."""
    path = str(adapter_checkpoint(kind, tmp_path / "a.safetensors", seed=0))
    alone = load_trained(tiny(kind), path)
    fused = randomize(get_peft(tiny(kind), "adapter_fusion", adapters=(path, path, path), value=False))
    inputs = batch(kind)
    with torch.no_grad():
        torch.testing.assert_close(fused(**inputs), alone(**inputs), atol=1e-5, rtol=1e-5)


def test_the_fused_model_runs_every_adapter_at_every_place(kind, checkpoints):
    """A hand-fused forward pass through one place: the sublayer, the 3 branches, F8.3."""
    peft = randomize(get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints))
    places = fused_places(peft)
    assert places == sorted(name.removeprefix("model.") for name, module in
                            get_peft(tiny(kind), "adapter", train_layer_norms=False).named_modules()
                            if type(module).__name__ == "AdapterAfter")
    layer = peft.fused_layers()[places[0]]
    assert isinstance(layer, FusedAdapters) and len(layer.adapters) == 3
    h = torch.randn(2, 4, C)
    branches = torch.stack([adapter.branch(h) for adapter in layer.adapters], dim=-2)
    expected, _ = fusion_by_loops(layer.fusion, h, branches)
    torch.testing.assert_close(layer.fusion(h, branches)[0], expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        peft(**batch(kind))
    weights = peft.adapter_weights()
    assert set(weights) == set(places) and all(w.shape == (3,) for w in weights.values())


def test_the_fused_adapters_hold_the_checkpoints_tensors(kind, checkpoints):
    peft = get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints)
    for t, path in enumerate(checkpoints):
        alone = load_trained(tiny(kind), path)
        for name, tensor in alone.trained_state_dict().items():
            ours = peft.get_parameter(name.replace(".adapter.", f".adapters.{t}."))
            torch.testing.assert_close(ours, tensor, atol=0, rtol=0)


@pytest.mark.parametrize("value, share, per_place", [(True, False, 3 * C * C + 2 * C), (False, False, 2 * C * C + 2 * C),
                                                     (True, True, None)])
def test_only_the_fusion_trains_3c2_plus_2c_per_place(kind, checkpoints, value, share, per_place):
    peft = get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints, value=value, share_fusion=share)
    trainable, _ = count_parameters(peft)
    places = len(fused_places(peft))
    assert trainable == (3 * C * C + 2 * C if share else places * per_place)
    trained = {name for name, param in peft.named_parameters() if param.requires_grad}
    assert trained and all(".fusion." in name for name in trained)


def test_gradients_reach_the_fusion_and_leave_adapters_and_base_untouched(kind, checkpoints):
    peft = randomize(get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints))
    frozen = {name: param.detach().clone() for name, param in peft.named_parameters() if not param.requires_grad}
    optimizer = torch.optim.AdamW([param for param in peft.parameters() if param.requires_grad], lr=1e-2)
    loss = peft(**batch(kind)).square().mean() + peft.regularization_loss()
    loss.backward()
    assert all(param.grad is not None and param.grad.abs().sum() > 0
               for param in peft.parameters() if param.requires_grad)
    optimizer.step()
    assert all(torch.equal(param, frozen[name]) for name, param in peft.named_parameters() if name in frozen)


def test_the_value_regularisation_is_001_times_distance_to_identity_squared(kind, checkpoints):
    peft = get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints)
    with torch.no_grad():
        for fusion in peft.fusions():
            fusion.value.weight.copy_(torch.eye(C))
    assert peft.regularization_loss().item() == 0
    with torch.no_grad():
        peft.fusions()[0].value.weight[0, 1] = 2.0
    assert peft.regularization_loss().item() == pytest.approx(0.01 * 4)
    assert get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints, regularization=False).regularization_loss() is None


def test_disabled_runs_the_untouched_base(kind, checkpoints):
    peft = randomize(get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints))
    inputs = batch(kind)
    with torch.no_grad(), peft.disabled():
        off = peft(**inputs)
    with torch.no_grad():
        assert torch.equal(off, tiny(kind)(**inputs))
        assert not torch.allclose(peft(**inputs), off)


def test_generation_goes_through_the_fusion(kind, tmp_path):
    checkpoints = [str(adapter_checkpoint(kind, tmp_path / f"{seed}.safetensors", seed, wide=True)) for seed in (0, 1)]
    peft = randomize(get_peft(tiny(kind, wide=True), "adapter_fusion", adapters=checkpoints), scale=1.0)
    ids = batch(kind)["input_ids"]
    with torch.no_grad():
        fused = peft.generate(ids, max_new_tokens=5)
        with peft.disabled():
            plain = peft.generate(ids, max_new_tokens=5)
    assert not torch.equal(fused, plain)


def test_save_then_load_reproduces_the_outputs(kind, checkpoints, tmp_path):
    peft = randomize(get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints, share_fusion=True))
    save_trained(peft, tmp_path / "fusion.safetensors")
    again = load_trained(tiny(kind), tmp_path / "fusion.safetensors")
    inputs = batch(kind)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs), peft(**inputs), atol=0, rtol=0)


def test_loading_with_a_changed_adapter_file_is_refused(kind, checkpoints, tmp_path):
    peft = get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints)
    save_trained(peft, tmp_path / "fusion.safetensors")
    adapter_checkpoint(kind, checkpoints[1], seed=7)          # retrained: same place, other weights
    with pytest.raises(ValueError, match="changed since this fusion was trained"):
        load_trained(tiny(kind), tmp_path / "fusion.safetensors")


def test_bad_adapters_are_refused_with_the_reason(kind, checkpoints, tmp_path):
    with pytest.raises(ValueError, match="N >= 2"):
        get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints[:1])
    with pytest.raises(FileNotFoundError, match="no PEFT checkpoint"):
        get_peft(tiny(kind), "adapter_fusion", adapters=(checkpoints[0], str(tmp_path / "missing.safetensors")))
    lora = get_peft(tiny(kind), "lora")
    save_trained(lora, tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="holds a 'lora' checkpoint"):
        get_peft(tiny(kind), "adapter_fusion", adapters=(checkpoints[0], str(tmp_path / "lora.safetensors")))
    with_norms = get_peft(tiny(kind), "adapter", adapter_size=4)          # train_layer_norms=True
    save_trained(with_norms, tmp_path / "norms.safetensors")
    with pytest.raises(ValueError, match="train_layer_norms=false"):
        get_peft(tiny(kind), "adapter_fusion", adapters=(checkpoints[0], str(tmp_path / "norms.safetensors")))
    pfeiffer = adapter_checkpoint(kind, tmp_path / "pfeiffer.safetensors", 0, adapter_placement="pfeiffer")
    with pytest.raises(ValueError, match="different places"):
        get_peft(tiny(kind), "adapter_fusion", adapters=(checkpoints[0], str(pfeiffer)))
    with pytest.raises(ValueError, match="different base"):
        get_peft(tiny(kind, seed=1), "adapter_fusion", adapters=checkpoints)


def test_adapters_of_different_sizes_fuse(kind, tmp_path):
    small = adapter_checkpoint(kind, tmp_path / "small.safetensors", 0)
    peft = get_peft(tiny(kind), "adapter", adapter_size=8, train_layer_norms=False)
    save_trained(peft, tmp_path / "large.safetensors")
    fused = get_peft(tiny(kind), "adapter_fusion", adapters=(str(small), str(tmp_path / "large.safetensors")))
    layer = next(iter(fused.fused_layers().values()))
    assert [adapter.down.out_features for adapter in layer.adapters] == [4, 8]


def test_train_py_runs_both_stages_and_reloads_the_fusion(tmp_path, capsys):
    """Stage 1: two adapter runs of train.py; stage 2: --method adapter_fusion over their checkpoints."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    short = ["--steps", "2", "--batch-size", "4", "--eval-examples", "8", "--threads", "1"]
    data = {kind: str(write_task(tmp_path / f"{kind}_data", kind, sizes=(16, 8, 8))) for kind in ("sentiment", "table")}
    for kind, path in data.items():      # two small tasks of the test world, tested on 8 examples each
        code = script.main(["--method", "adapter", "--data", path, "--option", "train_layer_norms=false",
                            "--option", "cross_adapter=true", *short, "--out", str(tmp_path / kind)])
        assert code == 0, capsys.readouterr().err
    adapters = f"adapters={tmp_path / 'sentiment' / 'peft.safetensors'},{tmp_path / 'table' / 'peft.safetensors'}"
    code = script.main(["--method", "adapter_fusion", "--data", data["sentiment"], "--option", adapters, *short,
                        "--out", str(tmp_path / "fusion")])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads((tmp_path / "fusion" / "metrics.json").read_text())
    assert record["method"] == "adapter_fusion" and "accuracy" in record["metrics"]
    assert record["trainable_params"] == 20 * (3 * 128 * 128 + 2 * 128)     # tiny-t5: 8 + 12 places, C = 128
    code = script.main(["--resume", str(tmp_path / "fusion"), "--eval-only", "--eval-examples", "8"])
    assert code == 0, capsys.readouterr().err


def test_a_fusion_cannot_be_exported_or_mixed_per_example(kind, checkpoints, tmp_path):
    import minipeft
    peft = get_peft(tiny(kind), "adapter_fusion", adapters=checkpoints)
    with pytest.raises(minipeft.ExportError, match="save_trained"):
        minipeft.save_hf(peft, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="input seams"):
        minipeft.MixedBatch(peft.model, {"fused": peft})
