"""Discrete prompts with an answer mapping (F10.5): the text the model reads, the label it picks
(against log-probabilities computed one candidate at a time, without batching), what a shipped
base gets zero-shot, and the errors.

Exercise: ``pytest tests/test_discrete_prompt.py --exercise discrete_prompt``."""

import pytest
import torch

from minipeft import bases
from minipeft.discrete_prompt import DiscretePrompt, main
from minipeft.taskdata import load_task
from minipeft.world.probes import BLANK

ANSWERS = {"positive": "great", "negative": "terrible"}


@pytest.fixture(scope="module")
def sentiment():
    return load_task("sentiment")


def test_the_text_holds_the_demonstrations_filled_in_and_the_blank_last():
    prompt = DiscretePrompt("[X] It was [MASK].", ANSWERS, (("Nice soup.", "positive"), ("Cold tea.", "negative")))
    assert prompt.text("Rude staff.") == f"Nice soup. It was great. Cold tea. It was terrible. Rude staff. It was {BLANK}."


@pytest.mark.parametrize("template, answers, shots, message", [
    ("It was [MASK].", ANSWERS, (), r"one \[X\]"),
    ("[X] It was good.", ANSWERS, (), r"one \[MASK\]"),
    ("[MASK] is what [X] was.", ANSWERS, (), "must end the template"),
    ("[X] It was [MASK].", {"positive": "great"}, (), "two or more labels"),
    ("[X] It was [MASK].", {"positive": "great", "negative": " "}, (), "each with its words"),
    ("[X] It was [MASK].", ANSWERS, (("Fine.", "neutral"),), "neutral"),
])
def test_bad_prompts_are_refused_with_the_fix(template, answers, shots, message):
    with pytest.raises(ValueError, match=message):
        DiscretePrompt(template, answers, shots)


def log_prob_of_words(model, tokenizer, text_before, words) -> float:
    """log p(words | text before the blank) of a left-to-right model, one sequence, no padding."""
    prompt, span = tokenizer.encode(text_before, add_eos=False), tokenizer.encode(words, add_eos=False)
    with torch.no_grad():
        log_probs = model(input_ids=torch.tensor([prompt + span])).log_softmax(-1)[0]
    return sum(log_probs[len(prompt) - 1 + i, token].item() for i, token in enumerate(span))


def test_gpt_picks_the_label_whose_words_are_most_probable(sentiment):
    model, tokenizer = bases.load_base("tiny-gpt")
    prompt = DiscretePrompt("[X] Overall it was [MASK].", {"positive": "great", "negative": "very bad"})
    inputs = [example.input for example in sentiment.test[:12]]
    expected = []
    for x in inputs:
        before = prompt.text(x).split(f" {BLANK}")[0]
        scores = {label: log_prob_of_words(model, tokenizer, before, words) for label, words in prompt.answers.items()}
        expected.append(max(scores, key=scores.get))
    assert prompt.predict(model, tokenizer, inputs) == expected


def test_t5_fills_the_sentinel_blank(sentiment):
    """A span-corruption T5 reads the text with <extra_id_0> and scores '<extra_id_0> words'."""
    model, tokenizer = bases.load_base("tiny-t5")
    prompt = DiscretePrompt("[X] It was [MASK].", ANSWERS)
    x = sentiment.test[0].input
    source = torch.tensor([tokenizer.encode(prompt.text(x))])
    scores = {}
    for label, words in ANSWERS.items():
        span = tokenizer.encode(words, add_eos=False)
        decoder_input = torch.tensor([[tokenizer.pad_token_id, tokenizer.sentinel_id(0)] + span[:-1]])
        with torch.no_grad():
            log_probs = model(input_ids=source, decoder_input_ids=decoder_input).log_softmax(-1)[0]
        scores[label] = sum(log_probs[1 + i, token].item() for i, token in enumerate(span))
    assert prompt.predict(model, tokenizer, [x]) == [max(scores, key=scores.get)]


def test_tiny_gpt_classifies_sentiment_zero_shot_above_chance(sentiment):
    """What the README reports, on 100 test reviews: the template and the words carry the task."""
    model, tokenizer = bases.load_base("tiny-gpt")
    test = sentiment.test[:100]
    inputs, labels = [example.input for example in test], [example.target for example in test]
    assert DiscretePrompt("[X] Overall it was [MASK].", ANSWERS).accuracy(model, tokenizer, inputs, labels) > 0.7


def test_labels_outside_the_mapping_are_refused(sentiment):
    model, tokenizer = bases.load_base("tiny-gpt")
    with pytest.raises(ValueError, match="--answer LABEL=WORDS"):
        DiscretePrompt("[X] It was [MASK].", ANSWERS).accuracy(model, tokenizer, ["a"], ["neutral"])


def test_the_command_prints_the_accuracy_and_refuses_bad_input(capsys):
    assert main(["--model", "tiny-gpt", "--examples", "8"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["--task", "nli", "--examples", "8"]) == 2
    assert "entailment" in capsys.readouterr().err
    assert main(["--task", "nosuch"]) == 2
    assert "no task 'nosuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--answer", "positive"])
    assert "LABEL=WORDS" in capsys.readouterr().err
