"""AdaLoRA (F7): the SVD-form update, its parameter count, the importance scores and the budget,
the orthogonality penalty, and parity with `peft` on `transformers` (logits and pruning).

Exercise: ``pytest tests/test_adalora.py --exercise methods.adalora`` runs these against your copy.
"""

import pytest
import torch
from torch import nn

import minipeft
from minipeft.convert import gpt2_key_map, t5_key_map
from minipeft.methods import count_parameters, get_peft, load_trained, save_trained
from minipeft.methods.adalora import RankAllocator, SVDLinear, budget_at

from conftest import reference
from tiny_runs import t5_dir, task  # noqa: F401 (fixtures)
from reference_models import GPT2_SMALL_TEST, hf_gpt2, hf_t5
import tiny_models
from tiny_models import batch, empty_model

T5_PARITY = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def tiny(kind, seed=0):
    return tiny_models.tiny(kind, seed, decoder_layers=2)


def randomize_svd(peft, seed=0):
    """Trained-looking tensors: s ≠ 0, so the update really changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in peft.lora_layers():
            for param in (layer.lora_A, layer.lora_E, layer.lora_B):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return peft


# ---- the layer: F7.1 ----------------------------------------------------------------------------

def test_layer_computes_w0_x_plus_scaled_u_diag_s_vt_x():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = SVDLinear(base, rank=3, alpha=6.0)
    nn.init.normal_(layer.lora_E)
    x = torch.randn(2, 4, 6)
    U, s, Vt = layer.lora_B, layer.lora_E.squeeze(1), layer.lora_A          # (m, r), (r,), (r, n)
    delta = (6.0 / 3) * U @ torch.diag(s) @ Vt                              # F7.1 with α/r = 2
    torch.testing.assert_close(layer.delta_weight(), delta)
    torch.testing.assert_close(layer(x), x @ base.weight.T + base.bias + x @ delta.T)


def test_starts_as_the_base_layer_s_zero_u_v_gaussian():
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    layer = SVDLinear(base, rank=12, alpha=8.0)
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_E) == 0 and layer.kept_ranks() == 0
    for param in (layer.lora_A, layer.lora_B):                # peft: N(0, 0.02²)
        assert abs(param.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_trainable_count_is_l_times_m_r_plus_n_r_plus_r(kind):
    """F7.2  L·(m·r + n·r + r), here with the default targets (q, v / c_attn) at init_r = 5."""
    peft = get_peft(tiny(kind), "adalora", init_r=5, target_r=2)
    layers = peft.lora_layers()
    expected = sum(5 * (layer.base_layer.out_features + layer.base_layer.in_features) + 5 for layer in layers)
    assert count_parameters(peft)[0] == expected
    assert len(peft.trained_state_dict()) == 3 * len(layers)
    assert {name.rsplit(".", 1)[-1] for name in peft.trained_state_dict()} == {"lora_A", "lora_E", "lora_B"}


def test_t5_small_q_v_count_equals_peft_s():
    transformers, peft_lib = reference("transformers"), reference("peft")
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config())
    theirs = peft_lib.get_peft_model(hf, peft_lib.AdaLoraConfig(init_r=12, target_r=8, target_modules=["q", "v"],
                                                                total_step=100))
    config = minipeft.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
    ours = get_peft(empty_model(config), "adalora", init_r=12, target_r=8, target_modules=["q", "v"])
    assert count_parameters(ours)[0] == 36 * (12 * 512 + 12 * 512 + 12) == 442_800
    # peft also counts its ``ranknum``, the divisor init_r of the scaling kept as a one-number
    # parameter per layer, which it leaves with requires_grad=True; it is not part of F7.2.
    ranknums = [name for name, param in theirs.named_parameters() if "ranknum" in name and param.requires_grad]
    assert theirs.get_nb_trainable_parameters()[0] == 442_800 + len(ranknums) == 442_836


# ---- the budget and the scores: F7.3 ------------------------------------------------------------

def test_budget_holds_then_falls_by_a_cube_to_the_target():
    budgets = [budget_at(step, 100, initial=120, target=40, tinit=10, tfinal=20) for step in range(100)]
    assert budgets[:11] == [120] * 11                                   # t ≤ tinit
    assert budgets[80:] == [40] * 20                                    # t ≥ T − tfinal
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))            # never grows
    assert budgets[45] == int(80 * (1 - 35 / 70) ** 3 + 40) == 50       # halfway: an eighth of the way back


def test_observe_updates_the_smoothed_sensitivity_and_the_uncertainty():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(4, 3), rank=2, alpha=2.0)
    allocator = RankAllocator({"layer": layer}, beta1=0.8, beta2=0.6)
    gradients = []
    for _ in range(2):
        for param in (layer.lora_A, layer.lora_E, layer.lora_B):
            param.grad = torch.randn_like(param)
        gradients.append(layer.lora_A.grad.clone())
        allocator.observe()
    first, second = ((layer.lora_A * g).abs() for g in gradients)         # I = |w ∂L/∂w|
    smoothed_1 = 0.2 * first
    uncertainty_1 = 0.4 * (first - smoothed_1).abs()
    smoothed_2 = 0.8 * smoothed_1 + 0.2 * second
    uncertainty_2 = 0.6 * uncertainty_1 + 0.4 * (second - smoothed_2).abs()
    torch.testing.assert_close(allocator.smoothed["layer.lora_A"], smoothed_2)
    torch.testing.assert_close(allocator.uncertainty["layer.lora_A"], uncertainty_2)


def test_triplet_score_adds_s_i_and_the_means_of_u_s_column_and_vt_s_row():
    layer = SVDLinear(nn.Linear(4, 3), rank=2, alpha=2.0)
    allocator = RankAllocator({"layer": layer}, beta1=0.5, beta2=0.5)
    generator = torch.Generator().manual_seed(0)
    for part in ("lora_A", "lora_E", "lora_B"):
        shape = getattr(layer, part).shape
        allocator.smoothed[f"layer.{part}"] = torch.rand(shape, generator=generator)
        allocator.uncertainty[f"layer.{part}"] = torch.rand(shape, generator=generator)
    score = {part: allocator.smoothed[f"layer.{part}"] * allocator.uncertainty[f"layer.{part}"]
             for part in ("lora_A", "lora_E", "lora_B")}
    for i in range(2):
        expected = score["lora_E"][i, 0] + score["lora_B"][:, i].mean() + score["lora_A"][i, :].mean()
        torch.testing.assert_close(allocator.triplet_scores()["layer"][i], expected)


def test_pruning_keeps_the_budget_best_triplets_over_all_layers():
    layers = {name: SVDLinear(nn.Linear(4, 4), rank=3, alpha=3.0) for name in ("a", "b")}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_E.fill_(1.0)
    allocator = RankAllocator(layers, beta1=0.5, beta2=0.5)
    scores = {"a": torch.tensor([0.9, 0.1, 0.5]), "b": torch.tensor([0.3, 0.8, 0.2])}
    allocator.triplet_scores = lambda: scores
    kept = allocator.prune_to(3)
    assert kept["a"].tolist() == [True, False, True] and kept["b"].tolist() == [False, True, False]
    assert layers["a"].lora_E.squeeze(1).tolist() == [1.0, 0.0, 1.0]
    assert layers["b"].lora_E.squeeze(1).tolist() == [0.0, 1.0, 0.0]
    assert allocator.prune_to(6)["b"].all()                          # a budget of everything prunes nothing


def train_steps(peft, kind, steps, start=0):
    """A few real optimiser steps with update_and_allocate, as a user's own loop would run them."""
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    inputs = batch(kind)
    for step in range(start, start + steps):
        loss = peft(**inputs).logsumexp(-1).mean() + peft.regularization_loss()
        loss.backward()
        optimizer.step()
        peft.update_and_allocate(step)
        optimizer.zero_grad()


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_training_prunes_to_the_target_budget_and_the_pruned_set_stays_fixed(kind):
    peft = get_peft(tiny(kind), "adalora", init_r=4, target_r=2, tfinal=2, total_step=8)
    layers = len(peft.lora_layers())
    train_steps(peft, kind, 6)                                   # steps 0-5: scored and pruned to b(t)
    assert sum(peft.rank_pattern().values()) <= peft.budget(5) < 4 * layers
    train_steps(peft, kind, 2, start=6)                          # step 6 = T − tfinal: fixed at the target
    pattern = peft.rank_pattern()
    assert sum(pattern.values()) == 2 * layers
    assert len(set(pattern.values())) > 1                        # the budget went to some layers more than others
    kept = {name: layer.lora_E.detach().ne(0) for name, layer in peft.allocator.layers.items()}
    assert all(torch.equal(kept[name], peft.final_kept[name].unsqueeze(1)) for name in kept)


def test_the_schedule_needs_its_length_and_the_gradients():
    peft = get_peft(tiny("t5"), "adalora")
    with pytest.raises(RuntimeError, match="needs the run's length: pass total_step"):
        peft.update_and_allocate(0)
    peft.prepare_training(10)
    with pytest.raises(RuntimeError, match="has none: call update_and_allocate after backward"):
        peft.update_and_allocate(0)
    with pytest.raises(ValueError, match="leaves no step to prune in"):
        get_peft(tiny("t5"), "adalora", tinit=6, tfinal=4).prepare_training(10)


@pytest.mark.parametrize("options, message", [
    (dict(init_r=0), "init_r"), (dict(init_r=4, target_r=5), "target_r .* from 1 to init_r=4"),
    (dict(beta1=1.0), "beta1"), (dict(orth_reg_weight=-1), "orth_reg_weight"), (dict(deltaT=0), "deltaT"),
    (dict(lora_dropout=1.0), "lora_dropout")])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        get_peft(tiny("t5"), "adalora", **options)


# ---- the orthogonality penalty: F7.3 -------------------------------------------------------------

def test_orthogonality_is_zero_for_orthonormal_u_and_v_and_positive_otherwise():
    layer = SVDLinear(nn.Linear(8, 6), rank=3, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.linalg.qr(torch.randn(6, 3)).Q)          # U: orthonormal columns
        layer.lora_A.copy_(torch.linalg.qr(torch.randn(8, 3)).Q.T)        # Vᵀ: orthonormal rows
    assert layer.orthogonality().item() < 1e-10
    with torch.no_grad():
        layer.lora_A.mul_(2.0)                                            # VᵀV = 4 I: ‖3 I‖² = 9 · 3
    torch.testing.assert_close(layer.orthogonality(), torch.tensor(27.0))


def test_regularization_loss_is_gamma_times_the_mean_over_layers():
    peft = randomize_svd(get_peft(tiny("t5"), "adalora", orth_reg_weight=0.3))
    layers = peft.lora_layers()
    expected = 0.3 * sum(layer.orthogonality() for layer in layers) / len(layers)
    torch.testing.assert_close(peft.regularization_loss(), expected)
    assert get_peft(tiny("t5"), "adalora", orth_reg_weight=0).regularization_loss() is None


# ---- merging, switching off, saving ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_merged_equals_unmerged_and_disabled_is_the_base(kind):
    model = tiny(kind)
    inputs = batch(kind)
    with torch.no_grad():
        base = model(**inputs)
        peft = randomize_svd(get_peft(model, "adalora", init_r=3, target_r=2))
        unmerged = peft(**inputs)
        with peft.disabled():
            assert torch.equal(peft(**inputs), base)
        peft.merge()
        assert (peft(**inputs) - unmerged).abs().max() <= 1e-5
        peft.unmerge()
        torch.testing.assert_close(peft(**inputs), unmerged)
    assert (unmerged - base).abs().max() > 1e-3


def test_save_then_load_reproduces_the_outputs(tmp_path):
    peft = randomize_svd(get_peft(tiny("gpt"), "adalora", init_r=3, target_r=1))
    path = tmp_path / "adalora.safetensors"
    save_trained(peft, path)
    restored = load_trained(tiny("gpt"), path, method="adalora")
    assert restored.options == peft.options
    inputs = batch("gpt")
    with torch.no_grad():
        torch.testing.assert_close(restored(**inputs), peft(**inputs), rtol=0, atol=0)


# ---- parity with peft on transformers ------------------------------------------------------------

def copy_into_peft(ours, theirs, key_map):
    """Copy our U, s, Vᵀ into peft's ``…lora_B.default`` / ``lora_E`` / ``lora_A`` tensors, translating
    names through convert.py's key map; every one of peft's must receive one of ours."""
    ours_state = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if ".lora_" not in name:
                continue
            module, part = name.removeprefix("base_model.model.").removesuffix(".default").rsplit(".", 1)
            base_key = key_map[module.removeprefix("transformer.") + ".weight"]
            param.copy_(ours_state["model." + base_key.removesuffix(".weight") + f".{part}"])
            copied += 1
    assert copied == len(ours.trained_state_dict())


def t5_pair(tmp_path, **options):
    transformers, peft_lib = reference("transformers"), reference("peft")
    hf = hf_t5(transformers, **T5_PARITY)
    hf.save_pretrained(tmp_path)
    ours = get_peft(minipeft.load_hf(tmp_path), "adalora", **options)
    theirs = peft_lib.get_peft_model(hf, peft_lib.AdaLoraConfig(task_type="SEQ_2_SEQ_LM", **options))
    return ours, theirs


def test_t5_logits_match_peft(tmp_path):
    options = dict(init_r=6, target_r=3, lora_alpha=12, target_modules=["q", "v", "wo"], total_step=10)
    ours, theirs = t5_pair(tmp_path, **options)
    randomize_svd(ours)
    copy_into_peft(ours, theirs, t5_key_map(ours.config))
    theirs.eval()
    assert count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    inputs = batch("t5", vocab=120)
    with torch.no_grad():
        expected = theirs(**inputs).logits
        with theirs.disable_adapter():
            assert (expected - theirs(**inputs).logits).abs().max() > 1e-2      # the update is not negligible
        assert (ours(**inputs) - expected).abs().max() <= 1e-4
        ours.merge()
        assert (ours(**inputs) - expected).abs().max() <= 1e-4


def test_gpt2_logits_match_peft(tmp_path):
    transformers, peft_lib = reference("transformers"), reference("peft")
    hf = hf_gpt2(transformers, eos_token_id=999, bos_token_id=999, **GPT2_SMALL_TEST)
    hf.save_pretrained(tmp_path)
    ours = randomize_svd(get_peft(minipeft.load_hf(tmp_path), "adalora", init_r=4, target_r=2, lora_alpha=32))
    theirs = peft_lib.get_peft_model(hf, peft_lib.AdaLoraConfig(
        task_type="CAUSAL_LM", init_r=4, target_r=2, lora_alpha=32, target_modules=["c_attn"],
        fan_in_fan_out=True, total_step=10)).eval()
    copy_into_peft(ours, theirs, gpt2_key_map(ours.config))
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        assert (ours(input_ids=ids) - expected).abs().max() <= 1e-4


def test_t5_pruning_matches_peft_s_rank_allocator(tmp_path):
    """Same tensors, same gradients each step: peft's RankAllocator and ours prune the same triplets."""
    options = dict(init_r=6, target_r=2, target_modules=["q", "v"], total_step=8, tinit=1, tfinal=2, deltaT=2,
                   beta1=0.7, beta2=0.8)
    ours, theirs = t5_pair(tmp_path, **options)
    randomize_svd(ours)
    copy_into_peft(ours, theirs, t5_key_map(ours.config))
    ours.eval(), theirs.eval()                 # no dropout: the same gradients on both sides
    key_map = t5_key_map(ours.config)
    pairs = []                                 # (our s, peft's s) of every wrapped layer
    theirs_state = dict(theirs.named_parameters())
    for name, param in theirs_state.items():
        if name.endswith("lora_E.default"):
            module = name.removeprefix("base_model.model.").removesuffix(".lora_E.default")
            ours_name = "model." + key_map[module + ".weight"].removesuffix(".weight") + ".lora_E"
            pairs.append((dict(ours.named_parameters())[ours_name], param))
    generator = torch.Generator().manual_seed(1)
    pruned_anything = False
    for step in range(8):
        inputs = batch("t5", vocab=120)
        weights = torch.randn(2, 4, 120, generator=generator)
        for model in (ours, theirs):
            logits = model(**inputs) if model is ours else model(**inputs).logits
            (logits * weights).sum().backward()                            # the same loss on both sides
        ours.update_and_allocate(step)
        theirs.base_model.update_and_allocate(step)
        for param in (p for p in list(ours.parameters()) + list(theirs.parameters()) if p.grad is not None):
            param.grad = None
        for mine, reference_s in pairs:
            assert torch.equal(mine.detach().eq(0), reference_s.detach().eq(0)), f"step {step}"
        pruned_anything |= any(bool(mine.detach().eq(0).any()) for mine, _ in pairs)
    assert pruned_anything
    assert sum(int(mine.detach().ne(0).sum()) for mine, _ in pairs) == 2 * len(pairs)   # the target at the end


# ---- in train.py's loop ----------------------------------------------------------------------------

def run_config(t5_dir, task, out, **changes):
    from minipeft.training import TrainConfig
    settings = dict(method="adalora", model="t5", weights=str(t5_dir), data=str(task), steps=6, batch_size=8,
                    eval_every=2, eval_examples=4, out=str(out), lr=1e-2,
                    options={"init_r": 4, "target_r": 2, "tfinal": 2})
    return TrainConfig(**{**settings, **changes})


def test_train_py_prunes_to_the_target_and_resumes_exactly(t5_dir, task, tmp_path, monkeypatch):
    """The loop adds the penalty, calls update_and_allocate after each step, and a resumed run
    continues the scores (state.pt keeps them) to the same tensors as an uninterrupted one."""
    from safetensors.torch import load_file
    from minipeft import training

    quiet = lambda *args, **kwargs: None  # noqa: E731
    straight = training.run(run_config(t5_dir, task, tmp_path / "straight"), log=quiet)
    tensors = load_file(tmp_path / "straight" / training.PEFT_FILE)
    kept = [int(tensor.ne(0).sum()) for name, tensor in tensors.items() if name.endswith("lora_E")]
    assert sum(kept) == 2 * len(kept) and len(set(kept)) > 1

    real_indices = training.global_batch_indices

    def interrupt_at_step_3(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_indices(step, *args)

    monkeypatch.setattr(training, "global_batch_indices", interrupt_at_step_3)
    training.run(run_config(t5_dir, task, tmp_path / "resumed"), log=quiet)
    monkeypatch.setattr(training, "global_batch_indices", real_indices)
    resumed = training.run(training.config_for_resume(tmp_path / "resumed", {}), resume=tmp_path / "resumed",
                           log=quiet)
    assert resumed["losses"] == straight["losses"]
    again = load_file(tmp_path / "resumed" / training.PEFT_FILE)
    assert all(torch.equal(again[name], tensors[name]) for name in tensors)


def test_train_py_refuses_fp16_and_a_schedule_longer_than_the_run(t5_dir, task, tmp_path):
    from minipeft import training
    with pytest.raises(training.TrainingError, match="reads its parameters' gradients .* --dtype fp32 or bf16"):
        training.run(run_config(t5_dir, task, tmp_path / "a", dtype="fp16"), log=lambda *a, **k: None)
    with pytest.raises(training.TrainingError, match="leaves no step to prune in"):
        training.run(run_config(t5_dir, task, tmp_path / "b", options={"tinit": 6}), log=lambda *a, **k: None)
