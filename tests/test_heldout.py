"""python -m minipeft.heldout: test accuracy split by what each input holds out."""

import json

import pytest

from minipeft import heldout, world
from minipeft.world import DATA_DIR


def read_test_split(task):
    lines = (DATA_DIR / "tasks" / task / "test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def write_run(directory, predict, method="adapter", task="sentiment", seed=0, lr=1e-2):
    """A train.py output directory whose predictions are ``predict(example)``."""
    directory.mkdir(parents=True)
    record = {"method": method, "model": "tiny-t5", "task": task, "kind": "classification", "random_base": False,
              "options": {}, "lr": lr, "seed": seed}
    (directory / "metrics.json").write_text(json.dumps(record))
    rows = [{"input": e["input"], "prediction": predict(e), "references": [e["target"]]} for e in read_test_split(task)]
    (directory / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


@pytest.fixture(scope="module")
def the_world():
    return world.build_world(seed=0)


def uses_held_out_word(example, the_world):
    return "words" in world.held_out_kinds(example["input"], the_world)


def test_held_out_kinds_name_the_kinds_an_input_uses(the_world):
    assert world.held_out_kinds("Honestly, the soup at Joe's was superb.", the_world) == ("words", "phrasings")
    assert world.held_out_kinds("The Thai curry was delicious.", the_world) == ("values",)
    assert world.held_out_kinds("The soup was delicious.", the_world) == ()          # all seen: a train input
    assert world.held_out_kinds("Thailand was superbly lit.", the_world) == ()        # whole words only
    groups = world.held_out_groups(the_world)
    assert tuple(groups) == world.HELD_OUT_KINDS
    assert world.held_out_strings(the_world) == [item for kind in groups.values() for item in kind]


def test_rows_split_the_accuracy_by_kinds_and_average_a_method_over_its_runs(tmp_path, the_world):
    runs = [write_run(tmp_path / "full", lambda e: e["target"], method="full"),
            # one adapter run wrong on every input with a held-out word, one right on everything
            write_run(tmp_path / "adapter_0", lambda e: "wrong" if uses_held_out_word(e, the_world) else e["target"]),
            write_run(tmp_path / "adapter_1", lambda e: e["target"], seed=1)]
    lines = heldout.table(runs, the_world).splitlines()
    assert lines[0] == ("| held out in the input | examples | full, tiny-t5, lr 0.01 (1 run) "
                        "| adapter, tiny-t5, lr 0.01 (2 runs) |")
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ")[1:] for line in lines[2:]}
    examples = read_test_split("sentiment")
    assert rows["all"][0] == str(len(examples))
    assert sum(int(cells[0]) for key, cells in rows.items() if key != "all") == len(examples)
    for key, (count, full, adapter) in rows.items():
        assert full == "100.0%"
        if key == "all":
            with_word = sum(uses_held_out_word(e, the_world) for e in examples)
            assert adapter == f"{100 * (1 - with_word / len(examples) / 2):.1f}%"
        else:
            assert adapter == ("50.0%" if "words" in key.split(" + ") else "100.0%"), key


def test_runs_that_cannot_be_split_are_refused_with_the_fix(tmp_path, the_world):
    (tmp_path / "empty").mkdir()
    with pytest.raises(heldout.HeldOutError, match="--eval-only --resume"):
        heldout.table([tmp_path / "empty"], the_world)
    e2e = write_run(tmp_path / "e2e", lambda e: e["target"], task="nli")
    record = json.loads((e2e / "metrics.json").read_text())
    (e2e / "metrics.json").write_text(json.dumps(record | {"task": "e2e", "kind": "table-to-text"}))
    with pytest.raises(heldout.HeldOutError, match="only the world's classification tasks"):
        heldout.table([e2e], the_world)
    mixed = [write_run(tmp_path / "s", lambda e: e["target"]),
             write_run(tmp_path / "n", lambda e: e["target"], task="nli")]
    with pytest.raises(heldout.HeldOutError, match="different tasks"):
        heldout.table(mixed, the_world)
    own = write_run(tmp_path / "own", lambda e: e["target"])
    (own / "predictions.jsonl").write_text(json.dumps({"input": "The soup was delicious.", "prediction": "positive",
                                                       "references": ["positive"]}) + "\n")
    with pytest.raises(heldout.HeldOutError, match="not its sentiment test set"):
        heldout.table([own], the_world)


def test_command_line_prints_the_table_or_one_error(tmp_path, capsys):
    run = write_run(tmp_path / "run", lambda e: e["target"], task="nli")
    assert heldout.main([str(run)]) == 0
    assert "| all | " in capsys.readouterr().out
    assert heldout.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
