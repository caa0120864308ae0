"""Optimisation (F12): each optimiser against torch.optim / transformers, step for step; schedules,
clipping, loss scaling and initialisation against their formulas.

Exercise: ``pytest tests/test_optim.py --exercise optim.adam`` (or ``optim.adafactor``) runs these
against your copy of the optimiser. The parity tests come first, so a missing piece fails fast.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from minipeft import GPT, GPTConfig, T5Config, T5Model
from minipeft.optim import (SGD, AdaFactor, Adam, AdamW, LossScaler, MasterWeights, Precision, Warmup,
                            WarmupCosine, WarmupLinear, autocast, build_optimizer, build_schedule,
                            bytes_per_parameter, clip_grad_norm_, state_bytes, training_state_bytes,
                            weight_decay_groups)
from minipeft.optim.init import fan_in_normal_, gpt2_init_, t5_init_, xavier_normal_

from conftest import reference

STEPS = 100


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is faster than two fighting over a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- parity with the reference optimisers, float64, 100 steps ----------------------------------

def small_model():
    """An MLP with matrices and vectors (biases), float64, the same weights every call."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def train_small(make_optimizer, steps=STEPS):
    """``steps`` updates on a regression task (fresh batch each step); returns the flat parameters."""
    model = small_model()
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
        y = torch.randn(16, 3, generator=generator, dtype=torch.float64)
        loss = (model(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_same_training(ours, theirs):
    ours_params, their_params = train_small(ours), train_small(theirs)
    moved = (their_params - train_small(lambda p: torch.optim.SGD(p, lr=0.0))).abs().max()
    assert moved > 1e-4, "the reference barely trained: the comparison would prove nothing"
    assert (ours_params - their_params).abs().max() <= 1e-6


@pytest.mark.parametrize("ours, theirs", [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)], ids=["Adam", "AdamW"])
def test_adam_matches_torch(ours, theirs):
    options = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    assert_same_training(lambda p: ours(p, **options), lambda p: theirs(p, **options))


def test_adam_and_adamw_differ_only_in_weight_decay():
    assert (train_small(lambda p: Adam(p, lr=1e-2)) - train_small(lambda p: AdamW(p, lr=1e-2, weight_decay=0))).abs().max() == 0
    assert (train_small(lambda p: Adam(p, lr=1e-2, weight_decay=0.1))
            - train_small(lambda p: AdamW(p, lr=1e-2, weight_decay=0.1))).abs().max() > 1e-4


@pytest.mark.parametrize("options", [dict(lr=0.05), dict(lr=0.05, weight_decay=0.1),
                                     dict(lr=0.02, momentum=0.9, dampening=0.1, weight_decay=0.1),
                                     dict(lr=0.02, momentum=0.9, nesterov=True)],
                         ids=["plain", "weight-decay", "momentum", "nesterov"])
def test_sgd_matches_torch(options):
    assert_same_training(lambda p: SGD(p, **options), lambda p: torch.optim.SGD(p, **options))


def test_adafactor_matches_torch_adafactor():
    # The paper's defaults: relative step min(1e-2, 1/√t) × RMS(θ), β̂2 = 1 − t^-0.8, clipping d = 1.
    assert_same_training(lambda p: AdaFactor(p),
                         lambda p: torch.optim.Adafactor(p, lr=1e-2, eps=(1e-30, 1e-3), d=1.0, beta2_decay=-0.8))


@pytest.mark.parametrize("options", [dict(lr=1e-2, beta1=0.9, weight_decay=0.1, relative_step=False, scale_parameter=False),
                                     dict(warmup_init=True, beta1=0.5, clip_threshold=0.5)],
                         ids=["external-lr-momentum-decay", "warmup-init"])
def test_adafactor_matches_transformers(options):
    transformers = reference("transformers")
    assert_same_training(lambda p: AdaFactor(p, **options), lambda p: transformers.optimization.Adafactor(p, **options))


# ---- AdaFactor's memory and AdaFactor on the tiny T5 --------------------------------------------

TINY_T5 = T5Config(vocab_size=21, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   dropout_rate=0.0)


def test_adafactor_second_moment_is_rows_plus_columns():
    model = T5Model(TINY_T5)
    optimizer = AdaFactor(model.parameters())
    logits = model(input_ids=torch.randint(3, 21, (2, 7)), decoder_input_ids=torch.randint(3, 21, (2, 5)))
    logits.square().mean().backward()
    optimizer.step()
    matrices = 0
    for param in model.parameters():
        state = optimizer.state[param]
        second_moment = [value for key, value in state.items() if torch.is_tensor(value)]
        if param.dim() == 2:
            rows, cols = param.shape
            assert sum(t.numel() for t in second_moment) == rows + cols          # F12.3: O(m + n)
            matrices += 1
        else:
            assert sum(t.numel() for t in second_moment) == param.numel()       # vectors: kept whole
    assert matrices == sum(p.dim() == 2 for p in model.parameters()) > 10
    adam = Adam(model.parameters())
    adam.step()
    assert state_bytes(optimizer) < state_bytes(adam) / 10                      # no momentum, no m × n


def span_corruption_batch(batch_size, generator):
    """T5's span corruption (F11.4) on a toy language: a 4-token word repeated 4 times, so every
    masked span is recoverable from the context. Two 3-token spans become sentinels 20 and 19;
    the target lists each sentinel and its span, then </s> (id 1). Ids 3…18 are the 16 "letters"."""
    word = torch.randint(3, 19, (batch_size, 4), generator=generator)
    text = word.repeat(1, 4)                                                   # (B, 16)
    first = torch.randint(0, 5, (batch_size,), generator=generator).tolist()
    second = torch.randint(8, 13, (batch_size,), generator=generator).tolist()
    inputs, targets = [], []
    for row, a, b in zip(text.tolist(), first, second):
        inputs.append(row[:a] + [20] + row[a + 3:b] + [19] + row[b + 3:] + [1])
        targets.append([20] + row[a:a + 3] + [19] + row[b:b + 3] + [1])
    return torch.tensor(inputs), torch.tensor(targets)


def t5_loss(model, inputs, targets):
    logits = model(input_ids=inputs, decoder_input_ids=model.shift_right(targets))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train_tiny_t5(optimizer_name, steps, config=TINY_T5, lr=1e-2, batch_size=32):
    """Train from scratch with warmup + cosine; return (initial, final) loss on a held-out batch."""
    torch.manual_seed(0)
    model = T5Model(config)
    held_out = span_corruption_batch(256, torch.Generator().manual_seed(99))
    with torch.no_grad():
        initial = t5_loss(model, *held_out).item()
    optimizer = build_optimizer(optimizer_name, model.parameters(), lr=lr)
    schedule = build_schedule("cosine", optimizer, warmup_steps=steps // 10, total_steps=steps)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = t5_loss(model, *span_corruption_batch(batch_size, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return initial, t5_loss(model, *held_out).item()


def assert_adafactor_close_to_adamw(steps, config=TINY_T5):
    initial, adamw = train_tiny_t5("adamw", steps, config)
    _, adafactor = train_tiny_t5("adafactor", steps, config)
    assert adamw < 0.6 * initial, f"AdamW did not learn ({initial:.3f} → {adamw:.3f}): the comparison would be empty"
    assert adafactor <= 1.05 * adamw, f"AdaFactor {adafactor:.3f} vs AdamW {adamw:.3f}"


def test_adafactor_trains_tiny_t5_within_5_percent_of_adamw():
    assert_adafactor_close_to_adamw(steps=80)


@pytest.mark.slow
def test_adafactor_trains_larger_tiny_t5_within_5_percent_of_adamw_longer():
    config = T5Config(vocab_size=21, d_model=64, d_kv=16, d_ff=128, num_layers=3, num_decoder_layers=3,
                      num_heads=4, dropout_rate=0.0)
    assert_adafactor_close_to_adamw(steps=600, config=config)


# ---- schedules and clipping (F12.5) -----------------------------------------------------------

def test_warmup_cosine_values_at_key_steps():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, floor=0.1)
    assert schedule(0) == pytest.approx(0.1)            # the first update already moves: 1/10 of the peak
    assert schedule(9) == pytest.approx(1.0)            # warmup ends at the peak
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)          # halfway: floor + (1 − floor)/2
    assert schedule(110) == pytest.approx(0.1)          # GPT-3: cosine to 10 %
    assert schedule(1000) == pytest.approx(0.1)         # stays at the floor
    decay = [schedule(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_cosine_decay_matches_transformers():
    transformers = reference("transformers")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = transformers.optimization.get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=10, num_training_steps=110, min_lr_rate=0.1).lr_lambdas[0]
    ours = WarmupCosine(warmup_steps=10, total_steps=110, floor=0.1)
    # After warmup the two agree; in warmup transformers starts at 0, we at 1/warmup_steps.
    for step in range(10, 111):
        assert ours(step) == pytest.approx(theirs(step), abs=1e-12)


def test_constant_and_linear_schedules():
    constant = Warmup(warmup_steps=4)
    assert [constant(s) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    linear = WarmupLinear(warmup_steps=0, total_steps=10, floor=0.0)
    assert [linear(s) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_build_schedule_drives_the_optimizer_learning_rate():
    optimizer = AdamW([torch.zeros(2, requires_grad=True)], lr=1e-3)
    scheduler = build_schedule("cosine", optimizer, warmup_steps=2, total_steps=12)
    seen = []
    for _ in range(13):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.5e-3) and seen[1] == pytest.approx(1e-3) and seen[12] == pytest.approx(1e-4)


def test_unknown_names_and_bad_schedules_are_refused_with_the_choices():
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="adam, adamw, adafactor, sgd"):
        build_optimizer("adan", params, lr=1e-3)
    with pytest.raises(ValueError, match="cosine, linear, constant"):
        build_schedule("cosin", Adam(params), warmup_steps=0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        build_schedule("cosine", Adam(params), warmup_steps=10, total_steps=10)
    with pytest.raises(ValueError, match="relative_step"):
        build_schedule("constant", AdaFactor(params), warmup_steps=1, total_steps=10)
    with pytest.raises(ValueError, match="betas"):
        Adam(params, betas=(0.9, 1.0))


def test_clipping_equals_torch():
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    for scale in (10.0, 0.01):  # one above the threshold, one below
        grads = [torch.randn_like(p) * scale for p in params]
        ours, theirs = copy.deepcopy(params), copy.deepcopy(params)
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        our_norm = clip_grad_norm_(ours, max_norm=1.0)
        their_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0)
        torch.testing.assert_close(our_norm, their_norm)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=0)
    # F12.5  g ← g / max(1, ‖g‖/c): below c unchanged (the seed's min(1, ‖g‖) would enlarge it)
    assert all(torch.equal(a.grad, g) for a, g in zip(ours, grads))


# ---- mixed precision (F12.4) ------------------------------------------------------------------

def small_target_regression():
    """Inputs, small targets (~1e-3) and a student whose output layer is small and frozen: the
    gradient reaching its hidden layer, ∂L/∂h = W2ᵀ · 2(y − t)/N, is ~1e-9, below fp16's smallest
    number 2⁻²⁴ ≈ 6e-8. In fp16 it rounds to 0, and so does every gradient computed from it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=generator)
    target = 1e-3 * torch.sin(x @ torch.randn(16, 1, generator=generator))
    torch.manual_seed(1)
    student = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    with torch.no_grad():
        student[2].weight.mul_(1e-3)
    student[2].requires_grad_(False)
    return x, target, student


def mse(model, x, target):
    dtype = next(model.parameters()).dtype
    return (model(x.to(dtype)).float() - target).pow(2).mean()


def test_fp16_gradients_underflow_without_loss_scaling_and_survive_with_it():
    x, target, student = small_target_regression()
    fp32 = copy.deepcopy(student).half().float()        # the same (fp16-representable) weights, fp32 compute
    hidden = fp32[1](fp32[0](x))                        # (N, 32)
    hidden.retain_grad()
    (fp32[2](hidden) - target).pow(2).mean().backward()
    assert hidden.grad.abs().max() < 2 ** -24           # ∂L/∂h: below fp16's smallest number
    reference_grad = fp32[0].weight.grad
    assert (reference_grad != 0).all()
    for scale in (1.0, 2.0 ** 16):
        model = copy.deepcopy(student).half()
        (mse(model, x, target) * scale).backward()
        grad = model[0].weight.grad.float() / scale
        if scale == 1.0:
            assert (grad == 0).all()                                            # every gradient underflowed
        else:
            torch.testing.assert_close(grad, reference_grad, rtol=0.0, atol=1e-3 * reference_grad.abs().max().item())


def test_fp16_with_loss_scaling_trains_where_unscaled_fp16_does_not():
    x, target, student = small_target_regression()
    results = {}
    for name, scaler in (("unscaled", LossScaler(init_scale=1.0, dynamic=False)), ("scaled", LossScaler())):
        model = copy.deepcopy(student)
        precision = Precision("fp16", model, loss_scaler=scaler)
        optimizer = Adam(precision.parameters(), lr=1e-2)
        before = model[0].weight.clone()
        initial = mse(model, x, target).item()
        for _ in range(30):
            precision.backward_and_step(mse(model, x, target), optimizer)
        results[name] = (initial, mse(model, x, target).item(), torch.equal(model[0].weight, before))
    fp32 = copy.deepcopy(student)
    optimizer = Adam([p for p in fp32.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        mse(fp32, x, target).backward()
        optimizer.step()
    initial, unscaled_final, unscaled_frozen = results["unscaled"]
    _, scaled_final, scaled_frozen = results["scaled"]
    assert unscaled_frozen and unscaled_final == initial                        # nothing learned
    assert not scaled_frozen and scaled_final < 0.95 * initial                  # learned …
    assert scaled_final == pytest.approx(mse(fp32, x, target).item(), rel=1e-2)  # … as much as fp32


def test_loss_scale_follows_torch_grad_scaler():
    """Same S after every step as torch.amp.GradScaler, with overflows injected at chosen steps."""
    overflow_at = {2, 3, 9}
    ours = LossScaler(init_scale=2.0 ** 10, growth_interval=3)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    param = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    for step in range(15):
        param.grad = torch.full((3,), math.inf if step in overflow_at else 1.0)
        theirs.scale(torch.tensor(1.0))  # (GradScaler sets itself up in scale())
        theirs.step(optimizer)
        theirs.update()
        stepped = ours.update(grads_are_finite=step not in overflow_at)
        assert ours.scale == theirs.get_scale() and stepped == (step not in overflow_at)
    assert ours.skipped_steps == len(overflow_at)


def test_overflow_skips_the_step_halves_the_scale_and_is_counted():
    x, target, student = small_target_regression()
    student[2].requires_grad_(True)
    with torch.no_grad():
        student[2].weight.mul_(1e3)                                             # ordinary gradients
    precision = Precision("fp16", student, loss_scaler=LossScaler(init_scale=2.0 ** 40))
    optimizer = Adam(precision.parameters(), lr=1e-3)
    masters_before = [p.clone() for p in precision.parameters()]
    assert not precision.backward_and_step(mse(student, x, target), optimizer)  # S·g = inf in fp16
    assert all(torch.equal(a, b) for a, b in zip(masters_before, precision.parameters()))
    assert precision.skipped_steps == 1 and precision.loss_scale == 2.0 ** 39
    while not precision.backward_and_step(mse(student, x, target), optimizer):
        pass
    assert precision.skipped_steps == 40 - math.log2(precision.loss_scale)     # one skip per halving
    assert not all(torch.equal(a, b) for a, b in zip(masters_before, precision.parameters()))


def test_masters_are_fp32_copies_of_the_trainable_parameters_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).half()
    model[0].requires_grad_(False)                                              # frozen, as in PEFT
    masters = MasterWeights(model.parameters())
    assert len(masters.params) == 2 and all(p.dtype == torch.float32 for p in masters.params)
    assert all(torch.equal(m.half(), p) for m, p in zip(masters.params, model[1].parameters()))
    with pytest.raises(ValueError, match="no parameter requires a gradient"):
        MasterWeights(torch.nn.Linear(2, 2).requires_grad_(False).parameters())


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_weights():
    model = torch.nn.Linear(8, 8)
    precision = Precision("bf16", model)
    with precision.autocast():
        out = model(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16 and model.weight.dtype == torch.float32
    assert precision.backward_and_step(out.float().square().mean(), SGD(precision.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        autocast("fp8")


# ---- initialisation (F12.6) -------------------------------------------------------------------

def assert_std(name, tensor, expected):
    """Sample std within 4 standard errors of the formula's (std error of a std ≈ σ/√(2N))."""
    tolerance = 4 / math.sqrt(2 * tensor.numel())
    assert abs(tensor.std().item() / expected - 1) < tolerance, f"{name}: std {tensor.std():.4g}, F12.6 says {expected:.4g}"


def t5_expected_std(name, c):
    """F12.6 for T5, written from the formulas (not from init.py): N(0, 1/fan_in), q × 1/√d."""
    table = {"q": (c.d_model * c.d_kv) ** -0.5, "k": c.d_model ** -0.5, "v": c.d_model ** -0.5,
             "o": (c.num_heads * c.d_kv) ** -0.5, "wi": c.d_model ** -0.5, "wi_0": c.d_model ** -0.5,
             "wi_1": c.d_model ** -0.5, "wo": c.d_ff ** -0.5, "embedding": c.d_model ** -0.5, "shared": 1.0,
             "lm_head": 1.0}
    return table.get(name.split(".")[-2])


INIT_T5 = T5Config(vocab_size=300, d_model=128, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
                   num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
INIT_GPT = GPTConfig(vocab_size=300, n_positions=64, n_embd=128, n_layer=4, n_head=4, eos_token_id=0, pad_token_id=0)


@pytest.mark.parametrize("initialise", ["model", "optim.init"])
def test_t5_init_statistics_match_f12_6(initialise):
    torch.manual_seed(0)
    model = T5Model(INIT_T5)
    if initialise == "optim.init":
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
        t5_init_(model)
    for name, param in model.named_parameters():
        expected = t5_expected_std(name, INIT_T5)
        if expected is None:
            assert name.endswith("norm.weight") and param.eq(1).all(), name
        else:
            assert abs(param.mean().item()) < 4 * expected / math.sqrt(param.numel()), name
            assert_std(name, param, expected)


@pytest.mark.parametrize("initialise", ["model", "optim.init"])
def test_gpt2_init_statistics_match_f12_6(initialise):
    torch.manual_seed(0)
    model = GPT(INIT_GPT)
    if initialise == "optim.init":
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(0.5)
        gpt2_init_(model)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert param.eq(0).all(), name
        elif "ln_" in name:
            assert param.eq(1).all(), name
        elif name.endswith("c_proj.weight"):
            assert_std(name, param, 0.02 / math.sqrt(2 * INIT_GPT.n_layer))     # 1/√N, N = 2L residual layers
        else:
            assert_std(name, param, 0.02)


def test_fan_in_init_keeps_unit_variance_and_t5_scores_need_no_scale():
    torch.manual_seed(0)
    x = torch.randn(4096, 256)
    weight = fan_in_normal_(torch.empty(512, 256))
    assert (x @ weight.T).var().item() == pytest.approx(1.0, rel=0.05)           # F12.6 N(0, 1/n)
    assert_std("xavier", xavier_normal_(torch.empty(512, 256)), (2 / (512 + 256)) ** 0.5)
    # T5: with the folded 1/√d, unscaled q·k scores start with variance ≈ 1 (here d = 64, C = 512).
    model = T5Model(T5Config(vocab_size=10, d_model=512, d_kv=64, num_heads=8, num_layers=1, num_decoder_layers=1))
    attention = model.encoder.blocks[0].self_attn
    hidden = torch.randn(2048, 512)
    q, k = attention.q(hidden)[:, :64], attention.k(hidden)[:, :64]
    assert (q * k).sum(-1).var().item() == pytest.approx(1.0, rel=0.15)


# ---- memory accounting and builders -----------------------------------------------------------

def test_state_bytes_count_the_copies_f12_2():
    model = small_model().float()
    parameter_bytes = sum(p.numel() * 4 for p in model.parameters())
    expected_copies = {"sgd": 0, "sgd+momentum": 1, "adam": 2, "adamw": 2}
    for name, copies in expected_copies.items():
        optimizer = (SGD(model.parameters(), lr=0.1, momentum=0.9) if name == "sgd+momentum"
                     else build_optimizer(name, model.parameters(), lr=0.1))
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        assert state_bytes(optimizer) == copies * parameter_bytes, name
        assert bytes_per_parameter(name, "fp32")["optimizer state"] == 4 * copies
    # Adam in fp16 with fp32 masters: 2 + 2 + 4 + 8 = 16 bytes, the same as fp32's 4 + 4 + 8.
    assert sum(bytes_per_parameter("adam", "fp16").values()) == sum(bytes_per_parameter("adam", "fp32").values()) == 16
    # Frozen parameters cost their weights only.
    assert training_state_bytes(trainable=0, frozen=10, optimizer="adam", precision="fp32")["total"] == 40


def test_weight_decay_groups_leave_vectors_undecayed():
    model = small_model()
    decay, no_decay = weight_decay_groups(model.named_parameters(), 0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    optimizer = build_optimizer("adamw", [decay, no_decay], lr=1e-3, weight_decay=0.1)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]


def test_memory_benchmark_measures_each_configuration():
    """A smoke run of ``python -m minipeft.benchmarks.memory``'s measurement at a tiny shape."""
    from minipeft.benchmarks import memory
    shape = dict(memory.T5_SMALL, vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                 num_heads=2)
    rows = [memory.measure(name, shape) for name in ("full + adam", "full + sgd")]
    adam, sgd = rows
    assert adam["trainable"] == adam["parameters"] == sum(p.numel() for p in T5Model(T5Config(**shape)).parameters())
    assert adam["grad_bytes"] == 4 * adam["trainable"] and adam["state_bytes"] == 2 * adam["grad_bytes"]
    assert sgd["state_bytes"] == 0 and adam["peak_delta"] >= 0
    assert "full + adam" in memory.report(rows)
