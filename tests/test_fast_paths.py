"""The decoding fast path computes the same thing as F.linear, and only while decoding."""

import platform

import pytest
import torch
import torch.nn.functional as F

import minipeft
from minipeft import packing, screening

needs_onednn = pytest.mark.skipif(not packing.can_pack(torch.zeros(1)), reason="this torch build has no oneDNN on CPU")


@needs_onednn
@pytest.mark.parametrize("shape", [(8, 32), (3, 32), (2, 5, 32), (2, 1, 32)])
def test_packed_linear_equals_f_linear(shape):
    weight, bias, x = torch.randn(48, 32), torch.randn(48), torch.randn(*shape)
    packed = packing.pack_weight(weight, rows=8)
    with torch.no_grad():
        torch.testing.assert_close(packing.linear(x, weight, bias, packed), F.linear(x, weight, bias),
                                   rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_copy_is_ignored_when_a_gradient_is_needed():
    layer = packing.Linear(4, 3)
    layer.packed = packing.pack_weight(torch.zeros(3, 4), rows=2)  # deliberately stale
    x = torch.randn(2, 4, requires_grad=True)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def tiny_models():
    torch.manual_seed(0)
    t5 = minipeft.T5Model(minipeft.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                            num_decoder_layers=2, num_heads=4, dropout_rate=0.0)).eval()
    gpt = minipeft.GPT(minipeft.GPTConfig(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                          dropout=0.0, eos_token_id=1, pad_token_id=0)).eval()
    return t5, gpt


@needs_onednn
@pytest.mark.parametrize("index", [0, 1], ids=["t5", "gpt"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_is_the_same_with_and_without_packing(index, num_beams, monkeypatch):
    model = tiny_models()[index]
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    packed_ids = model.generate(ids, max_new_tokens=6, num_beams=num_beams)
    monkeypatch.setattr(packing, "pack_weight", lambda weight, rows: None)
    assert torch.equal(model.generate(ids, max_new_tokens=6, num_beams=num_beams), packed_ids)


@pytest.mark.parametrize("index", [0, 1], ids=["t5", "gpt"])
def test_generated_ids_are_an_ordinary_tensor_that_training_can_use(index):
    """generate decodes under inference_mode, but what it returns can go into a training step
    (an inference tensor could not be saved for backward by the embedding lookup)."""
    model = tiny_models()[index].train()
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    new_ids = model.generate(ids, max_new_tokens=4)
    assert not new_ids.is_inference() and not torch.is_inference_mode_enabled()
    inputs = dict(input_ids=ids, decoder_input_ids=new_ids) if index == 0 else dict(input_ids=new_ids)
    model(**inputs).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() == 2)


@needs_onednn
def test_packing_happens_inside_generate_only():
    model = tiny_models()[0]
    layers = [m for m in model.decoder.modules() if isinstance(m, packing.Linear)]
    with packing.packed_for_decoding(model, rows=2):
        assert all(layer.packed is not None for layer in layers) and model.packed_head is not None
    assert all(layer.packed is None for layer in layers) and model.packed_head is None


def self_and_cross_attention(model):
    from minipeft.attention import T5Attention
    attentions = [m for m in model.decoder.modules() if isinstance(m, T5Attention)]
    return ([a for a in attentions if not a.is_cross_attention], [a for a in attentions if a.is_cross_attention])


@needs_onednn
def test_decoding_packs_self_attention_q_k_v_as_one_matrix():
    model = tiny_models()[0]
    self_attention, cross_attention = self_and_cross_attention(model)
    with packing.packed_for_decoding(model, rows=2):
        assert all(a.packed_fused is not None for a in self_attention)
        assert all(a.packed_fused is None for a in cross_attention)       # its k, v read the encoder once
        assert all(a.packed_fused is None for a in model.encoder.modules() if hasattr(a, "packed_fused"))
    assert all(a.packed_fused is None for a in self_attention)


@needs_onednn
def test_the_fused_matmul_gives_what_q_k_v_give_separately():
    model = tiny_models()[0]
    attention = self_and_cross_attention(model)[0][0]
    x = torch.randn(3, 1, 32)
    with torch.no_grad():
        separate = attention(x)
        attention.packed_fused = packing.fused_packed_copy([attention.q.weight, attention.k.weight,
                                                            attention.v.weight], rows=3)
        torch.testing.assert_close(attention(x), separate, rtol=1e-5, atol=1e-6)
        attention.packed_fused = packing.pack_weight(torch.zeros(96, 32), rows=3)  # proof the fused path ran
        assert not torch.allclose(attention(x), separate)


@needs_onednn
def test_generation_is_the_same_with_and_without_the_fused_projections(monkeypatch):
    from minipeft.attention import T5Attention
    model = tiny_models()[0]
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    fused = [model.generate(ids, max_new_tokens=6, num_beams=beams) for beams in (1, 3)]
    monkeypatch.setattr(T5Attention, "fusable_projections", lambda self: None)
    assert all(torch.equal(model.generate(ids, max_new_tokens=6, num_beams=beams), expected)
               for beams, expected in zip((1, 3), fused))


@needs_onednn
def test_a_method_that_wraps_q_keeps_the_separate_projections():
    model = tiny_models()[0]
    peft = minipeft.get_peft(model, "lora", r=2, target_modules=["q", "v"])
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if name.endswith("lora_B"):
                param.normal_()                                               # ΔW ≠ 0, so a bypass would show
    assert all(a.fusable_projections() is None for a in self_and_cross_attention(model)[0])
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    generated = peft.generate(ids, max_new_tokens=5)
    step_by_step = torch.full((2, 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(5):
            logits = peft(input_ids=ids, decoder_input_ids=step_by_step)
            step_by_step = torch.cat([step_by_step, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, step_by_step[:, 1:])


@needs_onednn
def test_the_fused_copy_is_made_again_when_a_weight_changes():
    attention = self_and_cross_attention(tiny_models()[0])[0][0]
    weights = [attention.q.weight, attention.k.weight, attention.v.weight]
    first = packing.fused_packed_copy(weights, rows=2)
    assert packing.fused_packed_copy(weights, rows=2) is first
    with torch.no_grad():
        attention.k.weight.mul_(2)                                            # as an optimiser step would
    assert packing.fused_packed_copy(weights, rows=2) is not first


@pytest.mark.parametrize("index", [0, 1], ids=["t5", "gpt"])
def test_tied_embedding_gradient_is_dense_and_equals_a_dense_lookup(index, monkeypatch):
    model = tiny_models()[index].train()
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    weight = model.head_weight()

    def loss():
        inputs = dict(input_ids=ids, decoder_input_ids=ids[:, :4]) if index == 0 else dict(input_ids=ids)
        return model(**inputs).square().mean()

    torch.manual_seed(0)
    loss().backward()
    fast = weight.grad.clone()
    assert fast.layout == torch.strided  # AdamW needs a dense gradient
    weight.grad = None
    module = minipeft.t5 if index == 0 else minipeft.gpt
    # The textbook path: dense lookups, F.linear as the head, no reordering of the gradients.
    monkeypatch.setattr(module, "embedding", lambda ids, weight, tied_to_head: F.embedding(ids, weight))
    monkeypatch.setattr(module, "lm_head", lambda hidden, weight, packed=None: F.linear(hidden, weight))
    monkeypatch.setattr(module, "gradient_last", lambda weight: weight)
    torch.manual_seed(0)
    loss().backward()
    torch.testing.assert_close(weight.grad, fast, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1], ids=["t5", "gpt"])
def test_tied_matrix_gradient_is_summed_without_a_copy_of_its_size(index):
    """The head's dense gradient arrives after the lookups' sparse ones and takes them in place
    (functional.gradient_last): no op in the backward pass copies a (V, C) matrix."""
    from torch.profiler import profile
    model = tiny_models()[index].train()
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    inputs = dict(input_ids=ids, decoder_input_ids=ids[:, :4]) if index == 0 else dict(input_ids=ids)
    loss = model(**inputs).square().mean()
    with profile(record_shapes=True) as prof:
        loss.backward()
    size = model.head_weight().numel()
    copies = [event.name for event in prof.events()
              if event.name in ("aten::copy_", "aten::clone", "aten::zero_", "aten::fill_")
              and event.input_shapes and event.input_shapes[0] and torch.Size(event.input_shapes[0]).numel() == size]
    assert not copies, f"the tied matrix's gradient was copied or zero-filled: {copies}"
    assert model.head_weight().grad.layout == torch.strided


def test_training_under_bf16_autocast_uses_f_linear_for_the_head():
    model = tiny_models()[0].train()
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, decoder_input_ids=ids[:, :4])
    logits.float().square().mean().backward()
    assert logits.dtype == torch.bfloat16 and model.head_weight().grad is not None


@needs_onednn
def test_generation_under_bf16_autocast_falls_back_to_f_linear():
    model = tiny_models()[0]
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.generate(ids, max_new_tokens=3).shape == (2, 3)



@needs_onednn
def test_packed_copies_are_reused_until_the_weight_changes():
    """The cache is keyed on the weight's version: an in-place change (an optimiser step) repacks."""
    weight = torch.randn(16, 8)
    first = packing.packed_copy(weight, rows=4)
    assert packing.packed_copy(weight, rows=4) is first
    assert packing.packed_copy(weight, rows=2) is not first          # another batch size
    with torch.no_grad():
        weight.add_(1.0)
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(packing.linear(x, weight, packed=packing.packed_copy(weight, rows=4)),
                                   x @ weight.T)


@needs_onednn
@pytest.mark.parametrize("index", [0, 1], ids=["t5", "gpt"])
def test_generation_after_an_in_place_weight_change_uses_the_new_weights(index, monkeypatch):
    model = tiny_models()[index]
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    model.generate(ids, max_new_tokens=6)                               # packs and keeps the copies
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-1.5)                                          # as an optimiser step would
    after = model.generate(ids, max_new_tokens=6)
    monkeypatch.setattr(packing, "pack_weight", lambda weight, rows: None)
    packing.forget_packed()
    assert torch.equal(model.generate(ids, max_new_tokens=6), after)


# -- greedy decoding's int8 screen (screening.py) -----------------------------------------------------------

def test_the_int8_screen_runs_on_an_x86_cpu_with_avx2():
    """The screen's tests below skip where fbgemm cannot run; on an x86 CPU with AVX2 (CI's) it
    must, or a broken probe would skip them all in silence."""
    if platform.machine() not in ("x86_64", "AMD64") or torch.backends.cpu.get_cpu_capability() not in (
            "AVX2", "AVX512"):
        pytest.skip(f"not an x86 CPU with AVX2 ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()})")
    assert screening.int8_matmul_available()


needs_int8 = pytest.mark.skipif(not (packing.can_pack(torch.zeros(1)) and screening.int8_matmul_available()),
                                reason="this torch build's fbgemm has no int8 matmul on this CPU")


@pytest.fixture(autouse=True)
def screen_small_heads(monkeypatch):
    """The screen serves large heads only; these tests' heads are small."""
    monkeypatch.setattr(screening, "MIN_HEAD_SIZE", 0)


class CountingLinear:
    """Stands in for ``screening.linear`` and counts the float32 fallbacks."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return packing.linear(*args, **kwargs)


@needs_int8
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_screened_greedy_tokens_are_the_float32_argmax(scale, monkeypatch):
    fallback = CountingLinear()
    monkeypatch.setattr(screening, "linear", fallback)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(500, 64, generator=generator)                              # (V, C)
    screen = screening.screen_for(weight)
    for _ in range(20):
        hidden = scale * torch.randn(8, 64, generator=generator)                    # (B, C)
        assert torch.equal(screening.greedy_tokens(hidden, weight, screen=screen), (hidden @ weight.T).argmax(-1))
    assert fallback.calls < 5           # the screen decided (nearly) every step itself


@needs_int8
def test_a_near_tie_among_the_candidates_is_decided_in_float32(monkeypatch):
    fallback = CountingLinear()
    monkeypatch.setattr(screening, "linear", fallback)
    weight = torch.randn(100, 32, generator=torch.Generator().manual_seed(1))
    hidden = 10 * weight[7:8] / weight[7].norm()                                      # (1, C): token 7 wins …
    weight[3] = weight[7] * (1 - 1e-6)                                                # … by 1e-6 over token 3,
    screen = screening.screen_for(weight)                                     # the same row in int8
    assert screening.greedy_tokens(hidden, weight, screen=screen).item() == (hidden @ weight.T).argmax().item() == 7
    assert fallback.calls == 0


@needs_int8
def test_more_near_ties_than_candidates_fall_back_to_float32(monkeypatch):
    fallback = CountingLinear()
    monkeypatch.setattr(screening, "linear", fallback)
    weight = torch.randn(200, 32, generator=torch.Generator().manual_seed(1))
    hidden = 10 * weight[7:8] / weight[7].norm()                                      # (1, C)
    for i, token in enumerate(range(40, 40 + screening.CANDIDATES + 4)):              # K + 4 rows all but equal
        weight[token] = weight[7] * (1 - (i + 1) * 1e-7)                              # to the winner's
    screen = screening.screen_for(weight)
    assert screening.greedy_tokens(hidden, weight, screen=screen).item() == (hidden @ weight.T).argmax().item() == 7
    assert fallback.calls == 1


@needs_int8
@pytest.mark.parametrize("index", [0, 1], ids=["t5", "gpt"])
def test_greedy_generation_is_the_same_with_and_without_the_screen(index, monkeypatch):
    import minipeft.generate as generate_module
    model = tiny_models()[index]
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    screened = model.generate(ids, max_new_tokens=8)
    monkeypatch.setattr(generate_module, "screen_for", lambda weight: None)
    assert torch.equal(model.generate(ids, max_new_tokens=8), screened)


def test_small_heads_are_not_screened(monkeypatch):
    monkeypatch.setattr(screening, "MIN_HEAD_SIZE", 2 ** 22)
    assert not screening.can_screen(torch.zeros(1024, 128))            # the tiny bases' head


@needs_int8
def test_the_screen_is_made_again_when_the_head_changes():
    weight = torch.randn(100, 8)                                                       # more rows than K
    first = screening.screen_for(weight)
    assert screening.screen_for(weight) is first
    with torch.no_grad():
        weight.mul_(-1)                                                                # as an optimiser step would
    hidden = torch.randn(2, 8)
    again = screening.screen_for(weight)
    assert again is not first
    assert torch.equal(screening.greedy_tokens(hidden, weight, screen=again), (hidden @ weight.T).argmax(-1))


@needs_int8
def test_an_int8_matmul_that_is_not_exact_is_not_used(monkeypatch):
    """The screen's bound assumes the kernel computes ĥ · Ŵ_v exactly up to float32 rounding;
    the probe of ``int8_matmul_available`` refuses a kernel that rounds its input on another grid."""
    assert screening.int8_matmul_available.__wrapped__()
    kernel = torch.ops.quantized.linear_dynamic

    class Coarser:                     # the kernel on a grid half as fine: not the ĥ the bound measured
        linear_prepack = torch.ops.quantized.linear_prepack

        def linear_dynamic(self, x, packed, reduce_range):
            return kernel(torch.cat([x, 2 * x[-2:]]), packed, reduce_range)[:-2]

    monkeypatch.setattr(screening.torch.ops, "quantized", Coarser())
    assert not screening.int8_matmul_available.__wrapped__()


@needs_int8
@pytest.mark.parametrize("name", ["tiny-t5-lm", "tiny-gpt"])
def test_the_screen_decides_nearly_every_step_of_a_pretrained_base(name, monkeypatch):
    """On a trained model's own generations the bound is tight enough to be worth it: the screen
    decides (without the float32 head) at least 90 % of the steps, and the tokens are unchanged."""
    import json

    import minipeft.generate as generate_module
    from minipeft import bases
    model, tokenizer = bases.load_base(name)
    lines = (bases.DATA_DIR / "tasks" / "nli" / "test.jsonl").read_text().splitlines()[:16]
    batch = tokenizer([json.loads(line)["input"] for line in lines])
    fallback, steps = CountingLinear(), []
    monkeypatch.setattr(screening, "linear", fallback)
    counted = screening.greedy_tokens

    def counting(*args, **kwargs):
        steps.append(1)
        return counted(*args, **kwargs)

    monkeypatch.setattr(generate_module, "greedy_tokens", counting)
    screened = model.generate(batch["input_ids"], max_new_tokens=16, attention_mask=batch["attention_mask"])
    assert len(steps) >= 8 and fallback.calls <= 0.1 * len(steps)
    monkeypatch.setattr(generate_module, "screen_for", lambda weight: None)
    assert torch.equal(model.generate(batch["input_ids"], max_new_tokens=16,
                                      attention_mask=batch["attention_mask"]), screened)
