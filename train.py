"""Fine-tune a base model with one PEFT method on a text-to-text task.

    python train.py --method prefix                       prefix tuning, tiny T5, sentiment
    python train.py --method lora --option r=4 --task e2e
    python train.py --method full --model t5 --weights DIR --data my.jsonl
    python train.py --eval-only --resume out              reload the trained tensors, test again
    python train.py --method ptuning_v2 --task sentiment+nli --out multi    one prompt for two tasks,
    python train.py --method ptuning_v2 --task nli --init-from multi         then continued on one (F4.3)
    torchrun --nproc_per_node=2 train.py --method lora    the same run on 2 processes

Flags only (no config files); every run's record goes to OUT/metrics.json. See
minipeft/training.py for the loop, and `--help` for every flag.
"""

from __future__ import annotations

import argparse
import ast
import sys

import torch

from minipeft.methods import method_names
from minipeft.optim import OPTIMIZERS, PRECISIONS, SCHEDULES
from minipeft.training import BASE_LR, DEFAULT_LR, FALLBACK_LR, HF_BASES, SELECTIONS, TASK_DEFAULTS, TINY_BASES, \
    TrainConfig, TrainingError, config_for_resume, default_steps_text, option_text, run

DEFAULTS = TrainConfig()


def parse_value(text: str):
    """``--option`` values: ``8`` → 8, ``0.1`` → 0.1, ``true`` → True, ``none`` → None,
    ``q,v`` → ("q", "v"), anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if "," in text:
        return tuple(parse_value(item) for item in text.split(",") if item.strip())
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()
    return value if isinstance(value, (int, float)) else text.strip()


def parse_option(text: str) -> tuple[str, object]:
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (like r=8 or target_modules=q,v), got {text!r}")
    return key.strip(), parse_value(value)


def build_parser() -> argparse.ArgumentParser:
    lr_table = ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items())
    base_lr_table = ", ".join(f"{method} on {model} {lr:g}" for (model, method), lr in BASE_LR.items())
    task_table = "; ".join(f"{method} on {model}'s {task}: " + ", ".join(
        [f"{key} {value:g}" for key, value in settings.items() if key != "options"]
        + [f"{key}={option_text(value)}" for key, value in settings.get("options", {}).items()])
        for (model, task, method), settings in TASK_DEFAULTS.items())
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1], argument_default=argparse.SUPPRESS)
    what = parser.add_argument_group("what to train")
    what.add_argument("--method", choices=method_names(), help="the PEFT method (required unless --resume)")
    what.add_argument("--option", action="append", type=parse_option, metavar="KEY=VALUE", dest="options",
                      help="a method option, repeatable: --option r=8 --option target_modules=q,v "
                           "(ints, floats, true/false, none and comma lists are parsed)")
    what.add_argument("--model", choices=TINY_BASES + HF_BASES,
                      help=f"the base (default {DEFAULTS.model}); t5 and gpt2 need --weights")
    what.add_argument("--weights", metavar="DIR", help="a Hugging Face t5/gpt2 checkpoint directory "
                      "(config.json, model.safetensors, spiece.model or vocab.json + merges.txt)")
    what.add_argument("--random-base", action="store_true", help="an untrained base of the same architecture")
    what.add_argument("--task", help=f"an embedded task in data/tasks (default {DEFAULTS.task}); tasks scored "
                      f"alike mix with +, e.g. sentiment+nli (one model or prompt for both, F4.3)")
    what.add_argument("--data", metavar="FILE", help="your own .jsonl ({\"input\", \"target\"} per line) or "
                      ".tsv (input<TAB>target); train.jsonl with dev.jsonl + test.jsonl beside it uses those, "
                      "any other file is split 80/10/10 with a fixed seed")
    how = parser.add_argument_group("how to train")
    how.add_argument("--steps", type=int, help=f"optimiser steps (default {default_steps_text()})")
    how.add_argument("--batch-size", type=int, help=f"global batch size, shared by all processes "
                     f"(default {DEFAULTS.batch_size})")
    how.add_argument("--lr", type=float, help=f"peak learning rate (default: the task's, {task_table}; "
                     f"else {base_lr_table}; else the method class's default_lr, else {lr_table}; "
                     f"others {FALLBACK_LR:g})")
    how.add_argument("--warmup", type=int, help="linear warmup steps (default steps/10, at most 30)")
    how.add_argument("--schedule", choices=SCHEDULES,
                     help=f"after warmup: cosine or linear decay to 10%%, or constant (default {DEFAULTS.schedule})")
    how.add_argument("--optim", choices=OPTIMIZERS, help=f"optimiser (default {DEFAULTS.optim})")
    how.add_argument("--weight-decay", type=float, help=f"decay of the weight matrices; layer-norm scales and "
                     f"biases are not decayed (default {DEFAULTS.weight_decay})")
    how.add_argument("--clip", type=float, help=f"clip the global gradient norm at this (default {DEFAULTS.clip}; "
                     "0 turns clipping off)")
    how.add_argument("--dropout", type=float, help="set every dropout rate of the base (default: the task's, as "
                     "for --lr; else 0 when the method freezes the base, the base's own rate for full fine-tuning)")
    how.add_argument("--seed", type=int, help=f"(default {DEFAULTS.seed}): same seed, same loss curve on CPU")
    how.add_argument("--device", choices=("cpu", "cuda"), help=f"(default {DEFAULTS.device})")
    how.add_argument("--dtype", choices=PRECISIONS, help=f"(default {DEFAULTS.dtype}); fp16 keeps fp32 master "
                     "weights and scales the loss")
    how.add_argument("--max-length", type=int, help="longest sequence in tokens; longer inputs are cut "
                     "(default: GPT's n_positions, T5 512)")
    how.add_argument("--eval-every", type=int, help=f"dev evaluation and checkpoint every N steps "
                     f"(default {DEFAULTS.eval_every})")
    how.add_argument("--select", choices=SELECTIONS, help=f"which trained tensors to test and keep: the last "
                     f"step's, or those of the best dev evaluation (default {DEFAULTS.select})")
    how.add_argument("--eval-examples", type=int, help=f"dev examples per evaluation (default {DEFAULTS.eval_examples})")
    how.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; on a machine "
                     "shared with other jobs, 1 is often fastest for the tiny bases)")
    files = parser.add_argument_group("checkpoints")
    files.add_argument("--out", metavar="DIR", help=f"where to write metrics.json, the test predictions and the checkpoint "
                       f"(default {DEFAULTS.out}; with --resume, the resumed directory)")
    files.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (flags given now override)")
    files.add_argument("--eval-only", action="store_true", help="with --resume: only evaluate on the test set")
    files.add_argument("--init-from", metavar="DIR", help="start from the trained tensors (and the method options) "
                       "of the run in DIR, on this run's task, steps and optimiser: e.g. a prompt trained on "
                       "--task sentiment+nli, continued on nli (F4.3)")
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str | None, bool]:
    given = vars(args).copy()
    resume, eval_only = given.pop("resume", None), given.pop("eval_only", False)
    given.pop("threads", None)
    if "options" in given:
        given["options"] = dict(given["options"])
    if given.get("clip") == 0:
        given["clip"] = None
    if resume is not None:
        return config_for_resume(resume, given), resume, eval_only
    if "method" not in given:
        raise TrainingError("--method is required (one of: " + ", ".join(method_names()) + ")")
    if eval_only:
        raise TrainingError("--eval-only needs --resume DIR, the directory of a trained run")
    return TrainConfig(**given), None, False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        config, resume, eval_only = config_from_args(args)
        record = run(config, resume=resume, eval_only=eval_only)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started: nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    return 130 if record.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
