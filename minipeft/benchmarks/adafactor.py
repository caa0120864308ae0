"""Benchmark: AdaFactor against AdamW on tiny-t5's own pretraining objective (F12.3 vs F12.2).

    python -m minipeft.benchmarks.adafactor                 # 1,000 steps each, ~5 min on 2 cores
    python -m minipeft.benchmarks.adafactor --steps 200

Both runs are ``minipeft.bases.pretrain("tiny-t5", …)`` from the same seed, on the same batches
of span-corrupted corpus text (F11.4), with the same warmup + cosine schedule and clipping; only
the optimiser and its learning rate differ (each at the rate it works best with: AdaFactor's
steps are relative to a tensor's RMS, AdamW's are absolute). It prints the final training loss
(mean of the last 100 steps), the held-out loss and span accuracy of each, and the ratio of
final losses, AdaFactor / AdamW: seed 002 says AdaFactor reaches Adam's quality with O(m + n)
state per matrix, so the ratio should be at most about 1.05.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

import torch

from .. import bases

LEARNING_RATES = {"adafactor": 1e-2, "adamw": 3e-3}


def compare(steps: int = 1000, batch_size: int = 16, progress: bool = False) -> dict:
    """Pretrain tiny-t5 once with each optimiser; return each run's figures and the loss ratio."""
    results = {}
    for optimizer, lr in LEARNING_RATES.items():
        config = dataclasses.replace(bases.PRETRAINING["tiny-t5"], steps=steps, batch_size=batch_size,
                                     warmup=min(100, steps // 10), optimizer=optimizer, lr=lr)
        with tempfile.TemporaryDirectory() as out:
            results[optimizer] = bases.pretrain("tiny-t5", out_dir=out, config=config, progress=progress)
    results["final_loss_ratio"] = results["adafactor"]["final_train_loss"] / results["adamw"]["final_train_loss"]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = compare(args.steps, args.batch_size)
    print(f"{'optimiser':10s} {'lr':>7s} {'final train loss':>17s} {'held-out loss':>14s} {'span accuracy':>14s}")
    for optimizer, lr in LEARNING_RATES.items():
        run = results[optimizer]
        print(f"{optimizer:10s} {lr:7.0e} {run['final_train_loss']:17.4f} {run['held_out']['loss']:14.4f} "
              f"{run['held_out']['accuracy']:14.1%}")
    print(f"final loss ratio AdaFactor / AdamW: {results['final_loss_ratio']:.3f} (within 5% means ≤ 1.05)")
    print(json.dumps({"final_loss_ratio": round(results["final_loss_ratio"], 4)}))


if __name__ == "__main__":
    main()
