"""The training loop: strict data reading, batches, reproducibility, resuming, and DDP parity.

Runs use a t5-format checkpoint shrunk to a few thousand parameters, made by `transformers` in a
temp dir with a SentencePiece model trained on the test task (tests/tiny_runs.py).
"""

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from tiny_runs import subprocess_pythonpath, t5_dir, task, write_jsonl, write_task  # noqa: F401 (fixtures); first
from minipeft import training
from minipeft.atomic import atomic_write
from minipeft.taskdata import Batcher, DataError, Example, load_user_data, read_examples, task_kind
from minipeft.tokenizers import T5Tokenizer
from minipeft.training import PEFT_FILE, TrainConfig, TrainingError, global_batch_indices, run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models of a few thousand parameters run fastest on one thread (and the CI machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(t5_dir, task, out, **changes):
    settings = dict(method="full", model="t5", weights=str(t5_dir), data=str(task), steps=4, batch_size=8,
                    eval_every=100, eval_examples=4, out=str(out), lr=1e-3)
    return TrainConfig(**{**settings, **changes})


def quiet(*args, **kwargs):
    pass


# -- reading data -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ('{"input": "a", "target": "b"}\nnot json\n', r"line 2: not valid JSON"),
    ('{"input": "a", "target": "b"}\n{"input": "a"}\n', r"line 2: missing key 'target'"),
    ('{"input": "a", "target": "  "}\n', r"line 1: empty target"),
    ('{"input": "a", "target": "b"}\n\n{"input": "a", "target": "b"}\n', r"line 2: empty line"),
    ('["a", "b"]\n', r"line 1: expected a JSON object"),
    ('{"input": "a", "target": 3}\n', r"line 1: 'target' must be a string"),
])
def test_malformed_jsonl_names_the_line_and_the_problem(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"data.jsonl, {message}"):
        read_examples(path)


def test_malformed_tsv_names_the_column_count(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("a\tb\nc\td\te\n")
    with pytest.raises(DataError, match=r"line 2: expected 2 TAB-separated columns .* found 3"):
        read_examples(path)


def test_a_file_cut_off_mid_line_is_refused(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n{"input": "c", "tar')
    with pytest.raises(DataError, match=r"line 2: .*does not end with a newline: was it cut off"):
        read_examples(path)


def test_a_complete_last_line_without_newline_is_read(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("a\tb\nc\td")
    assert read_examples(path) == [Example("a", "b"), Example("c", "d")]


def test_a_single_file_is_split_80_10_10_the_same_way_every_time(tmp_path):
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, [{"input": f"x{i}", "target": "yes" if i % 2 else "no"} for i in range(50)])
    first, second = load_user_data(path), load_user_data(path)
    assert (len(first.train), len(first.dev), len(first.test)) == (40, 5, 5)
    assert first == second
    assert {e.input for e in first.train + first.dev + first.test} == {f"x{i}" for i in range(50)}


def test_train_jsonl_uses_its_dev_and_test_siblings(task):
    data = load_user_data(task)
    assert (data.name, len(data.train), len(data.dev), len(data.test)) == ("sentiment", 64, 16, 16)
    assert data.kind == "classification"


def test_task_kind():
    assert task_kind([Example("the soup was great", "positive")]) == "classification"
    assert task_kind([Example("name[A] | food[Thai]", "A serves Thai food.")]) == "table-to-text"
    assert task_kind([Example(f"q{i}", f"answer {i}") for i in range(30)]) == "generation"


# -- batches ------------------------------------------------------------------------------------

def test_encoder_decoder_batch_puts_the_target_in_the_labels(t5_dir):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    batcher = Batcher(tokenizer, True, max_length=64, pad_token_id=0, eos_token_id=1)
    batch = batcher.training_batch([Example("the soup was great", "positive"), Example("bad", "negative no")])
    assert batch["input_ids"][0].tolist()[:batch["attention_mask"][0].sum()] == tokenizer.encode("the soup was great")
    target = tokenizer.encode("negative no")                          # ends with </s>
    assert batch["labels"][1].tolist() == target
    padded = batch["labels"][0].tolist()
    assert padded[:len(tokenizer.encode("positive"))] == tokenizer.encode("positive")
    assert set(padded[len(tokenizer.encode("positive")):]) <= {-100}


def test_decoder_only_batch_masks_the_input_and_separator(t5_dir):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    batcher = Batcher(tokenizer, False, max_length=64, pad_token_id=0, eos_token_id=1)
    source, target = tokenizer.encode("the soup was great", add_eos=False), tokenizer.encode("positive", add_eos=False)
    batch = batcher.training_batch([Example("the soup was great", "positive"), Example("a much longer input here "
                                                                                        "than the first", "no")])
    length = len(source) + 1 + len(target) + 1
    assert batch["input_ids"][0, :length].tolist() == source + [1] + target + [1]          # input </s> target </s>
    assert batch["labels"][0, :length].tolist() == [-100] * (len(source) + 1) + target + [1]
    assert batch["attention_mask"][0].sum() == length and (batch["labels"][0, length:] == -100).all()


def test_long_inputs_are_cut_and_counted_and_long_targets_refused(t5_dir):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    batcher = Batcher(tokenizer, True, max_length=6, pad_token_id=0, eos_token_id=1)
    batch = batcher.training_batch([Example("the soup was great and the staff was friendly", "ok")])
    assert batch["input_ids"].shape[1] == 6 and batch["input_ids"][0, -1] == 1 and batcher.cut_inputs == 1
    with pytest.raises(DataError, match="more than the 6 this model allows"):
        batcher.training_batch([Example("a", "the soup was great and the staff was friendly")])


def test_each_epoch_is_a_permutation_and_batches_continue_across_epochs():
    stream = [i for step in range(5) for i in global_batch_indices(step, 4, 10, seed=3)]   # 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]
    assert global_batch_indices(2, 4, 10, seed=3) == stream[8:12]


def test_each_process_takes_its_own_share_of_the_global_batch():
    indices = global_batch_indices(0, 8, 100, seed=0)
    shares = [training.process_share(indices, rank, 2) for rank in range(2)]
    assert shares[0] + shares[1] == indices and len(shares[0]) == 4


# -- runs ---------------------------------------------------------------------------------------

def test_same_seed_same_loss_curve_and_another_seed_another(t5_dir, task, tmp_path):
    first = run(config(t5_dir, task, tmp_path / "a"), log=quiet)      # dropout 0.1 is on: it is seeded too
    second = run(config(t5_dir, task, tmp_path / "b"), log=quiet)
    other = run(config(t5_dir, task, tmp_path / "c", seed=1), log=quiet)
    assert first["losses"] == second["losses"]
    assert first["losses"] != other["losses"]
    assert first["losses"][-1] < first["losses"][0]


def test_the_checkpoint_holds_only_the_trained_tensors(t5_dir, task, tmp_path):
    record = run(config(t5_dir, task, tmp_path, method="probe"), log=quiet)
    tensors = load_file(tmp_path / PEFT_FILE)
    assert list(tensors) == ["model.lm_head.weight"]
    assert record["checkpoint_bytes"] == (tmp_path / PEFT_FILE).stat().st_size
    assert not list(tmp_path.glob("*.tmp"))


def test_written_files_get_the_mode_open_would_give_them(t5_dir, task, tmp_path):
    """The temporary file behind each atomic write is private (mkstemp: 0600); the result must not be."""
    previous = os.umask(0o022)
    try:
        run(config(t5_dir, task, tmp_path, method="lora", steps=1), log=quiet)
        os.umask(0o077)
        atomic_write(tmp_path / "private.txt", lambda temporary: Path(temporary).write_text("x"))
    finally:
        os.umask(previous)
    for name in (PEFT_FILE, "metrics.json", "predictions.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("select", ["last", "best-dev"])
def test_interrupted_then_resumed_equals_uninterrupted(t5_dir, task, tmp_path, monkeypatch, select):
    straight = run(config(t5_dir, task, tmp_path / "straight", steps=6, eval_every=2, select=select), log=quiet)

    real_indices = training.global_batch_indices

    def interrupt_at_step_3(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_indices(step, *args)

    monkeypatch.setattr(training, "global_batch_indices", interrupt_at_step_3)
    interrupted = run(config(t5_dir, task, tmp_path / "resumed", steps=6, eval_every=2, select=select), log=quiet)
    assert interrupted == {"interrupted": True, "steps": 3}
    monkeypatch.setattr(training, "global_batch_indices", real_indices)
    resumed = run(training.config_for_resume(tmp_path / "resumed", {}), resume=tmp_path / "resumed", log=quiet)

    assert resumed["losses"] == straight["losses"]
    final, expected = load_file(tmp_path / "resumed" / PEFT_FILE), load_file(tmp_path / "straight" / PEFT_FILE)
    assert all(torch.equal(final[name], expected[name]) for name in expected)
    assert resumed["metrics"] == straight["metrics"]
    assert resumed["selected_step"] == straight["selected_step"]
    assert resumed["dev_history"] == straight["dev_history"]


def test_eval_only_reproduces_the_test_metric(t5_dir, tmp_path_factory, tmp_path):
    table = write_task(tmp_path_factory.mktemp("table") / "e2e", kind="table")
    trained = run(config(t5_dir, table, tmp_path, steps=30, lr=3e-3), log=quiet)
    assert set(trained["metrics"]) == {"bleu", "slot_coverage"}
    again = run(training.config_for_resume(tmp_path, {}), resume=tmp_path, eval_only=True, log=quiet)
    assert again["metrics"] == trained["metrics"]


def test_best_dev_tests_and_keeps_the_tensors_of_the_best_dev_step(t5_dir, task, tmp_path, monkeypatch):
    scripted = iter([0.25, 0.5, 0.75, 0.5, 0.75, 0.25] * 2)   # dev accuracy at steps 2, 4, … 12, for each run
    snapshots = {}   # step -> the trained tensors at that step's dev evaluation
    real_evaluate = training.Run.evaluate

    def evaluate_with_scripted_dev(self, examples):
        if examples != self.data.dev[:self.config.eval_examples]:
            return real_evaluate(self, examples)                       # the test set: really scored
        snapshots[self.step] = {name: t.clone() for name, t in self.peft.trained_state_dict().items()}
        return {"accuracy": next(scripted)}, []

    monkeypatch.setattr(training.Run, "evaluate", evaluate_with_scripted_dev)
    settings = dict(method="lora", steps=12, eval_every=2, lr=3e-2)
    last = run(config(t5_dir, task, tmp_path / "last", **settings), log=quiet)
    best = run(config(t5_dir, task, tmp_path / "best", select="best-dev", **settings), log=quiet)

    assert best["losses"] == last["losses"]            # selecting changes what is tested, not the training
    assert last["selected_step"] == 12
    assert best["selected_step"] == 10                 # best dev 0.75 at steps 6 and 10: the later one
    kept = load_file(tmp_path / "best" / PEFT_FILE)
    assert not all(torch.equal(kept[name], snapshots[12][name]) for name in kept)
    assert all(torch.equal(kept[name], snapshots[10][name]) for name in kept)
    resumable = torch.load(tmp_path / "best" / training.STATE_FILE, weights_only=True)["trained"]
    assert all(torch.equal(resumable[name], snapshots[12][name]) for name in resumable)
    monkeypatch.setattr(training.Run, "evaluate", real_evaluate)
    again = run(training.config_for_resume(tmp_path / "best", {}), resume=tmp_path / "best", eval_only=True, log=quiet)
    assert again["metrics"] == best["metrics"] and again["selected_step"] == 10


def test_an_unknown_selection_is_refused():
    with pytest.raises(TrainingError, match="unknown selection 'best'.*last, best-dev"):
        TrainConfig(select="best")


def test_a_negative_clip_is_refused():
    with pytest.raises(TrainingError, match="clip .* must be positive, got -1.*turns clipping off"):
        TrainConfig(clip=-1.0)


@pytest.mark.parametrize("method, max_length", [("prefix", None), ("prompt", 16)])
def test_more_virtual_tokens_than_the_run_allows_are_refused_before_they_are_built(t5_dir, task, tmp_path,
                                                                                  method, max_length):
    # 100,000 prefix tokens started from words would first ask for ~80 GB; the refusal comes before
    count = 100_000 if max_length is None else 17
    with pytest.raises(TrainingError, match=f"num_virtual_tokens={count} is longer than .* "
                                            f"\\({max_length or 512} tokens, --max-length\\)"):
        run(config(t5_dir, task, tmp_path, method=method, max_length=max_length,
                   options={"num_virtual_tokens": count, **({"prefix_init_text": "good bad"} if method == "prefix" else {})}),
            log=quiet)


def test_a_different_base_is_refused(t5_dir, task, tmp_path):
    run(config(t5_dir, task, tmp_path, method="probe"), log=quiet)
    with pytest.raises(TrainingError, match="trained on a different base model"):
        run(training.config_for_resume(tmp_path, {"random_base": True}), resume=tmp_path, eval_only=True, log=quiet)


def test_unknown_method_option_is_a_training_error(t5_dir, task, tmp_path):
    with pytest.raises(TrainingError, match="method 'full' has no option"):
        run(config(t5_dir, task, tmp_path, options={"r": 8}), log=quiet)


def test_two_processes_match_one_with_the_same_global_batch(t5_dir, task, tmp_path):
    """torchrun, 2 CPU processes (gloo), each with half of the global batch of 8, vs one process."""
    one = run(config(t5_dir, task, tmp_path / "one", dropout=0.0, lr=3e-3), log=quiet)
    flags = ["--method", "full", "--model", "t5", "--weights", str(t5_dir), "--data", str(task), "--steps", "4",
             "--batch-size", "8", "--dropout", "0", "--lr", "3e-3", "--eval-examples", "4", "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": subprocess_pythonpath(ROOT)}
    # --standalone: torchrun finds a free port itself (a fixed one can be taken, and then the test
    # fails for a reason that is not the code's).
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *flags],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("trainable params:") == 1           # only rank 0 prints
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 4
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-5)
    trained_one, trained_two = load_file(tmp_path / "one" / PEFT_FILE), load_file(tmp_path / "two" / PEFT_FILE)
    assert set(trained_one) == set(trained_two)
    for name in trained_one:
        torch.testing.assert_close(trained_two[name], trained_one[name], rtol=1e-4, atol=1e-4)


def test_weight_decay_leaves_layer_norm_scales_and_biases_alone(t5_dir, task, tmp_path):
    """One step from the same weights with and without --weight-decay: the matrices differ by the
    decay, the vectors (T5's layer-norm scales) must not, or decay would pull them towards 0."""
    trained = {}
    for decay in (0.0, 0.5):
        run(config(t5_dir, task, tmp_path / str(decay), steps=1, weight_decay=decay), log=quiet)
        trained[decay] = load_file(tmp_path / str(decay) / PEFT_FILE)
    vectors = [name for name, tensor in trained[0.0].items() if tensor.dim() < 2]
    matrices = [name for name, tensor in trained[0.0].items() if tensor.dim() >= 2]
    assert vectors and matrices
    assert all(torch.equal(trained[0.5][name], trained[0.0][name]) for name in vectors)
    assert all(not torch.equal(trained[0.5][name], trained[0.0][name]) for name in matrices)


@pytest.mark.parametrize("dtype, optim", [("bf16", "adamw"), ("fp16", "adam"), ("fp32", "adafactor"), ("fp32", "sgd")])
def test_every_precision_and_optimiser_trains(t5_dir, task, tmp_path, dtype, optim):
    record = run(config(t5_dir, task, tmp_path, steps=3, dtype=dtype, optim=optim, lr=1e-2), log=quiet)
    assert (record["dtype"], record["optim"], record["steps"]) == (dtype, optim, 3)
    assert all(torch.isfinite(torch.tensor(record["losses"])))
    if dtype != "fp16":
        assert record["skipped_steps"] == 0   # only fp16's loss scaler skips steps
    else:   # the checkpoint holds the fp16 model's tensors; state.pt the fp32 masters
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        assert state["masters"][0].dtype == torch.float32 and state["scaler"]["scale"] > 0


def test_results_command_runs_each_configuration_and_prints_the_table(t5_dir, task, tmp_path, monkeypatch, capsys):
    from minipeft import results, taskdata
    monkeypatch.setattr(taskdata, "TASK_DIR", task.parent.parent)       # tasks/<name>/train.jsonl
    code = results.main(["--methods", "full", "probe", "--models", "t5", "--weights", str(t5_dir), "--random-base",
                         "--steps", "3", "--batch-size", "4", "--out", str(tmp_path)])
    assert code == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["method"], r["random_base"]) for r in runs] == [("full", False), ("probe", False), ("full", True),
                                                                ("probe", True)]
    assert all(r["task"] == "sentiment" and r["steps"] == 3 for r in runs)
    table = capsys.readouterr().out.strip().splitlines()[-6:]
    assert table[0].startswith("| method | base | task | steps | trainable params | trainable % | checkpoint | test")
    assert len(table) == 6 and "| probe | t5 (random) | sentiment | 3 |" in table[-1]
    assert (tmp_path / "results.md").read_text().strip().splitlines() == table


def test_results_with_several_seeds_adds_the_mean_over_them(t5_dir, task, tmp_path, monkeypatch, capsys):
    from minipeft import results, taskdata
    monkeypatch.setattr(taskdata, "TASK_DIR", task.parent.parent)
    code = results.main(["--methods", "full", "probe", "--models", "t5", "--weights", str(t5_dir), "--seeds", "0", "1",
                         "--steps", "2", "--batch-size", "4", "--out", str(tmp_path)])
    assert code == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [("full", 0), ("probe", 0), ("full", 1), ("probe", 1)]
    assert (tmp_path / "t5-sentiment-probe" / "metrics.json").is_file()          # seed 0 keeps its place
    assert (tmp_path / "t5-sentiment-probe-seed1" / "metrics.json").is_file()
    first_table, seed_table = (tmp_path / "results.md").read_text().strip().split("\n\n")
    assert capsys.readouterr().out.strip().endswith(seed_table)
    assert len(first_table.splitlines()) == 4                                     # header, rule, seed 0's two runs
    probe = [r["score"] * 100 for r in runs if r["method"] == "probe"]
    full = [r["score"] * 100 for r in runs if r["method"] == "full"]
    row = next(line for line in seed_table.splitlines() if line.startswith("| probe |"))
    assert f"| 0, 1 | accuracy {sum(probe) / 2:.1f} ({min(probe):.1f} … {max(probe):.1f}) |" in row
    assert row.endswith(f"| {100 * sum(probe) / sum(full):.1f}% |") if sum(full) else row.endswith("| – |")

def test_results_reuse_only_a_run_made_with_today_s_options_and_base(t5_dir, task, tmp_path, monkeypatch):
    """--reuse must not keep a run whose method defaults or base changed since (metrics.json alone
    records only the options the user set)."""
    import dataclasses
    from minipeft import results
    from minipeft.methods import METHODS
    made = config(t5_dir, task, tmp_path, method="lora", steps=1)
    run(made, log=quiet)
    assert results.finished_run(made)["method"] == "lora"
    assert results.finished_run(dataclasses.replace(made, lr=5e-4)) is None            # metrics.json differs
    assert results.finished_run(dataclasses.replace(made, options={"r": 4})) is None   # options the user set
    listed = config(t5_dir, task, tmp_path / "listed", method="lora", steps=1, options={"target_modules": ("q", "v")})
    run(listed, log=quiet)
    assert results.finished_run(listed)["method"] == "lora"   # a tuple option, a list in metrics.json
    from_words = config(t5_dir, task, tmp_path / "words", method="prompt", steps=1,
                        options={"prompt_tuning_init": "text", "prompt_tuning_init_text": "good"})
    run(from_words, log=quiet)
    assert results.finished_run(from_words)["method"] == "prompt"   # with the tokenizer train.py filled in
    lora = METHODS["lora"]
    changed = dataclasses.make_dataclass("Options", [("r", int, dataclasses.field(default=lora.Options().r + 1))],
                                         bases=(lora.Options,), frozen=True)
    with monkeypatch.context() as patch:                                                # a default changed since
        patch.setattr(lora, "Options", changed)
        assert results.finished_run(made) is None
    monkeypatch.setattr(results, "base_fingerprint", lambda model: "another base")      # the base changed since
    assert results.finished_run(made) is None

def test_default_steps_come_from_the_task():
    assert TrainConfig(task="sentiment").steps == training.DEFAULT_STEPS
    assert TrainConfig(task="e2e").steps == training.TASK_STEPS["e2e"]
    assert TrainConfig(task="e2e", steps=7).steps == 7
    assert TrainConfig(task="e2e", data="mine.jsonl").steps == training.DEFAULT_STEPS   # --data: not the task
    assert TrainConfig(task="sentiment+nli").steps == training.TASK_STEPS["nli"]          # mixed: the most


def test_a_method_s_own_steps_on_a_task_win_over_the_task_s(monkeypatch):
    monkeypatch.setitem(training.TASK_DEFAULTS, ("tiny-t5", "e2e", "bitfit"), {"steps": 1234})
    assert TrainConfig(method="bitfit", task="e2e").steps == 1234
    assert TrainConfig(method="bitfit", task="e2e", steps=7).steps == 7                 # --steps wins
    assert TrainConfig(method="lora", task="e2e").steps == training.TASK_STEPS["e2e"]  # another method
    assert TrainConfig(method="bitfit", task="e2e", data="mine.jsonl").steps == training.DEFAULT_STEPS
    assert "1234 for bitfit on tiny-t5's e2e" in training.default_steps_text()


def test_default_learning_rate_comes_from_the_base_the_method_or_the_table(monkeypatch):
    from minipeft.methods import METHODS
    assert TrainConfig(method="probe").learning_rate == training.DEFAULT_LR["probe"]
    assert TrainConfig(method="probe", lr=0.5).learning_rate == 0.5
    monkeypatch.setattr(METHODS["probe"], "default_lr", 0.25, raising=False)
    assert TrainConfig(method="probe").learning_rate == 0.25
    monkeypatch.setitem(training.BASE_LR, ("tiny-gpt", "probe"), 0.125)     # a base's own rate wins
    assert TrainConfig(method="probe", model="tiny-gpt").learning_rate == 0.125
    assert TrainConfig(method="probe", model="tiny-t5").learning_rate == 0.25
    assert TrainConfig(method="probe", model="tiny-gpt", lr=0.5).learning_rate == 0.5
    assert TrainConfig(method="prefix", model="tiny-gpt").learning_rate == 1e-3
    assert TrainConfig(method="prefix", model="tiny-t5", task="e2e").learning_rate == training.DEFAULT_LR["prefix"]


def test_a_task_s_own_defaults_apply_to_its_base_and_method_and_give_way_to_the_user(monkeypatch):
    monkeypatch.setitem(training.TASK_DEFAULTS, ("tiny-t5", "nli", "lora"), {"lr": 0.125, "options": {"r": 2}})
    assert TrainConfig(method="lora", task="nli").learning_rate == 0.125
    assert TrainConfig(method="lora", task="nli").options == {"r": 2}
    assert TrainConfig(method="lora", task="nli", lr=0.5, options={"r": 4}).learning_rate == 0.5
    assert TrainConfig(method="lora", task="nli", options={"r": 4}).options == {"r": 4}
    assert TrainConfig(method="lora", task="nli", options={"lora_alpha": 4}).options == {"r": 2, "lora_alpha": 4}
    for other in (dict(task="e2e"), dict(model="tiny-gpt", task="nli"), dict(task="nli", data="my.jsonl")):
        assert TrainConfig(method="lora", **other).options == {}
        assert TrainConfig(method="lora", **other).learning_rate == training.DEFAULT_LR["lora"]
    assert TrainConfig(method="prefix", task="nli").options == {"num_virtual_tokens": 10}   # the shipped entries
    assert TrainConfig(method="full", task="nli").dropout_rate == 0.0
    assert TrainConfig(method="full", task="nli", dropout=0.1).dropout_rate == 0.1
    assert TrainConfig(method="full", task="e2e").dropout_rate is None                     # the base's own


def test_the_shipped_nli_and_sentiment_settings_of_lora_and_adapters():
    assert TrainConfig(method="lora", task="nli").options == {"target_modules": ("q", "k", "v", "o", "wi", "wo"),
                                                              "r": 16}
    assert TrainConfig(method="lora", task="nli").learning_rate == training.DEFAULT_LR["lora"]
    assert TrainConfig(method="lora", task="sentiment").options == TrainConfig(method="lora", task="nli").options
    assert TrainConfig(method="lora", task="sentiment").learning_rate == 1e-3
    assert TrainConfig(method="lora", model="tiny-gpt", task="sentiment").options == {}
    assert TrainConfig(method="lora", task="nli", options={"target_modules": "q,v"}).options["r"] == 16
    assert TrainConfig(method="adapter", task="nli").learning_rate == 3e-3
    assert TrainConfig(method="adapter", task="nli").options == {"cross_adapter": True}
    assert TrainConfig(method="adapter", task="nli", options={"cross_adapter": False}).options == {"cross_adapter": False}
    assert TrainConfig(method="adapter", task="nli").steps == 3000 == training.TASK_STEPS["nli"]
    assert TrainConfig(method="adapter", task="sentiment").learning_rate == training.DEFAULT_LR["adapter"]
    assert TrainConfig(method="adapter", task="sentiment").options == {"adapter_stacks": ("decoder",),
                                                                       "cross_adapter": True}


def test_an_init_text_option_gets_the_base_s_own_tokenizer():
    from minipeft import bases, get_peft
    config = TrainConfig(method="prefix", options={"prefix_init_text": "good bad great tasty"})
    assert training.method_options(config)["tokenizer_name_or_path"] == str(bases.DATA_DIR / "bases" / "tiny-t5")
    assert "tokenizer_name_or_path" not in training.method_options(TrainConfig(method="prefix", task="e2e"))
    shipped = training.method_options(TrainConfig(method="prefix"))     # sentiment's prefix starts from words
    assert shipped["prefix_init_text"] == training.SENTIMENT_PREFIX_WORDS
    assert shipped["tokenizer_name_or_path"] == str(bases.DATA_DIR / "bases" / "tiny-t5")
    assert "prefix_init_text" not in TrainConfig(method="prefix", model="tiny-gpt").options
    assert TrainConfig(method="prefix").learning_rate == 3e-3                 # the rate a words' start wants
    assert TrainConfig(method="prefix", task="e2e").learning_rate == training.DEFAULT_LR["prefix"]
    given = TrainConfig(method="prompt", options={"prompt_tuning_init": "text", "prompt_tuning_init_text": "good",
                                                  "tokenizer_name_or_path": "my/tokenizer"})
    assert training.method_options(given)["tokenizer_name_or_path"] == "my/tokenizer"   # a given one wins
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):   # what train.py users met before
        get_peft(training.build_base(config)[0], "prefix", **config.options)
    peft = training.attach_method(training.build_base(config)[0], config)
    assert peft.options.tokenizer_name_or_path == str(bases.DATA_DIR / "bases" / "tiny-t5")


def test_dropout_is_off_for_a_frozen_base_and_the_base_s_own_for_full(t5_dir, task, tmp_path, monkeypatch):
    assert TrainConfig(method="lora").dropout_rate == 0.0
    assert TrainConfig(method="full").dropout_rate is None
    assert TrainConfig(method="lora", dropout=0.2).dropout_rate == 0.2
    bases = []
    real_set_dropout = training.set_dropout
    monkeypatch.setattr(training, "set_dropout",
                        lambda model, rate: (bases.append(model), real_set_dropout(model, rate)))
    record = run(config(t5_dir, task, tmp_path, method="lora", steps=1), log=quiet)
    assert record["dropout"] == 0.0
    rates = [m.p for m in bases[0].modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.dropout for m in bases[0].modules() if isinstance(getattr(m, "dropout", None), float)]
    assert len(bases) == 1 and rates and set(rates) == {0.0}


def test_the_embedded_tasks_load_with_their_kinds():
    from minipeft.taskdata import load_task
    kinds = {name: load_task(name).kind for name in ("sentiment", "nli", "e2e")}
    assert kinds == {"sentiment": "classification", "nli": "classification", "e2e": "table-to-text"}


def test_e2e_references_mention_every_slot_in_the_world_s_phrasing():
    from minipeft.metrics import slot_coverage
    from minipeft.taskdata import load_task
    e2e = load_task("e2e")
    tables, references = [e.input for e in e2e.test], [e.target for e in e2e.test]
    assert slot_coverage(tables, references, e2e.slot_phrases) == 1.0
    assert slot_coverage(tables, references) < 0.9     # "familyFriendly[yes]" is said "family friendly"


def test_the_readme_grid_covers_every_method_and_task_and_the_random_baselines():
    from minipeft.methods import method_names
    from minipeft.results import readme_grid
    grid = readme_grid(["sentiment", "nli", "e2e"])
    alone = set(method_names()) - {"adapter_fusion"}     # fusion builds on adapter runs: its own commands
    assert {(task, method) for model, random, task, method in grid if model == "tiny-t5" and not random} == \
        {(task, method) for task in ("sentiment", "nli", "e2e") for method in alone}
    for base in ("tiny-gpt", "tiny-t5-lm"):
        assert {(task, method) for model, _, task, method in grid if model == base} == \
            {("sentiment", method) for method in alone}
    assert {(task, method) for _, random, task, method in grid if random} == \
        {(task, method) for task in ("sentiment", "nli", "e2e") for method in ("full", "probe")}
    assert len(grid) == len(set(grid))


def test_a_table_names_a_run_s_options_and_shortens_a_text_option():
    from minipeft.results import method_label
    assert method_label({"method": "lora", "options": {"r": 16, "target_modules": ["q", "v"]}}) == \
        "lora r=16 target_modules=q,v"
    assert method_label({"method": "prefix", "options": {"prefix_init_text": "review positive negative good bad"}}) == \
        "prefix prefix_init_text=review positive negative …"
    assert method_label({"method": "full", "options": {}}) == "full"


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "nope"], "no task 'nope' in data/tasks; available:"),
    (["--tasks", "sentiment", "--steps", "0"], "steps must be at least 1, got 0"),
    (["--tasks", "sentiment", "--batch-size", "0"], "batch_size must be at least 1, got 0"),
])
def test_results_refuses_bad_flags_before_the_first_run(flags, message, tmp_path, capsys):
    from minipeft import results
    assert results.main(["--methods", "full", "--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


# -- several tasks, and a run that starts from another's tensors (F4.3) ---------------------------

def test_tasks_joined_by_plus_are_one_task_interleaved():
    from minipeft.taskdata import load_task
    sentiment, nli, both = load_task("sentiment"), load_task("nli"), load_task("sentiment+nli")
    assert both.name == "sentiment+nli" and both.kind == "classification"
    for split in ("train", "dev", "test"):
        mixed, first, second = getattr(both, split), getattr(sentiment, split), getattr(nli, split)
        assert sorted(map(str, mixed)) == sorted(map(str, first + second))
        assert mixed[:4] == [first[0], second[0], first[1], second[1]]     # every dev prefix holds both
    with pytest.raises(DataError, match="scored alike"):
        load_task("sentiment+e2e")
    with pytest.raises(DataError, match="no task 'nosuch'"):
        load_task("sentiment+nosuch")


def test_init_from_starts_where_the_other_run_ended_with_its_options(t5_dir, task, tmp_path):
    first = config(t5_dir, task, tmp_path / "first", method="lora", options={"r": 2}, lr=1e-2)
    run(first, log=quiet)
    saved = load_file(tmp_path / "first" / PEFT_FILE)
    second = config(t5_dir, task, tmp_path / "second", method="lora", init_from=str(tmp_path / "first"))
    job = training.Run(second, log=quiet)
    assert job.config.options["r"] == 2                                  # the first run's options, not LoRA's 8
    assert {name: tensor for name, tensor in job.peft.trained_state_dict().items()}.keys() == saved.keys()
    assert all(torch.equal(job.peft.trained_state_dict()[name], tensor) for name, tensor in saved.items())
    record = job.train()
    assert record["init_from"] == str(tmp_path / "first") and record["options"]["r"] == 2
    # and the continued run resumes and reloads like any other
    assert run(training.config_for_resume(tmp_path / "second", {}), resume=tmp_path / "second", eval_only=True,
               log=quiet)["metrics"] == record["metrics"]


@pytest.mark.parametrize("changes, message", [
    (dict(method="lora", options={"r": 4}), "--option cannot change them: drop --option r"),
    (dict(method="prompt"), "holds a 'lora' checkpoint, not 'prompt'"),
    (dict(method="lora", init_from="nowhere"), "--init-from nowhere: no PEFT checkpoint"),
])
def test_init_from_refuses_another_method_other_options_and_a_missing_run(t5_dir, task, tmp_path, changes, message):
    run(config(t5_dir, task, tmp_path / "first", method="lora", options={"r": 2}), log=quiet)
    settings = {"init_from": str(tmp_path / "first"), **changes}
    with pytest.raises(TrainingError, match=message):
        training.Run(config(t5_dir, task, tmp_path / "second", **settings), log=quiet)
