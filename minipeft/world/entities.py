"""The entities of the embedded world: restaurants, people and events, drawn once from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .vocabulary import AREAS, EAT_TYPES, EVENT_KINDS, FIRST_NAMES, FOODS, HELD_OUT, HOBBIES, JOBS, MONTHS, \
    NAME_NOUNS, NAME_WORDS, PRICES, RATINGS, SURNAMES, TOWNS


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

