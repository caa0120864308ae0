"""Test accuracy by what each example holds out: where a method's generalisation gives way.

Every dev and test example of the embedded tasks uses something no train example shows: a held-out
sentiment word, a held-out phrasing (a review frame, a verdict, a way to state a fact) or a held-out
value (a cuisine, a town, a restaurant name; ``minipeft.world``). One accuracy hides which of them a
method copes with. ``train.py`` writes every test prediction to ``OUT/predictions.jsonl``; this
splits the accuracy by the kinds of held-out strings in each input::

    python -m minipeft.heldout out/                          one run
    python -m minipeft.heldout runs/full_* runs/adapter_*    several: the mean of each method's runs

It prints a table with a row per combination of kinds (``words + phrasings``: a review in a
held-out frame that also uses a held-out word), the number of test examples in it, and a column per
method (the mean accuracy of its runs). A run written before train.py wrote its predictions gets
them with ``python train.py --eval-only --resume DIR`` (``eval_predictions.jsonl``, read as well).
Only classification tasks (accuracy is a score per example) made by ``minipeft.world`` (which knows
what it held out) can be split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .results import method_label
from .training import EVAL_FILE, EVAL_PREDICTIONS_FILE, METRICS_FILE, PREDICTIONS_FILE
from .world import HELD_OUT_KINDS, TASKS, build_world, held_out_kinds

# what train.py writes into --out: after training, and after --eval-only --resume DIR
RUN_FILES = ((METRICS_FILE, PREDICTIONS_FILE), (EVAL_FILE, EVAL_PREDICTIONS_FILE))


class HeldOutError(Exception):
    """A run directory that cannot be split (missing files, a task the world did not make)."""


def read_run(directory: str | Path) -> tuple[dict, list[dict]]:
    """(metrics.json's record, predictions.jsonl's rows) of one train.py output directory."""
    directory = Path(directory)
    found = [(directory / record, directory / rows) for record, rows in RUN_FILES
             if (directory / record).is_file() and (directory / rows).is_file()]
    if not found:
        raise HeldOutError(f"{directory}: no metrics.json and predictions.jsonl; pass the --out directory of a "
                           f"finished train.py run (a run from before train.py wrote predictions: "
                           f"python train.py --eval-only --resume {directory} adds them)")
    record_file, rows_file = found[0]
    record = json.loads(record_file.read_text())
    if record.get("task") not in TASKS or record.get("kind") != "classification":
        raise HeldOutError(f"{directory}: task {record.get('task')!r} ({record.get('kind')}); only the world's "
                           f"classification tasks ({', '.join(t for t in TASKS if t != 'e2e')}) can be split: "
                           f"accuracy is a score per example, and the world knows what it held out")
    rows = [json.loads(line) for line in rows_file.read_text(encoding="utf-8").splitlines()]
    return record, rows


def kind_label(kinds: tuple[str, ...]) -> str:
    return " + ".join(kinds) if kinds else "nothing held out"


def accuracy_by_kinds(rows: list[dict], world) -> dict[str, tuple[int, int]]:
    """``{kinds: (right, examples)}`` over ``rows`` of predictions.jsonl, plus ``"all"``."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        right = int(row["prediction"] == row["references"][0])
        for key in (kind_label(held_out_kinds(row["input"], world)), "all"):
            count = counts.setdefault(key, [0, 0])
            count[0] += right
            count[1] += 1
    return {key: (right, total) for key, (right, total) in counts.items()}


def run_label(record: dict) -> str:
    """What a column stands for: the method with its options, the base and the rate (seeds are averaged)."""
    base = record["model"] + (" (random)" if record.get("random_base") else "")
    return f"{method_label(record)}, {base}, lr {record['lr']:g}"


def table(directories: list[str | Path], world=None) -> str:
    """The markdown table of ``python -m minipeft.heldout`` for these run directories."""
    world = world or build_world()
    runs = [read_run(directory) for directory in directories]
    tasks = {record["task"] for record, _ in runs}
    if len(tasks) > 1:
        raise HeldOutError(f"the runs are on different tasks ({', '.join(sorted(tasks))}); split one task at a time")
    by_label: dict[str, list[dict[str, tuple[int, int]]]] = {}
    for (record, rows), directory in zip(runs, directories):
        split = accuracy_by_kinds(rows, world)
        if kind_label(()) in split:
            raise HeldOutError(f"{directory}: {split[kind_label(())][1]} test inputs use nothing the world held out, "
                               f"so they are not its {record['task']} test set (a run on --data?)")
        by_label.setdefault(run_label(record), []).append(split)
    first = next(iter(by_label.values()))[0]
    order = sorted((key for key in first if key != "all"), key=lambda key: -first[key][1]) + ["all"]
    header = ["held out in the input", "examples"] + [f"{label} ({len(splits)} run{'s' * (len(splits) > 1)})"
                                                     for label, splits in by_label.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in order:
        cells = [key, str(first[key][1])]
        for splits in by_label.values():
            scores = [right / total for right, total in (split[key] for split in splits if key in split)]
            cells.append(f"{100 * sum(scores) / len(scores):.1f}%" if scores else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minipeft.heldout", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py --out directories (one task)")
    args = parser.parse_args(argv)
    try:
        print(table(args.runs))
    except HeldOutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nkinds: {', '.join(HELD_OUT_KINDS)} (minipeft.world.held_out_groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
