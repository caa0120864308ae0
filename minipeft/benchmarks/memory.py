"""Benchmark: peak memory of one training step at t5-small shape, by what is trained and with what.

    python -m minipeft.benchmarks.memory                     # every configuration, 1-4 min on 2 cores
    python -m minipeft.benchmarks.memory --only "full + sgd" --json out/memory.json

One step is ``zero_grad, forward, cross-entropy, backward, optimizer.step`` on a t5-small-shaped
``minipeft.T5Model`` with random weights (6 + 6 layers, C=512, V=32128: 60.5 M parameters), batch
B=8, source S=64, target T=16, fp32, train mode. For each configuration the script prints

    trainable       parameters the optimiser updates
    grads, state    bytes of their gradients and of the optimiser's state (``state_bytes``)
    peak Δ          the step's peak resident memory (RSS) above the memory held before it
    kept Δ          what is still held after it (gradients + state)

and, next to them, what F12.2 predicts (``minipeft.optim.memory``).

How memory is measured, and why:

* A fresh process per configuration. Freed memory is not always returned to the OS, so one
  configuration's allocations could hide the next one's peak; each runs alone in a child process
  (``--child NAME``), which prints its figures as one JSON line.
* ``/proc/self/status``. ``VmRSS`` is the memory resident now; ``VmHWM`` its high-water mark.
  Writing ``5`` to ``/proc/self/clear_refs`` resets the mark to the current RSS (Linux ≥ 4.0), so
  ``VmHWM`` after the step minus ``VmRSS`` before it is the step's own peak.
* ``MALLOC_MMAP_THRESHOLD_=65536`` in the child: glibc then serves every tensor larger than 64 KiB
  with its own ``mmap`` and returns it to the OS when freed (the default threshold grows with use
  and freed memory stays in the heap, where RSS would still count it).
* A warm-up first: one forward and backward with batch 1 (gradients dropped afterwards), so
  one-off costs (thread pools, kernel selection, lazy initialisation) are not billed to the step.
  The weights are in the baseline: each configuration's figures are on top of the 231 MiB model.

Adding a configuration: register a function that takes the model and returns the module to
call; its parameters with ``requires_grad`` are the trained ones:

    @register("lora r=8 (q, v)", optimizers=("adam",))
    def lora(model):
        return minipeft.get_peft(model, "lora", r=8, target_modules=["q", "v"])

LoRA and prefix tuning are registered when ``minipeft.get_peft`` exists (the PEFT methods).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import minipeft
from minipeft.optim import build_optimizer, state_bytes
from minipeft.optim.memory import tensor_bytes, training_state_bytes

T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                num_heads=8, feed_forward_proj="relu", dropout_rate=0.1, tie_word_embeddings=True)
BATCH, SOURCE, TARGET = 8, 64, 16
LEARNING_RATE = 1e-4
MiB = 2 ** 20


@dataclass(frozen=True)
class Setup:
    method: str
    optimizer: str
    trainable: object  # model → the module to call; its requires_grad parameters are trained

    @property
    def name(self) -> str:
        return f"{self.method} + {self.optimizer}"


SETUPS: dict[str, Setup] = {}


def register(method: str, optimizers=("adam",)):
    """Register ``function(model) → module`` as one configuration per optimiser."""
    def add(function):
        for optimizer in optimizers:
            setup = Setup(method, optimizer, function)
            SETUPS[setup.name] = setup
        return function
    return add


@register("full", optimizers=("adam", "adafactor", "sgd"))
def full(model):
    return model


PEFT_AVAILABLE = hasattr(minipeft, "get_peft")
if PEFT_AVAILABLE:
    @register("lora r=8 (q, v)")
    def lora(model):
        return minipeft.get_peft(model, "lora", r=8, target_modules=["q", "v"])

    @register("prefix m=20")
    def prefix(model):
        return minipeft.get_peft(model, "prefix", num_virtual_tokens=20)


# ---- the child: one configuration, measured --------------------------------------------------

def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def make_batch(batch: int, vocab_size: int, generator):
    source = torch.randint(2, vocab_size, (batch, SOURCE), generator=generator)       # (B, S)
    labels = torch.randint(2, vocab_size, (batch, TARGET), generator=generator)       # (B, T)
    return source, labels


def training_step(module, model, optimizer, source, labels):
    optimizer.zero_grad(set_to_none=True)
    logits = module(input_ids=source, decoder_input_ids=model.shift_right(labels))    # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    loss.backward()
    optimizer.step()


def measure(name: str, shape: dict = T5_SMALL) -> dict:
    """One configuration in this process (the parent runs it in a fresh child)."""
    setup = SETUPS[name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = minipeft.T5Model(minipeft.T5Config(**shape)).train()
    module = setup.trainable(model)
    params = [p for p in module.parameters() if p.requires_grad]
    everything = {id(p): p for p in list(model.parameters()) + list(module.parameters())}
    optimizer = build_optimizer(setup.optimizer, params, lr=LEARNING_RATE)

    warm_source, warm_labels = make_batch(1, shape["vocab_size"], generator)                 # one-off costs, not the step's
    F.cross_entropy(module(input_ids=warm_source, decoder_input_ids=model.shift_right(warm_labels)).flatten(0, 1),
                    warm_labels.flatten()).backward()
    for p in params:
        p.grad = None
    source, labels = make_batch(BATCH, shape["vocab_size"], generator)

    before = memory_status()["VmRSS"]
    reset_peak()
    training_step(module, model, optimizer, source, labels)
    after = memory_status()
    return {"name": name, "method": setup.method, "optimizer": setup.optimizer,
            "parameters": sum(p.numel() for p in everything.values()),
            "trainable": sum(p.numel() for p in params),
            "grad_bytes": tensor_bytes(p.grad for p in params if p.grad is not None),
            "state_bytes": state_bytes(optimizer),
            "rss_before": before, "peak_delta": after["VmHWM"] - before, "kept_delta": after["VmRSS"] - before}


# ---- the parent: one child per configuration, then the table ------------------------------------

def run_child(name: str, threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "minipeft.benchmarks.memory", "--child", name],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"configuration {name!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def predicted_bytes(row: dict) -> float:
    """F12.2: gradients + optimiser state of the trained parameters (AdaFactor: its factored state)."""
    kinds = training_state_bytes(row["trainable"], 0, row["optimizer"], "fp32")
    return kinds["gradients"] + kinds["optimizer state"]


def report(rows: list[dict]) -> str:
    header = (f"{'configuration':<24} {'trainable':>12} {'grads MiB':>9} {'state MiB':>9} {'F12.2 MiB':>9} "
              f"{'peak Δ MiB':>10} {'kept Δ MiB':>10}")
    lines = [f"One training step, t5-small shape (B={BATCH}, S={SOURCE}, T={TARGET}), fp32, CPU; "
             f"{rows[0]['parameters'] / 1e6:.1f} M parameters = {rows[0]['parameters'] * 4 / MiB:.0f} MiB of weights "
             f"(in the baseline, not in the Δ columns).", header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['name']:<24} {row['trainable']:>12,} {row['grad_bytes'] / MiB:>9.1f} "
                     f"{row['state_bytes'] / MiB:>9.1f} {predicted_bytes(row) / MiB:>9.1f} "
                     f"{row['peak_delta'] / MiB:>10.1f} {row['kept_delta'] / MiB:>10.1f}")
    lines.append("F12.2 MiB: gradients + optimiser state predicted from the trainable count (AdaFactor's "
                 "factored state counted as 0). peak Δ also holds activations and the step's temporaries.")
    if not PEFT_AVAILABLE:
        lines.append("LoRA and prefix tuning: not available here (minipeft.get_peft is missing; "
                     "they register themselves once the PEFT methods land).")
    return "\n".join(lines)


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(rows, handle, indent=2)
    os.replace(handle.name, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(SETUPS),
                        help="run only this configuration (repeatable)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads per child")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child not in SETUPS:
            raise SystemExit(f"unknown configuration {args.child!r}; registered: {', '.join(SETUPS)}")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(measure(args.child)))
        return None
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("this benchmark reads /proc/self/status and resets the peak through /proc/self/clear_refs: "
                         "it needs Linux")
    rows = []
    for name in args.only or SETUPS:
        print(f"measuring {name} …", file=sys.stderr, flush=True)
        rows.append(run_child(name, args.threads))
    print(report(rows))
    if args.json:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
