"""python -m minipeft.compare: a method's mean over seeds against full fine-tuning's, with a paired
bootstrap interval for the ratio."""

import json

import pytest

from minipeft import compare


def write_run(directory, method, seed, score, task="sentiment", options=None, score_name="accuracy"):
    """A finished train.py output directory: only metrics.json matters here."""
    directory.mkdir(parents=True)
    record = {"method": method, "model": "tiny-t5", "task": task, "random_base": False, "options": options or {},
              "seed": seed, "score": score, "score_name": score_name, "metrics": {score_name: score}}
    (directory / "metrics.json").write_text(json.dumps(record))
    return directory


def write_seeds(tmp_path, method, scores, **kwargs):
    return [write_run(tmp_path / f"{method}_{seed}", method, seed, score, **kwargs) for seed, score in scores.items()]


def test_ratio_of_means_is_the_ratio_of_the_sums():
    assert compare.ratio_of_means([0.8, 0.6], [1.0, 0.8]) == pytest.approx(1.4 / 1.8)


def test_a_constant_ratio_per_seed_gives_a_bootstrap_interval_of_that_ratio():
    full = [80.0, 85.0, 90.0, 70.0]
    low, high = compare.paired_bootstrap([0.9 * x for x in full], full, draws=500)
    assert low == pytest.approx(0.9) and high == pytest.approx(0.9)


def test_the_bootstrap_interval_holds_the_ratio_and_widens_with_the_seed_noise():
    full = [83.0, 84.0, 82.0, 85.0, 84.0, 83.0]
    steady = [80.0, 80.5, 79.0, 81.0, 80.0, 79.5]
    noisy = [90.0, 70.0, 85.0, 72.0, 88.0, 75.0]         # the same sum as steady
    steady_low, steady_high = compare.paired_bootstrap(steady, full, draws=2000)
    noisy_low, noisy_high = compare.paired_bootstrap(noisy, full, draws=2000)
    ratio = compare.ratio_of_means(steady, full)
    assert ratio == pytest.approx(compare.ratio_of_means(noisy, full))
    assert steady_low < ratio < steady_high and noisy_low < ratio < noisy_high
    assert noisy_high - noisy_low > 3 * (steady_high - steady_low)


def test_the_bootstrap_is_repeatable_and_refuses_unpaired_scores():
    assert compare.paired_bootstrap([1.0, 2.0, 3.0], [2.0, 2.0, 3.5]) == \
        compare.paired_bootstrap([1.0, 2.0, 3.0], [2.0, 2.0, 3.5])
    with pytest.raises(compare.CompareError, match="pairs runs by seed"):
        compare.paired_bootstrap([1.0, 2.0], [1.0])


def test_the_verdict_says_where_the_interval_lies():
    assert compare.verdict(0.96, 0.99, 0.95) == "above"
    assert compare.verdict(0.90, 0.94, 0.95) == "below"
    assert compare.verdict(0.93, 0.97, 0.95).startswith("across")


def test_the_table_pairs_seeds_with_full_and_reads_the_gap(tmp_path, capsys):
    full = {0: 0.84, 1: 0.85, 2: 0.83, 3: 0.86}
    runs = write_seeds(tmp_path, "full", full)
    runs += write_seeds(tmp_path, "adapter", {seed: score - 0.08 for seed, score in full.items()})
    runs += write_seeds(tmp_path, "lora", {0: 0.84, 1: 0.84, 2: 0.82, 9: 0.5})   # seed 9 has no full run
    assert compare.main([str(d) for d in runs] + ["--draws", "1000"]) == 0
    rows = {line.split(" | ")[2]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"full", "adapter", "lora"}
    assert "90.5%" in rows["adapter"] and rows["adapter"].endswith("| below |")
    assert "3 (0, 1, 2)" in rows["lora"] and "99.2%" in rows["lora"]
    assert "4 (0, 1, 2, 3)" in rows["full"]


def test_methods_with_different_options_are_separate_rows(tmp_path):
    runs = write_seeds(tmp_path, "full", {0: 0.8, 1: 0.8})
    runs += write_seeds(tmp_path / "a", "adapter", {0: 0.7, 1: 0.7})
    runs += write_seeds(tmp_path / "b", "adapter", {0: 0.8, 1: 0.8}, options={"cross_adapter": True})
    table = compare.comparison_table(compare.group_by_configuration([compare.read_record(d) for d in runs]))
    assert "| adapter |" in table and "| adapter cross_adapter=True |" in table


def test_a_directory_without_metrics_is_refused_with_the_fix(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert compare.main([str(tmp_path / "half")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_a_method_without_full_fine_tuning_beside_it_is_refused(tmp_path):
    runs = write_seeds(tmp_path, "adapter", {0: 0.7})
    runs += write_seeds(tmp_path, "full", {0: 0.8}, task="nli")
    with pytest.raises(compare.CompareError, match="no full fine-tuning run beside it"):
        compare.comparison_table(compare.group_by_configuration([compare.read_record(d) for d in runs]))


def test_the_same_seed_twice_is_refused(tmp_path):
    runs = [write_run(tmp_path / "x", "full", 0, 0.8), write_run(tmp_path / "y", "full", 0, 0.81)]
    with pytest.raises(compare.CompareError, match="seed 0"):
        compare.group_by_configuration([compare.read_record(d) for d in runs])


def test_bleu_is_shown_as_it_is_and_accuracy_in_percent(tmp_path):
    runs = write_seeds(tmp_path, "full", {0: 70.0, 1: 72.0}, task="e2e", score_name="bleu")
    runs += write_seeds(tmp_path / "a", "lora", {0: 63.0, 1: 64.8}, task="e2e", score_name="bleu")
    table = compare.comparison_table(compare.group_by_configuration([compare.read_record(d) for d in runs]))
    lora_row = next(line for line in table.splitlines() if "| lora |" in line)
    assert "| 63.0 64.8 | 63.9 (0.9) | 90.0% |" in lora_row
