"""The tiny models and batches the PEFT method tests share: 16 wide, a 64-token vocabulary, built
in milliseconds. A T5 has 2 encoder blocks and (by default) 3 decoder blocks: unequal stacks catch
code that assumes one count for both."""

import dataclasses

import torch

import minipeft

T5_TINY = minipeft.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3,
                            num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0)
GPT_TINY = minipeft.GPTConfig(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=4, dropout=0.0,
                              eos_token_id=1, pad_token_id=0)


def tiny(kind, seed=0, decoder_layers=3, wide=False):
    """A tiny T5 (``kind="t5"``) or GPT-2 in eval mode. ``wide``: weights with std 1.5/√fan_in,
    wide enough that greedy decoding does not repeat one token (for generation tests)."""
    torch.manual_seed(seed)
    if kind == "t5":
        model = minipeft.T5Model(dataclasses.replace(T5_TINY, num_decoder_layers=decoder_layers))
    else:
        model = minipeft.GPT(GPT_TINY)
    if wide:
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.normal_(0, 1.5 / param.shape[1] ** 0.5)
    return model.eval()


def batch(kind, length=6, decoder_length=4, vocab=64):
    """B=2 random ids; for T5 the decoder reads the first ``decoder_length`` of them."""
    ids = torch.randint(2, vocab, (2, length), generator=torch.Generator().manual_seed(1))
    return dict(input_ids=ids, decoder_input_ids=ids[:, :decoder_length]) if kind == "t5" else dict(input_ids=ids)


def padded_batch(kind):
    """B=2, the second row padded after 4 tokens (T5); the methods that extend the mask need it."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 64, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    if kind == "t5":
        return dict(input_ids=ids, attention_mask=mask,
                    decoder_input_ids=torch.randint(2, 64, (2, 3), generator=generator))
    return dict(input_ids=ids)


def empty_model(config):
    """A full-size model without initialising it: counting needs shapes, not values."""
    with torch.device("meta"):
        model = minipeft.T5Model(config) if isinstance(config, minipeft.T5Config) else minipeft.GPT(config)
    return model.to_empty(device="cpu")


def assert_same_until_eos(recomputed, generated, eos):
    """Generated ids equal the recomputed argmax up to each row's first end-of-sequence (then padding)."""
    after_eos = (generated == eos).long().cumsum(dim=1) - (generated == eos).long() > 0
    assert torch.equal(recomputed.masked_fill(after_eos, -1), generated.masked_fill(after_eos, -1))
