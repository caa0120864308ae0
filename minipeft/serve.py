"""Serve several train.py runs from one frozen base, their test inputs mixed in every batch (F2.5, F5.8).

    python -m minipeft.serve runs/prompt_sentiment runs/prompt_nli runs/prompt_e2e

Each run is a prompt, prefix or P-tuning v2 run (``train.py --out DIR``) of the same base, with
tables of one shape. The base is built once, each run's trained table goes into one
:class:`~minipeft.methods.mixed.MixedBatch`, and the runs' test inputs are dealt round-robin into
the batches, so every batch holds inputs of every run and row b is decoded under the table of its
own run. Each run is scored as train.py scores it, and its predictions are compared with those it
wrote alone (``predictions.jsonl``): a mixed batch should change nothing but which table a row reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .methods.base import load_trained
from .methods.mixed import MixedBatch
from .taskdata import pad
from .training import (METRICS_FILE, PEFT_FILE, PREDICTIONS_FILE, TrainingError, build_base, config_for_resume,
                       evaluation_inputs, generation_length, load_data, make_batcher, score_name, score_predictions)

# What a run's base is made of: runs that agree on these share one base.
BASE_FIELDS = ("model", "weights", "random_base")


def serve_runs(run_dirs, batch_size: int = 64, log=print) -> list[dict]:
    """Score every run's test set in mixed batches; one result dict per run (see :func:`main`)."""
    if not run_dirs:
        raise TrainingError("give the --out directories of one or more prompt, prefix or ptuning_v2 runs")
    run_dirs = [Path(directory) for directory in run_dirs]
    configs = [config_for_resume(directory, {}) for directory in run_dirs]
    check_one_base(run_dirs, configs)
    torch.manual_seed(configs[0].seed)             # as train.py does, so a --random-base run rebuilds its base
    base, tokenizer = build_base(configs[0])
    base.eval()
    names = run_names(run_dirs)
    methods, batchers, tasks, lengths = {}, [], [], []
    for name, directory, config in zip(names, run_dirs, configs):
        try:
            methods[name] = load_trained(base, directory / PEFT_FILE, method=config.method)
        except (ValueError, FileNotFoundError) as error:
            raise TrainingError(str(error)) from None
        batchers.append(make_batcher(methods[name], tokenizer, config))
        tasks.append(load_data(config))
        lengths.append(generation_length(batchers[-1], tasks[-1].train))
    try:
        mixed = MixedBatch(base, methods)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if len({batcher.max_length for batcher in batchers}) > 1:
        raise TrainingError("these runs cut their inputs at different lengths (--max-length): serve runs "
                            "trained with the same one")

    inputs, references = zip(*(evaluation_inputs(task.test, task.kind) for task in tasks))
    order = round_robin([len(run_inputs) for run_inputs in inputs])        # [(run, input index)], runs interleaved
    predictions = [[""] * len(run_inputs) for run_inputs in inputs]
    longest, started = max(lengths), time.perf_counter()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        # each input's ids as its own run's evaluation makes them, then one padding for the mixed batch
        prompts = [batchers[run].generation_batch([inputs[run][i]], longest)["input_ids"][0].tolist()
                   for run, i in rows]
        batch = pad(prompts, batchers[0].pad, left=not base.is_encoder_decoder)
        generated = mixed.generate(batch["input_ids"], torch.tensor([run for run, _ in rows]),
                                   max_new_tokens=longest, attention_mask=batch["attention_mask"])
        for (run, i), row in zip(rows, generated.tolist()):
            predictions[run][i] = batchers[run].decode(row[:lengths[run]])   # as long as the run generates alone
    seconds = time.perf_counter() - started

    results = []
    for run, (name, directory, task) in enumerate(zip(names, run_dirs, tasks)):
        metrics = score_predictions(task.kind, inputs[run], predictions[run], references[run], task.slot_phrases)
        alone = read_alone(directory)
        same = sum(a == b for a, b in zip(predictions[run], alone["predictions"])) if alone["predictions"] else None
        results.append({"run": name, "method": configs[run].method, "task": task.name,
                        "score_name": score_name(task.kind), "mixed": metrics[score_name(task.kind)],
                        "alone": alone["score"], "same_predictions": same, "inputs": len(inputs[run])})
    log(f"{len(order)} test inputs of {len(run_dirs)} runs in mixed batches of {batch_size}: {seconds:.1f} s "
        f"on one {configs[0].model} base")
    return results


def check_one_base(run_dirs, configs):
    """Every run must have been trained on the same base (and, for an untrained base, the same seed)."""
    described = [{field: getattr(config, field) for field in BASE_FIELDS}
                 | ({"seed": config.seed} if config.random_base else {}) for config in configs]
    if any(description != described[0] for description in described):
        lines = "\n".join(f"  {directory}: {description}" for directory, description in zip(run_dirs, described))
        raise TrainingError(f"these runs were trained on different bases; a mixed batch runs one:\n{lines}")


def run_names(run_dirs) -> list[str]:
    """Each run's directory name, or its whole path where two names are the same."""
    names = [directory.name for directory in run_dirs]
    return [str(directory) if names.count(directory.name) > 1 else directory.name for directory in run_dirs]


def round_robin(counts: list[int]) -> list[tuple[int, int]]:
    """(run, index) pairs taking one input of each run in turn: [(0, 0), (1, 0), (2, 0), (0, 1), …]."""
    return [(run, index) for index in range(max(counts)) for run, count in enumerate(counts) if index < count]


def read_alone(directory: Path) -> dict:
    """The run's own test score (metrics.json) and predictions (predictions.jsonl), where it wrote them."""
    metrics, predictions = directory / METRICS_FILE, directory / PREDICTIONS_FILE
    score = json.loads(metrics.read_text())["score"] if metrics.is_file() else None
    lines = predictions.read_text(encoding="utf-8").splitlines() if predictions.is_file() else []
    return {"score": score, "predictions": [json.loads(line)["prediction"] for line in lines]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minipeft.serve",
        description="Score the test sets of several prompt / prefix / ptuning_v2 runs of one base in mixed "
                    "batches (each row under its own run's table, F2.5/F5.8), against each run alone.")
    parser.add_argument("run_dirs", nargs="+", help="the --out directories of train.py runs")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per mixed batch (default 64)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        results = serve_runs(args.run_dirs, args.batch_size)
    except (TrainingError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{'run':24} {'method':10} {'task':10} {'score':>9} {'mixed':>7} {'alone':>7}  same predictions")
    for result in results:
        alone = "–" if result["alone"] is None else f"{result['alone']:.4g}"
        same = "–" if result["same_predictions"] is None else f"{result['same_predictions']}/{result['inputs']}"
        print(f"{result['run']:24} {result['method']:10} {result['task']:10} {result['score_name']:>9} "
              f"{result['mixed']:7.4g} {alone:>7}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
