"""Task data for train.py: reading examples, checking them, splitting them, and making batches.

Every task is text to text: an example is ``{"input": ..., "target": ...}``.

    data/tasks/<task>/{train,dev,test}.jsonl     the embedded tasks (sentiment, nli, e2e)
    --data my.jsonl                              one JSON object per line, keys "input" and "target"
    --data my.tsv                                one example per line: input<TAB>target

User data. If ``my.jsonl`` has siblings ``dev.jsonl`` / ``test.jsonl`` (or ``dev.tsv`` …) in its
directory, and its own name is ``train.jsonl``, those are the dev and test splits. Otherwise the
file is split deterministically (independent of ``--seed``): the examples are shuffled with a
fixed seed, and 10% (at least 1) go to test, 10% to dev, the rest to training.

Reading is strict: a line that is not JSON, lacks a key, has an empty target, or has the wrong
number of TAB columns is an error naming the file and line. The last line must end with a
newline unless it parses, so a file cut off while being written is caught instead of trained on.

Batches (the shape legend of ../shared/STYLE.md: B batch, S source, T target):

    encoder-decoder   input_ids (B, S) = input + </s>        labels (B, T) = target + </s>, pad → -100
                      the decoder input is model.shift_right(labels) (teacher forcing)
    decoder-only      input_ids (B, S+T) = input + </s> + target + </s>, right-padded
                      labels: -100 on the input, the separator and the padding, so the causal-LM
                      loss (F11.1) is taken only over the target and its end token.

A decoder-only prompt for generation is ``input + </s>`` (left-padded); the end-of-sequence token
is the separator because every tokenizer has it. Inputs too long for the model are cut from the
right (keeping the end token), counted, and reported once; a target too long is an error, since a
cut target would teach the model to stop early.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import world
from .metrics import is_table
from .tokenizers import T5Tokenizer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TASK_DIR = DATA_DIR / "tasks"
SPLIT_SEED = 1234        # user data without dev/test files is split with this fixed seed
HELD_OUT_FRACTION = 0.1  # … 10% to test and 10% to dev
CLASSIFICATION_MAX_LABELS = 20


class DataError(ValueError):
    """Bad task data: the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Example:
    input: str
    target: str


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task and how it is scored: ``kind`` is ``"classification"`` (accuracy),
    ``"table-to-text"`` (BLEU + slot coverage) or ``"generation"`` (BLEU)."""
    name: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    kind: str
    slot_phrases: Callable[[str, str], tuple[str, ...]] | None = None   # how a table value may be said


# -- reading ------------------------------------------------------------------------------------

def read_examples(path: str | Path) -> list[Example]:
    """Examples of a ``.jsonl`` or ``.tsv`` file, with an error naming the line of any bad one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix not in (".jsonl", ".tsv"):
        raise DataError(f"{path}: expected a .jsonl file ({{\"input\": ..., \"target\": ...}} per line) "
                        f"or a .tsv file (input<TAB>target per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()  # the empty string after the final newline
    examples = []
    for number, line in enumerate(lines, start=1):
        last_and_unterminated = number == len(lines) and not complete
        where = f"{path}, line {number}"
        try:
            if not line.strip():
                if last_and_unterminated:
                    continue
                raise DataError(f"{where}: empty line; remove it")
            example = parse_jsonl_line(line, where) if path.suffix == ".jsonl" else parse_tsv_line(line, where)
        except DataError as error:
            if last_and_unterminated:
                raise DataError(f"{error} (the file does not end with a newline: was it cut off while "
                                f"being written?)") from None
            raise
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def parse_jsonl_line(line: str, where: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno}): {line[:80]!r}") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object {{\"input\": ..., \"target\": ...}}, got {line[:80]!r}")
    missing = [key for key in ("input", "target") if key not in record]
    if missing:
        raise DataError(f"{where}: missing key {' and '.join(map(repr, missing))}; each line needs "
                        f"\"input\" and \"target\" (found keys: {sorted(record)})")
    for key in ("input", "target"):
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    return check_example(record["input"], record["target"], where)


def parse_tsv_line(line: str, where: str) -> Example:
    columns = line.rstrip("\r").split("\t")
    if len(columns) != 2:
        raise DataError(f"{where}: expected 2 TAB-separated columns (input<TAB>target), found {len(columns)}")
    return check_example(columns[0], columns[1], where)


def check_example(source: str, target: str, where: str) -> Example:
    if not target.strip():
        raise DataError(f"{where}: empty target; every example needs a non-empty target")
    if not source.strip():
        raise DataError(f"{where}: empty input")
    return Example(source, target)


# -- tasks --------------------------------------------------------------------------------------

def task_names() -> list[str]:
    return sorted(p.name for p in TASK_DIR.glob("*") if (p / "train.jsonl").is_file()) if TASK_DIR.is_dir() else []


def load_task(name: str) -> TaskData:
    """An embedded task, ``data/tasks/<name>/{train,dev,test}.jsonl``; ``"sentiment+nli"`` mixes tasks."""
    if "+" in name:
        return mix_tasks([load_task(part) for part in name.split("+")])
    directory = TASK_DIR / name
    if not (directory / "train.jsonl").is_file():
        raise DataError(f"no task {name!r} in {TASK_DIR}; available: {', '.join(task_names()) or '(none)'} "
                        f"(or pass your own --data FILE.jsonl)")
    splits = {split: read_examples(directory / f"{split}.jsonl") for split in ("train", "dev", "test")}
    # The world that wrote the E2E task knows how each value is said ("familyFriendly[yes]" → "family friendly").
    phrases = world.slot_phrases if name == "e2e" else None
    return TaskData(name, splits["train"], splits["dev"], splits["test"], task_kind(splits["train"]), phrases)


def mix_tasks(tasks: list[TaskData]) -> TaskData:
    """Several tasks as one (P-tuning v2's multi-task stage, F4.3): every split interleaved, one
    example of each task in turn, so the first N dev examples evaluated during training hold all of
    them. The inputs already say which task they are (text-to-text); the tasks must be scored alike."""
    kinds = {task.kind for task in tasks}
    if len(kinds) > 1 or len(tasks) < 2:
        raise DataError(f"tasks mix only with tasks scored alike, two or more: got "
                        f"{', '.join(f'{task.name} ({task.kind})' for task in tasks)}")
    phrases = next((task.slot_phrases for task in tasks if task.slot_phrases is not None), None)

    def interleave(splits: list[list[Example]]) -> list[Example]:
        return [example for group in itertools.zip_longest(*splits) for example in group if example is not None]
    return TaskData("+".join(task.name for task in tasks), interleave([task.train for task in tasks]),
                    interleave([task.dev for task in tasks]), interleave([task.test for task in tasks]),
                    kinds.pop(), phrases)


def load_user_data(path: str | Path) -> TaskData:
    """``--data FILE``: its sibling dev/test files if it is ``train.*``, else a fixed 80/10/10 split."""
    path = Path(path)
    train = read_examples(path)
    siblings = [path.with_name(f"{split}{path.suffix}") for split in ("dev", "test")]
    if path.stem == "train" and all(sibling.is_file() for sibling in siblings):
        dev, test = (read_examples(sibling) for sibling in siblings)
        return TaskData(path.parent.name, train, dev, test, task_kind(train))
    else:
        if len(train) < 3:
            raise DataError(f"{path}: {len(train)} examples cannot be split into train, dev and test; "
                            f"give at least 3 (or train.jsonl with dev.jsonl and test.jsonl beside it)")
        shuffled = list(train)
        random.Random(SPLIT_SEED).shuffle(shuffled)
        held_out = max(1, round(HELD_OUT_FRACTION * len(shuffled)))
        test, dev, train = shuffled[:held_out], shuffled[held_out:2 * held_out], shuffled[2 * held_out:]
    return TaskData(path.stem, train, dev, test, task_kind(train))


def task_kind(train: list[Example]) -> str:
    """How a task is scored: few distinct targets → classification; tables in → table-to-text."""
    if all(is_table(example.input) for example in train):
        return "table-to-text"
    if len({example.target for example in train}) <= CLASSIFICATION_MAX_LABELS:
        return "classification"
    return "generation"


def references_by_input(examples: list[Example]) -> tuple[list[str], list[list[str]]]:
    """Unique inputs (first-seen order) and all targets of each: the references for BLEU."""
    references: dict[str, list[str]] = {}
    for example in examples:
        references.setdefault(example.input, []).append(example.target)
    return list(references), list(references.values())


# -- tokens and batches -------------------------------------------------------------------------

def token_ids(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` without any end token (T5's tokenizer appends </s> unless told not to)."""
    if isinstance(tokenizer, T5Tokenizer):
        return tokenizer.encode(text, add_eos=False)
    return tokenizer.encode(text)


class Batcher:
    """Turns examples into padded tensors for one model; counts inputs it had to cut."""

    def __init__(self, tokenizer, is_encoder_decoder: bool, max_length: int, pad_token_id: int, eos_token_id: int):
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.max_length = max_length
        self.pad, self.eos = pad_token_id, eos_token_id
        self.cut_inputs = 0

    def source(self, text: str, room: int) -> list[int]:
        ids = token_ids(self.tokenizer, text)
        if len(ids) + 1 > room:
            self.cut_inputs += 1
            ids = ids[:room - 1]
        return ids + [self.eos]

    def target(self, text: str) -> list[int]:
        ids = token_ids(self.tokenizer, text) + [self.eos]
        room = self.max_length if self.is_encoder_decoder else self.max_length - 2  # decoder-only: ≥ 1 input token + </s>
        if len(ids) > room:
            raise DataError(f"target {text[:60]!r} is {len(ids)} tokens with its end token, more than the "
                            f"{room} this model allows; shorten the targets (they are never cut)")
        return ids

    def training_batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` (and, encoder-decoder, the label length)."""
        targets = [self.target(example.target) for example in examples]
        if self.is_encoder_decoder:
            sources = [self.source(example.input, self.max_length) for example in examples]
            return {**pad(sources, self.pad), "labels": pad(targets, -100)["input_ids"]}   # (B, S), (B, T)
        sequences, labels = [], []
        for example, target in zip(examples, targets):
            prompt = self.source(example.input, self.max_length - len(target))       # input + </s>
            sequences.append(prompt + target)
            labels.append([-100] * len(prompt) + target)                              # loss on the target only
        return {**pad(sequences, self.pad), "labels": pad(labels, -100)["input_ids"]}  # (B, S+T) each

    def generation_batch(self, inputs: list[str], max_new_tokens: int) -> dict[str, torch.Tensor]:
        """Prompts for ``generate``: right-padded sources, or left-padded ``input </s>`` prompts."""
        if self.is_encoder_decoder:
            return pad([self.source(text, self.max_length) for text in inputs], self.pad)
        prompts = [self.source(text, self.max_length - max_new_tokens) for text in inputs]
        return pad(prompts, self.pad, left=True)

    def decode(self, ids: list[int]) -> str:
        """Generated ids → text, up to the first end token."""
        if self.eos in ids:
            ids = ids[:ids.index(self.eos)]
        return self.tokenizer.decode(ids).strip()


def pad(sequences: list[list[int]], value: int, left: bool = False) -> dict[str, torch.Tensor]:
    """(B, L) ids padded with ``value`` and the mask of real tokens (1) vs padding (0)."""
    longest = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), longest), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(longest - len(sequence), longest) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}
