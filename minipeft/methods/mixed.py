"""Many tasks, one frozen model, one batch: each example with its own trained prompt or prefix.

Prompt and prefix tuning leave every weight of the model as it was: what a task learned is a
small table in front of the input (F2.1) or of each attention's keys and values (F5.3). So one
copy of the model can serve many tasks (or users) at once, each example of a batch reading its
own table. The documents name this as a property of the methods (../shared/FORMULAS.md):

    F2.5  mixed-task batch: one frozen model, a different prompt per example in one batch
    F5.8  personalisation: N prefixes, one per user, run in one mixed batch
    F2.4  prompt ensemble: several prompts trained for one task vote (``vote``): each input is
          run once per prompt, in one mixed batch, and the answer most of them give wins

    symbol      variable                      shape
    N           len(self.tasks)               the trained methods mixed
    P_t         self.tables[t]                (m, C) prompt, (m, S·2·H·D) prefix (folded, F5.5)
    t_b         task_ids(tasks)[b]            which table example b reads
    P_{t_b}     self.tables[task_ids]         (B, m, W): one table per example

A LoRA or an adapter cannot be mixed this way (without more machinery): it changes layers every
example goes through. Nor can P-tuning v1 (its template puts prompt vectors between the input's
own words, F3.1). The tables must have the same shape (the same method, length m and, for
prefixes, the same prefixed layers), since they are stacked into one tensor. They are copied
when the MixedBatch is made (a prefix's MLP folded, F5.5): make it after training.

    mixed = MixedBatch(model, {"sentiment": prompt_a, "nli": prompt_b})      # trained methods
    mixed = MixedBatch.load(model, {"sentiment": "runs/a/peft.safetensors", "nli": ...})
    logits = mixed(tasks=["nli", "sentiment", "nli"], input_ids=…, decoder_input_ids=…)
    ids = mixed.generate(input_ids, tasks=["nli", "sentiment", "nli"], max_new_tokens=4)
    ensemble = MixedBatch(model, {"seed 0": prompt_0, "seed 1": prompt_1, "seed 2": prompt_2})
    ids = ensemble.vote(input_ids, max_new_tokens=4)                          # F2.4

Each row's logits equal those of its own method run alone (tests/test_mixed.py, ≤ 1e-5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..shapes import Dims
from .base import PeftModel, base_fingerprint, load_trained
from .prefix import PrefixTuning, arrange_prefix_kv, split_prefix_tables
from .prompt import PromptTuning, prepend_prompt

MIXABLE = ("prompt", "prefix", "ptuning_v2")


class MixedBatch(nn.Module):
    """Several trained prompt / prefix methods of one base, each example of a batch with its own."""

    def __init__(self, model: nn.Module, methods: Mapping[str, PeftModel]):
        super().__init__()
        check_mixable(model, methods)
        first = next(iter(methods.values()))
        self.model, self.method, self.tasks = model, first.name, list(methods)
        self.num_virtual_tokens = first.options.num_virtual_tokens
        # Prompt tuning and the embedding-only prefix go in at the input (F2.1); prefixes at every attention (F5.3).
        self.at_input = isinstance(first, PromptTuning) or first.options.embedding_only
        if not self.at_input:
            self.slots, self.heads, self.head_dim = first.slots, first.heads, first.head_dim
        with torch.no_grad():
            tables = [method.prompt if isinstance(method, PromptTuning) else method.prefix_matrix()
                      for method in methods.values()]
        self.register_buffer("tables", torch.stack([table.detach() for table in tables]))   # (N, m, W)

    @classmethod
    def load(cls, model: nn.Module, checkpoints: Mapping[str, str | os.PathLike]) -> MixedBatch:
        """Mix the methods saved by ``save_trained`` (``train.py`` writes ``OUT/peft.safetensors``),
        each checked against ``model`` as ``load_trained`` checks it."""
        return cls(model, {task: load_trained(model, path) for task, path in checkpoints.items()})

    @property
    def is_encoder_decoder(self) -> bool:
        return getattr(self.model, "is_encoder_decoder", False)

    # -- which table each example reads ------------------------------------------------------------
    def task_ids(self, tasks, batch: int) -> torch.Tensor:
        """``tasks``: one name per example, or a (B,) tensor of indices into ``self.tasks`` → (B,) ids."""
        if isinstance(tasks, str):
            raise ValueError(f"tasks names the task of each example: pass a list of {batch} names "
                             f"(e.g. [{tasks!r}] * {batch}), not one string")
        if isinstance(tasks, torch.Tensor):
            ids = tasks.to(torch.long)
            if ids.dim() == 1 and len(ids) and (ids.min() < 0 or ids.max() >= len(self.tasks)):
                raise ValueError(f"task indices must be in [0, {len(self.tasks)}) (the tasks {self.tasks}), "
                                 f"got {ids.tolist()}")
        else:
            unknown = sorted({str(task) for task in tasks if task not in self.tasks})
            if unknown:
                raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}: this mixed batch has {self.tasks}")
            ids = torch.tensor([self.tasks.index(task) for task in tasks], dtype=torch.long)
        Dims("F2.5/F5.8 one task per example", B=batch).check("tasks", ids, "B")
        return ids.to(self.tables.device)

    # -- the seams, as the single methods use them --------------------------------------------------
    def model_inputs(self, tasks, **inputs) -> dict:
        reference = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs.get("inputs_embeds")
        if reference is None:
            raise ValueError("a mixed batch needs input_ids (B, n) or inputs_embeds (B, n, C)")
        ids = self.task_ids(tasks, reference.shape[0])
        dtype = (inputs["inputs_embeds"] if inputs.get("inputs_embeds") is not None
                 else next(self.model.parameters())).dtype
        # exercise: F2.5 / F5.8 P_{t_b}: pick each example's own table from the stack (N, m, W) → (B, m, W)
        per_example = self.tables.index_select(0, ids).to(dtype)                     # (B, m, W)
        # end exercise
        if self.at_input:
            return prepend_prompt(self.model, per_example, inputs)                    # F2.1 with (B, m, C)
        return {**inputs, "prefix_kv": self.prefix_kv(per_example)}

    def prefix_kv(self, per_example):
        """F5.3's P_key, P_value of every prefixed layer, each (B, H, m, D), example b from its own table."""
        pairs = split_prefix_tables(per_example, self.slots, self.heads, self.head_dim)   # S × 2 × (B, H, m, D)
        return arrange_prefix_kv(self.model, self.slots, pairs)

    def forward(self, tasks, **inputs):
        """Logits as each example's own method gives them: T5 (B, T, V), GPT (B, n, V)."""
        logits = self.model(**self.model_inputs(tasks, **inputs))
        if self.at_input and not self.is_encoder_decoder:
            return logits[:, self.num_virtual_tokens:]                                # drop GPT's prompt positions
        return logits

    def generate(self, input_ids, tasks: Sequence[str] | torch.Tensor, max_new_tokens: int = 20, attention_mask=None,
                 **options):
        """New token ids (B, ≤ max_new_tokens), each example decoded under its own prompt or prefix."""
        inputs = self.model_inputs(tasks, input_ids=input_ids, attention_mask=attention_mask)
        return self.model.generate(max_new_tokens=max_new_tokens, **inputs, **options)

    def vote(self, input_ids, max_new_tokens: int = 20, attention_mask=None, **options):
        """F2.4 prompt ensemble by majority vote: every table answers every input, (B, ≤ max_new_tokens).

        Input b is repeated once per table (one mixed batch of B·N rows, F2.5) and the output
        sequence that most tables give wins; a tie goes to the answer of the earliest table
        (``self.tasks`` order). With generation's own options (``num_beams``, …) passed through."""
        batch, count = input_ids.shape[0], len(self.tasks)
        repeated = input_ids.repeat_interleave(count, dim=0)                          # (B·N, n)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(count, dim=0)
        every_table = torch.arange(count).repeat(batch)                                # (B·N,) 0 … N-1, B times
        answers = self.generate(repeated, every_table, max_new_tokens, mask, **options)
        answers = answers.view(batch, count, -1)                                       # (B, N, T)
        # exercise: F2.4 majority vote: the answer (B, N, T) → (B, T) that most of the N tables give, ties to the earliest
        agree = (answers[:, :, None] == answers[:, None]).all(dim=-1)                  # (B, N, N) same answer?
        votes = agree.sum(dim=-1)                                                      # (B, N) votes for each
        winner = votes.argmax(dim=-1)                                                  # (B,) first of the most
        return answers[torch.arange(batch), winner]                                    # (B, T)
        # end exercise


def check_mixable(model: nn.Module, methods: Mapping[str, PeftModel]) -> None:
    """One clear error for each way a set of methods cannot share a batch."""
    if not methods:
        raise ValueError("a mixed batch needs at least one trained method: MixedBatch(model, {'task': peft, …})")
    names = {task: getattr(method, "name", type(method).__name__) for task, method in methods.items()}
    others = {task: name for task, name in names.items() if name not in MIXABLE}
    if others:
        raise ValueError(f"only methods at the input seams can be mixed per example ({', '.join(MIXABLE)}); got "
                         + ", ".join(f"{task}: {name}" for task, name in others.items())
                         + " (LoRA, adapters and BitFit change layers every example goes through)")
    if len(set(names.values())) > 1:
        raise ValueError(f"the methods of a mixed batch must be one method, got {names}")
    infixes = [task for task, method in methods.items() if getattr(method.options, "infix", False)]
    if infixes:
        raise ValueError(f"{', '.join(infixes)}: an infix (infix=True, F5.7) is not mixed per example; mix "
                         f"prefixes, which every position of an example sees")
    layouts = {task: table_layout(method) for task, method in methods.items()}
    if len(set(layouts.values())) > 1:
        raise ValueError("the tables of a mixed batch must have one shape (stacked into one tensor); got "
                         + "; ".join(f"{task}: {layout}" for task, layout in layouts.items()))
    fingerprint = base_fingerprint(model)
    strangers = [task for task, method in methods.items() if method.base_fingerprint != fingerprint]
    if strangers:
        raise ValueError(f"{', '.join(strangers)} trained on a different base model than the one given: a mixed "
                         f"batch runs every task on one frozen base, the one they were all trained from")


def table_layout(method: PeftModel) -> str:
    """What fixes the shape of a method's table, in words (for comparing and for error messages)."""
    options = method.options
    if isinstance(method, PrefixTuning):
        return (f"num_virtual_tokens={options.num_virtual_tokens}, prefix_on={options.prefix_on}, "
                f"embedding_only={options.embedding_only}")
    return f"num_virtual_tokens={options.num_virtual_tokens}"
