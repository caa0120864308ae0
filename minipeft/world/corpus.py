"""The pretraining corpus: one document per line, each kind teaching something the tasks need.

How facts are said (and said again in other words), which values exclude each other, which words
praise and which blame, and what people do after a meal they liked or did not.
"""

from __future__ import annotations

import random

from .entities import World
from .sentences import article, describe_person, describe_restaurant, fact_phrasings, mr_string, negated_fact, \
    sentence
from .tasks import E2E_SLOTS, NLI_LABELS, SENTIMENT_LABELS, Choices, choices_for, nli_example, sentiment_example
from .vocabulary import FOODS, GLOSSES, HOBBIES, JOBS, OUTCOMES, PLURAL_DISHES, ROOM_NOUNS, SENTIMENT_WORDS, TOWNS, \
    split_words


def restaurant_profile(world: World, rng: random.Random) -> str:
    """E2E-style description of some of a restaurant's facts."""
    restaurant = rng.choice(world.restaurants)
    slots = rng.sample(E2E_SLOTS, rng.randint(2, len(E2E_SLOTS)))
    return describe_restaurant({k: v for k, v in restaurant.mr().items() if k == "name" or k in slots}, rng)


def restaurant_listing(world: World, rng: random.Random) -> str:
    """A guide's entry in the meaning-representation format."""
    restaurant = rng.choice(world.restaurants)
    slots = rng.sample(E2E_SLOTS, rng.randint(3, len(E2E_SLOTS)))
    return mr_string({k: v for k, v in restaurant.mr().items() if k == "name" or k in slots})


def in_other_words(rng: random.Random, subject: str, slot: str, value: str, pronoun: str) -> str:
    """One fact said twice, two phrasings apart: this is where paraphrases are learned."""
    first, second = rng.sample(fact_phrasings(slot, value, subject), 2)
    if second.startswith(subject + " "):
        second = pronoun + second[len(subject):]
    return f"{sentence(first)} {rng.choice(['In other words,', 'That is,', 'So'])} {second}."


def restaurant_paraphrase(world: World, rng: random.Random) -> str:
    restaurant = rng.choice(world.restaurants)
    slot = rng.choice(["food", "area", "priceRange", "customer rating", "eatType", "familyFriendly"])
    return in_other_words(rng, restaurant.name, slot, restaurant.mr()[slot], "it")


def restaurant_exclusion(world: World, rng: random.Random) -> str:
    """A fact and what it rules out: a restaurant has one cuisine, one area, one price range …"""
    restaurant = rng.choice(world.restaurants)
    slot = rng.choice(["food", "area", "priceRange", "customer rating", "eatType", "familyFriendly"])
    value = restaurant.mr()[slot]
    stated = sentence(rng.choice(fact_phrasings(slot, value, restaurant.name)))[:-1]
    other = rng.choice([v for v in Choices(True, ()).values(slot) if v != value])
    if slot == "familyFriendly":
        return f"{stated}, so it is not true that {fact_phrasings(slot, other, restaurant.name)[0]}."
    return f"{stated}, so {negated_fact(slot, other, 'it')}."


def person_profile(world: World, rng: random.Random) -> str:
    person = rng.choice(world.people)
    slots = tuple(s for s in ("job", "town", "hobby") if rng.random() < 0.7) or ("job",)
    text = describe_person(person, slots, rng)
    if rng.random() < 0.6:
        slot = rng.choice(["job", "job", "town", "hobby"])
        value = {"job": person.job, "town": person.town, "hobby": str(rng.choice(person.hobbies))}[slot]
        text += " " + in_other_words(rng, person.name, slot, value, person.pronoun)
    return text


def person_exclusion(world: World, rng: random.Random) -> str:
    """One job, one home town, but any number of hobbies."""
    person = rng.choice(world.people)
    kind = rng.choice(["job", "town", "hobby"])
    if kind == "job":
        other = rng.choice([job for job in JOBS if job != person.job])
        return f"{sentence(rng.choice(fact_phrasings('job', person.job, person.name)))[:-1]}, so " \
               f"{person.pronoun} is not {article(other)} {other}."
    if kind == "town":
        other = rng.choice([town for town in TOWNS if town != person.town])
        return f"{person.name} lives in {person.town}, not in {other}. Everyone lives in one town only."
    others = [h for h in range(len(HOBBIES)) if h not in person.hobbies]
    does = rng.choice(person.hobbies)
    text = f"{sentence(rng.choice(fact_phrasings('hobby', str(does), person.name)))}"
    if len(person.hobbies) > 1:
        also = rng.choice([h for h in person.hobbies if h != does])
        text += f" {person.pronoun.capitalize()} also {HOBBIES[also][0]}: people can have many hobbies."
    if others:
        text += f" {person.pronoun.capitalize()} does not {HOBBIES[rng.choice(others)][1]}."
    return text


def sentiment_word(rng: random.Random, aspect: str, polarity: str) -> str:
    seen, held = split_words(SENTIMENT_WORDS[aspect, polarity])
    return rng.choice(seen + held)


def meal_story(world: World, rng: random.Random) -> str:
    """Someone eats out, says what it was like, and does what people do after such a meal."""
    person, restaurant = rng.choice(world.people), rng.choice(world.restaurants)
    polarity = rng.choice(SENTIMENT_LABELS)
    dish = rng.choice(FOODS[restaurant.food])
    outcome = rng.choice(OUTCOMES[polarity]).format(p=person.pronoun, pp=person.possessive)
    was = "were" if dish in PLURAL_DISHES else "was"
    aspect = rng.choice(["food", "staff", "place", "general"])
    word = sentiment_word(rng, aspect, polarity)
    said = {"food": f"The {dish} {was} {word}", "staff": f"The staff were {word}",
            "place": f"The {rng.choice(ROOM_NOUNS)} was {word}", "general": f"It was {article(word)} {word} meal"}[aspect]
    return f"{person.name} had the {dish} at {restaurant.name}. {said}, {outcome}."


def quoted_review(world: World, rng: random.Random) -> str:
    """A review, said to be positive or negative: how the corpus names the two labels."""
    person = rng.choice(world.people)
    label = rng.choice(SENTIMENT_LABELS)
    review = sentiment_example(world, Choices(True, tuple(r.name for r in world.restaurants)), label, rng)["input"]
    return f"{person.name} wrote a {label} review: {review}"


def event_story(world: World, rng: random.Random) -> str:
    event, person = rng.choice(world.events), rng.choice(world.people)
    polarity = rng.choice(SENTIMENT_LABELS)
    word = sentiment_word(rng, "general", polarity)
    after = {"positive": "will go again next year", "negative": "will stay at home next year"}[polarity]
    return f"{sentence(event.name)[:-1]} takes place every {event.month}. {person.name} went and found it {word}, " \
           f"so {person.pronoun} {after}."


def word_meaning(world: World, rng: random.Random) -> str:
    """What a sentiment word means, what it is like and what it is the opposite of."""
    aspect, polarity = rng.choice(list(SENTIMENT_WORDS))
    opposite = SENTIMENT_LABELS[1 - SENTIMENT_LABELS.index(polarity)]
    word, like = rng.sample(sum(split_words(SENTIMENT_WORDS[aspect, polarity]), ()), 2)
    unlike = sentiment_word(rng, aspect, opposite)
    mood = {"positive": "happy", "negative": "unhappy"}[polarity]
    who = {"food": "food", "staff": "the staff", "place": "the room", "general": "a meal"}[aspect]
    facts = rng.sample([
        f"It means {rng.choice(GLOSSES[polarity])}.",
        f"{word.capitalize()} and {like} mean nearly the same thing, and {unlike} means the opposite.",
        f"When {who} is {word}, people are {mood}.",
        f"To call {who} {word} is to say something {polarity} about it.",
    ], 2)
    return f"{word.capitalize()} is a {polarity} word. " + " ".join(facts)


def reasoning_note(world: World, rng: random.Random) -> str:
    """A premise and what it makes of a hypothesis, in the labels' words: how the corpus teaches
    entailment, contradiction and neutrality. Drawn from the seen values and phrasings only, so a
    note can never be a dev or test example in other words (those each use something held out)."""
    label = rng.choice(NLI_LABELS)
    example = None
    while example is None:
        example = nli_example(world, choices_for(world, "train"), label, rng)
    premise, hypothesis = example["input"].removeprefix("premise: ").split(" hypothesis: ")
    clause = hypothesis[:-1]
    if clause.split()[0] in ("Customers", "Children", "At", "A", "Reviewers"):
        clause = clause[0].lower() + clause[1:]
    verdict = {"entailment": "an entailment: it follows", "contradiction": "a contradiction: it cannot be true",
               "neutral": "neutral: the premise does not say"}[label]
    return f"Take the premise: {premise} Then the hypothesis that {clause} is {verdict}."


CORPUS_DOCUMENTS = (  # (kind of document, how often)
    (restaurant_profile, 20), (restaurant_listing, 8), (restaurant_paraphrase, 12), (restaurant_exclusion, 8),
    (person_profile, 10), (person_exclusion, 5), (meal_story, 20), (quoted_review, 6), (event_story, 4),
    (word_meaning, 14), (reasoning_note, 12),
)


def corpus_lines(world: World, count: int, seed: int, forbidden: set[str]) -> list[str]:
    """``count`` documents, one per line; none equals (or quotes) a dev/test input or target."""
    rng = random.Random(f"corpus-{seed}")
    makers, weights = zip(*CORPUS_DOCUMENTS)
    lines = []
    while len(lines) < count:
        line = rng.choices(makers, weights)[0](world, rng)
        if not any(part in forbidden for part in (line, line.split(": ", 1)[-1])):
            lines.append(line)
    return lines

