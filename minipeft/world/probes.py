"""Knowledge probes: fill-in-the-blank questions whose answers the corpus teaches.

A held-out loss says how well a base predicts corpus text, not whether it learned what the tasks
need. The paraphrase probe asks that directly. It takes a true fact of the world, says it one
way, then says it again in another phrasing with the value's words left blank:

    Ruth Moss works in a bakery. In other words, she is a ___.
    The Red Fox is cheap. In other words, a meal at it costs ___.
    Leo Hart lives in Ashby. In other words, his home is in ___.

Every value of the slot is a candidate for the blank (``a lot``, ``a fair amount``, ``little``;
all 14 jobs; all 12 towns). The corpus says each fact "in other words" again and again, so a base
that learned it, and that reads the sentence before the blank, picks the true value. Guessing
scores one over the number of candidates. Some items need only copying (a town, a cuisine, a job
named twice), some need a paraphrase (``bakes bread`` → ``baker``, ``cheap`` → ``costs little``);
nli asks for both.

``paraphrase_items`` writes the questions (text only); ``minipeft.bases.cloze_probe`` asks a model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .entities import World
from .sentences import fact_phrasings, sentence
from .tasks import RESTAURANT_FACTS, Choices

BLANK = "<extra_id_0>"  # where the answer goes: T5's first sentinel, which tiny-t5 fills in pretraining
POSSESSIVES = {"it": "its", "she": "her", "he": "his"}


@dataclass(frozen=True)
class ClozeItem:
    """One question: ``text`` with one ``BLANK``, the words that would fill it for each candidate
    value, and the true value."""
    slot: str
    text: str
    candidates: dict[str, str]  # value → the words that fill the blank
    answer: str

    @property
    def prompt(self) -> str:
        """The text before the blank (what a left-to-right model reads before the answer)."""
        return self.text.split(f" {BLANK}")[0]


def paraphrase_item(world: World, rng: random.Random) -> ClozeItem:
    """One paraphrase question about a random restaurant or person."""
    if rng.random() < 0.5:
        restaurant = rng.choice(world.restaurants)
        subject, pronoun = restaurant.name, "it"
        slot = rng.choice(RESTAURANT_FACTS)
        value = restaurant.mr()[slot]
    else:
        person = rng.choice(world.people)
        subject, pronoun = person.name, person.pronoun
        slot = rng.choice(["job", "town", "hobby"])
        value = {"job": person.job, "town": person.town, "hobby": str(rng.choice(person.hobbies))}[slot]
    said, again = rng.sample(range(len(fact_phrasings(slot, value, subject))), 2)
    # The same phrasing `again` for every value of the slot: the words they share lead up to the blank.
    phrasings = {v: fact_phrasings(slot, v, subject)[again].split() for v in Choices(True, ()).values(slot)}
    shared = 0
    while all(len(words) > shared for words in phrasings.values()) and \
            len({words[shared] for words in phrasings.values()}) == 1:
        shared += 1
    candidates = {v: " ".join(words[shared:]) for v, words in phrasings.items()}
    if len(set(candidates.values())) < len(candidates) or not all(candidates.values()):
        raise ValueError(f"the phrasings of {slot!r} do not tell its values apart: {candidates}")
    lead = " ".join(phrasings[value][:shared])
    if lead.startswith(subject + "'s"):
        lead = POSSESSIVES[pronoun] + lead[len(subject) + 2:]
    elif lead.startswith(subject):
        lead = pronoun + lead[len(subject):]
    first = sentence(fact_phrasings(slot, value, subject)[said])
    return ClozeItem(slot, " ".join(filter(None, [first, "In other words,", lead, BLANK])) + ".", candidates, value)


def paraphrase_items(world: World, count: int = 400, seed: int = 0) -> list[ClozeItem]:
    """``count`` paraphrase questions, the same ones for the same seed."""
    rng = random.Random(f"paraphrase-probe-{seed}")
    return [paraphrase_item(world, rng) for _ in range(count)]
