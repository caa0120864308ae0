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

The package, in reading order:

    vocabulary.py   the tables: cuisines, areas, jobs, sentiment words, … and what is held out
    entities.py     the restaurants, people and events, drawn once from the seed
    sentences.py    facts → sentences (several phrasings each), E2E meaning representations
    tasks.py        one example of a task at a time, and what a split may use
    corpus.py       the kinds of corpus documents, and the corpus
    files.py        Sizes, writing data/ atomically, training the tokenizer, the command line
    probes.py       fill-in-the-blank questions that ask a base what the corpus taught it
"""

from .entities import Event, Person, Restaurant, World, build_world
from .files import DATA_DIR, EXTRA_IDS, SPLITS, TASKS, Sizes, generate, generate_texts, main, train_tokenizer
from .sentences import e2e_slot_coverage, mr_string, parse_mr, slot_phrases
from .tasks import HELD_OUT_KINDS, NLI_LABELS, SENTIMENT_FRAMES, SENTIMENT_LABELS, held_out_groups, held_out_kinds, \
    held_out_strings, uses_held_out
from .vocabulary import FOODS, HELD_OUT, SENTIMENT_WORDS, split_words

__all__ = ["DATA_DIR", "EXTRA_IDS", "SPLITS", "TASKS", "Sizes", "generate", "generate_texts", "main", "train_tokenizer",
           "World", "Restaurant", "Person", "Event", "build_world", "e2e_slot_coverage", "mr_string", "parse_mr",
           "slot_phrases", "NLI_LABELS", "SENTIMENT_LABELS", "SENTIMENT_FRAMES", "HELD_OUT_KINDS", "held_out_groups",
           "held_out_kinds", "held_out_strings", "uses_held_out",
           "FOODS", "HELD_OUT", "SENTIMENT_WORDS", "split_words"]
