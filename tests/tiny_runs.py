"""Small worlds for the training tests: a task written to a temp dir, and Hugging Face format
checkpoints of tiny T5 / GPT-2 models with tokenizers trained on that task's text.

Everything is built offline in seconds: a SentencePiece model (T5's special ids) or a byte-level
BPE trained on the task's sentences, and a `transformers` model with random weights saved with
``save_pretrained``, so ``train.py --model t5 --weights DIR`` reads it like a real checkpoint.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest


def subprocess_pythonpath(root) -> str:
    """PYTHONPATH for a train.py child process: the repository first."""
    return os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])


GOOD = ["great", "lovely", "tasty", "superb", "friendly", "fresh"]
BAD = ["awful", "cold", "rude", "bland", "dirty", "stale"]
THINGS = ["food", "soup", "staff", "room", "bread", "fish", "coffee", "service"]
NAMES = ["The Eagle", "Blue Door", "The Mill", "Red Fox", "Green Man", "Old Bell"]
FOODS = ["Italian", "French", "Chinese", "Indian", "Thai"]
AREAS = ["riverside", "city centre"]


def sentiment_examples(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        label = rng.choice(["positive", "negative"])
        word = rng.choice(GOOD if label == "positive" else BAD)
        examples.append({"input": f"the {rng.choice(THINGS)} was {word} and the {rng.choice(THINGS)} was ok",
                         "target": label})
    return examples


def table_examples(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        name, food, area = rng.choice(NAMES), rng.choice(FOODS), rng.choice(AREAS)
        examples.append({"input": f"name[{name}] | food[{food}] | area[{area}]",
                         "target": rng.choice([f"{name} serves {food} food in the {area}.",
                                               f"In the {area}, {name} serves {food} food."])})
    return examples


def write_jsonl(path: Path, examples: list[dict]):
    path.write_text("".join(json.dumps(example) + "\n" for example in examples))


def write_task(directory: Path, kind: str = "sentiment", sizes=(64, 16, 16)) -> Path:
    """``directory/{train,dev,test}.jsonl``; returns the train file's path (for ``--data``)."""
    make = sentiment_examples if kind == "sentiment" else table_examples
    directory.mkdir(parents=True, exist_ok=True)
    for seed, (split, count) in enumerate(zip(("train", "dev", "test"), sizes)):
        write_jsonl(directory / f"{split}.jsonl", make(count, seed))
    return directory / "train.jsonl"


def task_text() -> list[str]:
    examples = sentiment_examples(200, 0) + table_examples(200, 0)
    return [text for example in examples for text in (example["input"], example["target"])]


def make_t5_checkpoint(transformers, directory: Path, seed: int = 0, **config) -> Path:
    """A t5-format checkpoint (ReLU FFN, tied head) shrunk for speed, with its own spiece.model."""
    import sentencepiece
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(task_text()), model_prefix=str(directory / "spiece"), model_type="unigram",
        vocab_size=120, hard_vocab_limit=False, character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model")).get_piece_size()
    settings = dict(vocab_size=pieces + 100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.1, feed_forward_proj="relu",
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    settings.update(config)
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**settings))
    model.save_pretrained(str(directory))
    return directory


def make_gpt2_checkpoint(transformers, tokenizers, directory: Path, seed: int = 0) -> Path:
    """A gpt2-format checkpoint, 2 small layers, with a byte-level BPE trained on the task text."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(task_text(), vocab_size=300, min_frequency=2,
                                special_tokens=["<|endoftext|>"], show_progress=False)
    trainer.save_model(str(directory))
    vocab = json.loads((directory / "vocab.json").read_text())
    eos = vocab["<|endoftext|>"]
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(directory))
    return directory


# -- fixtures shared by test_training.py and test_train_cli.py (imported there; built once per session) --

@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory):
    """t5-small's format (ReLU FFN, tied head rescaled, relative buckets, spiece.model), shrunk."""
    from conftest import reference
    return make_t5_checkpoint(reference("transformers"), tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """``.../sentiment/train.jsonl`` with dev.jsonl and test.jsonl beside it."""
    return write_task(tmp_path_factory.mktemp("task") / "sentiment")
