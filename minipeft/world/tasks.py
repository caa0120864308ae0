"""The downstream tasks, one example at a time: sentiment, NLI and E2E-style table-to-text.

Train examples draw only from the seen values, words and phrasings (``Choices(held_out=False)``);
dev and test draw from everything and must use something held out (``uses_held_out``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .entities import Person, World
from .sentences import article, describe_person, describe_restaurant, fact_phrasings, negated_fact, sentence
from .vocabulary import AREAS, EAT_TYPES, FAMILY_PHRASES, FOODS, HELD_OUT, HOBBIES, JOBS, PLURAL_DISHES, PRICES, \
    RATINGS, ROOM_NOUNS, SENTIMENT_WORDS, STAFF_NOUNS, TOWNS, VERDICTS, split_words

# Review frames: {food_word} etc. take a word of the review's polarity, {..._opposite} one of the
# other polarity (negated or outweighed). The last HELD_OUT.frames are held out.
SENTIMENT_FRAMES = (
    "The {dish} at {restaurant} {dish_was} {food_word}.",
    "The {dish} {dish_was} {food_word} and the {staff} {staff_was} {staff_word}.",
    "{restaurant} has {food_word} food and {staff_word} staff.",
    "We ate at {restaurant} last night. The {dish} {dish_was} {food_word}. {verdict}",
    "{restaurant}: {a_general_word} place with {food_word} {dish}.",
    "The {room} at {restaurant} was {place_word} and the {dish} {dish_was} {food_word}.",
    "The {dish} at {restaurant} {dish_was} not {food_word_opposite}. {verdict}",
    "The {dish} {dish_was} {food_word_opposite}, but the {staff} {staff_was} {staff_word} and the {room} was "
    "{place_word}. {verdict}",
    "{a_general_word} meal at {restaurant}: the {staff} {staff_was} {staff_word}.",
    "{event} was {general_word}. {verdict}",
    # held out
    "What {a_general_word} evening at {restaurant}! The {dish} {dish_was} {food_word}.",
    "My friends and I tried {restaurant}; the {staff} {staff_was} {staff_word} and the {dish} {dish_was} {food_word}.",
    "Honestly, the {dish} at {restaurant} {dish_was} {food_word}. {verdict}",
    "I would call {event} {general_word}, and the {room} there was {place_word}.",
)
HELD_OUT_FRAME_MARKS = ("evening at", "My friends and I tried", "Honestly,", "I would call")  # only those frames say these
SENTIMENT_LABELS = ("positive", "negative")
NLI_LABELS = ("entailment", "neutral", "contradiction")
E2E_SLOTS = ("eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")


@dataclass(frozen=True)
class Choices:
    """The values one split may use: the seen ones for train, everything for dev and test."""
    held_out: bool
    names: tuple[str, ...]

    def values(self, slot: str) -> list[str]:
        table = {"food": list(FOODS), "area": list(AREAS), "priceRange": list(PRICES),
                 "customer rating": list(RATINGS), "eatType": list(EAT_TYPES), "familyFriendly": ["yes", "no"],
                 "job": list(JOBS), "town": list(TOWNS), "hobby": [str(i) for i in range(len(HOBBIES))]}[slot]
        hidden = {"food": HELD_OUT.foods, "area": HELD_OUT.areas, "job": HELD_OUT.jobs, "town": HELD_OUT.towns}
        return table if self.held_out else [v for v in table if v not in hidden.get(slot, ())]

    def phrasings(self, phrasings: list[str]) -> list[str]:
        return phrasings if self.held_out else phrasings[:-1]

    def words(self, aspect: str, polarity: str) -> tuple[str, ...]:
        seen, held = split_words(SENTIMENT_WORDS[aspect, polarity])
        return seen + held if self.held_out else seen


def choices_for(world: World, split: str) -> Choices:
    held_out = split != "train"
    return Choices(held_out, world.held_out_names + world.seen_names if held_out else world.seen_names)


HELD_OUT_KINDS = ("words", "phrasings", "values")


def held_out_groups(world: World) -> dict[str, list[str]]:
    """What no train example contains, by kind (``HELD_OUT_KINDS``):

    ``words``      the held-out sentiment words ("superb", "grumpy", …)
    ``phrasings``  the held-out review frames and verdicts, and the held-out phrasing of each fact
    ``values``     held-out cuisines and their dishes, areas, jobs, towns and restaurant names
    """
    return {
        "words": list(HELD_OUT.words),
        "phrasings": [*HELD_OUT_FRAME_MARKS, *HELD_OUT.verdicts(),
                      *(phrases[-1] for phrases in AREAS.values()),
                      *(phrases[-1] for phrases in FAMILY_PHRASES.values()),
                      *(phrases[1] for phrases in JOBS.values()), *(hobby[2] for hobby in HOBBIES),
                      "a meal at", "you can eat", "reviewers give", "is run as", "has a house in"],
        "values": [*HELD_OUT.foods, *HELD_OUT.areas, *HELD_OUT.jobs, *HELD_OUT.towns, *HELD_OUT.dishes,
                   *world.held_out_names],
    }


def held_out_strings(world: World) -> list[str]:
    """Every string that no train example contains: held-out values, names, words and phrasings."""
    return [item for group in held_out_groups(world).values() for item in group]


def held_out_kinds(text: str, world: World) -> tuple[str, ...]:
    """The kinds of held-out strings ``text`` contains, in ``HELD_OUT_KINDS`` order: ``("words",
    "phrasings")`` for a review in a held-out frame with a held-out word; ``()`` for a train example."""
    return tuple(kind for kind, items in held_out_groups(world).items()
                 if any(contains_phrase(text, item) for item in items))


def uses_held_out(text: str, world: World) -> bool:
    """Does ``text`` contain a held-out value, word, name or phrasing (what train never shows)?"""
    return any(contains_phrase(text, item) for item in held_out_strings(world))


def contains_phrase(text: str, phrase: str) -> bool:
    """Does ``phrase`` occur in ``text`` as whole words ("Thai" in "Thai food", not in "Thailand")?"""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def sentiment_example(world: World, choices: Choices, label: str, rng: random.Random) -> dict[str, str]:
    """A review (restaurant or event) whose words say ``label``."""
    opposite = SENTIMENT_LABELS[1 - SENTIMENT_LABELS.index(label)]
    frames = SENTIMENT_FRAMES if choices.held_out else SENTIMENT_FRAMES[:-HELD_OUT.frames]
    only_held_out_words = choices.held_out and rng.random() < 0.5

    def word(aspect: str, polarity: str) -> str:
        seen, held = split_words(SENTIMENT_WORDS[aspect, polarity])
        pool = held if only_held_out_words and polarity == label else choices.words(aspect, polarity)
        return rng.choice(pool)

    foods = choices.values("food")
    dish = rng.choice(FOODS[rng.choice(foods)])
    staff, staff_plural = rng.choice(STAFF_NOUNS)
    towns = set(choices.values("town"))
    event = rng.choice([e for e in world.events if e.town in towns])
    general = word("general", label)
    verdicts = VERDICTS[label] if choices.held_out else VERDICTS[label][:-1]
    slots = {
        "restaurant": rng.choice(choices.names), "dish": dish, "dish_was": "were" if dish in PLURAL_DISHES else "was",
        "staff": staff, "staff_was": "were" if staff_plural else "was", "room": rng.choice(ROOM_NOUNS),
        "event": event.name, "food_word": word("food", label), "food_word_opposite": word("food", opposite),
        "staff_word": word("staff", label), "place_word": word("place", label), "general_word": general,
        "a_general_word": f"{article(general)} {general}", "verdict": rng.choice(verdicts),
    }
    text = rng.choice(frames).format(**slots)
    return {"input": text[0].upper() + text[1:], "target": label}


RESTAURANT_FACTS = ("food", "area", "priceRange", "customer rating", "eatType", "familyFriendly")


def nli_example(world: World, choices: Choices, label: str, rng: random.Random) -> dict[str, str] | None:
    """A premise of one or two facts about a restaurant or a person, and a hypothesis about the same
    one whose relation to the premise is ``label``:

    * entailment: a fact of the premise, said again (often in other words);
    * contradiction: another value for a fact of the premise (a restaurant serves one cuisine, a
      person has one job, …), or a fact of the premise denied;
    * neutral: a fact the premise does not touch (another slot, or another hobby: people can have
      many hobbies), said or denied.

    Returns None when the drawn premise cannot give ``label`` (the caller draws again)."""
    if rng.random() < 0.5:
        name = rng.choice(choices.names)
        facts = {slot: rng.choice(choices.values(slot)) for slot in rng.sample(RESTAURANT_FACTS, rng.randint(1, 2))}
        premise = describe_restaurant({"name": name, **facts}, rng)
        unmentioned = [slot for slot in RESTAURANT_FACTS if slot not in facts]
    else:
        person = rng.choice(world.people)
        slots = rng.sample(["job", "town", "hobby"], rng.randint(1, 2))
        hobbies = tuple(sorted(rng.sample(range(len(HOBBIES)), rng.randint(1, 2))))
        person = Person(person.name, person.pronoun, rng.choice(choices.values("job")),
                        rng.choice(choices.values("town")), hobbies)
        name, premise = person.name, describe_person(person, tuple(slots), rng)
        facts = {slot: getattr(person, slot) for slot in ("job", "town") if slot in slots}
        unmentioned = [slot for slot in ("job", "town") if slot not in slots]
        if "hobby" in slots:
            facts["hobby"] = hobbies

    options = []  # (slot, value, negated) giving `label`
    for slot, value in facts.items():
        if slot == "hobby":
            said = [str(h) for h in value]
            unsaid = [str(h) for h in range(len(HOBBIES)) if h not in value]
            options += {"entailment": [(slot, h, False) for h in said],
                        "contradiction": [(slot, h, True) for h in said],
                        "neutral": [(slot, h, rng.random() < 0.3) for h in unsaid]}[label]
        else:
            other = rng.choice([v for v in choices.values(slot) if v != value])
            denied = [(slot, value, True)] if slot != "familyFriendly" else []  # yes/no: the other value denies
            options += {"entailment": [(slot, value, False)], "contradiction": [(slot, other, False)] + denied,
                        "neutral": []}[label]
    if label == "neutral":
        options += [(slot, rng.choice(choices.values(slot)), rng.random() < 0.3 and slot != "familyFriendly")
                    for slot in unmentioned]
    if not options:
        return None
    slot, value, negated = rng.choice(options)
    hypothesis = negated_fact(slot, value, name) if negated else rng.choice(
        choices.phrasings(fact_phrasings(slot, value, name)))
    return {"input": f"premise: {premise} hypothesis: {sentence(hypothesis)}", "target": label}


def e2e_mr(world: World, choices: Choices, rng: random.Random) -> dict[str, str]:
    """A random meaning representation: a name and 2–7 of the other E2E slots, in E2E's order."""
    names = world.held_out_names if choices.held_out else choices.names
    name = rng.choice(names)
    slots = set(rng.sample(E2E_SLOTS, min(7, max(2, round(rng.gauss(4, 1.3))))))
    mr = {"name": name}
    for slot in E2E_SLOTS:
        if slot in slots:
            mr[slot] = rng.choice([n for n in choices.names if n != name]) if slot == "near" else \
                rng.choice(choices.values(slot))
    return mr

