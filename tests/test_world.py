"""The embedded world: data/ is what the generator writes, the held-out parts stay out of train,
the labels follow from the facts, and the tokenizer keeps T5's conventions."""

import json
import re

import pytest

from minipeft import T5Tokenizer, world
from minipeft.world import DATA_DIR, HELD_OUT, SPLITS, TASKS

from conftest import ROOT


def read_split(task, split):
    return [json.loads(line) for line in (DATA_DIR / "tasks" / task / f"{split}.jsonl").read_text().splitlines()]


def contains(text, item):
    return re.search(rf"(?<!\w){re.escape(item)}(?!\w)", text) is not None


@pytest.fixture(scope="module")
def the_world():
    return world.build_world(seed=0)


def test_generator_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    world.generate(first, seed=3, sizes=world.Sizes.small())
    world.generate(second, seed=3, sizes=world.Sizes.small())
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert {str(f) for f in files} >= {"corpus.txt", "spiece.model", "tasks/nli/test.jsonl"}
    for file in files:
        assert (first / file).read_bytes() == (second / file).read_bytes(), file


def test_another_seed_gives_another_world(tmp_path):
    assert world.generate_texts(1, world.Sizes.small()) != world.generate_texts(2, world.Sizes.small())


def test_shipped_data_is_what_the_generator_writes():
    """data/ must be regenerated (`python -m minipeft.world`) whenever minipeft/world/ changes."""
    for name, text in world.generate_texts(seed=0).items():
        assert (DATA_DIR / name).read_text(encoding="utf-8") == text, f"data/{name} is stale: run python -m minipeft.world"


@pytest.mark.parametrize("task", TASKS)
def test_train_never_shows_what_is_held_out(task, the_world):
    held_out = world.held_out_strings(the_world)
    assert {"Thai", "market square", "tailor", "superb", "My friends and I tried"} <= set(held_out)
    for example in read_split(task, "train"):
        text = example["input"] + " " + example["target"]
        leaked = [item for item in held_out if contains(text, item)]
        assert not leaked, f"{leaked} in train example {example}"


@pytest.mark.parametrize("task", TASKS)
def test_every_dev_and_test_example_uses_something_held_out(task, the_world):
    held_out = world.held_out_strings(the_world)
    for split in ("dev", "test"):
        for example in read_split(task, split):
            assert any(contains(example["input"], item) for item in held_out), example


@pytest.mark.parametrize("task", TASKS)
def test_splits_share_no_input(task):
    inputs = {split: {example["input"] for example in read_split(task, split)} for split in SPLITS}
    assert not inputs["train"] & inputs["dev"]
    assert not inputs["train"] & inputs["test"]
    assert not inputs["dev"] & inputs["test"]


@pytest.mark.parametrize("task, labels", [("sentiment", world.SENTIMENT_LABELS), ("nli", world.NLI_LABELS)])
def test_classification_labels_are_balanced(task, labels):
    for split in SPLITS:
        targets = [example["target"] for example in read_split(task, split)]
        assert set(targets) == set(labels)
        counts = [targets.count(label) for label in labels]
        assert max(counts) - min(counts) <= 1, (split, counts)


def test_nli_food_hypotheses_follow_the_rules():
    """An independent reading of the food facts: a restaurant serves one cuisine, so the same one is
    an entailment, another a contradiction, and a premise that names none is neutral."""
    foods = "|".join(sorted(world.FOODS, key=len, reverse=True))
    checked = 0
    for split in SPLITS:
        for example in read_split("nli", split):
            premise, hypothesis = re.fullmatch(r"premise: (.*) hypothesis: (.*)", example["input"]).groups()
            asked = re.fullmatch(rf"(The \w+ \w+) (does not serve|serves) ({foods})(?: food)?\.", hypothesis)
            subject = re.match(r"(?:Located [^,]+, )?(The \w+ \w+) is", premise)
            if not asked or not subject or subject[1] != asked[1]:
                continue
            said = re.search(rf"(?<!\w)({foods})(?!\w)", premise)
            if said is None:
                expected = "neutral"
            else:
                expected = "entailment" if (said[1] == asked[3]) != (asked[2] == "does not serve") else "contradiction"
            assert example["target"] == expected, example
            checked += 1
    assert checked > 100


def test_e2e_targets_say_every_slot_of_their_meaning_representation():
    for split in SPLITS:
        for example in read_split("e2e", split):
            assert world.e2e_slot_coverage(example["input"], example["target"]) == 1.0, example


def test_slot_coverage_notices_a_missing_or_wrong_slot():
    mr = "name[The Red Fox] | food[Italian] | area[riverside] | familyFriendly[no]"
    assert world.e2e_slot_coverage(mr, "The Red Fox is an Italian place by the river. It is for adults only.") == 1.0
    assert world.e2e_slot_coverage(mr, "The Red Fox is an Italian place by the river.") == 0.75
    assert world.e2e_slot_coverage(mr, "The Red Fox is a French place in the city centre. It is family friendly.") == 0.25


def test_e2e_test_lists_several_references_per_meaning_representation():
    inputs = [example["input"] for example in read_split("e2e", "test")]
    references = world.Sizes().e2e_test_references
    groups = [inputs[i:i + references] for i in range(0, len(inputs), references)]
    assert all(len(set(group)) == 1 for group in groups)
    assert len({group[0] for group in groups}) == len(groups)


def test_meaning_representation_round_trip():
    mr = {"name": "The Red Fox", "customer rating": "high", "near": "The Old Mill"}
    assert world.mr_string(mr) == "name[The Red Fox] | customer rating[high] | near[The Old Mill]"
    assert world.parse_mr(world.mr_string(mr)) == mr
    with pytest.raises(ValueError, match="not a slot"):
        world.parse_mr("name[The Red Fox] | food Italian")


def test_corpus_teaches_the_held_out_values_but_never_quotes_dev_or_test(the_world):
    corpus = (DATA_DIR / "corpus.txt").read_text(encoding="utf-8")
    missing = [item for item in world.held_out_strings(the_world) if not contains(corpus, item)]
    assert not missing
    lines = set(corpus.splitlines())
    quoted = {line.split(": ", 1)[-1] for line in lines}
    for task in TASKS:
        for split in ("dev", "test"):
            for example in read_split(task, split):
                assert example["input"] not in lines | quoted
                if task == "e2e":
                    assert example["target"] not in lines


def test_tokenizer_has_t5_conventions_and_covers_every_task():
    tokenizer = T5Tokenizer(DATA_DIR / "spiece.model")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.vocab_size == world.Sizes().vocab + world.EXTRA_IDS == 1024
    assert tokenizer.sentinel_id(0) == 1023 and tokenizer.encode("<extra_id_0>", add_eos=False) == [1023]
    for label in world.SENTIMENT_LABELS + world.NLI_LABELS:
        assert len(tokenizer.encode(label, add_eos=False)) == 1, f"{label} is not one piece"
    for task in TASKS:
        for split in SPLITS:
            for example in read_split(task, split):
                ids = tokenizer.encode(example["input"] + " " + example["target"])
                assert tokenizer.unk_token_id not in ids, example


def test_held_out_words_never_appear_in_seen_word_lists():
    for spec in world.SENTIMENT_WORDS.values():
        seen, held = world.split_words(spec)
        assert held and not set(seen) & set(held)
    assert set(HELD_OUT.words) < {w for spec in world.SENTIMENT_WORDS.values() for w in spec.split()}


def test_data_readme_documents_every_file():
    readme = (ROOT / "data" / "README.md").read_text()
    for name in ("corpus.txt", "spiece.model", "tasks/<task>/{train,dev,test}.jsonl", "bases/",
                 "python -m minipeft.world", "python -m minipeft.bases pretrain tiny-t5"):
        assert name in readme, name
