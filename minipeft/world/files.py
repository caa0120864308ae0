"""Writing data/: the corpus, the task files and the tokenizer, each file atomically."""

from __future__ import annotations

import argparse
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from .corpus import corpus_lines
from .entities import World, build_world
from .sentences import describe_restaurant, mr_string
from .tasks import NLI_LABELS, SENTIMENT_LABELS, choices_for, e2e_mr, nli_example, sentiment_example, uses_held_out

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"
TASKS = ("sentiment", "nli", "e2e")
SPLITS = ("train", "dev", "test")
EXTRA_IDS = 100  # sentinels <extra_id_0> … <extra_id_99> on top of the SentencePiece pieces, as in T5


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
    """Write ``content`` to ``path`` through a temporary file: never a half-written file (``atomic.py``)."""
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(content))


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
