"""train.py as a user runs it: end to end on Hugging Face format checkpoints (a t5-shaped one
with a locally trained spiece.model, a GPT-2 one with a local BPE), the files it writes, and the
errors it prints instead of tracebacks.

The first run is a real ``python train.py`` process; the others call the script's ``main(argv)``
in this process (the same code after argument parsing), which saves a second of start-up each.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, reference
from tiny_runs import make_gpt2_checkpoint, make_t5_checkpoint, subprocess_pythonpath, t5_dir, task  # noqa: F401 (fixtures)

REQUIRED_KEYS = {"method", "model", "task", "trainable_params", "total_params", "metrics", "train_seconds", "steps",
                 "checkpoint_bytes"}


def train(*flags, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": subprocess_pythonpath(ROOT)}
    return subprocess.run([sys.executable, "train.py", *map(str, flags)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_here(capsys, *flags):
    """``main(flags)`` in this process → (exit code, stdout, stderr)."""
    code = load_train_script().main([str(flag) for flag in flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(t5_dir, task, tmp_path_factory):
    """One probe run of 6 steps: (its output directory, the completed process)."""
    out = tmp_path_factory.mktemp("run")
    result = train("--method", "probe", "--model", "t5", "--weights", t5_dir, "--data", task, "--steps", 6,
                   "--batch-size", 8, "--eval-every", 3, "--out", out)
    return out, result


def test_t5_checkpoint_end_to_end_writes_metrics_and_only_the_trained_tensors(trained):
    out, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    report_lines = [line for line in result.stdout.splitlines() if line.startswith("trainable params:")]
    assert len(report_lines) == 1 and " || all params: " in report_lines[0] and " || trainable%: " in report_lines[0]
    assert "loss=" in result.stderr and "tok_s=" in result.stderr          # the progress bar
    record = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(record)
    assert (record["method"], record["model"], record["task"], record["steps"]) == ("probe", "t5", "sentiment", 6)
    assert 0 < record["trainable_params"] < record["total_params"]
    assert set(record["metrics"]) == {"accuracy"} and len(record["dev_history"]) == 2
    assert list(load_file(out / "peft.safetensors")) == ["model.lm_head.weight"]
    assert record["checkpoint_bytes"] == (out / "peft.safetensors").stat().st_size
    assert (out / "state.pt").is_file() and not list(out.glob("*.tmp"))


def test_predictions_file_holds_what_the_test_score_was_computed_from(trained, task):
    out, _ = trained
    record = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (Path(task).parent / "test.jsonl").read_text().splitlines()]
    assert [row["input"] for row in rows] == [example["input"] for example in test]
    assert [row["references"] for row in rows] == [[example["target"]] for example in test]
    right = sum(row["prediction"] == row["references"][0] for row in rows)
    assert right / len(rows) == pytest.approx(record["metrics"]["accuracy"])


def test_eval_only_reproduces_the_test_metric(trained, capsys):
    out, _ = trained
    code, stdout, stderr = train_here(capsys, "--eval-only", "--resume", out)
    assert code == 0, stderr[-3000:]
    evaluated, record = (json.loads((out / name).read_text()) for name in ("eval.json", "metrics.json"))
    assert evaluated["metrics"] == record["metrics"] and evaluated["eval_only"]
    assert (out / "eval_predictions.jsonl").read_text() == (out / "predictions.jsonl").read_text()
    assert f"test: accuracy {record['metrics']['accuracy']:.4g}" in stdout


def test_loading_onto_a_different_base_is_refused_cleanly(trained, capsys):
    out, _ = trained
    code, _, stderr = train_here(capsys, "--eval-only", "--resume", out, "--random-base")
    assert code == 2
    assert stderr.startswith("error: ") and "trained on a different base model" in stderr


def test_resuming_with_another_method_is_refused_cleanly(trained, capsys):
    out, _ = trained
    code, _, stderr = train_here(capsys, "--resume", out, "--method", "full")
    assert code == 2 and "holds a 'probe' checkpoint, not 'full'" in stderr


def test_malformed_data_is_an_error_with_the_line_number(t5_dir, tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"input": "a", "target": "b"}\n{"input": "c"}\n' * 3)
    code, _, stderr = train_here(capsys, "--method", "probe", "--model", "t5", "--weights", t5_dir, "--data", data)
    assert code == 2 and "mine.jsonl, line 2: missing key 'target'" in stderr


def test_unknown_method_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_here(capsys, "--method", "lorra")
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'lorra'" in stderr and "probe" in stderr


def test_hf_model_without_weights_says_what_to_pass(task, capsys):
    code, _, stderr = train_here(capsys, "--method", "probe", "--model", "t5", "--data", task)
    assert code == 2 and "--model t5 needs --weights DIR" in stderr


def test_eval_only_without_resume_is_refused(capsys):
    code, _, stderr = train_here(capsys, "--method", "probe", "--eval-only")
    assert code == 2 and "--eval-only needs --resume DIR" in stderr


def test_warmup_longer_than_the_run_is_refused(t5_dir, task, tmp_path, capsys):
    code, _, stderr = train_here(capsys, "--method", "probe", "--model", "t5", "--weights", t5_dir, "--data", task,
                                 "--steps", 5, "--warmup", 5, "--out", tmp_path)
    assert code == 2 and "total_steps (5) must be greater than warmup_steps (5)" in stderr


def test_gpt2_checkpoint_end_to_end(task, tmp_path_factory, tmp_path, capsys):
    directory = make_gpt2_checkpoint(reference("transformers"), reference("tokenizers"), tmp_path_factory.mktemp("g"))
    code, stdout, stderr = train_here(capsys, "--method", "full", "--model", "gpt2", "--weights", directory,
                                      "--data", task, "--steps", 3, "--batch-size", 4, "--out", tmp_path)
    assert code == 0, stderr[-3000:]
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["model"] == "gpt2" and record["trainable_params"] == record["total_params"]
    assert stdout.count("trainable params:") == 1


@pytest.mark.parametrize("text, value", [("8", 8), ("0.1", 0.1), ("1e-3", 1e-3), ("true", True), ("False", False),
                                         ("none", None), ("q,v", ("q", "v")), ("q", "q"), ("1,2", (1, 2)),
                                         ("encoder,decoder,cross", ("encoder", "decoder", "cross"))])
def test_option_values_are_parsed(text, value):
    assert load_train_script().parse_value(text) == value


def test_help_names_every_default_a_task_a_base_or_a_method_brings(monkeypatch):
    from minipeft import training
    monkeypatch.setitem(training.TASK_DEFAULTS, ("tiny-gpt", "e2e", "lora"), {"dropout": 0.25, "options": {"r": 2}})
    script = load_train_script()
    text = " ".join(script.build_parser().format_help().split())
    assert "prefix on tiny-t5's nli: lr 0.002, num_virtual_tokens=10" in text
    assert "lora on tiny-t5's nli: target_modules=q,k,v,o,wi,wo, r=16" in text   # a tuple as --option takes it
    assert "lora on tiny-gpt's e2e: dropout 0.25, r=2" in text
    assert "prefix on tiny-gpt 0.001" in text and "lora 0.003" in text


def test_option_needs_key_equals_value():
    script = load_train_script()
    assert script.parse_option("r=8") == ("r", 8)
    with pytest.raises(Exception, match="expected KEY=VALUE"):
        script.parse_option("r8")


@pytest.mark.parametrize("model, task_name", [("tiny-t5", "e2e"), ("tiny-gpt", "sentiment"),
                                             ("tiny-t5-lm", "sentiment")])
def test_the_shipped_tiny_bases_train_on_the_embedded_tasks(model, task_name, tmp_path, capsys):
    """What the README's first command does, shortened: a shipped base, a shipped task, the files."""
    code, out, err = train_here(capsys, "--method", "lora", "--model", model, "--task", task_name, "--steps", 3,
                                "--batch-size", 4, "--eval-examples", 8, "--out", tmp_path)
    assert code == 0, err
    assert "trainable params: " in out and "test: " in out
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(record) and (record["model"], record["task"]) == (model, task_name)
    assert record["metrics"]


def test_a_random_base_is_the_same_architecture_untrained(tmp_path, capsys):
    code, out, err = train_here(capsys, "--method", "probe", "--random-base", "--steps", 2, "--batch-size", 4,
                                "--eval-examples", 8, "--out", tmp_path)
    assert code == 0, err
    assert "random" in out and json.loads((tmp_path / "metrics.json").read_text())["random_base"] is True


T5_SMALL_SHAPE = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                      relative_attention_num_buckets=32)


def test_a_t5_small_shaped_checkpoint_trains_end_to_end(task, tmp_path, capsys):
    """Issue 5: transformers' t5-small layout (60 M parameters less the vocabulary) with a local spiece.model."""
    weights = make_t5_checkpoint(reference("transformers"), tmp_path / "t5-small", **T5_SMALL_SHAPE)
    code, out, err = train_here(capsys, "--method", "lora", "--model", "t5", "--weights", weights, "--data", task,
                                "--steps", 2, "--batch-size", 2, "--eval-examples", 4, "--out", tmp_path / "run")
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["trainable_params"] == 294_912                     # LoRA r=8 on q, v of t5-small, as peft counts
    assert f"test: accuracy {record['metrics']['accuracy']:.4g}" in out  # printed = recorded
