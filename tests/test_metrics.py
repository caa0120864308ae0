"""Scores against hand-computed values: accuracy, corpus BLEU-4 (clipping, brevity penalty,
several references), slot coverage."""

import math

import pytest

from minipeft.metrics import accuracy, bleu_statistics, corpus_bleu, is_table, slot_coverage, slot_values, words


def test_accuracy_is_exact_match_after_stripping_spaces():
    assert accuracy(["positive", " negative ", "Positive"], ["positive", "negative", "positive"]) == 2 / 3


def test_accuracy_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        accuracy(["a", "b"], ["a"])


def test_words_split_punctuation_off():
    assert words("In the riverside, The Eagle serves food.") == ["In", "the", "riverside", ",", "The", "Eagle",
                                                                  "serves", "food", "."]


def test_corpus_bleu_on_a_hand_computed_example():
    """Two sentences; every count below was worked out by hand.

    h1 "the cat sat on the mat", refs "the cat is on the mat" / "there is a cat on the mat":
      1-grams: the×2 (a ref has 2) cat on mat → 5 of 6;  2-grams: the cat, on the, the mat → 3 of 5
      3-grams: on the mat → 1 of 4;  4-grams: 0 of 3;  closest reference length 6
    h2 "a cat is on the mat", ref "a cat is on the mat now": all 6, 5, 4, 3 match; reference length 7
    p = 11/12, 8/10, 5/8, 3/6;  c = 12, r = 13  →  BP = exp(1 − 13/12)
    """
    hypotheses = ["the cat sat on the mat", "a cat is on the mat"]
    references = [["the cat is on the mat", "there is a cat on the mat"], ["a cat is on the mat now"]]
    assert bleu_statistics(hypotheses[0], references[0]) == ([5, 3, 1, 0], [6, 5, 4, 3], 6, 6)
    expected = math.exp(1 - 13 / 12) * (11 / 12 * 8 / 10 * 5 / 8 * 3 / 6) ** 0.25
    assert corpus_bleu(hypotheses, references) == pytest.approx(expected, rel=1e-12)


def test_bleu_clips_repeated_words():
    # "the" ×4 in the hypothesis, at most once in the reference: unigram precision 1/4, not 4/4
    matches, totals, _, _ = bleu_statistics("the the the the", ["the cat"])
    assert matches[0] == 1 and totals[0] == 4


def test_bleu_clipping_uses_the_best_single_reference():
    # "the" twice in one reference and once in the other: clipped at 2, not 3
    matches, _, _, _ = bleu_statistics("the the the", ["the the cat", "the dog"])
    assert matches[0] == 2


def test_bleu_is_one_for_a_perfect_match_and_zero_without_a_4gram():
    assert corpus_bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(1.0)
    assert corpus_bleu(["a b c"], [["a b c"]]) == 0.0  # no 4-gram at all: p4 = 0/0 → 0 (no smoothing)


def test_brevity_penalty_for_a_short_hypothesis():
    # all n-grams of the hypothesis match; it is 5 words against 10: BP = exp(1 − 10/5)
    assert corpus_bleu(["a b c d e"], [["a b c d e f g h i j"]]) == pytest.approx(math.exp(-1.0))


def test_effective_reference_length_takes_the_shorter_on_a_tie():
    # hypothesis of 4 words, references of 3 and 5: both 1 away, the shorter (3) counts
    assert bleu_statistics("a b c d", ["a b c", "a b c d e"])[3] == 3


def test_slot_values_and_coverage():
    table = "name[The Eagle] | food[Italian] | customer rating[5 out of 5]"
    assert slot_values(table) == ["The Eagle", "Italian", "5 out of 5"]
    assert is_table(table) and not is_table("the food was great")
    outputs = ["The Eagle serves italian food.", "nothing"]
    # first: 2 of 3 values (case-insensitive), second table: 0 of 1 → 2 of 4 over the corpus
    assert slot_coverage([table, "name[Blue Door]"], outputs) == 2 / 4


def test_slot_values_count_only_as_whole_words():
    assert slot_coverage(["familyFriendly[no]"], ["It is not for children."]) == 0.0
    assert slot_coverage(["familyFriendly[no]"], ["Children: no."]) == 1.0


def test_slot_coverage_with_a_task_s_own_phrases():
    def phrases(key, value):
        return ("family friendly", "welcomes children") if (key, value) == ("familyFriendly", "yes") else (value,)
    tables = ["name[Blue Door] | familyFriendly[yes]"] * 2
    outputs = ["Blue Door welcomes children.", "Blue Door: yes."]
    assert slot_coverage(tables, outputs, phrases) == 3 / 4
    assert slot_coverage(tables, outputs) == 3 / 4                 # by value: the second says "yes"


def test_slot_coverage_needs_tables():
    with pytest.raises(ValueError, match="slot coverage needs table inputs"):
        slot_coverage(["plain text"], ["output"])
