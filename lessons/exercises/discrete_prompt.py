# EXERCISE COPY of minipeft/discrete_prompt.py: fill in every `raise NotImplementedError("exercise: …")`.
# Check your work with:   pytest tests/test_discrete_prompt.py --exercise discrete_prompt
# Start over with:        python lessons/exercises/make.py
"""Discrete prompts with an answer mapping: a frozen model classifies with no training at all.

Seed 003 §3.1.1 describes prompting before soft prompts (F10.5): turn the task into the
pretraining format with a template and map the labels to words of the vocabulary,

    template        "[X] It was [MASK]."                 [X]: the input, [MASK]: the blank
    answer mapping  positive → "great", negative → "terrible"
    inference       the label whose words the model finds most probable in the blank

zero-shot as it stands, few-shot with k solved examples written in front of the input (in-context
demonstrations, filled in with their answers' words). Nothing trains: the template and the words
are the only knobs, chosen by hand, and the score moves a lot when they change; soft prompts
(prompt tuning, F2) replace them by trained vectors.

    prompt = DiscretePrompt("[X] Overall it was [MASK].", {"positive": "great", "negative": "terrible"})
    prompt.predict(model, tokenizer, ["The soup was cold. I will not come back."])   # → ["negative"]
    prompt.accuracy(model, tokenizer, inputs, labels)
    python -m minipeft.discrete_prompt --model tiny-gpt --task sentiment \\
        --template "[X] Overall it was [MASK]." --answer positive=great --answer negative=terrible

Scoring is the cloze probes' (``bases.cloze_choices``): the sum of the words' token
log-probabilities in the blank (a T5 trained with span corruption reads the text with
``<extra_id_0>`` in the blank and writes ``<extra_id_0> words``; a GPT, or a T5 with
``continuation=True`` such as tiny-t5-lm, continues the text before the blank). The blank must end the template: a left-to-right model cannot read what
follows it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .world.probes import BLANK, ClozeItem

INPUT, MASK = "[X]", "[MASK]"


@dataclasses.dataclass(frozen=True)
class DiscretePrompt:
    """F10.5: a template with ``[X]`` and ``[MASK]``, and the words each label maps to."""

    template: str
    answers: dict[str, str]
    demonstrations: tuple[tuple[str, str], ...] = ()     # few-shot: (input, label) pairs written in front

    def __post_init__(self):
        if self.template.count(INPUT) != 1 or self.template.count(MASK) != 1:
            raise ValueError(f"a template has one {INPUT} (the input) and one {MASK} (the blank), "
                             f"e.g. '[X] It was [MASK].'; got {self.template!r}")
        if not self.template.rstrip(" .!?").endswith(MASK):
            raise ValueError(f"{MASK} must end the template (only punctuation after it): a left-to-right "
                             f"model cannot read what follows the blank; got {self.template!r}")
        if len(self.answers) < 2 or not all(words.strip() for words in self.answers.values()):
            raise ValueError(f"the answer mapping needs two or more labels, each with its words, e.g. "
                             f"{{'positive': 'great', 'negative': 'terrible'}}; got {self.answers}")
        unknown = sorted({label for _, label in self.demonstrations} - set(self.answers))
        if unknown:
            raise ValueError(f"demonstrations with label(s) {unknown} that the answer mapping lacks "
                             f"({', '.join(self.answers)})")

    def text(self, x: str) -> str:
        """The demonstrations, filled in with their answers' words, then ``x`` with the blank."""
        raise NotImplementedError("exercise: F10.5 each demonstration's template with [X] its input and [MASK] its label's words, then x's with the BLANK")

    def predict(self, model, tokenizer, texts: list[str], continuation: bool | None = None) -> list[str]:
        """The label whose words score highest in each text's blank (the cloze probes' scoring)."""
        from .bases import cloze_choices

        first = next(iter(self.answers))      # a ClozeItem's true answer: unused for a prediction
        items = [ClozeItem("label", self.text(x), dict(self.answers), first) for x in texts]
        return cloze_choices(model, tokenizer, items, continuation)

    def accuracy(self, model, tokenizer, inputs: list[str], labels: list[str],
                 continuation: bool | None = None) -> float:
        """Share of ``inputs`` whose predicted label is the one in ``labels``."""
        unknown = sorted(set(labels) - set(self.answers))
        if unknown:
            raise ValueError(f"the examples have label(s) {unknown} that the answer mapping lacks "
                             f"({', '.join(self.answers)}): give each label its words with --answer LABEL=WORDS")
        predicted = self.predict(model, tokenizer, inputs, continuation)
        return sum(guess == label for guess, label in zip(predicted, labels)) / len(labels)


def parse_answer(text: str) -> tuple[str, str]:
    label, separator, words = text.partition("=")
    if not separator or not label.strip() or not words.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=WORDS (like positive=great), got {text!r}")
    return label.strip(), words.strip()


def main(argv=None) -> int:
    from . import bases
    from .taskdata import DataError, load_task

    parser = argparse.ArgumentParser(description="Zero- or few-shot classification with a discrete "
                                                 "prompt and an answer mapping (F10.5): no training.")
    parser.add_argument("--model", default="tiny-gpt", choices=bases.BASE_NAMES)
    parser.add_argument("--task", default="sentiment", help="a classification task in data/tasks")
    parser.add_argument("--template", default="[X] Overall it was [MASK].")
    parser.add_argument("--answer", action="append", type=parse_answer, metavar="LABEL=WORDS",
                        help="repeatable (default: positive=great, negative=terrible)")
    parser.add_argument("--shots", type=int, default=0, help="solved training examples written in front (few-shot)")
    parser.add_argument("--examples", type=int, default=None, help="score only the first N test examples")
    parser.add_argument("--continuation", action="store_true",
                        help="a T5 continues the text before the blank (for tiny-t5-lm) instead of filling <extra_id_0>")
    args = parser.parse_args(argv)
    try:
        task = load_task(args.task)
        answers = dict(args.answer or [("positive", "great"), ("negative", "terrible")])
        shots = tuple((example.input, example.target) for example in task.train[:args.shots])
        prompt = DiscretePrompt(args.template, answers, shots)
        model, tokenizer = bases.load_base(args.model)
        test = task.test[:args.examples]
        accuracy = prompt.accuracy(model, tokenizer, [example.input for example in test],
                                   [example.target for example in test], True if args.continuation else None)
    except (ValueError, DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.model}, {args.task}, {args.shots}-shot, {prompt.template!r} with "
          f"{', '.join(f'{label}→{words!r}' for label, words in answers.items())}: "
          f"accuracy {accuracy:.1%} on {len(test)} test examples (chance {1 / len(answers):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
