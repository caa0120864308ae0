"""The embedded world: a small, seeded language world, and the data files made from it.

No model or data set can be downloaded, so minipeft makes its own, the way T5 and GPT-2 were made:
a pretraining corpus, a tokenizer trained on it, and downstream tasks in text-to-text form. All of
it describes one small world, built here from tables and a seed:

* **restaurants** with the attributes of the E2E data set (``eatType``, ``food``, ``priceRange``,
  ``customer rating``, ``area``, ``familyFriendly``, ``near``);
* **people** with a job, a home town and hobbies; **events** (fairs, concerts, …) in the towns;
* **opinions**: people eat at the restaurants, go to the events, and say what they thought.

``python -m minipeft.world`` writes, byte for byte the same each time:

    data/corpus.txt                      one document per line: sentences about the world
    data/tasks/<task>/{train,dev,test}.jsonl   {"input": …, "target": …} per line
    data/spiece.model                    SentencePiece model trained on corpus.txt (T5's ids)

The tasks (inputs → targets):

    sentiment   a review                                   → positive | negative
    nli         premise: … hypothesis: …                   → entailment | neutral | contradiction
    e2e         name[The Red Fox] | food[Italian] | …      → a sentence saying all of it

**Held out.** Some values of the world (``HELD_OUT``: restaurant names, cuisines, areas, jobs,
towns, sentiment words) and some phrasings (templates marked held out) never occur in any train
split; every dev and test example uses at least one of them. The corpus uses all of them, so a
model can only get those right through what pretraining taught it: the metric measures
generalisation, and shows what a pretrained base brings that a random one cannot.

Everything random comes from ``random.Random`` seeded by a string (part name + seed), so each part
is reproducible on its own; Python's string seeding does not depend on ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TASKS = ("sentiment", "nli", "e2e")
SPLITS = ("train", "dev", "test")
EXTRA_IDS = 100  # sentinels <extra_id_0> … <extra_id_99> on top of the SentencePiece pieces, as in T5

# ---- the vocabulary of the world ---------------------------------------------------------------

TOWNS = ("Millford", "Ashby", "Brookfield", "Carrow", "Dunmore", "Eastwick", "Fernhill", "Glenmoor",
         "Harlow", "Kingsbridge", "Lowton", "Northam")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

# cuisine → dishes a review can praise or blame (plural dishes take "were")
FOODS = {
    "Italian": ("pizza", "pasta", "risotto", "lasagne"),
    "French": ("onion soup", "steak", "apple tart"),
    "Chinese": ("dumplings", "fried rice", "noodles"),
    "Indian": ("curry", "naan", "dal"),
    "Japanese": ("sushi", "ramen", "tempura"),
    "English": ("fish and chips", "roast beef", "pie"),
    "fast food": ("burger", "fries", "hot dog"),
    "Mexican": ("tacos", "burrito", "enchiladas"),
    "Spanish": ("paella", "tapas", "tortilla"),
    "Thai": ("green curry", "spring rolls", "noodle soup"),
    "Greek": ("moussaka", "souvlaki", "feta salad"),
    "Turkish": ("kebab", "baklava", "flatbread"),
}
PLURAL_DISHES = {"dumplings", "noodles", "fish and chips", "fries", "tacos", "enchiladas", "tapas", "spring rolls"}
EAT_TYPES = ("restaurant", "pub", "coffee shop", "bistro")

# area → the phrases that say it; the last one is held out (see HELD_OUT_PHRASINGS)
AREAS = {
    "riverside": ("in the riverside area", "by the river", "on the bank of the river"),
    "city centre": ("in the city centre", "in the centre of the city", "downtown"),
    "old town": ("in the old town", "in the historic old town", "among the old streets"),
    "university quarter": ("in the university quarter", "next to the university", "among the colleges"),
    "harbour": ("at the harbour", "by the harbour", "next to the fishing boats"),
    "market square": ("on the market square", "by the market square", "where the market is held"),
}
# value → (adjective, "… prices", how much a meal costs)
PRICES = {
    "cheap": ("cheap", "low prices", "little"),
    "moderate": ("moderately priced", "moderate prices", "a fair amount"),
    "high": ("expensive", "high prices", "a lot"),
}
# value → ("… customer rating", how customers rate it, stars)
RATINGS = {
    "low": ("a low customer rating", "poorly", "one star"),
    "average": ("an average customer rating", "as average", "three stars"),
    "high": ("a high customer rating", "highly", "five stars"),
}
FAMILY_PHRASES = {  # E2E's familyFriendly[yes|no]; no phrase of one value contains one of the other
    "yes": ("family friendly", "children are welcome", "a good place for kids"),
    "no": ("for adults only", "not suitable for children", "no place for kids"),
}

NAME_WORDS = ("Golden", "Red", "Blue", "Green", "Silver", "Old", "Little", "Royal", "Black", "White",
              "Crooked", "Hidden")
NAME_NOUNS = ("Eagle", "Lion", "Anchor", "Kettle", "Lantern", "Oak", "Swan", "Fox", "Crown", "Bell", "Mill",
              "Olive", "Pepper", "Lemon", "Spoon", "Garden")

FIRST_NAMES = {  # name → pronoun
    "Anna": "she", "Tom": "he", "Maria": "she", "James": "he", "Lucy": "she", "Omar": "he", "Nina": "she",
    "Peter": "he", "Sara": "she", "David": "he", "Emma": "she", "Leo": "he", "Clara": "she", "Sam": "he",
    "Hannah": "she", "Ben": "he", "Julia": "she", "Adam": "he", "Mia": "she", "Oscar": "he", "Eva": "she",
    "Hugo": "he", "Ruth": "she", "Felix": "he", "Grace": "she", "Ivan": "he", "Lena": "she", "Noah": "he",
}
SURNAMES = ("Berg", "Hale", "Moss", "Reed", "Stone", "Wood", "Frost", "Lane", "Marsh", "Cole", "Hart", "Webb")

# job → two phrases saying what the job is; the second is held out
JOBS = {
    "baker": ("bakes bread for a living", "works in a bakery"),
    "teacher": ("teaches children at a school", "gives lessons to pupils"),
    "farmer": ("grows crops on a farm", "works the land"),
    "fisher": ("catches fish for a living", "works on a fishing boat"),
    "pilot": ("flies planes for a living", "sits in the cockpit of a plane"),
    "chef": ("cooks meals in a restaurant kitchen", "runs a kitchen"),
    "writer": ("writes books for a living", "has written several novels"),
    "musician": ("plays music for a living", "performs songs on stage"),
    "carpenter": ("makes furniture from wood", "works with wood"),
    "gardener": ("looks after gardens for a living", "tends other people's gardens"),
    "doctor": ("treats sick people", "works as a physician"),
    "tailor": ("sews clothes for a living", "makes suits and dresses"),
    "mechanic": ("repairs cars for a living", "fixes engines in a garage"),
    "librarian": ("looks after the books of a library", "works in a library"),
}
# hobby: (he/she form, base form, noun phrase; the noun phrase is held out)
HOBBIES = (
    ("plays chess", "play chess", "is a keen chess player"),
    ("sings in a choir", "sing in a choir", "is a choir singer"),
    ("swims in the lake", "swim in the lake", "is a keen swimmer"),
    ("collects stamps", "collect stamps", "is a stamp collector"),
    ("rides horses", "ride horses", "is a horse rider"),
    ("grows roses", "grow roses", "is a rose grower"),
    ("climbs mountains", "climb mountains", "is a mountain climber"),
    ("plays the violin", "play the violin", "is a violinist"),
)
EVENT_KINDS = ("spring fair", "summer concert", "harvest festival", "flower show", "boat race", "book market",
               "winter market", "jazz night")

# sentiment words by what they describe; the words after the bar ("|") are held out
SENTIMENT_WORDS = {
    ("food", "positive"): "delicious tasty fresh perfect | superb scrumptious",
    ("food", "negative"): "bland stale greasy cold | tasteless soggy",
    ("staff", "positive"): "friendly helpful welcoming polite | attentive",
    ("staff", "negative"): "rude slow unhelpful careless | grumpy",
    ("place", "positive"): "cosy clean charming bright | spotless",
    ("place", "negative"): "dirty noisy cramped gloomy | shabby",
    ("general", "positive"): "excellent wonderful great lovely fantastic | outstanding delightful",
    ("general", "negative"): "awful terrible horrible disappointing poor | dreadful mediocre",
}
STAFF_NOUNS = (("staff", True), ("waiter", False), ("waitress", False), ("service", False))  # (noun, plural)
ROOM_NOUNS = ("room", "dining room", "terrace", "bar")
VERDICTS = {  # the last one is held out
    "positive": ("I will come back.", "Highly recommended.", "We will return soon.", "I cannot wait to go back."),
    "negative": ("Never again.", "I will not come back.", "Avoid it.", "I regret going."),
}
# what people do after a meal, by what they thought of it (corpus only: ties words to sentiment)
OUTCOMES = {
    "positive": ("so {p} went back the next week", "so {p} told all {pp} friends about it",
                 "so {p} gave it five stars", "and {p} wrote a positive review", "and {p} left a big tip"),
    "negative": ("so {p} never went back", "so {p} asked for {pp} money back", "so {p} gave it one star",
                 "and {p} wrote a negative review", "and {p} left without paying the tip"),
}
GLOSSES = {"positive": ("good", "very good", "pleasing"), "negative": ("bad", "very bad", "unpleasant")}

# ---- what the tasks never train on -------------------------------------------------------------


def split_words(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    seen, held_out = spec.split("|")
    return tuple(seen.split()), tuple(held_out.split())


@dataclass(frozen=True)
class HeldOut:
    """Values that only dev and test examples use (phrasings are marked in the tables above)."""
    foods: tuple = ("Thai", "Greek", "Turkish")
    areas: tuple = ("harbour", "market square")
    jobs: tuple = ("tailor", "mechanic", "librarian")
    towns: tuple = ("Lowton", "Northam")
    name_count: int = 24  # the last restaurant names of the world
    frames: int = 4       # the last review frames in SENTIMENT_FRAMES

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(word for spec in SENTIMENT_WORDS.values() for word in split_words(spec)[1])

    @property
    def dishes(self) -> tuple[str, ...]:
        return tuple(dish for food in self.foods for dish in FOODS[food])

    def verdicts(self):
        return tuple(verdicts[-1] for verdicts in VERDICTS.values())


HELD_OUT = HeldOut()


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def food_words(value: str) -> str:
    """``Italian food``, but ``fast food`` (not ``fast food food``)."""
    return value if value.endswith("food") else f"{value} food"


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop."""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


# ---- the entities ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Restaurant:
    name: str
    eat_type: str
    food: str
    price: str
    rating: str
    area: str
    family: str  # "yes" | "no"
    near: str

    def mr(self) -> dict[str, str]:
        """The E2E meaning representation of every fact, in E2E's slot order."""
        return {"name": self.name, "eatType": self.eat_type, "food": self.food, "priceRange": self.price,
                "customer rating": self.rating, "area": self.area, "familyFriendly": self.family,
                "near": self.near}


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str
    job: str
    town: str
    hobbies: tuple[int, ...]  # indices into HOBBIES

    @property
    def possessive(self) -> str:
        return {"she": "her", "he": "his"}[self.pronoun]


@dataclass(frozen=True)
class Event:
    kind: str
    town: str
    month: str

    @property
    def name(self) -> str:
        return f"the {self.kind} in {self.town}"


@dataclass(frozen=True)
class World:
    restaurants: tuple[Restaurant, ...]
    people: tuple[Person, ...]
    events: tuple[Event, ...]

    @property
    def held_out_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.restaurants[-HELD_OUT.name_count:])

    @property
    def seen_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.restaurants[:-HELD_OUT.name_count])


def build_world(seed: int = 0, restaurant_count: int = 96, people_count: int = 120) -> World:
    """The restaurants, people and events, with attributes drawn once from the tables."""
    rng = random.Random(f"world-{seed}")
    names = [f"The {word} {noun}" for word in NAME_WORDS for noun in NAME_NOUNS]
    names = rng.sample(names, restaurant_count)
    restaurants = tuple(
        Restaurant(name, rng.choice(EAT_TYPES), rng.choice(list(FOODS)), rng.choice(list(PRICES)),
                   rng.choice(list(RATINGS)), rng.choice(list(AREAS)), rng.choice(("yes", "no")),
                   rng.choice([other for other in names if other != name]))
        for name in names)
    full_names = rng.sample([f"{first} {last}" for first in FIRST_NAMES for last in SURNAMES], people_count)
    people = tuple(
        Person(name, FIRST_NAMES[name.split()[0]], rng.choice(list(JOBS)), rng.choice(TOWNS),
               tuple(sorted(rng.sample(range(len(HOBBIES)), rng.randint(1, 3)))))
        for name in full_names)
    events = tuple(Event(kind, town, rng.choice(MONTHS)) for kind in EVENT_KINDS for town in TOWNS)
    return World(restaurants, people, events)


# ---- facts → sentences -------------------------------------------------------------------------
# One fact (subject, slot, value) can be said several ways. Each template list ends with its
# held-out phrasing, used only by the corpus and by dev/test examples.

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


# ---- the downstream tasks ----------------------------------------------------------------------

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
NLI_EXCLUSIVE = ("food", "area", "priceRange", "customer rating", "eatType", "familyFriendly", "job", "town")
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


def uses_held_out(text: str, world: World) -> bool:
    """Does ``text`` contain a held-out value, word, name or phrasing (what train never shows)?"""
    return any(re.search(rf"(?<!\w){re.escape(item)}(?!\w)", text) for item in held_out_strings(world))


def held_out_strings(world: World) -> list[str]:
    """Every string that no train example contains: held-out values, names, words and phrasings."""
    return [*HELD_OUT.foods, *HELD_OUT.areas, *HELD_OUT.jobs, *HELD_OUT.towns, *HELD_OUT.words,
            *HELD_OUT.dishes, *HELD_OUT.verdicts(), *world.held_out_names, *HELD_OUT_FRAME_MARKS,
            *(phrases[-1] for phrases in AREAS.values()), *(phrases[-1] for phrases in FAMILY_PHRASES.values()),
            *(phrases[1] for phrases in JOBS.values()), *(hobby[2] for hobby in HOBBIES),
            "a meal at", "you can eat", "reviewers give", "is run as", "has a house in"]


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


def nli_example(world: World, choices: Choices, label: str, rng: random.Random) -> dict[str, str] | None:
    """A premise about a restaurant or a person and a hypothesis whose relation to it is ``label``.

    Exclusive slots (a restaurant serves one cuisine, a person has one job) make a different value a
    contradiction; hobbies are not exclusive, so an unmentioned hobby is neutral. Returns None when
    the drawn premise cannot give ``label`` (the caller draws again)."""
    if rng.random() < 0.5:
        name = rng.choice(choices.names)
        slots = rng.sample(["food", "area", "priceRange", "customer rating", "eatType", "familyFriendly"],
                           rng.randint(2, 4))
        facts = {slot: rng.choice(choices.values(slot)) for slot in slots}
        mr = {"name": name, **facts}
        if rng.random() < 0.3:
            mr["near"] = rng.choice([n for n in choices.names if n != name])
        premise = describe_restaurant(mr, rng)
        unmentioned = [s for s in ("food", "area", "priceRange", "customer rating", "eatType", "familyFriendly")
                       if s not in facts]
        other_name = rng.choice([n for n in choices.names if n != name])
    else:
        person = rng.choice(world.people)
        name, slots = person.name, rng.sample(["job", "town", "hobby"], rng.randint(1, 3))
        hobbies = tuple(sorted(rng.sample(range(len(HOBBIES)), rng.randint(1, 2))))
        person = Person(name, person.pronoun, rng.choice(choices.values("job")), rng.choice(choices.values("town")),
                        hobbies)
        premise = describe_person(person, tuple(slots), rng)
        facts = {slot: getattr(person, slot) for slot in ("job", "town") if slot in slots}
        if "hobby" in slots:
            facts["hobby"] = hobbies
        unmentioned = [s for s in ("job", "town") if s not in slots]
        other_name = rng.choice([p.name for p in world.people if p.name != name])

    options = []  # (slot, value, negated, subject) giving `label`
    for slot, value in facts.items():
        if slot == "hobby":
            inside = [str(h) for h in value]
            outside = [str(h) for h in range(len(HOBBIES)) if h not in value]
            options += {"entailment": [(slot, v, False, name) for v in inside],
                        "contradiction": [(slot, v, True, name) for v in inside],
                        "neutral": [(slot, v, rng.random() < 0.5, name) for v in outside]}[label]
            continue
        others = [v for v in choices.values(slot) if v != value]
        negatable = slot != "familyFriendly"
        options += {"entailment": [(slot, value, False, name)] + ([(slot, rng.choice(others), True, name)] if negatable else []),
                    "contradiction": [(slot, rng.choice(others), False, name)] + ([(slot, value, True, name)] if negatable else []),
                    "neutral": [(slot, value, False, other_name)]}[label]
    if label == "neutral":
        options += [(slot, rng.choice(choices.values(slot)), rng.random() < 0.3 and slot != "familyFriendly", name)
                    for slot in unmentioned]
    if not options:
        return None
    slot, value, negated, subject = rng.choice(options)
    hypothesis = negated_fact(slot, value, subject) if negated else rng.choice(
        choices.phrasings(fact_phrasings(slot, value, subject)))
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


# ---- the corpus --------------------------------------------------------------------------------
# One document per line. Each kind of document teaches something the tasks need: how facts are
# said (and said again in other words), which values exclude each other, which words praise and
# which blame, and what people do after a meal they liked or did not.

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
    return rng.choice([
        f"{word.capitalize()} means {rng.choice(GLOSSES[polarity])}.",
        f"{word.capitalize()} and {like} mean nearly the same thing, and {unlike} means the opposite.",
        f"When {who} is {word}, people are {mood}.",
        f"To call {who} {word} is to say something {polarity} about it.",
    ])


def reasoning_note(world: World, rng: random.Random) -> str:
    """What follows from a fact, what contradicts it and what it leaves open, in the labels' words."""
    restaurant = rng.choice(world.restaurants)
    slot, other_slot = rng.sample(["food", "area", "priceRange", "eatType"], 2)
    value = restaurant.mr()[slot]
    other = rng.choice([v for v in Choices(True, ()).values(slot) if v != value])
    premise = f"Given the premise that {fact_phrasings(slot, value, restaurant.name)[0]}, the hypothesis that"
    kind = rng.choice(NLI_LABELS)
    if kind == "entailment":
        return f"{premise} {rng.choice(fact_phrasings(slot, value, restaurant.name)[1:])} is an entailment: it follows."
    if kind == "contradiction":
        return f"{premise} {fact_phrasings(slot, other, restaurant.name)[0]} is a contradiction: both cannot be true."
    unsaid = fact_phrasings(other_slot, restaurant.mr()[other_slot], restaurant.name)[0]
    return f"{premise} {unsaid} is neutral: the premise says nothing about it."


CORPUS_DOCUMENTS = (  # (kind of document, how often)
    (restaurant_profile, 20), (restaurant_listing, 8), (restaurant_paraphrase, 12), (restaurant_exclusion, 8),
    (person_profile, 10), (person_exclusion, 6), (meal_story, 20), (quoted_review, 6), (event_story, 5),
    (word_meaning, 10), (reasoning_note, 4),
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


# ---- writing data/ -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """How many documents and examples to write (``Sizes.small()`` for tests)."""
    corpus: int = 20_000
    vocab: int = 924  # SentencePiece pieces; with the 100 sentinels the vocabulary is 1,024
    sentiment: tuple[int, int, int] = (3_000, 300, 600)  # train, dev, test
    nli: tuple[int, int, int] = (4_500, 450, 900)
    e2e: tuple[int, int, int] = (3_000, 200, 300)         # meaning representations
    e2e_test_references: int = 3                          # test lines per MR (E2E scores against several)

    @classmethod
    def small(cls) -> Sizes:
        return cls(corpus=1_500, vocab=400, sentiment=(60, 20, 20), nli=(60, 30, 30), e2e=(40, 10, 10))


def task_examples(world: World, task: str, split: str, count: int, seed: int, sizes: Sizes,
                  taken: set[str]) -> list[dict[str, str]]:
    """``count`` examples (for e2e: meaning representations) of ``task`` for ``split``; dev/test ones each use something held out, and
    no input repeats one in ``taken`` (the inputs of the splits written before)."""
    rng = random.Random(f"{task}-{split}-{seed}")
    choices = choices_for(world, split)
    examples, drawn = [], 0
    while drawn < count:
        if task == "e2e":
            mr = e2e_mr(world, choices, rng)
            references = sizes.e2e_test_references if split == "test" else 1
            new = [{"input": mr_string(mr), "target": describe_restaurant(mr, rng)} for _ in range(references)]
        else:
            labels = SENTIMENT_LABELS if task == "sentiment" else NLI_LABELS
            label = labels[drawn % len(labels)]
            make = sentiment_example if task == "sentiment" else nli_example
            example = make(world, choices, label, rng)
            new = [example] if example else []
        if not new or new[0]["input"] in taken:
            continue
        if choices.held_out and not uses_held_out(new[0]["input"], world):
            continue
        taken.add(new[0]["input"])
        examples += new
        drawn += 1
    return examples


def generate_texts(seed: int = 0, sizes: Sizes = Sizes()) -> dict[str, str]:
    """Every text file of data/ (relative path → content), without the tokenizer."""
    world = build_world(seed)
    files, forbidden = {}, set()
    for task in TASKS:
        taken: set[str] = set()
        for split, count in zip(SPLITS, getattr(sizes, task)):
            examples = task_examples(world, task, split, count, seed, sizes, taken)
            if split != "train":
                forbidden |= {example["input"] for example in examples}
                forbidden |= {example["target"] for example in examples if task == "e2e"}
            files[f"tasks/{task}/{split}.jsonl"] = "".join(
                json.dumps(example, ensure_ascii=False) + "\n" for example in examples)
    files["corpus.txt"] = "\n".join(corpus_lines(world, sizes.corpus, seed, forbidden)) + "\n"
    return files


def train_tokenizer(lines: list[str], vocab_size: int) -> bytes:
    """A SentencePiece model of ``lines`` with T5's ids: pad 0, eos 1, unk 2, no bos.

    T5's own model is a *unigram* SentencePiece. On this small, repetitive corpus the unigram
    trainer prunes frequent words into fragments (``The`` → ``Th`` + ``e``) and cannot reach more
    than ~640 pieces, so we use SentencePiece's *BPE*, which merges the most frequent pairs first and
    so keeps every common word whole. Both are read the same way by ``T5Tokenizer``.
    Trained from memory (not from a file path, which the model would record) on one thread, so
    the same lines give the same bytes."""
    import sentencepiece
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        shuffle_input_sentence=False, minloglevel=2,
    )
    return model.getvalue()


def write_atomic(path: Path, content: bytes) -> None:
    """Write to a temporary file next to ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; data files are for everyone to read
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def generate(out_dir: str | Path = DATA_DIR, seed: int = 0, sizes: Sizes = Sizes(), tokenizer: bool = True) -> list[Path]:
    """Write the corpus, the task files and (unless ``tokenizer=False``) spiece.model into ``out_dir``."""
    out_dir = Path(out_dir)
    files = {name: text.encode("utf-8") for name, text in generate_texts(seed, sizes).items()}
    if tokenizer:
        files["spiece.model"] = train_tokenizer(files["corpus.txt"].decode("utf-8").splitlines(), sizes.vocab)
    for name, content in files.items():
        write_atomic(out_dir / name, content)
    return [out_dir / name for name in files]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the embedded world into data/: corpus, tasks, tokenizer.")
    parser.add_argument("--out", default=str(DATA_DIR), help="directory to write (default: the repository's data/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a tiny world, for tests")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.seed, Sizes.small() if args.small else Sizes()):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
