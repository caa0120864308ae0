"""Is a method's gap to full fine-tuning real, or seed noise? Means over seeds with a bootstrap interval.

One run's test score moves with the seed (which examples fill the batches, the initial trained
tensors): on tiny-t5's sentiment the frozen-base methods move by up to 16 points between seeds.
The README's "vs full" is a ratio of two means over a few seeds; this says how sure that ratio is::

    python -m minipeft.compare runs/full_* runs/adapter_* runs/lora_*
    python -m minipeft.compare runs/* --goal 0.95 --draws 20000

It reads each directory's ``metrics.json`` (what ``train.py --out DIR`` writes when a run finishes),
groups the runs by base, task and method (with its options), and for every method beside full
fine-tuning on the same base and task prints its mean test score, the ratio of means

    ratio = Σ_s score_method(s) / Σ_s score_full(s)         over the seeds s both sides ran

and a paired bootstrap 95 % interval for it: draw as many seeds as there are, with replacement,
take the ratio of the sums over the drawn seeds, repeat ``--draws`` times and keep the 2.5th and
97.5th percentiles. Paired: a drawn seed brings both sides' runs, which share the order of the
batches. With ``--goal`` (default 0.95, the issue's "95 % of full fine-tuning") it says where the
interval lies: wholly above the goal, wholly below it, or across it (the seeds cannot tell).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

from .results import base_label, method_label, score_scale
from .training import METRICS_FILE


class CompareError(Exception):
    """Run directories that cannot be compared (no metrics.json, no full fine-tuning beside a method)."""


def read_record(directory: str | Path) -> dict:
    """metrics.json of a finished ``train.py`` run."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        raise CompareError(f"{directory}: no {METRICS_FILE}; pass the --out directory of a finished train.py run "
                           f"(an interrupted one continues with: python train.py --resume {directory})")
    record = json.loads(path.read_text())
    if any(key not in record for key in ("score", "seed", "metrics")):
        raise CompareError(f"{path}: no test score or seed in it; is it a train.py metrics.json?")
    return record


def group_by_configuration(records: list[dict]) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(base, task, method label): {seed: test score, accuracy in %}}; two runs of one configuration
    and seed refused."""
    groups: dict[tuple[str, str, str], dict[int, float]] = {}
    for record in records:
        base = base_label(record["model"], record.get("random_base", False))
        key = (base, record["task"], method_label(record))
        scores = groups.setdefault(key, {})
        if record["seed"] in scores:
            raise CompareError(f"two runs of {key[2]} on {base} {key[1]} with seed {record['seed']}: "
                               f"pass each configuration's seed once")
        scores[record["seed"]] = score_scale(record) * record["score"]
    return groups


def ratio_of_means(method: list[float], full: list[float]) -> float:
    """Σ method / Σ full over paired seeds: the mean score as a fraction of full's mean."""
    return sum(method) / sum(full)


def paired_bootstrap(method: list[float], full: list[float], draws: int = 20_000,
                     seed: int = 0) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the ratio of means over seeds drawn with replacement,
    each drawn seed bringing both of its runs (``method[i]`` and ``full[i]``)."""
    if len(method) != len(full) or not method:
        raise CompareError(f"the bootstrap pairs runs by seed: got {len(method)} and {len(full)} scores")
    generator = random.Random(seed)
    n = len(method)
    ratios = []
    for _ in range(draws):
        drawn = [generator.randrange(n) for _ in range(n)]
        ratios.append(ratio_of_means([method[i] for i in drawn], [full[i] for i in drawn]))
    ratios.sort()
    return ratios[int(0.025 * (draws - 1))], ratios[int(0.975 * (draws - 1))]


def verdict(low: float, high: float, goal: float) -> str:
    if low >= goal:
        return "above"
    if high < goal:
        return "below"
    return "across (cannot tell)"


def comparison_table(groups: dict[tuple[str, str, str], dict[int, float]], goal: float = 0.95,
                     draws: int = 20_000) -> str:
    """A Markdown table: for every base and task with full fine-tuning, each method's mean score
    (and standard deviation) over the seeds it shares with full, the ratio of means, its paired
    bootstrap 95 % interval and where that interval lies against ``goal``."""
    columns = ("base", "task", "method", "seeds", "test scores", "mean (sd)", "vs full",
               "95% interval", f"vs {100 * goal:.0f}%")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    compared = 0
    for (base, task, label), scores in groups.items():
        full = groups.get((base, task, "full"))
        if full is None:
            raise CompareError(f"{label} on {base} {task} has no full fine-tuning run beside it: add the runs of "
                               f"python train.py --method full --task {task} --seed N --out DIR for its seeds "
                               f"({', '.join(map(str, sorted(scores)))})")
        seeds = sorted(set(scores) & set(full))
        if not seeds:
            raise CompareError(f"{label} on {base} {task} (seeds {sorted(scores)}) shares no seed with full "
                               f"fine-tuning (seeds {sorted(full)}): the comparison pairs runs by seed")
        method_scores = [scores[s] for s in seeds]
        row = [base, task, label, f"{len(seeds)} ({', '.join(map(str, seeds))})",
               " ".join(f"{x:.1f}" for x in method_scores),
               f"{statistics.mean(method_scores):.1f} ({statistics.pstdev(method_scores):.1f})"]
        if label == "full":
            row += ["–", "–", "–"]
        else:
            full_scores = [full[s] for s in seeds]
            low, high = paired_bootstrap(method_scores, full_scores, draws)
            row += [f"{100 * ratio_of_means(method_scores, full_scores):.1f}%",
                    f"{100 * low:.1f} … {100 * high:.1f}%", verdict(low, high, goal)]
            compared += 1
        lines.append("| " + " | ".join(row) + " |")
    if not compared:
        raise CompareError("no method beside full fine-tuning among the runs: pass the runs of at least one "
                           "other method on the same base and task")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="--out directories of finished train.py runs")
    parser.add_argument("--goal", type=float, default=0.95, help="the fraction of full's score to test (0.95)")
    parser.add_argument("--draws", type=int, default=20_000, help="bootstrap draws (20,000)")
    args = parser.parse_args(argv)
    if not 0 < args.goal or args.draws < 1:
        parser.error("--goal must be positive (0.95 is 95 %) and --draws at least 1")
    try:
        print(comparison_table(group_by_configuration([read_record(d) for d in args.runs]), args.goal, args.draws))
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
