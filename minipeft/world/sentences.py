"""Facts → sentences: every way the world says a fact, and the E2E meaning representations.

``fact_phrasings`` lists the ways to state one fact (the last is held out), ``negated_fact`` says
that it does not hold, ``describe_restaurant`` realises an E2E meaning representation in one or two
sentences, and ``e2e_slot_coverage`` measures how many slots of an MR a text says.
"""

from __future__ import annotations

import random
import re

from .entities import Person
from .vocabulary import AREAS, FAMILY_PHRASES, HOBBIES, JOBS, PRICES, RATINGS


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def food_words(value: str) -> str:
    """``Italian food``, but ``fast food`` (not ``fast food food``)."""
    return value if value.endswith("food") else f"{value} food"


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop."""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def fact_phrasings(slot: str, value: str, name: str) -> list[str]:
    """Every way to state ``slot = value`` of ``name`` (restaurant or person); last one held out."""
    if slot == "food":
        return [f"{name} serves {food_words(value)}", f"{name} offers {value} dishes", f"at {name} you can eat {food_words(value)}"]
    if slot == "area":
        return [f"{name} is {phrase}" for phrase in AREAS[value]]
    if slot == "priceRange":
        adjective, prices, cost = PRICES[value]
        return [f"{name} is {adjective}", f"{name} has {prices}", f"a meal at {name} costs {cost}"]
    if slot == "customer rating":
        rating, adverb, stars = RATINGS[value]
        return [f"{name} has {rating}", f"customers rate {name} {adverb}", f"reviewers give {name} {stars}"]
    if slot == "eatType":
        return [f"{name} is {article(value)} {value}", f"{name} is run as {article(value)} {value}"]
    if slot == "familyFriendly":
        said, also, held = FAMILY_PHRASES[value]
        return [f"{name} is {said}", (f"{also} at {name}" if value == "yes" else f"{name} is {also}"),
                f"{name} is {held}"]
    if slot == "job":
        return [f"{name} is {article(value)} {value}", f"{name} works as {article(value)} {value}",
                f"{name} {JOBS[value][0]}", f"{name} {JOBS[value][1]}"]
    if slot == "town":
        return [f"{name} lives in {value}", f"{name}'s home is in {value}", f"{name} has a house in {value}"]
    if slot == "hobby":
        does, _, noun_phrase = HOBBIES[int(value)]
        return [f"{name} {does}", f"{name} {noun_phrase}"]
    raise ValueError(f"no phrasings for slot {slot!r}")


def negated_fact(slot: str, value: str, name: str) -> str:
    """``slot ≠ value`` for exclusive slots; for a hobby, that the person does not do it."""
    if slot == "food":
        return f"{name} does not serve {food_words(value)}"
    if slot == "area":
        return f"{name} is not {AREAS[value][0]}"
    if slot == "priceRange":
        return f"{name} is not {PRICES[value][0]}"
    if slot == "customer rating":
        return f"{name} does not have {RATINGS[value][0]}"
    if slot == "eatType":
        return f"{name} is not {article(value)} {value}"
    if slot == "job":
        return f"{name} is not {article(value)} {value}"
    if slot == "town":
        return f"{name} does not live in {value}"
    if slot == "hobby":
        return f"{name} does not {HOBBIES[int(value)][1]}"
    raise ValueError(f"slot {slot!r} has no negated form")


def join(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_restaurant(mr: dict[str, str], rng: random.Random) -> str:
    """An E2E-style text saying every slot of ``mr`` (the name is required), in one or two sentences.

    Each slot has a few phrasings (never a held-out one) and may go in either sentence, so one MR
    has many realisations, as in E2E."""
    name, eat_type = mr["name"], mr.get("eatType", "place")
    adjectives, where, predicates = [], [], []
    if "priceRange" in mr:
        adjective, prices, _ = PRICES[mr["priceRange"]]
        if rng.random() < 0.5:
            adjectives.append(adjective)
        else:
            predicates.append(rng.choice([f"is {adjective}", f"has {prices}"]))
    if "food" in mr:
        if rng.random() < 0.6:
            adjectives.append(mr["food"])
        else:
            predicates.append(rng.choice([f"serves {food_words(mr['food'])}", f"offers {mr['food']} dishes"]))
    if "area" in mr:
        where.append(rng.choice(AREAS[mr["area"]][:2]))
    if "near" in mr:
        where.append(f"{rng.choice(['near', 'close to'])} {mr['near']}")
    rng.shuffle(where)
    if "familyFriendly" in mr:
        said, also, _ = FAMILY_PHRASES[mr["familyFriendly"]]
        predicates.append(rng.choice([f"is {said}", "welcomes children" if mr["familyFriendly"] == "yes" else f"is {also}"]))
    if "customer rating" in mr:
        rating, adverb, _ = RATINGS[mr["customer rating"]]
        predicates.append(rng.choice([f"has {rating}", f"is rated {adverb} by customers"]))
    rng.shuffle(predicates)
    noun_phrase = " ".join(adjectives + [eat_type])
    if where and rng.random() < 0.25:
        text = sentence(f"located {where[0]}, {name} is {article(noun_phrase)} {' '.join([noun_phrase] + where[1:])}")
    else:
        text = sentence(f"{name} is {article(noun_phrase)} {' '.join([noun_phrase] + where)}")
    if predicates:
        text += " " + sentence(f"{rng.choice(['it', name])} {join(predicates)}")
    return text


def describe_person(person: Person, slots: tuple[str, ...], rng: random.Random) -> str:
    """One sentence about ``person`` saying the chosen facts (job, town, hobbies)."""
    parts = []
    if "job" in slots:
        parts.append(f"is {article(person.job)} {person.job}")
    if "town" in slots:
        parts.append(rng.choice([f"lives in {person.town}", f"has {person.possessive} home in {person.town}"]))
    if "hobby" in slots:
        parts += [HOBBIES[h][0] for h in person.hobbies]
    return sentence(f"{person.name} {join(parts)}")


def mr_string(mr: dict[str, str]) -> str:
    """``name[The Red Fox] | food[Italian] | …``: the E2E meaning representation as text."""
    return " | ".join(f"{slot}[{value}]" for slot, value in mr.items())


def parse_mr(text: str) -> dict[str, str]:
    """The inverse of :func:`mr_string`."""
    mr = {}
    for part in text.split(" | "):
        match = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", part.strip())
        if not match:
            raise ValueError(f"{part!r} is not a slot[value] pair (in {text!r})")
        mr[match[1]] = match[2]
    return mr


def slot_phrases(slot: str, value: str) -> tuple[str, ...]:
    """The phrases any of which shows that a text says ``slot = value`` (for slot coverage)."""
    if slot in ("name", "near", "food", "eatType"):
        return (value,)
    if slot == "area":
        return AREAS[value]
    if slot == "priceRange":
        return PRICES[value][:2]
    if slot == "customer rating":
        rating, adverb, _ = RATINGS[value]
        return (rating.split(" ", 1)[1], f"rated {adverb}")
    if slot == "familyFriendly":
        return FAMILY_PHRASES[value][:2] + (("welcomes children",) if value == "yes" else ())
    raise ValueError(f"unknown E2E slot {slot!r}")


def e2e_slot_coverage(mr_text: str, output: str) -> float:
    """Fraction of the MR's slots that ``output`` says (case-insensitive phrase match)."""
    mr = parse_mr(mr_text)
    said = [any(phrase.lower() in output.lower() for phrase in slot_phrases(slot, value)) for slot, value in mr.items()]
    return sum(said) / len(said)

