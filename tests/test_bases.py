"""The tiny bases: the shipped files load, they know the world (measured now, on corpus lines they
never trained on), a random base does not, and a missing or damaged base is a clear error."""

import dataclasses
import json
import shutil

import pytest
import torch

from minipeft import CheckpointError, GPT, T5Model, bases, world
from minipeft.objectives import IGNORE_INDEX
from minipeft.world import DATA_DIR, probes


@pytest.fixture(scope="module")
def held_out_lines():
    lines = (DATA_DIR / "corpus.txt").read_text(encoding="utf-8").splitlines()
    return lines[-bases.PretrainConfig.held_out_lines:]


@pytest.fixture(scope="module")
def tiny_t5():
    return bases.load_base("tiny-t5")


@pytest.fixture(scope="module")
def tiny_gpt():
    return bases.load_base("tiny-gpt")


@pytest.mark.parametrize("name, model_class", [("tiny-t5", T5Model), ("tiny-gpt", GPT), ("tiny-t5-lm", T5Model)])
def test_shipped_base_loads_with_its_tokenizer(name, model_class):
    model, tokenizer = bases.load_base(name)
    assert isinstance(model, model_class) and not model.training
    assert model.config == bases.tiny_config(name, tokenizer.vocab_size)  # the architecture the code builds
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (bases.DATA_DIR / "bases" / name / "spiece.model").read_bytes() == (DATA_DIR / "spiece.model").read_bytes()
    info = json.loads((DATA_DIR / "bases" / name / "config.json").read_text())
    assert info["pretraining"]["steps"] > 0 and info["storage_dtype"] == "float16"


def test_shipped_tiny_t5_lm_is_the_shipped_tiny_t5_adapted():
    """Its record says it went on from the shipped tiny-t5 (the same pretraining record) with
    ``ADAPTATION``'s prefix LM."""
    lm, t5 = (json.loads((DATA_DIR / "bases" / name / "config.json").read_text()) for name in ("tiny-t5-lm", "tiny-t5"))
    assert lm["pretraining"] == t5["pretraining"] and "adaptation" not in t5
    expected = dataclasses.asdict(bases.ADAPTATION["tiny-t5-lm"])
    assert {key: lm["adaptation"][key] for key in expected} == expected
    assert lm["adaptation"]["objective"] == "prefix LM (F11.1 through F11.5)"


def test_gpt_base_uses_the_t5_tokenizer_ids(tiny_gpt):
    model, tokenizer = tiny_gpt
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_tiny_t5_fills_hidden_spans_of_unseen_lines(tiny_t5, held_out_lines):
    """Teacher-forced accuracy on the hidden tokens: far above the most frequent token and a random base."""
    model, tokenizer = tiny_t5
    pretrained = bases.evaluate(model, tokenizer, held_out_lines)
    untrained = bases.evaluate(bases.random_base("tiny-t5")[0], tokenizer, held_out_lines)
    stream = bases.corpus_stream(tokenizer, held_out_lines)
    most_frequent_share = torch.bincount(stream).max().item() / len(stream)
    assert pretrained["accuracy"] > 0.5
    assert pretrained["accuracy"] > most_frequent_share + 0.3
    assert untrained["accuracy"] < most_frequent_share + 0.05
    assert pretrained["loss"] < untrained["loss"] / 2


def test_tiny_t5_lm_continues_unseen_lines_where_tiny_t5_does_not(tiny_t5, held_out_lines):
    """Prefix LM on held-out lines (the encoder reads the start, the decoder writes the rest,
    teacher-forced): LM adaptation taught the decoder to continue; span corruption did not."""
    continuation = bases.ADAPTATION["tiny-t5-lm"]
    model, tokenizer = bases.load_base("tiny-t5-lm")
    adapted = bases.evaluate(model, tokenizer, held_out_lines, continuation)
    span_only = bases.evaluate(tiny_t5[0], tokenizer, held_out_lines, continuation)
    untrained = bases.evaluate(bases.random_base("tiny-t5")[0], tokenizer, held_out_lines, continuation)
    assert adapted["accuracy"] > 0.6 and adapted["accuracy"] > span_only["accuracy"] + 0.2
    assert untrained["accuracy"] < 0.1 and adapted["loss"] < span_only["loss"] / 2


def test_tiny_gpt_predicts_the_next_token_of_unseen_lines(tiny_gpt, held_out_lines):
    model, tokenizer = tiny_gpt
    pretrained = bases.evaluate(model, tokenizer, held_out_lines)
    untrained = bases.evaluate(bases.random_base("tiny-gpt")[0], tokenizer, held_out_lines)
    assert pretrained["accuracy"] > 0.6 and untrained["accuracy"] < 0.1
    assert pretrained["loss"] < 1.5 < untrained["loss"]


def test_tiny_gpt_knows_sentiment_words_it_saw_only_in_the_corpus(tiny_gpt):
    """Each held-out word's embedding is nearer the seen words of its own polarity."""
    model, tokenizer = tiny_gpt
    embedding = model.wte.weight.detach()

    def vector(word):
        return embedding[tokenizer.encode(word, add_eos=False)].mean(0)

    seen = {polarity: torch.stack([vector(word) for (_, p), spec in world.SENTIMENT_WORDS.items() if p == polarity
                                   for word in world.split_words(spec)[0]]).mean(0)
            for polarity in world.SENTIMENT_LABELS}
    middle = (seen["positive"] + seen["negative"]) / 2
    right = 0
    for (_, polarity), spec in world.SENTIMENT_WORDS.items():
        for word in world.split_words(spec)[1]:
            similarity = {p: torch.cosine_similarity(vector(word) - middle, seen[p] - middle, dim=0) for p in seen}
            right += max(similarity, key=similarity.get) == polarity
    assert right >= len(world.HELD_OUT.words) - 1


@pytest.fixture(scope="module")
def paraphrase_items():
    return probes.paraphrase_items(world.build_world(), count=200)


def test_paraphrase_items_ask_for_a_true_fact_said_again(paraphrase_items):
    the_world = world.build_world()
    facts = {r.name: r.mr() for r in the_world.restaurants}
    facts |= {p.name: {"job": p.job, "town": p.town, "hobby": set(map(str, p.hobbies))} for p in the_world.people}
    assert paraphrase_items == probes.paraphrase_items(the_world, count=200)   # seeded
    assert {item.slot for item in paraphrase_items} == {"food", "area", "priceRange", "customer rating", "eatType",
                                                        "familyFriendly", "job", "town", "hobby"}
    for item in paraphrase_items:
        assert item.text.count(probes.BLANK) == 1 and item.text.startswith(item.prompt)
        assert item.answer in item.candidates and len(set(item.candidates.values())) == len(item.candidates) > 1
        subject = next(name for name in facts if name in item.text.split(" In other words,")[0])
        true = facts[subject][item.slot]
        assert item.answer in true if item.slot == "hobby" else item.answer == true


def test_cloze_probe_scores_each_candidate_as_the_model_reads_it(paraphrase_items):
    """The batched, padded scores equal each candidate's log-likelihood computed alone with the
    models' losses (T5: the span as the decoder's target; GPT: the span as the prompt's continuation)."""
    item = next(i for i in paraphrase_items if len({len(w.split()) for w in i.candidates.values()}) > 1)
    for name, continuation in (("tiny-t5", False), ("tiny-t5", True), ("tiny-gpt", True)):
        model, tokenizer = bases.random_base(name)
        spans = [tokenizer.encode(words, add_eos=False) for words in item.candidates.values()]
        batched = bases.candidate_log_probs(model, tokenizer, item, spans, continuation)
        for span, score in zip(spans, batched):
            if name == "tiny-t5" and not continuation:
                target = torch.tensor([[tokenizer.sentinel_id(0)] + span])
                logits = model(input_ids=torch.tensor([tokenizer.encode(item.text)]),
                               decoder_input_ids=torch.tensor([[0] + target[0, :-1].tolist()]))
                alone = -torch.nn.functional.cross_entropy(logits[0, 1:], target[0, 1:], reduction="sum")
            elif name == "tiny-t5":   # prefix LM: the text before the blank in, the span as its continuation
                logits = model(input_ids=torch.tensor([tokenizer.encode(item.prompt)]),
                               decoder_input_ids=torch.tensor([[0] + span[:-1]]))
                alone = -torch.nn.functional.cross_entropy(logits[0], torch.tensor(span), reduction="sum")
            else:
                prompt = tokenizer.encode(item.prompt, add_eos=False)
                logits = model(input_ids=torch.tensor([prompt + span]))
                alone = -torch.nn.functional.cross_entropy(logits[0, len(prompt) - 1:-1], torch.tensor(span),
                                                           reduction="sum")
            torch.testing.assert_close(score, alone, atol=1e-4, rtol=1e-5)


def test_cloze_probe_tiny_gpt_knows_the_paraphrases_a_random_base_does_not(tiny_gpt, paraphrase_items):
    """What the GPT base learned from the corpus's "in other words" documents. (tiny-t5 scores
    near chance here: README, Results, and data/README.md.)"""
    model, tokenizer = tiny_gpt
    pretrained = bases.cloze_probe(model, tokenizer, paraphrase_items)
    untrained = bases.cloze_probe(bases.random_base("tiny-gpt")[0], tokenizer, paraphrase_items)
    assert pretrained["chance"] == untrained["chance"] < 0.25
    assert pretrained["accuracy"] > pretrained["chance"] + 0.25
    assert untrained["accuracy"] < untrained["chance"] + 0.08


def test_random_base_has_the_architecture_and_tokenizer_but_not_the_weights(tiny_t5):
    model, tokenizer = tiny_t5
    random_model, random_tokenizer = bases.random_base("tiny-t5")
    assert random_model.config == model.config and random_tokenizer.vocab_size == tokenizer.vocab_size
    assert not torch.equal(random_model.shared.weight, model.shared.weight)
    again, _ = bases.random_base("tiny-t5")
    assert torch.equal(again.shared.weight, random_model.shared.weight)  # seeded
    assert not torch.equal(bases.random_base("tiny-t5", seed=1)[0].shared.weight, random_model.shared.weight)


def test_unknown_base_names_the_choices():
    with pytest.raises(ValueError, match="tiny-t5, tiny-gpt"):
        bases.load_base("t5-small")


def test_missing_base_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m minipeft.bases pretrain tiny-gpt"):
        bases.load_base("tiny-gpt", data_dir=tmp_path)


@pytest.fixture
def copied_base(tmp_path):
    shutil.copytree(DATA_DIR / "bases" / "tiny-gpt", tmp_path / "bases" / "tiny-gpt")
    return tmp_path, tmp_path / "bases" / "tiny-gpt"


def test_damaged_weights_are_a_clear_error(copied_base):
    data_dir, directory = copied_base
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged.*pretrain tiny-gpt"):
        bases.load_base("tiny-gpt", data_dir=data_dir)


def test_weights_that_do_not_fit_the_config_list_the_problems(copied_base):
    data_dir, directory = copied_base
    info = json.loads((directory / "config.json").read_text())
    info["config"]["n_layer"] = 5
    (directory / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="missing blocks.4"):
        bases.load_base("tiny-gpt", data_dir=data_dir)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not a valid base config"):
        bases.load_base("tiny-gpt", data_dir=data_dir)


def test_pretraining_is_deterministic_and_saves_what_it_trained(tmp_path):
    """A few steps on a small world, twice: identical files; loading gives the trained model back."""
    world.generate(tmp_path / "data", seed=0, sizes=world.Sizes.small())
    config = dataclasses.replace(bases.PRETRAINING["tiny-t5"], steps=3, batch_size=2, length=16, warmup=1,
                                 held_out_lines=20)
    for out in ("first", "second"):
        bases.pretrain("tiny-t5", tmp_path / "data", tmp_path / out, config, progress=False)
    first, second = (tmp_path / out / "bases" / "tiny-t5" for out in ("first", "second"))
    for file in ("model.safetensors", "spiece.model"):
        assert (first / file).read_bytes() == (second / file).read_bytes()
    info = json.loads((first / "config.json").read_text())
    assert info["pretraining"]["steps"] == 3 and "held_out" in info["pretraining"]
    model, tokenizer = bases.load_base("tiny-t5", data_dir=tmp_path / "first")
    untrained, _ = bases.random_base("tiny-t5", data_dir=tmp_path / "data")
    assert not torch.equal(model.shared.weight, untrained.shared.weight)
    assert not list(first.parent.glob(".*"))  # no temporary directory left behind


def test_lm_adaptation_goes_on_from_the_stored_base_and_keeps_its_record(tmp_path):
    """adapt makes tiny-t5-lm from the stored span-corruption tiny-t5 (not from scratch), records
    both stages, and refuses a source that was adapted already, and every other base."""
    world.generate(tmp_path / "data", seed=0, sizes=world.Sizes.small())
    small = dict(steps=2, batch_size=2, length=16, warmup=1, held_out_lines=20)
    # stage 1 from seed 1, so its weights are far from the seed-0 init that adapting from scratch would use
    bases.pretrain("tiny-t5", tmp_path / "data", tmp_path / "base",
                   dataclasses.replace(bases.PRETRAINING["tiny-t5"], **small, seed=1), progress=False)
    adaptation = dataclasses.replace(bases.ADAPTATION["tiny-t5-lm"], **small)
    bases.adapt("tiny-t5-lm", tmp_path / "data", tmp_path / "adapted", adaptation, progress=False,
                start_from=tmp_path / "base")
    assert not (tmp_path / "adapted" / "bases" / "tiny-t5").exists()  # the source is not overwritten
    pretrained, _ = bases.load_base("tiny-t5", data_dir=tmp_path / "base")
    adapted, _ = bases.load_base("tiny-t5-lm", data_dir=tmp_path / "adapted")
    untrained, _ = bases.random_base("tiny-t5", data_dir=tmp_path / "data")
    moved = (adapted.shared.weight - pretrained.shared.weight).norm()
    assert 0 < moved < 0.2 * (untrained.shared.weight - pretrained.shared.weight).norm()  # two small steps from it
    info = bases.base_info("tiny-t5-lm", tmp_path / "adapted")
    assert info["name"] == "tiny-t5-lm" and info["architecture"] == "T5Model"
    assert info["pretraining"] == bases.base_info("tiny-t5", tmp_path / "base")["pretraining"]
    assert info["adaptation"]["objective"].startswith("prefix LM") and info["adaptation"]["steps"] == 2
    # a tiny-t5 that is an adapted base (as an earlier `adapt` wrote it) is not adapted again
    shutil.copytree(tmp_path / "adapted" / "bases" / "tiny-t5-lm", tmp_path / "twice" / "bases" / "tiny-t5")
    with pytest.raises(ValueError, match="LM-adapted already"):
        bases.adapt("tiny-t5-lm", tmp_path / "data", tmp_path / "out", adaptation, progress=False,
                    start_from=tmp_path / "twice")
    for name in ("tiny-gpt", "tiny-t5"):
        with pytest.raises(ValueError, match="the adapted base is tiny-t5-lm"):
            bases.adapt(name, tmp_path / "data")
    with pytest.raises(ValueError, match="make it with `python -m minipeft.bases adapt tiny-t5-lm`"):
        bases.pretrain("tiny-t5-lm", tmp_path / "data", tmp_path / "out", adaptation, progress=False)
    with pytest.raises(FileNotFoundError, match="make it with `python -m minipeft.bases pretrain tiny-t5`"):
        bases.adapt("tiny-t5-lm", tmp_path / "data", start_from=tmp_path / "nowhere")


def test_prefix_lm_batches_continue_the_chunk(tiny_t5):
    _, tokenizer = tiny_t5
    config = dataclasses.replace(bases.PRETRAINING["tiny-t5"], prefix_lm_share=1.0)
    chunks = [torch.arange(10, 40), torch.arange(100, 110)]
    batch = bases.span_corruption_batch(chunks, tokenizer, config, torch.Generator().manual_seed(0))
    for row, chunk in enumerate(chunks):
        source = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        target = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert source[-1] == target[-1] == tokenizer.eos_token_id
        assert torch.equal(torch.cat([source[:-1], target[:-1]]), chunk)  # the encoder reads the start, the decoder the rest


def test_span_corruption_batches_pad_inputs_and_ignore_padded_labels(tiny_t5):
    _, tokenizer = tiny_t5
    config = bases.PRETRAINING["tiny-t5"]
    chunks = [torch.arange(10, 40), torch.arange(100, 110)]
    batch = bases.span_corruption_batch(chunks, tokenizer, config, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    lengths = batch["attention_mask"].sum(1)
    for row in range(2):
        assert batch["input_ids"][row, lengths[row] - 1] == tokenizer.eos_token_id
        assert (batch["input_ids"][row, lengths[row]:] == tokenizer.pad_token_id).all()
        labels = batch["labels"][row]
        real = labels[labels != IGNORE_INDEX]
        assert real[0] == tokenizer.sentinel_id(0) and real[-1] == tokenizer.eos_token_id
    assert dataclasses.asdict(config)["noise_density"] == 0.15


@pytest.mark.slow
def test_adafactor_pretrains_tiny_t5_within_5_percent_of_adamw():
    """Issue 4 on the real objective: span corruption of the world corpus, same seed and batches."""
    from minipeft.benchmarks import adafactor
    results = adafactor.compare(steps=300, batch_size=8)
    assert results["final_loss_ratio"] <= 1.05, results
