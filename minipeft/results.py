"""The results table: every chosen method × task × base, trained by the one training loop.

    python -m minipeft.results --readme                              the README's tables (1–2 hours on 2 cores)
    python -m minipeft.results                                       every method × every task, tiny-t5
    python -m minipeft.results --methods full probe --random-base    baselines, pretrained vs untrained base
    python -m minipeft.results --models tiny-t5 tiny-gpt --tasks sentiment --steps 200
    python -m minipeft.results --readme --methods full lora adapter prefix --seeds 0 1 2

Each configuration is one in-process call of :func:`minipeft.training.run` (same defaults as
``train.py``: the method's default learning rate, the default steps and batch), writing its own
``OUT/<base>-<task>-<method>/``; the records go to ``OUT/results.json`` and the table, in
Markdown, to stdout (and ``OUT/results.md``). "vs full" is the test score as a fraction of full
fine-tuning's on the same base and task, when full was run too.

With several ``--seeds`` every configuration runs once per seed (seed 0 in the directory above,
seed N in ``…-seedN/``), the first table shows the first seed's runs, and a second one the mean
score over the seeds with its range: one run's test score moves by a few points with the seed
(which examples fill the batches, the initial trained tensors), as much as some differences
between methods.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from . import bases
from .methods import method_names
from .methods.registry import method_class
from .methods.base import base_fingerprint, read_checkpoint
from .methods.registry import make_options
from .taskdata import task_names
from .atomic import atomic_write, write_json
from .training import HF_BASES, PEFT_FILE, TINY_BASES, TrainConfig, TrainingError, build_base, \
    default_steps_text, method_options, option_text, run

COLUMNS = ("method", "base", "task", "steps", "trainable params", "trainable %", "checkpoint", "test score",
           "vs full", "train time")


def base_label(model: str, random_base: bool) -> str:
    return f"{model} (random)" if random_base else model


def run_directory(out: Path, model: str, random_base: bool, task: str, method: str, seed: int = 0) -> Path:
    return out / f"{model}{'-random' if random_base else ''}-{task}-{method}{f'-seed{seed}' if seed else ''}"


def human_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def method_label(record: dict) -> str:
    """The method and its options, a long text option shortened to its first words:
    ``prefix prefix_init_text=review positive negative …``."""
    options = record.get("options") or {}
    return record["method"] + "".join(f" {key}={short_option_text(value)}" for key, value in options.items())


def short_option_text(value, words: int = 3) -> str:
    if isinstance(value, str) and len(value.split()) > words:
        return " ".join(value.split()[:words]) + " …"
    return option_text(value)


def score_scale(record: dict) -> int:
    """100 for an accuracy (a fraction, shown in %), 1 for BLEU (already 0–100)."""
    return 100 if "accuracy" in record["metrics"] else 1


def format_score(record: dict) -> str:
    metrics = record["metrics"]
    if "accuracy" in metrics:
        return f"accuracy {100 * metrics['accuracy']:.1f}%"
    text = f"BLEU {metrics['bleu']:.1f}"
    if "slot_coverage" in metrics:
        text += f", slots {100 * metrics['slot_coverage']:.0f}%"
    return text


def table(records: list[dict]) -> str:
    """The Markdown table of ``records`` (failed runs show their error)."""
    full_scores = {(r["model"], r["random_base"], r["task"]): r["score"]
                   for r in records if r.get("method") == "full" and "score" in r}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in records:
        base = base_label(r["model"], r["random_base"])
        if "error" in r:
            lines.append(f"| {method_label(r)} | {base} | {r['task']} | error: {r['error']} |" + " |" * 6)
            continue
        full = full_scores.get((r["model"], r["random_base"], r["task"]))
        versus_full = f"{100 * r['score'] / full:.0f}%" if full else "–"
        lines.append(" | ".join([
            f"| {method_label(r)}", base, r["task"], f"{r['steps']:,}", f"{r['trainable_params']:,}",
            f"{r['trainable_percent']:.3g}%", human_bytes(r["checkpoint_bytes"]), format_score(r), versus_full,
            f"{r['train_seconds']:.0f} s |"]))
    return "\n".join(lines)


def seed_table(records: list[dict]) -> str:
    """Mean test score (min … max) over the seeds of each configuration, and the mean as a
    fraction of full fine-tuning's mean on the same base and task."""
    runs: dict[tuple, list[dict]] = {}
    for r in records:
        if "error" not in r:
            runs.setdefault((method_label(r), r["model"], r["random_base"], r["task"]), []).append(r)
    mean = {key: statistics.mean(r["score"] for r in group) for key, group in runs.items()}
    columns = ("method", "base", "task", "seeds", "mean test score (min … max)", "vs full, means")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for key, group in runs.items():
        label, model, random_base, task = key
        full = mean.get(("full", model, random_base, task))
        scale = score_scale(group[0])
        name = "accuracy" if scale == 100 else "BLEU"
        scores = [scale * r["score"] for r in group]
        lines.append(" | ".join([
            f"| {label}", base_label(model, random_base), task, ", ".join(str(r["seed"]) for r in group),
            f"{name} {statistics.mean(scores):.1f} ({min(scores):.1f} … {max(scores):.1f})",
            f"{100 * mean[key] / full:.1f}% |" if full else "– |"]))   # a decimal: the 95 % goal is read here
    return "\n".join(lines)


def finished_run(config: TrainConfig) -> dict | None:
    """The record in ``config.out/metrics.json`` if that run finished with this configuration."""
    path = Path(config.out) / "metrics.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    same = {"method": config.method, "model": config.model, "random_base": config.random_base, "steps": config.steps,
            "batch_size": config.batch_size, "seed": config.seed, "lr": config.learning_rate,
            "options": config.options, "dropout": config.dropout_rate}
    same = json.loads(json.dumps(same))   # as metrics.json holds them: a tuple option is a list there
    if any(record.get(key) != value for key, value in same.items()) or record.get("interrupted"):
        return None
    if not trained_with_today_s_defaults(config):
        return None
    record.pop("losses", None)
    return record


def trained_with_today_s_defaults(config: TrainConfig) -> bool:
    """Was the run's checkpoint trained on the base and with the method options that ``config``
    gives now? metrics.json records only the options a user set; a method default changed since
    (or a base pretrained again) makes the old run stale."""
    try:
        metadata, _ = read_checkpoint(Path(config.out) / PEFT_FILE, tensors=False)
        options_now = json.loads(json.dumps(dataclasses.asdict(make_options(config.method, method_options(config)))))
        base, _ = build_base(config)
    except (FileNotFoundError, ValueError, TypeError, TrainingError):
        return False
    return json.loads(metadata["options"]) == options_now and metadata["base_fingerprint"] == base_fingerprint(base)


# Options a method needs on a base, in every grid: T5 has no biases, so BitFit trains its norm
# scales (F10.3's documented alternative) instead of stopping with an error.
BASE_OPTIONS = {(name, "bitfit"): {"bitfit_fallback": "layer_norm"}
                for name in bases.BASE_NAMES if bases.architecture(name) == "tiny-t5"}


def grid_methods() -> list[str]:
    """Every method that trains from a base alone: AdapterFusion, which fuses adapters of earlier
    runs (F8.1–F8.2), is run by its own commands (README, "Combining adapters")."""
    return [method for method in method_names() if not method_class(method).builds_on_runs]


def readme_grid(tasks: list[str]) -> list[tuple[str, bool, str, str]]:
    """The README's tables: every method × task on tiny-t5, every method on the sentiment task of
    tiny-gpt and of the LM-adapted tiny-t5-lm, and the full / probe baselines on an untrained
    tiny-t5 for every task."""
    grid = [("tiny-t5", False, task, method) for task in tasks for method in grid_methods()]
    grid += [(base, False, "sentiment", method) for base in ("tiny-gpt", "tiny-t5-lm") for method in grid_methods()]
    grid += [("tiny-t5", True, task, method) for task in tasks for method in ("full", "probe")]
    return grid


def run_grid(grid, args, out: Path) -> list[dict]:
    """Train (or, with ``--reuse``, reload) every ``(model, random_base, task, method)`` of ``grid``."""
    records = []
    for seed, (model, random_base, task, method) in ((seed, cell) for seed in args.seeds for cell in grid):
        options = BASE_OPTIONS.get((model, method), {})
        config = TrainConfig(method=method, options=options, model=model, weights=args.weights,
                             random_base=random_base, task=task, steps=args.steps, batch_size=args.batch_size,
                             seed=seed, out=str(run_directory(out, model, random_base, task, method, seed)))
        config = dataclasses.replace(config, eval_every=config.steps)   # one dev evaluation, at the end
        record = finished_run(config) if args.reuse else None
        if record is not None:
            print(f"reusing {config.out}")
        else:
            try:
                record = run(config)
                record.pop("losses", None)
            except TrainingError as error:
                print(f"error: {error}", file=sys.stderr)
                record = {"method": method, "options": options, "model": model, "random_base": random_base,
                          "task": task, "seed": seed, "error": str(error).splitlines()[0]}
        records.append(record)
        write_json(out / "results.json", {"runs": records})   # after every run: nothing lost
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--readme", action="store_true",
                        help="the README's grid: every method × task on tiny-t5, every method on the "
                             "sentiment of tiny-gpt and tiny-t5-lm, full and probe on an untrained tiny-t5 "
                             "(of those, only --methods; ignores --models)")
    parser.add_argument("--methods", nargs="+", default=grid_methods(), choices=grid_methods(), metavar="METHOD",
                        help=f"(default: all: {', '.join(grid_methods())})")
    parser.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="(default: every task in data/tasks)")
    parser.add_argument("--models", nargs="+", default=["tiny-t5"], choices=TINY_BASES + HF_BASES, metavar="MODEL",
                        help="tiny-t5, tiny-gpt and/or tiny-t5-lm (default tiny-t5); t5 or gpt2 with --weights")
    parser.add_argument("--weights", metavar="DIR", help="the Hugging Face checkpoint directory for t5 / gpt2")
    parser.add_argument("--random-base", action="store_true", help="also run each on an untrained base")
    parser.add_argument("--steps", type=int, help=f"(default: train.py's, {default_steps_text()})")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                        help="run every configuration once per seed; with several, also a table of the mean "
                             "score over the seeds (default: 0)")
    parser.add_argument("--out", default="results", help="(default results/)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a configuration's finished run (its metrics.json, same steps, batch, seed and "
                             "learning rate) instead of training it again: continue an interrupted table")
    args = parser.parse_args(argv)
    tasks = args.tasks or task_names()
    if not tasks:
        print("error: no tasks found in data/tasks; generate them first (see data/README.md)", file=sys.stderr)
        return 2
    unknown = [task for task in tasks if task not in task_names()]
    if unknown:
        print(f"error: no task {', '.join(map(repr, unknown))} in data/tasks; available: {', '.join(task_names())}",
              file=sys.stderr)
        return 2
    try:   # the flags every run shares are checked once, before the first run
        TrainConfig(steps=args.steps, batch_size=args.batch_size)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.readme:
        grid = [cell for cell in readme_grid(tasks) if cell[3] in args.methods]
    else:
        grid = [(model, random_base, task, method) for model in args.models
                for random_base in ((False, True) if args.random_base else (False,))
                for task in tasks for method in args.methods]
    records = run_grid(grid, args, Path(args.out))
    markdown = table([r for r in records if r.get("seed", args.seeds[0]) == args.seeds[0]])
    if len(args.seeds) > 1:
        markdown += "\n\n" + seed_table(records)
    atomic_write(Path(args.out) / "results.md", lambda temporary: Path(temporary).write_text(markdown + "\n"))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
