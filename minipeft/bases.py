"""Tiny pretrained bases: T5s and a GPT that have read the embedded world.

PEFT adapts a *frozen* model, so it can only work when that model already knows something.
Nothing can be downloaded here, so the project pretrains its own small bases on
``data/corpus.txt`` (see ``minipeft/world/``) with the objectives of the source documents:

    tiny-t5     encoder-decoder (T5 v1.0 layout), T5's span corruption (F11.4)
    tiny-t5-lm  tiny-t5 trained on with prefix LM (``adapt``): "LM adaptation", as the T5
                checkpoints Lester et al. made for prompt tuning; its decoder continues what its
                encoder read, where tiny-t5's fills in hidden spans
    tiny-gpt    decoder-only (GPT-2 layout), causal language modelling (F11.1)

Both use ``data/spiece.model`` (T5 conventions: pad 0, eos 1, unk 2, 100 sentinels on top), so
the GPT pads with id 0 and ends texts with id 1. Each base lives in ``data/bases/<name>/``:

    config.json         the model config, the tokenizer's sentinel count, how it was pretrained
    model.safetensors   the weights under minipeft's own parameter names, stored as float16
    spiece.model        the tokenizer it was trained with (a copy, so the directory stands alone)

Make them (one time; the results are committed, so users never need to):

    python -m minipeft.bases pretrain tiny-t5     # 14 minutes on one core of this 2-core machine
    python -m minipeft.bases adapt tiny-t5-lm     # from the stored tiny-t5, 8 minutes more
    python -m minipeft.bases pretrain tiny-gpt    # 8 minutes
    python -m minipeft.bases evaluate tiny-t5     # held-out loss and accuracy of the shipped files,
                                                  # and the paraphrase probe (world/probes.py)

Use them: ``model, tokenizer = load_base("tiny-t5")``; ``random_base("tiny-t5")`` gives the same
architecture and tokenizer with untrained weights, the baseline that shows what pretraining brings.
Pretraining is seeded and deterministic on a given machine and thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .convert import CheckpointError
from .gpt import GPT, GPTConfig
from .optim import build_optimizer, weight_decay_groups
from .objectives import IGNORE_INDEX, causal_lm_loss, prefix_lm, seq2seq_loss, span_corruption
from .t5 import T5Config, T5Model
from .tokenizers import T5Tokenizer
from .world import DATA_DIR, EXTRA_IDS, build_world
from .world.probes import paraphrase_items

BASE_NAMES = ("tiny-t5", "tiny-gpt", "tiny-t5-lm")
# A base made by training a stored one on (LM adaptation) → the base it starts from, whose
# architecture it keeps.
ADAPTED_FROM = {"tiny-t5-lm": "tiny-t5"}
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "spiece.model"
STORAGE_DTYPE = torch.float16


def architecture(name: str) -> str:
    """The base whose architecture ``name`` has: itself, or the base it was adapted from."""
    check_name(name)
    return ADAPTED_FROM.get(name, name)


def tiny_config(name: str, vocab_size: int) -> T5Config | GPTConfig:
    """The architecture of each base: 4 layers (each side), width 128, 4 heads."""
    if architecture(name) == "tiny-t5":
        return T5Config(vocab_size=vocab_size, d_model=128, d_kv=32, d_ff=256, num_layers=4, num_decoder_layers=4,
                        num_heads=4, dropout_rate=0.1, feed_forward_proj="relu")
    return GPTConfig(vocab_size=vocab_size, n_positions=256, n_embd=128, n_layer=4, n_head=4, dropout=0.1,
                     eos_token_id=1, pad_token_id=0)


@dataclass(frozen=True)
class PretrainConfig:
    """How a base is pretrained: optimiser, linear warmup then cosine decay to 10% (F12.5)."""
    steps: int = 5000
    batch_size: int = 16
    length: int = 64             # corpus tokens per example (T5: before corruption)
    optimizer: str = "adafactor"  # "adafactor" (F12.3, as T5) or "adamw" (F12.2, as GPT-2)
    lr: float = 1e-2
    warmup: int = 100
    weight_decay: float = 0.01   # AdamW only
    clip: float = 1.0
    noise_density: float = 0.15  # span corruption (T5 only), T5's settings
    mean_span_length: float = 3.0
    prefix_lm_share: float = 0.0  # T5 only: the share of examples made by prefix LM instead
    held_out_lines: int = 300    # the corpus's last lines, never trained on, to measure the base
    seed: int = 0


# T5 initialises its embeddings with std 1 (F12.6) because it was trained with AdaFactor, whose
# steps are relative to each tensor's RMS; AdamW's absolute steps barely move such embeddings
# (measured: held-out span accuracy 25% vs 36% after 1,000 steps), so tiny-t5 uses AdaFactor.
PRETRAINING = {
    "tiny-t5": PretrainConfig(),
    "tiny-gpt": PretrainConfig(steps=3000, batch_size=8, length=128, optimizer="adamw", lr=3e-3),
}

# LM adaptation (Lester et al., 2021, before prompt tuning T5): the span-corruption T5 goes on
# training with prefix LM, so that its decoder learns to continue what its encoder read. Span
# corruption alone asks the decoder only for the few hidden tokens, ~14 per example here.
ADAPTATION = {"tiny-t5-lm": PretrainConfig(steps=3000, prefix_lm_share=1.0)}


def training_config(name: str) -> PretrainConfig:
    """How base ``name`` was trained last: its pretraining, or for an adapted base its adaptation."""
    check_name(name)
    return ADAPTATION[name] if name in ADAPTED_FROM else PRETRAINING[name]


def without_dropout(config: T5Config | GPTConfig) -> T5Config | GPTConfig:
    field = "dropout_rate" if isinstance(config, T5Config) else "dropout"
    return dataclasses.replace(config, **{field: 0.0})


def check_name(name: str) -> None:
    if name not in BASE_NAMES:
        raise ValueError(f"unknown base {name!r}; the tiny bases are {', '.join(BASE_NAMES)}")


def build_model(config: T5Config | GPTConfig) -> T5Model | GPT:
    return T5Model(config) if isinstance(config, T5Config) else GPT(config)


def make_command(name: str) -> str:
    return f"python -m minipeft.bases {'adapt' if name in ADAPTED_FROM else 'pretrain'} {name}"


# ---- loading -----------------------------------------------------------------------------------

def random_base(name: str, data_dir: str | Path = DATA_DIR, seed: int = 0):
    """``(model, tokenizer)``: the architecture of ``name`` with fresh, untrained weights (eval mode)."""
    check_name(name)
    tokenizer = T5Tokenizer(Path(data_dir) / TOKENIZER_FILE, extra_ids=EXTRA_IDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(tiny_config(name, tokenizer.vocab_size))
    return model.eval(), tokenizer


def base_directory(name: str, data_dir: str | Path = DATA_DIR) -> Path:
    """Where the stored base ``name`` lives: ``data_dir/bases/name`` (config, weights, tokenizer)."""
    return Path(data_dir) / "bases" / name


def load_base(name: str, data_dir: str | Path = DATA_DIR, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of the pretrained base ``name`` from ``data_dir/bases/name`` (eval mode)."""
    check_name(name)
    directory = base_directory(name, data_dir)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"no pretrained {name} in {directory} (missing {', '.join(missing)}): "
                                f"make it with `{make_command(name)}`")
    try:
        info = json.loads((directory / CONFIG_FILE).read_text())
        config_class = T5Config if info["architecture"] == "T5Model" else GPTConfig
        config = config_class(**info["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a valid base config ({error}): "
                              f"remake the base with `{make_command(name)}`") from None
    try:
        from safetensors.torch import load_file
        state = load_file(str(directory / WEIGHTS_FILE))
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        raise CheckpointError(f"{directory / WEIGHTS_FILE} cannot be read ({error}): the file is damaged; "
                              f"remake the base with `{make_command(name)}` (or `git checkout` it)") from None
    with torch.device("meta"):
        model = build_model(config)
    load_strict(model, state, directory / WEIGHTS_FILE, name)
    model.to(dtype)
    tokenizer = T5Tokenizer(directory / TOKENIZER_FILE, extra_ids=info.get("extra_ids", EXTRA_IDS))
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{directory}: the tokenizer has {tokenizer.vocab_size} ids but the model "
                              f"{config.vocab_size}; remake the base with `{make_command(name)}`")
    return model.eval(), tokenizer


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Load every parameter of ``model`` from ``state`` (float32), or one error naming each problem."""
    expected = model.state_dict()
    problems = [f"missing {key}" for key in sorted(set(expected) - set(state))]
    problems += [f"unexpected {key}" for key in sorted(set(state) - set(expected))]
    problems += [f"{key}: stored {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
                 for key in sorted(set(state) & set(expected)) if state[key].shape != expected[key].shape]
    if problems:
        raise CheckpointError(f"{path} does not fit the model of its config.json ({len(problems)} problems: "
                              f"{'; '.join(problems[:8])}{' …' if len(problems) > 8 else ''}); "
                              f"remake the base with `{make_command(name)}`")
    model.load_state_dict({key: tensor.float() for key, tensor in state.items()}, strict=True, assign=True)


def save_base(name: str, model, config, tokenizer_path: Path, info: dict, out_dir: Path) -> Path:
    """Write ``out_dir/bases/name/`` all at once: into a temporary directory, then renamed."""
    from safetensors.torch import save_file
    bases = Path(out_dir) / "bases"
    bases.mkdir(parents=True, exist_ok=True)
    final = bases / name
    temporary = Path(tempfile.mkdtemp(dir=bases, prefix=f".{name}."))
    try:
        state = {key: tensor.detach().to(STORAGE_DTYPE).contiguous() for key, tensor in model.state_dict().items()}
        save_file(state, str(temporary / WEIGHTS_FILE))
        config = {"name": name, "architecture": type(model).__name__, "config": dataclasses.asdict(config),
                  "extra_ids": EXTRA_IDS, "storage_dtype": str(STORAGE_DTYPE).removeprefix("torch."), **info}
        (temporary / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        shutil.copyfile(tokenizer_path, temporary / TOKENIZER_FILE)
        for file in temporary.iterdir():
            file.chmod(0o644)
        temporary.chmod(0o755)
        old = bases / f".{name}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


# ---- the pretraining data: the corpus as one stream of ids -------------------------------------

def corpus_stream(tokenizer: T5Tokenizer, lines: list[str]) -> torch.Tensor:
    """Every line's ids followed by ``</s>``, concatenated (B = 1 long row), as T5 and GPT-2 pack text."""
    return torch.tensor([token for line in lines for token in tokenizer.encode(line)], dtype=torch.long)


def sentinel_ids(tokenizer: T5Tokenizer) -> list[int]:
    return [tokenizer.sentinel_id(j) for j in range(tokenizer.extra_ids)]


def span_corruption_batch(chunks: list[torch.Tensor], tokenizer: T5Tokenizer, config: PretrainConfig,
                          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """F11.4 on each chunk (or, for a share ``config.prefix_lm_share`` of them, prefix LM), ``</s>``
    appended: ``input_ids``/``attention_mask`` (B, S), ``labels`` (B, T) padded with ``IGNORE_INDEX``."""
    sentinels = sentinel_ids(tokenizer)

    def noise(chunk):
        if config.prefix_lm_share > 0 and torch.rand((), generator=generator) < config.prefix_lm_share:
            return prefix_lm(chunk, generator)
        return span_corruption(chunk, sentinels, config.noise_density, config.mean_span_length, generator)
    pairs = [noise(chunk) for chunk in chunks]
    eos = torch.tensor([tokenizer.eos_token_id])
    inputs = [torch.cat([source, eos]) for source, _ in pairs]
    targets = [torch.cat([target, eos]) for _, target in pairs]
    input_ids = torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True, padding_value=tokenizer.pad_token_id)
    labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in inputs], batch_first=True)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def loss_and_logits(model, batch: dict[str, torch.Tensor]):
    """The pretraining loss of either base on one batch, and its logits with the labels they predict."""
    if isinstance(model, T5Model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=model.shift_right(batch["labels"]))         # (B, T, V)
        return seq2seq_loss(logits, batch["labels"]), logits, batch["labels"]
    logits = model(input_ids=batch["input_ids"])                                    # (B, T, V)
    return causal_lm_loss(logits, batch["input_ids"]), logits[:, :-1], batch["input_ids"][:, 1:]


def make_batch(model, stream: torch.Tensor, tokenizer: T5Tokenizer, config: PretrainConfig,
               generator: torch.Generator, batch_size: int | None = None, starts=None) -> dict[str, torch.Tensor]:
    """``batch_size`` chunks of ``config.length`` tokens from ``stream`` (random starts unless given)."""
    if starts is None:
        starts = torch.randint(0, len(stream) - config.length, (batch_size or config.batch_size,), generator=generator)
    chunks = [stream[start: start + config.length] for start in starts.tolist()]
    if isinstance(model, T5Model):
        return span_corruption_batch(chunks, tokenizer, config, generator)
    return {"input_ids": torch.stack(chunks)}                                       # (B, T)


@torch.no_grad()
def evaluate(model, tokenizer: T5Tokenizer, lines: list[str], config: PretrainConfig | None = None,
             seed: int = 1234) -> dict[str, float]:
    """Held-out loss and accuracy: for tiny-t5 of the hidden span tokens (sentinels and ``</s>`` not
    counted), for tiny-gpt of every next token. Non-overlapping chunks of ``config.length`` tokens
    (default: the base's pretraining config), a fixed corruption seed."""
    if config is None:
        config = PRETRAINING["tiny-t5" if isinstance(model, T5Model) else "tiny-gpt"]
    was_training = model.training
    model.eval()
    stream = corpus_stream(tokenizer, lines)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.arange(0, len(stream) - config.length, config.length)
    special = torch.tensor(sentinel_ids(tokenizer) + [tokenizer.eos_token_id])
    losses, correct, counted = [], 0, 0
    for batch_starts in starts.split(config.batch_size):
        batch = make_batch(model, stream, tokenizer, config, generator, starts=batch_starts)
        loss, logits, labels = loss_and_logits(model, batch)
        scored = (labels != IGNORE_INDEX) & ~torch.isin(labels, special)
        correct += (logits.argmax(-1) == labels)[scored].sum().item()
        counted += scored.sum().item()
        losses.append(loss.item())
    model.train(was_training)
    return {"loss": sum(losses) / len(losses), "accuracy": correct / counted, "tokens": counted}


def cloze_probe(model, tokenizer: T5Tokenizer, items, continuation: bool | None = None) -> dict:
    """Ask ``model`` the fill-in-the-blank questions ``items`` (``world.probes.ClozeItem``): multiple
    choice by likelihood, the candidate whose words the model finds most probable in the blank.

    tiny-t5 reads the text with the blank (``<extra_id_0>``, as in span corruption) and scores
    ``<extra_id_0> words`` as its decoder's output; tiny-gpt scores the words as the continuation
    of the text before the blank, and so does a T5 with ``continuation=True`` (for tiny-t5-lm,
    trained to continue: its encoder reads the text before the blank, its decoder writes the
    words; the default is True for a GPT, False for a T5). The score is the sum of the words'
    token log-probabilities, not normalised by length: a longer candidate pays for each extra
    token, as it would in generation.
    Returns the accuracy, the chance level (the mean of 1/#candidates) and the number of items,
    overall and per slot (``by_slot``)."""
    items = list(items)
    answers = [(item.slot, chosen == item.answer, 1 / len(item.candidates))   # per item: (slot, right, chance)
               for item, chosen in zip(items, cloze_choices(model, tokenizer, items, continuation))]

    def summary(rows):
        return {"accuracy": sum(right for _, right, _ in rows) / len(rows),
                "chance": sum(chance for _, _, chance in rows) / len(rows), "items": len(rows)}
    slots = sorted({slot for slot, _, _ in answers})
    return {**summary(answers), "by_slot": {slot: summary([a for a in answers if a[0] == slot]) for slot in slots}}


def cloze_choices(model, tokenizer: T5Tokenizer, items, continuation: bool | None = None) -> list[str]:
    """For each item, the candidate (a key of ``item.candidates``) whose words score highest in its
    blank (``candidate_log_probs``); ``continuation`` as in :func:`cloze_probe`. The model is put in
    eval mode for it and left as it was."""
    was_training = model.training
    model.eval()
    continuation = not isinstance(model, T5Model) if continuation is None else continuation
    chosen = []
    for item in items:
        spans = [tokenizer.encode(words, add_eos=False) for words in item.candidates.values()]
        with torch.no_grad():
            scores = candidate_log_probs(model, tokenizer, item, spans, continuation)
        chosen.append(list(item.candidates)[int(scores.argmax())])
    model.train(was_training)
    return chosen


def candidate_log_probs(model, tokenizer: T5Tokenizer, item, spans: list[list[int]],
                        continuation: bool = False) -> torch.Tensor:
    """(N,) summed log-probability of each candidate's tokens ``spans[n]`` in ``item``'s blank,
    all N candidates in one batch (padded with id 0 after their end, which a causal decoder never
    reads back). ``continuation``: a T5 scores the words as what follows the text before the blank."""
    longest = max(len(span) for span in spans)
    if isinstance(model, T5Model) and continuation:
        # prefix LM: the encoder reads the text before the blank; decoder <pad> span … → predicts span …
        source = torch.tensor([tokenizer.encode(item.prompt)]).expand(len(spans), -1)
        decoder_input = torch.tensor([[tokenizer.pad_token_id] + span[:-1] + [0] * (longest - len(span))
                                      for span in spans])                                  # (N, longest)
        log_probs = model(input_ids=source, decoder_input_ids=decoder_input).log_softmax(-1)
        start = 0
    elif isinstance(model, T5Model):
        # decoder: <pad> <extra_id_0> span … → predicts <extra_id_0> span …; the span starts at position 1
        source = torch.tensor([tokenizer.encode(item.text)]).expand(len(spans), -1)
        decoder_input = torch.tensor([[tokenizer.pad_token_id, tokenizer.sentinel_id(0)] + span[:-1]
                                      + [0] * (longest - len(span)) for span in spans])   # (N, 1 + longest)
        log_probs = model(input_ids=source, decoder_input_ids=decoder_input).log_softmax(-1)
        start = 1
    else:
        # prompt span … → the token after the prompt's last one is the span's first
        prompt = tokenizer.encode(item.prompt, add_eos=False)
        tokens = torch.tensor([prompt + span + [0] * (longest - len(span)) for span in spans])
        log_probs = model(input_ids=tokens).log_softmax(-1)
        start = len(prompt) - 1
    return torch.stack([log_probs[row, start:start + len(span)].gather(-1, torch.tensor(span)[:, None]).sum()
                        for row, span in enumerate(spans)])


# ---- pretraining ---------------------------------------------------------------------------------

def learning_rate(step: int, config: PretrainConfig) -> float:
    """F12.5 linear warmup to ``lr``, then cosine decay to 10% of it."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, config: PretrainConfig) -> torch.optim.Optimizer:
    """minipeft's AdaFactor (F12.3, steps scaled by each tensor's RMS, the schedule driving ρ_t) or
    AdamW (F12.2, no weight decay on norms and biases), through ``optim.build_optimizer``."""
    if config.optimizer == "adafactor":
        return build_optimizer("adafactor", model.parameters(), lr=config.lr, scale_parameter=True)
    if config.optimizer != "adamw":
        raise ValueError(f"optimizer must be 'adafactor' or 'adamw', got {config.optimizer!r}")
    groups = weight_decay_groups(model.named_parameters(), config.weight_decay)
    return build_optimizer("adamw", groups, lr=config.lr, betas=(0.9, 0.98))


def pretrain(name: str, data_dir: str | Path = DATA_DIR, out_dir: str | Path | None = None,
             config: PretrainConfig | None = None, progress: bool = True, start_from: str | Path | None = None) -> dict:
    """Pretrain base ``name`` on ``data_dir/corpus.txt`` and write it to ``out_dir/bases/name``
    (``out_dir`` defaults to ``data_dir``; ``config`` to ``training_config(name)``). With
    ``start_from`` (a directory holding ``bases/<source>``, the source being ``ADAPTED_FROM[name]``
    or else ``name`` itself) training goes on from that base's weights, as LM adaptation does, and
    the base keeps the record of its earlier training. Returns what it measured (also saved in
    config.json)."""
    config = training_config(name) if config is None else config
    if start_from is None:
        check_pretrainable(name)
    if config.prefix_lm_share and architecture(name) != "tiny-t5":
        raise ValueError("prefix LM needs an encoder to read the prefix: only the T5 bases take prefix_lm_share")
    data_dir = Path(data_dir)
    out_dir = data_dir if out_dir is None else Path(out_dir)
    corpus, tokenizer_path = data_dir / "corpus.txt", data_dir / TOKENIZER_FILE
    for path in (corpus, tokenizer_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: write the embedded world first with `python -m minipeft.world`")
    tokenizer = T5Tokenizer(tokenizer_path, extra_ids=EXTRA_IDS)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    train_lines, held_out_lines = lines[: -config.held_out_lines], lines[-config.held_out_lines:]
    stream = corpus_stream(tokenizer, train_lines)

    torch.manual_seed(config.seed)
    # No dropout while pretraining (as T5 v1.1): with one pass over the data there is nothing to
    # overfit, and dropout would slow learning. The saved config keeps it on for fine-tuning.
    model = build_model(without_dropout(tiny_config(name, tokenizer.vocab_size))).train()
    history = {}  # the records of the stored base training goes on from
    if start_from is not None:
        source = ADAPTED_FROM.get(name, name)
        earlier, _ = load_base(source, start_from)
        model.load_state_dict(earlier.state_dict())
        history = {key: value for key, value in base_info(source, start_from).items() if key in TRAINING_RECORDS}
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    objective = objective_name(name, config)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{'adapting' if start_from is not None else 'pretraining'} {name} ({parameters:,} parameters) with {objective} on "
          f"{len(stream):,} corpus tokens, {config.steps} steps of {config.batch_size} × {config.length} tokens")
    start, recent = time.perf_counter(), []
    bar = tqdm(range(config.steps), desc=f"pretrain {name}", disable=not progress, mininterval=2.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        batch = make_batch(model, stream, tokenizer, config, generator)
        loss, _, _ = loss_and_logits(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        recent = (recent + [loss.item()])[-100:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    seconds = time.perf_counter() - start
    record = {"objective": objective, **dataclasses.asdict(config), "seconds": round(seconds),
              "threads": torch.get_num_threads(), "final_train_loss": round(sum(recent) / len(recent), 4),
              "held_out": evaluate(model, tokenizer, held_out_lines, config)}
    info = {**history, ("adaptation" if start_from is not None else "pretraining"): record}
    directory = save_base(name, model, tiny_config(name, tokenizer.vocab_size), tokenizer_path, info, out_dir)
    print(f"wrote {directory} in {seconds / 60:.1f} min: final train loss {record['final_train_loss']}, "
          f"held-out {record['held_out']}")
    return record


TRAINING_RECORDS = ("pretraining", "adaptation")


def objective_name(name: str, config: PretrainConfig) -> str:
    if architecture(name) == "tiny-gpt":
        return "causal LM (F11.1)"
    if config.prefix_lm_share >= 1:
        return "prefix LM (F11.1 through F11.5)"
    if config.prefix_lm_share > 0:
        return f"span corruption (F11.4), prefix LM for {config.prefix_lm_share:.0%} of the examples"
    return "span corruption (F11.4)"


def base_info(name: str, data_dir: str | Path = DATA_DIR) -> dict:
    """The parsed config.json of the stored base ``name``: its architecture and how it was trained."""
    path = base_directory(name, data_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained {name} in {path.parent} (missing {CONFIG_FILE}): "
                                f"make it with `{make_command(name)}`")
    return json.loads(path.read_text())


def adapt(name: str, data_dir: str | Path = DATA_DIR, out_dir: str | Path | None = None,
          config: PretrainConfig | None = None, progress: bool = True, start_from: str | Path | None = None) -> dict:
    """Make the LM-adapted base ``name`` (``tiny-t5-lm``): the stored span-corruption base it comes
    from, ``start_from/bases/<ADAPTED_FROM[name]>`` (default: in ``data_dir``), trained on with
    ``ADAPTATION[name]`` and written to ``out_dir/bases/name``. Refuses a source adapted already."""
    default = adaptation_config(name)
    start_from = data_dir if start_from is None else start_from
    source = ADAPTED_FROM[name]
    if "adaptation" in base_info(source, start_from):
        raise ValueError(f"the {source} in {Path(start_from) / 'bases' / source} is LM-adapted already; "
                         f"make the span-corruption base again with `{make_command(source)}` before adapting it")
    return pretrain(name, data_dir, out_dir, default if config is None else config, progress, start_from)


def check_pretrainable(name: str) -> None:
    """Refuse to pretrain from scratch a base that is made by training another one on."""
    if name in ADAPTED_FROM:
        raise ValueError(f"{name} is {ADAPTED_FROM[name]} trained on: make it with `{make_command(name)}`")


def adaptation_config(name: str) -> PretrainConfig:
    if name not in ADAPTATION:
        made = ", ".join(f"{adapted} (from {source})" for adapted, source in ADAPTED_FROM.items())
        raise ValueError(f"{name} is not made by LM adaptation; the adapted base is {made}: "
                         f"`{make_command(next(iter(ADAPTED_FROM)))}`")
    return ADAPTATION[name]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pretrain, LM-adapt or evaluate the tiny bases in data/bases/.")
    parser.add_argument("command", choices=("pretrain", "adapt", "evaluate"))
    parser.add_argument("name", choices=BASE_NAMES)
    parser.add_argument("--data", default=str(DATA_DIR), help="directory with corpus.txt and spiece.model")
    parser.add_argument("--out", help="write bases/NAME here instead of into --data")
    parser.add_argument("--from", dest="start_from",
                        help="adapt: the directory holding the base adapted, bases/tiny-t5 (default --data)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 by default: on a shared 2-core machine 2 threads ran 7x slower")
    for field in dataclasses.fields(PretrainConfig):  # --steps, --batch-size, --lr, … override the defaults
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {field.name: getattr(args, field.name) for field in dataclasses.fields(PretrainConfig)
                 if getattr(args, field.name) is not None}
    try:
        if args.command == "adapt":
            default = adaptation_config(args.name)
        else:
            if args.command == "pretrain":
                check_pretrainable(args.name)
            default = training_config(args.name)
    except ValueError as error:
        parser.error(str(error))
    config = dataclasses.replace(default, **overrides)
    if args.command == "pretrain":
        pretrain(args.name, args.data, args.out, config)
    elif args.command == "adapt":
        adapt(args.name, args.data, args.out, config, start_from=args.start_from)
    else:
        model, tokenizer = load_base(args.name, args.out or args.data)
        held_out = Path(args.data, "corpus.txt").read_text(encoding="utf-8").splitlines()[-config.held_out_lines:]
        # a T5 trained only by prefix LM is asked as a continuation; otherwise each base's default
        continuation = True if config.prefix_lm_share >= 1 else None
        probe = cloze_probe(model, tokenizer, paraphrase_items(build_world()), continuation=continuation)
        print(json.dumps({"stored": str(STORAGE_DTYPE), **evaluate(model, tokenizer, held_out, config),
                          "paraphrase_cloze": {key: probe[key] for key in ("accuracy", "chance", "items")}}))


if __name__ == "__main__":
    main()
