"""Test-set scores: exact-match accuracy, corpus BLEU-4, and slot coverage for table-to-text.

**Accuracy** (classification, inference): the greedy generation, stripped of surrounding spaces,
must equal the label string exactly (``"positive"``, not ``"Positive."``).

**Corpus BLEU-4** (Papineni et al., 2002), written from the formula. For a corpus of hypotheses
``h`` with one or more references each:

    p_n  = Σ_h Σ_{g ∈ n-grams(h)} min(count_h(g), max_ref count_ref(g))  /  Σ_h |n-grams(h)|
    BP   = 1 if c > r else exp(1 − r / c)
    BLEU = BP · exp( (1/4) Σ_{n=1..4} log p_n )

``c`` is the total hypothesis length, ``r`` the total of each hypothesis's *effective reference
length* (the reference length closest to the hypothesis's, the shorter one on a tie). The count of
an n-gram is *clipped* at the most times any one reference has it, so repeating a right word does
not pay. No smoothing: a corpus without a single matching 4-gram scores 0. Text is split into
words and punctuation marks (``"a café, near."`` → ``a café , near .``), case kept.

**Slot coverage** (table-to-text): an E2E-style input ``name[The Eagle] | food[Italian]`` lists
attribute values; the score is the fraction of all values, over the corpus, that the generated
sentence mentions (as whole words, ignoring case; or by a task's own phrases for a value). BLEU
rewards sounding like the references; coverage checks that the sentence says what the table says.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD_OR_PUNCTUATION = re.compile(r"\w+|[^\w\s]")
SLOT = re.compile(r"([^\[\]|]+?)\s*\[([^\[\]]*)\]")  # key[value]


def accuracy(predictions: list[str], labels: list[str]) -> float:
    """Fraction of predictions equal to their label (after stripping surrounding whitespace)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(p.strip() == y.strip() for p, y in zip(predictions, labels)) / len(labels)


def words(text: str) -> list[str]:
    """BLEU's tokens: runs of word characters and single punctuation marks."""
    return WORD_OR_PUNCTUATION.findall(text)


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_statistics(hypothesis: str, references: list[str], max_order: int = 4):
    """One sentence's contribution: clipped matches and totals per order, its length and the
    effective reference length."""
    if not references:
        raise ValueError(f"no reference for hypothesis {hypothesis!r}")
    hyp = words(hypothesis)
    refs = [words(reference) for reference in references]
    matches, totals = [], []
    for n in range(1, max_order + 1):
        hyp_counts = ngrams(hyp, n)
        most_in_one_reference = Counter()
        for ref in refs:
            most_in_one_reference |= ngrams(ref, n)             # | keeps the maximum count per n-gram
        matches.append(sum(min(count, most_in_one_reference[g]) for g, count in hyp_counts.items()))
        totals.append(max(len(hyp) - n + 1, 0))
    closest = min(refs, key=lambda ref: (abs(len(ref) - len(hyp)), len(ref)))
    return matches, totals, len(hyp), len(closest)


def corpus_bleu(hypotheses: list[str], references: list[list[str]], max_order: int = 4) -> float:
    """Corpus BLEU in [0, 1]; ``references[i]`` is the list of references of ``hypotheses[i]``."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        m, t, c, r = bleu_statistics(hypothesis, refs, max_order)
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
        hyp_length, ref_length = hyp_length + c, ref_length + r
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    # p_n = clipped matches / hypothesis n-grams
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    # BP = 1 if c > r else exp(1 − r/c)
    brevity_penalty = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity_penalty * math.exp(log_precision)


def slots(table: str) -> list[tuple[str, str]]:
    """``"name[The Eagle] | food[Italian]"`` → ``[("name", "The Eagle"), ("food", "Italian")]``."""
    return [(key.strip(), value.strip()) for key, value in SLOT.findall(table) if value.strip()]


def slot_values(table: str) -> list[str]:
    """``"name[The Eagle] | food[Italian]"`` → ``["The Eagle", "Italian"]``."""
    return [value for _, value in slots(table)]


def mentions(text: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``text`` as whole words, ignoring case ("no" is not in "not")."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def slot_coverage(tables: list[str], outputs: list[str], phrases=None) -> float:
    """Fraction of all attribute values of the tables that their outputs mention.

    A value counts as mentioned when the output contains it as whole words, or, when
    ``phrases(key, value)`` is given, any of the phrases it returns (the embedded E2E task passes
    ``world.slot_phrases``, which knows that ``familyFriendly[yes]`` is said "family friendly").
    """
    if len(tables) != len(outputs):
        raise ValueError(f"{len(tables)} tables for {len(outputs)} outputs")
    mentioned = total = 0
    for table, output in zip(tables, outputs):
        for key, value in slots(table):
            said = phrases(key, value) if phrases is not None else (value,)
            mentioned += any(mentions(output, phrase) for phrase in said)
            total += 1
    if total == 0:
        raise ValueError("no attribute values (key[value]) in the inputs: slot coverage needs table inputs")
    return mentioned / total


def is_table(text: str) -> bool:
    """Whether ``text`` is entirely ``key[value]`` slots separated by ``|``."""
    parts = [part.strip() for part in text.split("|")]
    return bool(text.strip()) and all(SLOT.fullmatch(part) for part in parts)
