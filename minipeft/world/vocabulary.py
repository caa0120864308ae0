"""The vocabulary of the embedded world: the tables every sentence is built from.

Restaurants take E2E's attributes (``FOODS``, ``EAT_TYPES``, ``AREAS``, ``PRICES``, ``RATINGS``,
``FAMILY_PHRASES``), people a job (``JOBS``), a town and hobbies, reviews their words from
``SENTIMENT_WORDS``. Where a table lists several ways to say one thing, the last one is held out:
only dev and test examples (and the corpus) use it. ``HELD_OUT`` lists the held-out values.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def split_words(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"good nice | superb"`` → ``(("good", "nice"), ("superb",))``: the seen and the held-out words."""
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
