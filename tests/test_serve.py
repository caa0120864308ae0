"""python -m minipeft.serve: several train.py runs of one base, their test inputs in mixed batches.

The runs are tiny (a few steps on small tasks, on the locally built checkpoints of tiny_runs.py);
what is checked is that serving them together changes nothing: each run's score and each of its
predictions are those it wrote alone.
"""

import json

import pytest

from minipeft import serve
from tiny_runs import make_gpt2_checkpoint, t5_dir, write_task  # noqa: F401 (fixtures)
from conftest import reference
from test_train_cli import train_here


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A classification task and a table-to-text task (train.jsonl of each)."""
    root = tmp_path_factory.mktemp("tasks")
    return {"sentiment": write_task(root / "sentiment", "sentiment"), "table": write_task(root / "table", "table")}


def train_run(capsys, out, method, model_flags, data, *flags):
    """A few steps at a small rate: the tables stay near their (random) start, so the runs' outputs are
    the random base's under different tables, different from run to run (longer runs learn to stop at once)."""
    code, _, stderr = train_here(capsys, "--method", method, *model_flags, "--data", data, "--steps", 2,
                                 "--batch-size", 8, "--eval-every", 100, "--lr", "1e-4", "--out", out, *flags)
    assert code == 0, stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    return make_gpt2_checkpoint(reference("transformers"), reference("tokenizers"), tmp_path_factory.mktemp("gpt"))


@pytest.mark.parametrize("kind,method", [("t5", "prompt"), ("t5", "prefix"), ("gpt", "prefix"), ("gpt", "prompt")])
def test_runs_served_together_score_and_predict_as_they_did_alone(kind, method, tasks, tmp_path, capsys):
    model_flags = ("--model", "tiny-t5") if kind == "t5" else ("--model", "tiny-gpt")   # pretrained: they say something
    runs = [train_run(capsys, tmp_path / name, method, model_flags, data, "--option", "num_virtual_tokens=4",
                      "--seed", seed)               # other seeds: tables that start apart, so a mix-up shows
            for seed, (name, data) in enumerate(tasks.items())]
    results = serve.serve_runs(runs, batch_size=5, log=lambda *args: None)    # 5: batches mix both runs
    assert [result["task"] for result in results] == ["sentiment", "table"]
    predictions = [json.loads(line)["prediction"] for run in runs for line in (run / "predictions.jsonl").open()]
    assert sum(prediction != "" for prediction in predictions) > len(predictions) / 2   # something to compare
    for result in results:
        assert result["same_predictions"] == result["inputs"] > 0
        assert result["mixed"] == pytest.approx(result["alone"], abs=1e-9)


def test_the_command_prints_one_line_per_run(tasks, t5_dir, tmp_path, capsys):
    runs = [train_run(capsys, tmp_path / name, "prompt", ("--model", "t5", "--weights", t5_dir), data)
            for name, data in tasks.items()]
    assert serve.main([str(run) for run in runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "test inputs of 2 runs in mixed batches of 64" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["sentiment", "table"]
    same, inputs = zip(*(line.split()[-1].split("/") for line in lines[2:]))
    assert same == inputs and inputs[0] == "16"                   # 16 reviews; the tables' unique inputs


def test_runs_that_cannot_share_a_batch_are_one_clear_error(tasks, t5_dir, gpt_dir, tmp_path, capsys):
    t5 = ("--model", "t5", "--weights", t5_dir)
    prompt = train_run(capsys, tmp_path / "prompt", "prompt", t5, tasks["sentiment"])
    lora = train_run(capsys, tmp_path / "lora", "lora", t5, tasks["sentiment"])
    short = train_run(capsys, tmp_path / "short", "prompt", t5, tasks["table"], "--option", "num_virtual_tokens=3")
    gpt = train_run(capsys, tmp_path / "gpt", "prompt", ("--model", "gpt2", "--weights", gpt_dir), tasks["table"])
    for runs, message in (([prompt, lora], "only methods at the input seams"),
                          ([prompt, short], "one shape"),
                          ([prompt, gpt], "trained on different bases"),
                          ([prompt, tmp_path / "nothing"], "no PEFT checkpoint")):
        assert serve.main([str(run) for run in runs]) == 2
        assert message in capsys.readouterr().err


def test_round_robin_takes_one_input_of_each_run_in_turn():
    assert serve.round_robin([3, 1, 2]) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2)]


def test_metrics_of_a_run_are_read_from_its_files(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"score": 0.5}))
    (tmp_path / "predictions.jsonl").write_text('{"prediction": "a"}\n{"prediction": "b"}\n')
    assert serve.read_alone(tmp_path) == {"score": 0.5, "predictions": ["a", "b"]}
    assert serve.read_alone(tmp_path / "missing") == {"score": None, "predictions": []}
