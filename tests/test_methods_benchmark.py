"""The methods benchmark runs end to end (at a tiny shape, one repetition): a check that the script
works, not a measurement. Timings are only ever read from a real run, never asserted."""

import pytest

from conftest import reference

TINY_T5 = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               feed_forward_proj="relu", dropout_rate=0.1, tie_word_embeddings=True)


@pytest.mark.slow
def test_methods_benchmark_runs_and_reports_parity():
    reference("peft")
    from minipeft.benchmarks import methods
    from minipeft.benchmarks.models import Settings

    results = methods.run(Settings(warmup=0, reps=1), shape=TINY_T5)
    text = methods.report(results)
    lora = results["training"][0]
    assert lora["available"] and lora["trainable"]["ours"] == lora["trainable"]["peft"]
    assert lora["max_abs_logit_delta"] <= 1e-4 < lora["lora_effect_max_abs"]
    assert results["inference"]["merged_vs_unmerged_max_abs_delta"] <= 1e-5
    assert results["inference"]["adapters_at_init_max_abs_delta"] == 0
    assert "lora r=8 q,v" in text and "lora_merged" in text
