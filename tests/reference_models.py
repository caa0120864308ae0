"""Reference models from `transformers` with random weights, saved to a directory like a real checkpoint.

Freshly initialised models are nearly degenerate (every greedy step picks the same token), which
would let a wrong implementation agree with the reference by luck; ``randomize`` spreads the
weights so that logits and greedy choices depend on every part of the network.
"""

from __future__ import annotations

import torch


def randomize(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name or ".ln_" in name or name.startswith("ln_f"):
                param.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
            elif "wte" in name or "wpe" in name:  # GPT-2's own scale: larger makes greedy repeat the input
                param.copy_(0.02 * noise)
            elif "relative_attention_bias" in name or "shared" in name or "lm_head" in name:
                param.copy_(noise)
            elif param.dim() == 2:  # projections: unit-variance outputs
                fan_in = param.shape[0] if type(model).__name__.startswith("GPT2") else param.shape[1]
                param.copy_(noise * fan_in ** -0.5)
            else:
                param.copy_(0.1 * noise)
    return model


# t5-small (v1.0: ReLU FFN, tied head rescaled) and flan-t5-small (gated-GELU, separate head).
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                feed_forward_proj="relu")
FLAN_T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False)
GPT2_SMALL_TEST = dict(vocab_size=1000, n_positions=128, n_embd=128, n_layer=3, n_head=4)


def hf_t5(transformers, untied_head=False, **config):
    """A `transformers` T5; ``untied_head`` gives it its own lm_head as real flan-T5 checkpoints have."""
    hf_config = transformers.T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **config)
    model = transformers.T5ForConditionalGeneration(hf_config)
    if untied_head:
        model.lm_head.weight = torch.nn.Parameter(torch.empty(hf_config.vocab_size, hf_config.d_model))
        model.config.tie_word_embeddings = False
    return randomize(model).eval()


def hf_gpt2(transformers, **config):
    hf_config = transformers.GPT2Config(**config)
    return randomize(transformers.GPT2LMHeadModel(hf_config)).eval()
