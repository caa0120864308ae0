"""A tiny two-task base model for the PEFT lessons, trained from scratch in seconds.

The pretraining task: a task word followed by letters; the answer is the letters copied (task
word ``COPY``) or reversed (``REVERSE``):

    COPY    c a d b e   →  c a d b e </s>
    REVERSE c a d b e   →  e b d a c </s>

The lessons then *hide the task word*: the frozen base sees only ``c a d b e`` and, left alone,
does not know what to do. A PEFT method trains its few parameters on reversal examples; if it
works, those parameters have learned to say "REVERSE". Exact-match accuracy of greedy decoding on
unseen strings is the score.

The base is pretrained once and kept in the temporary directory (``minipeft-lessons/``), keyed by
this file's contents and the number of steps, so lessons 9–11 share it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from minipeft import T5Config, T5Model

PAD, EOS, COPY, REVERSE = 0, 1, 3, 4          # 2 is <unk>, as in T5
FIRST_LETTER, LETTERS = 5, 8
VOCAB = FIRST_LETTER + LETTERS


def make_batch(batch_size: int, length: int, generator, task: str = "mixed", task_word: bool = True):
    """(input_ids (B, [1+] L + 1), labels (B, L + 1)) for ``task`` in copy / reverse / mixed."""
    letters = torch.randint(FIRST_LETTER, VOCAB, (batch_size, length), generator=generator)
    if task == "mixed":
        reverse = torch.rand(batch_size, generator=generator) < 0.5
    else:
        reverse = torch.full((batch_size,), task == "reverse")
    answer = torch.where(reverse[:, None], letters.flip(1), letters)
    eos = torch.full((batch_size, 1), EOS)
    words = torch.where(reverse, REVERSE, COPY)[:, None]
    source = torch.cat([words, letters, eos], 1) if task_word else torch.cat([letters, eos], 1)
    return source, torch.cat([answer, eos], 1)


def train(model, steps: int, lr: float, generator, task: str, task_word: bool, batch_size: int = 64,
          length: int = 5):
    """AdamW on whatever in ``model`` requires grad, seq2seq cross-entropy (F11)."""
    base = model.model if hasattr(model, "model") else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        input_ids, labels = make_batch(batch_size, length, generator, task, task_word)
        logits = model(input_ids=input_ids, decoder_input_ids=base.shift_right(labels))   # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def pretrain(steps: int, seed: int = 0) -> T5Model:
    """The frozen base of the lessons: a small T5 that copies or reverses on command."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=16, dropout_rate=0.0)
    model = T5Model(config)
    version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "minipeft-lessons" / f"copy_or_reverse-{version}-{steps}-{seed}.safetensors"
    if path.is_file():
        model.load_state_dict(load_file(path))
        return model.eval()
    train(model, steps, 3e-3, torch.Generator().manual_seed(seed), "mixed", task_word=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    save_file(model.state_dict(), temporary)
    os.replace(temporary, path)
    return model


@torch.no_grad()
def accuracy(model, task: str = "reverse", task_word: bool = False, count: int = 200, length: int = 5) -> float:
    """Exact-match rate of greedy decoding on ``count`` unseen strings."""
    input_ids, labels = make_batch(count, length, torch.Generator().manual_seed(1234), task, task_word)
    output = model.generate(input_ids, max_new_tokens=length + 1)
    return (output == labels).all(dim=1).float().mean().item() if output.shape == labels.shape else 0.0
