"""Pretraining objectives (F11): the losses against their formulas, the noise against its statistics.

Exercise: ``pytest tests/test_objectives.py --exercise objectives`` runs these against your copy.
"""

import math

import pytest
import torch

from minipeft.objectives import (IGNORE_INDEX, causal_lm_loss, fill_spans, mlm_mask, prefix_lm, seq2seq_loss,
                                 span_corruption)

SENTINELS = list(range(1099, 999, -1))  # <extra_id_j> = 1099 - j, counted down as in T5


# ---- losses ----------------------------------------------------------------------------------

def test_causal_lm_loss_is_the_mean_negative_log_likelihood_of_each_next_token():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    log_probs = logits.log_softmax(-1)
    # F11.1: position t predicts token t+1
    expected = -torch.stack([log_probs[b, t, ids[b, t + 1]] for b in range(2) for t in range(4)]).mean()
    torch.testing.assert_close(causal_lm_loss(logits, ids), expected)


def test_causal_lm_loss_skips_ignored_labels():
    torch.manual_seed(0)
    logits, ids = torch.randn(1, 6, 7), torch.randint(0, 7, (1, 6))
    labels = ids.clone()
    labels[0, 4:] = IGNORE_INDEX  # e.g. padding at the end
    log_probs = logits.log_softmax(-1)
    expected = -torch.stack([log_probs[0, t, ids[0, t + 1]] for t in range(3)]).mean()
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)


def test_seq2seq_loss_has_no_shift_and_ignores_padding():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 9), torch.randint(3, 9, (2, 4))
    log_probs = logits.log_softmax(-1)
    expected = -torch.stack([log_probs[b, t, labels[b, t]] for b in range(2) for t in range(4)]).mean()
    torch.testing.assert_close(seq2seq_loss(logits, labels), expected)
    # padding added to the batch changes nothing, whether marked -100 or given as pad_token_id
    padded_logits = torch.cat([logits, torch.randn(2, 3, 9)], dim=1)
    torch.testing.assert_close(seq2seq_loss(padded_logits, torch.cat([labels, torch.full((2, 3), IGNORE_INDEX)], 1)), expected)
    torch.testing.assert_close(seq2seq_loss(padded_logits, torch.cat([labels, torch.zeros(2, 3, dtype=torch.long)], 1),
                                            pad_token_id=0), expected)


def test_losses_check_shapes():
    with pytest.raises(ValueError, match="F11.1"):
        causal_lm_loss(torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="F11.5"):
        seq2seq_loss(torch.randn(2, 5, 7), torch.zeros(5, dtype=torch.long))


# ---- BERT's masking (F11.2) --------------------------------------------------------------------

def test_mlm_mask_chooses_15_percent_then_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (400, 500), generator=generator)
    inputs, labels = mlm_mask(ids, mask_id=1000, vocab_size=1001, generator=generator)
    chosen = labels != IGNORE_INDEX
    n = chosen.sum().item()
    assert abs(n / ids.numel() - 0.15) < 0.003                       # 200,000 draws: σ ≈ 0.0008
    masked = (inputs[chosen] == 1000).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    replaced = 1 - masked - kept
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(replaced - 0.1) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])                   # the model must guess the original
    assert torch.equal(inputs[~chosen], ids[~chosen])                 # everything else is untouched


def test_mlm_random_replacements_spread_over_the_vocabulary():
    generator = torch.Generator().manual_seed(1)
    ids = torch.full((1000, 400), 5)
    inputs, labels = mlm_mask(ids, mask_id=9, vocab_size=10, generator=generator)
    replaced = inputs[(labels != IGNORE_INDEX) & (inputs != 9) & (inputs != 5)]
    counts = torch.bincount(replaced, minlength=10).float()
    others = counts[[0, 1, 2, 3, 4, 6, 7, 8]]                        # 5 and 9 are hidden among kept / masked
    assert others.min() > 0.8 * others.mean()


def test_mlm_mask_never_chooses_special_tokens():
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (200, 100), generator=generator)
    inputs, labels = mlm_mask(ids, mask_id=50, vocab_size=51, p=0.5, generator=generator, special_ids=(0, 1))
    special = (ids == 0) | (ids == 1)
    assert (labels[special] == IGNORE_INDEX).all() and torch.equal(inputs[special], ids[special])
    assert abs((labels[~special] != IGNORE_INDEX).float().mean().item() - 0.5) < 0.02


def test_mlm_mask_is_reproducible_with_a_generator_and_checks_p():
    ids = torch.arange(3, 200).view(1, -1)
    first = mlm_mask(ids, 0, 200, generator=torch.Generator().manual_seed(7))
    second = mlm_mask(ids, 0, 200, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="probability"):
        mlm_mask(ids, 0, 200, p=15)


# ---- T5's span corruption (F11.4) ----------------------------------------------------------------

def corrupt(length, seed, **options):
    ids = torch.arange(10, 10 + length)
    inputs, targets = span_corruption(ids, SENTINELS, generator=torch.Generator().manual_seed(seed), **options)
    return ids, inputs, targets


def test_inputs_and_targets_put_back_together_give_the_original():
    for length in range(2, 150):
        for seed in range(3):
            ids, inputs, targets = corrupt(length, seed)
            torch.testing.assert_close(fill_spans(inputs, targets, SENTINELS), ids)


def test_the_layout_of_inputs_and_targets():
    ids, inputs, targets = corrupt(100, seed=0)
    input_sentinels = [t for t in inputs.tolist() if t in SENTINELS]
    target_sentinels = [t for t in targets.tolist() if t in SENTINELS]
    spans = len(input_sentinels)
    assert input_sentinels == SENTINELS[:spans]                       # <extra_id_0>, <extra_id_1>, … in order
    assert target_sentinels == SENTINELS[:spans + 1]                  # and one more closes the last span
    assert targets[0].item() == SENTINELS[0] and targets[-1].item() == SENTINELS[spans]
    kept = [t for t in inputs.tolist() if t not in SENTINELS]
    assert kept == sorted(kept)                                       # kept tokens stay in order
    hidden = [t for t in targets.tolist() if t not in SENTINELS]
    assert sorted(kept + hidden) == ids.tolist()                      # each token is kept or hidden, once
    # no two sentinels side by side in the inputs: two adjacent spans would be one span
    assert all(not (a in SENTINELS and b in SENTINELS) for a, b in zip(inputs.tolist(), inputs.tolist()[1:]))


@pytest.mark.parametrize("length, density, mean_span", [(100, 0.15, 3.0), (512, 0.15, 3.0), (60, 0.3, 2.0)])
def test_noise_amount_and_span_count_follow_the_settings(length, density, mean_span):
    noise = round(length * density)
    for seed in range(5):
        _, inputs, targets = corrupt(length, seed, noise_density=density, mean_span_length=mean_span)
        spans = sum(t in SENTINELS for t in inputs.tolist())
        assert len(targets) - (spans + 1) == noise
        assert spans == round(noise / mean_span)
        assert len(inputs) == length - noise + spans


def test_spans_fall_anywhere():
    """Over many corruptions every position is hidden sometimes, the first and the last too (a
    layout that always starts with a kept gap would never hide the first), and positions away
    from the ends are hidden equally often."""
    length, trials = 40, 4000
    generator = torch.Generator().manual_seed(0)
    hidden_count = torch.zeros(length)
    for _ in range(trials):
        _, targets = span_corruption(torch.arange(10, 10 + length), SENTINELS, generator=generator)
        hidden_count[[t - 10 for t in targets.tolist() if t not in SENTINELS]] += 1
    rate = hidden_count / trials
    assert abs(rate.mean().item() - 6 / 40) < 1e-6                    # exactly round(40 · 0.15) = 6 hidden
    assert rate[0] > 0.03 and rate[-1] > 0.03
    middle = rate[5:-5]
    sigma = math.sqrt(0.16 * 0.84 / trials)
    assert (middle - middle.mean()).abs().max().item() < 5 * sigma, rate


def test_span_corruption_needs_enough_sentinels():
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(torch.arange(10, 110), SENTINELS[:2])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_corruption(torch.tensor([5]), SENTINELS)


# ---- prefix LM (T5's LM adaptation) --------------------------------------------------------------

def test_prefix_lm_splits_the_text_in_two_non_empty_parts_in_order():
    ids = torch.arange(10, 50)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        inputs, targets = prefix_lm(ids, generator)
        assert len(inputs) >= 1 and len(targets) >= 1
        assert torch.equal(torch.cat([inputs, targets]), ids)         # nothing lost, nothing reordered


def test_prefix_lm_split_is_uniform_over_every_point():
    """Every split 1 … T-1 is drawn, each about equally often (within 5 sigma of 1/(T-1))."""
    length, trials = 11, 5000
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(length)
    for _ in range(trials):
        inputs, _ = prefix_lm(torch.arange(length), generator)
        counts[len(inputs)] += 1
    assert counts[0] == 0
    rate, p = counts[1:] / trials, 1 / (length - 1)
    assert (rate - p).abs().max().item() < 5 * math.sqrt(p * (1 - p) / trials), rate


def test_prefix_lm_is_seeded_and_refuses_a_text_it_cannot_split():
    first = prefix_lm(torch.arange(30), torch.Generator().manual_seed(4))
    second = prefix_lm(torch.arange(30), torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        prefix_lm(torch.tensor([5]))
