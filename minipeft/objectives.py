"""Pretraining objectives (F11): what a model learns from raw text before it sees any task.

* **Causal LM** (F11.1, GPT): predict every token from the ones before it,
  ``O(θ) = −Σ_i log p_θ(x_i | x_<i)``.
* **Masked LM noise** (F11.2, BERT): choose 15% of the positions; of those, 80% become ``[MASK]``,
  10% a random token, 10% stay as they are; the model predicts the original token at each.
* **Span corruption** (F11.4, T5): replace a few short spans (15% of the tokens, spans of mean
  length 3) with sentinels ``<extra_id_0>``, ``<extra_id_1>``, …; the encoder reads what is left, the
  decoder writes each sentinel followed by the span it hides:

      original   Thank you for inviting me to your party last week .
      inputs     Thank you <extra_id_0> me to your party <extra_id_1> week .
      targets    <extra_id_0> for inviting <extra_id_1> last <extra_id_2>

* **Prefix LM** (F11.1 read through F11.5; T5's "prefix language modelling", and the "LM
  adaptation" that Lester et al. give a span-corruption T5 before prompt tuning it): split a text
  at a random point; the encoder reads the first part, the decoder continues it token by token.

      original   Thank you for inviting me to your party last week .
      inputs     Thank you for inviting me
      targets    to your party last week .

* **Seq2seq loss** (F11.5): the decoder's cross-entropy on its targets, padding ignored.

Symbols → variables: ``x_i`` → ``ids[..., i]``; ``p_θ(x_i | x_<i)`` → ``softmax(logits[..., i - 1, :])``;
positions with no loss carry the label ``ignore_index`` (-100), as in ``torch.nn.functional.cross_entropy``.
Shapes: ``B`` batch, ``T`` length, ``V`` vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .shapes import Dims

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """F11.1 ``−(1/N) Σ_i log p_θ(x_i | x_<i)`` over the N predicted tokens.

    ``logits`` (B, T, V) are the model's outputs on ``ids`` (B, T); ``labels`` (B, T) are those same
    ids, with ``ignore_index`` where no loss is wanted (padding, a prompt). Position ``t`` predicts
    token ``t + 1``, so the shift happens here, not in the caller."""
    dims = Dims("F11.1 causal LM")
    dims.check("logits", logits, "B T V")
    dims.check("labels", labels, "B T")
    # F11.1  p(x_{t+1} | x_≤t) = softmax(logits_t)
    predictions = logits[:, :-1]  # (B, T-1, V)
    next_tokens = labels[:, 1:]   # (B, T-1)
    return F.cross_entropy(predictions.reshape(-1, dims["V"]), next_tokens.reshape(-1), ignore_index=ignore_index)


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                 pad_token_id: int | None = None) -> torch.Tensor:
    """F11.5 decoder loss ``−(1/N) Σ_t log p_θ(y_t | y_<t, x)`` over the N real target tokens.

    ``logits`` (B, T, V) come from the decoder fed ``shift_right(labels)``, so position ``t``
    already predicts ``labels[:, t]``: no shift here. Padding is ignored: positions whose label is
    ``ignore_index``, and, if given, ``pad_token_id``."""
    dims = Dims("F11.5 seq2seq loss")
    dims.check("logits", logits, "B T V")
    dims.check("labels", labels, "B T")
    if pad_token_id is not None:
        labels = labels.masked_fill(labels == pad_token_id, ignore_index)
    return F.cross_entropy(logits.reshape(-1, dims["V"]), labels.reshape(-1), ignore_index=ignore_index)


def mlm_mask(ids: torch.Tensor, mask_id: int, vocab_size: int, p: float = 0.15, generator: torch.Generator | None = None,
             special_ids=()) -> tuple[torch.Tensor, torch.Tensor]:
    """F11.2 BERT's noise: ``(inputs, labels)`` for ids of any shape.

    Each position outside ``special_ids`` is chosen with probability ``p``; a chosen position
    becomes ``mask_id`` (80%), a random id in ``[0, vocab_size)`` (10%), or stays (10%). ``labels``
    hold the original id at chosen positions and ``IGNORE_INDEX`` elsewhere: the model is scored
    only where it had to guess."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} is a probability: choose it in [0, 1] (BERT uses 0.15)")
    can_choose = ~torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype))
    # exercise: choose positions with probability p (never special ones); labels there, IGNORE_INDEX elsewhere; then 80% mask_id, 10% random id, 10% unchanged
    chosen = (torch.rand(ids.shape, generator=generator) < p) & can_choose
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    action = torch.rand(ids.shape, generator=generator)  # one draw decides mask / random / keep
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    # end exercise
    return inputs, labels


def random_partition(total: int, parts: int, generator: torch.Generator | None = None) -> list[int]:
    """``parts`` positive integers summing to ``total``, each such split equally likely."""
    if not 1 <= parts <= total:
        raise ValueError(f"cannot split {total} into {parts} positive parts")
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1].add(1).sort().values.tolist()
    edges = [0, *cuts, total]
    return [right - left for left, right in zip(edges, edges[1:])]


def span_lengths(length: int, noise_density: float, mean_span_length: float,
                 generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """F11.4 layout of the noise: ``(gaps, spans)`` with ``gaps[0] spans[0] gaps[1] … spans[k-1] gaps[k]``.

    ``round(length · noise_density)`` noise tokens (at least 1, at most length - 1) form
    ``k = round(noise / mean_span_length)`` spans (at least 1). The gaps between spans hold the
    kept tokens: inner gaps at least one token (else two spans would be one), the two outer gaps
    possibly empty."""
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    noise = min(max(round(length * noise_density), 1), length - 1)
    kept = length - noise
    spans = min(max(round(noise / mean_span_length), 1), noise, kept + 1)
    spans_lengths = random_partition(noise, spans, generator)
    # kept + 2 tokens into spans + 1 positive parts, then take back the one lent to each outer gap
    gaps = random_partition(kept + 2, spans + 1, generator)
    gaps[0] -= 1
    gaps[-1] -= 1
    return gaps, spans_lengths


def span_corruption(ids, sentinel_ids, noise_density: float = 0.15, mean_span_length: float = 3.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """F11.4 T5's span corruption of one sequence ``ids`` (T,) → ``(inputs, targets)``, 1-D.

    ``sentinel_ids[j]`` is the id of ``<extra_id_j>`` (``[tokenizer.sentinel_id(j) for j in …]``).
    ``inputs``: the kept tokens, each hidden span replaced by its sentinel. ``targets``: each
    sentinel followed by the span it hides, then one more sentinel that closes the last span.
    Neither gets an end-of-sequence token; the caller appends one to each."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    Dims("F11.4 span corruption").check("ids", ids, "T")
    gaps, spans = span_lengths(len(ids), noise_density, mean_span_length, generator)
    if len(spans) + 1 > len(sentinel_ids):
        raise ValueError(f"{len(spans)} spans need {len(spans) + 1} sentinels, only {len(sentinel_ids)} given: "
                         "pass more sentinel ids or corrupt shorter sequences")
    inputs, targets, position = [], [], 0
    # exercise: walk gap, span, gap, …: inputs keep each gap then sentinel j; targets get sentinel j then span j; close targets with sentinel k
    for j, (gap, span) in enumerate(zip(gaps, spans)):
        inputs += ids[position: position + gap].tolist() + [sentinel_ids[j]]
        position += gap
        targets += [sentinel_ids[j]] + ids[position: position + span].tolist()
        position += span
    inputs += ids[position:].tolist()
    targets.append(sentinel_ids[len(spans)])
    # end exercise
    return torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def prefix_lm(ids, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix LM of one sequence ``ids`` (T,) → ``(inputs, targets)``, 1-D: ``ids[:k]`` and ``ids[k:]``
    for a split ``k`` drawn uniformly from 1 … T-1 (both parts non-empty).

    The decoder's loss on ``targets`` is F11.1's ``−Σ_{i≥k} log p_θ(x_i | x_<i)``, its first ``k``
    tokens read by the bidirectional encoder instead of the decoder (F11.5): the decoder learns to
    *continue* what the encoder read, which is how a text-to-text task asks for its answer. As
    with :func:`span_corruption`, neither part gets ``</s>``; the caller appends one to each."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    Dims("prefix LM").check("ids", ids, "T")
    if len(ids) < 2:
        raise ValueError(f"prefix LM needs at least 2 tokens to split, got {len(ids)}")
    # exercise: draw the split k uniformly from 1 … T-1; inputs are the tokens before it, targets the rest
    split = int(torch.randint(1, len(ids), (1,), generator=generator))
    return ids[:split], ids[split:]  # (k,) read by the encoder, (T-k,) written by the decoder
    # end exercise


def fill_spans(inputs, targets, sentinel_ids) -> torch.Tensor:
    """Undo :func:`span_corruption`: put each span of ``targets`` back in place of its sentinel."""
    sentinel_index = {int(token): j for j, token in enumerate(sentinel_ids)}
    spans: dict[int, list[int]] = {}
    current = None
    for token in torch.as_tensor(targets).tolist():
        if token in sentinel_index:
            current = sentinel_index[token]
            spans[current] = []
        elif current is None:
            raise ValueError("targets must start with a sentinel")
        else:
            spans[current].append(token)
    original = []
    for token in torch.as_tensor(inputs).tolist():
        original += spans.get(sentinel_index[token], []) if token in sentinel_index else [token]
    return torch.tensor(original, dtype=torch.long)
