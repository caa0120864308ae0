"""A mixed batch (F2.5, F5.8): one frozen model, each example with its own trained prompt or prefix.

Every check compares a mixed batch against each method run alone on its own rows: the mixed
batch must change nothing but which table each row reads.
"""

import pytest
import torch

import minipeft
from minipeft.methods import MixedBatch, get_peft, save_trained

import tiny_models
from tiny_models import padded_batch

TASKS = ["a", "b", "a", "a"]          # the task of each example of a batch of four (not a palindrome)

# (method, options) pairs that can be mixed; every one is checked on T5 and on GPT
MIXABLE = [("prompt", {}), ("prefix", {}), ("prefix", {"prefix_projection": False}),
           ("prefix", {"embedding_only": True}), ("ptuning_v2", {})]


def tiny(kind):
    return tiny_models.tiny(kind, decoder_layers=2, wide=True)


def options_for(kind, method, options):
    """Prefix options that fit the model: T5's embedding-only prefix sits in the encoder input."""
    if kind == "t5" and options.get("embedding_only"):
        return {**options, "prefix_on": ("encoder",)}
    return options


def trained(model, method, seed, **options):
    """A method on ``model`` whose table is random (as if trained), different for each seed."""
    torch.manual_seed(seed)
    peft = get_peft(model, method, num_virtual_tokens=3, **options)
    with torch.no_grad():
        for param in peft.parameters():
            if param.requires_grad:
                param.normal_(0, 1.0)
    return peft.eval()


def batch_of_four(kind):
    """B=4: the padded batch twice, so rows of both tasks are padded and unpadded."""
    pair = padded_batch(kind)
    return {name: torch.cat([value, value.flip(0)]) for name, value in pair.items()}


def mixed_pair(kind, method, options):
    model = tiny(kind)
    options = options_for(kind, method, options)
    methods = {"a": trained(model, method, 1, **options), "b": trained(model, method, 2, **options)}
    return model, methods, MixedBatch(model, methods)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
@pytest.mark.parametrize("method,options", MIXABLE)
def test_each_row_gets_the_logits_of_its_own_method(kind, method, options):
    """F2.5 / F5.8: row b of the mixed batch equals method t_b alone on row b."""
    model, methods, mixed = mixed_pair(kind, method, options)
    inputs = batch_of_four(kind)
    with torch.no_grad():
        got = mixed(tasks=TASKS, **inputs)
        for task, peft in methods.items():
            rows = [b for b, name in enumerate(TASKS) if name == task]
            alone = peft(**{name: value[rows] for name, value in inputs.items()})
            torch.testing.assert_close(got[rows], alone, rtol=0, atol=1e-5)
    assert not torch.allclose(mixed.tables[0], mixed.tables[1])   # two tables, so rows read different ones


@pytest.mark.parametrize("kind", ["t5", "gpt"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_decodes_each_row_under_its_own_method(kind, method, num_beams):
    """Greedy and beam search: the mixed batch's tokens are each method's own, row by row."""
    model, methods, mixed = mixed_pair(kind, method, {})
    ids = torch.randint(2, 64, (4, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    got = mixed.generate(ids, tasks=TASKS, max_new_tokens=6, attention_mask=mask, num_beams=num_beams)
    for task, peft in methods.items():
        rows = [b for b, name in enumerate(TASKS) if name == task]
        alone = peft.generate(ids[rows], max_new_tokens=6, attention_mask=mask[rows], num_beams=num_beams)
        assert torch.equal(got[rows, :alone.shape[1]], alone)


def test_the_tables_of_different_methods_really_change_the_output():
    """The same input under task a and under task b gives different logits (the test above could
    otherwise pass with one table read by every row)."""
    model, methods, mixed = mixed_pair("t5", "prefix", {})
    inputs = batch_of_four("t5")
    same_input = {name: value[[0, 0]] for name, value in inputs.items()}
    logits = mixed(tasks=["a", "b"], **same_input)
    assert (logits[0] - logits[1]).abs().max() > 1e-2


def test_tasks_may_be_given_as_indices():
    model, methods, mixed = mixed_pair("gpt", "prompt", {})
    inputs = batch_of_four("gpt")
    by_name = mixed(tasks=TASKS, **inputs)
    by_index = mixed(tasks=torch.tensor([0, 1, 0, 0]), **inputs)
    assert torch.equal(by_name, by_index)


def test_a_folded_prefix_mixes_with_a_reparametrised_one():
    """F5.5: the mixed batch reads P_θ = MLP(P'_θ), which is what fold() keeps."""
    model = tiny("t5")
    first, second = trained(model, "prefix", 1), trained(model, "prefix", 2)
    inputs = batch_of_four("t5")
    before = MixedBatch(model, {"a": first, "b": second})(tasks=TASKS, **inputs)
    after = MixedBatch(model, {"a": first.fold(), "b": second})(tasks=TASKS, **inputs)
    torch.testing.assert_close(before, after, rtol=0, atol=1e-5)


def test_load_mixes_saved_checkpoints(tmp_path):
    model, methods, mixed = mixed_pair("t5", "prefix", {})
    for task, peft in methods.items():
        save_trained(peft, tmp_path / f"{task}.safetensors")
    loaded = minipeft.MixedBatch.load(model, {task: tmp_path / f"{task}.safetensors" for task in methods})
    inputs = batch_of_four("t5")
    assert loaded.tasks == ["a", "b"]
    assert torch.equal(loaded(tasks=TASKS, **inputs), mixed(tasks=TASKS, **inputs))


def test_the_mixed_batch_trains_nothing_and_moves_no_base_weight():
    model, methods, mixed = mixed_pair("t5", "prompt", {})
    assert not any(param.requires_grad for param in mixed.parameters())
    before = {name: value.clone() for name, value in model.state_dict().items()}
    mixed(tasks=TASKS, **batch_of_four("t5"))
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


# ---- F2.4: the prompt ensemble votes ---------------------------------------------------------------

def ensemble_of_three(kind="t5", method="prompt"):
    model = tiny(kind)
    methods = {f"seed {seed}": trained(model, method, seed) for seed in (1, 2, 3)}
    return methods, MixedBatch(model, methods)


@pytest.mark.parametrize("kind", ["t5", "gpt"])
def test_the_vote_is_the_answer_most_prompts_give(kind):
    """F2.4: each input's answer is the one most of the N prompts give alone (ties: the first prompt's)."""
    methods, ensemble = ensemble_of_three(kind)
    ids = torch.randint(2, 64, (6, 5), generator=torch.Generator().manual_seed(4))
    voted = ensemble.vote(ids, max_new_tokens=3)
    alone = [peft.generate(ids, max_new_tokens=3) for peft in methods.values()]       # N × (B, ≤ 3)
    length = max(answer.shape[1] for answer in alone)
    alone = [torch.nn.functional.pad(answer, (0, length - answer.shape[1])) for answer in alone]
    for b in range(len(ids)):
        answers = [tuple(answer[b].tolist()) for answer in alone]
        expected = max(answers, key=lambda answer: (answers.count(answer), -answers.index(answer)))
        assert tuple(voted[b, :length].tolist()) == expected


def test_two_of_three_outvote_one_and_a_tie_goes_to_the_first():
    """The vote on outputs we choose: replace generate by a table of answers."""
    methods, ensemble = ensemble_of_three()
    answers = torch.tensor([[[5, 1], [6, 1], [6, 1]],       # input 0: the 2nd and 3rd agree → [6, 1]
                            [[7, 1], [8, 1], [9, 1]],       # input 1: all differ → the first, [7, 1]
                            [[4, 1], [3, 1], [4, 1]]])      # input 2: the 1st and 3rd agree → [4, 1]
    ensemble.generate = lambda input_ids, tasks, *args, **kwargs: answers.flatten(0, 1)
    voted = ensemble.vote(torch.zeros(3, 2, dtype=torch.long))
    assert voted.tolist() == [[6, 1], [7, 1], [4, 1]]


def test_an_ensemble_of_one_is_that_prompt():
    model = tiny("t5")
    peft = trained(model, "prefix", 1)
    ids = torch.randint(2, 64, (3, 5), generator=torch.Generator().manual_seed(4))
    assert torch.equal(MixedBatch(model, {"only": peft}).vote(ids, max_new_tokens=4),
                       peft.generate(ids, max_new_tokens=4))


# ---- bad input ---------------------------------------------------------------------------------------

def test_refuses_methods_that_change_layers():
    model = tiny("t5")
    with pytest.raises(ValueError, match="only methods at the input seams.*a: lora"):
        MixedBatch(model, {"a": get_peft(model, "lora")})


def test_refuses_two_different_methods():
    model = tiny("t5")
    with pytest.raises(ValueError, match="must be one method"):
        MixedBatch(model, {"a": trained(model, "prompt", 1), "b": trained(model, "prefix", 2)})


def test_refuses_tables_of_different_shapes():
    model = tiny("t5")
    short = get_peft(model, "prompt", num_virtual_tokens=2)
    with pytest.raises(ValueError, match="one shape.*a: num_virtual_tokens=3; b: num_virtual_tokens=2"):
        MixedBatch(model, {"a": trained(model, "prompt", 1), "b": short})
    decoder_only = get_peft(model, "prefix", num_virtual_tokens=3, prefix_on=("decoder",))
    with pytest.raises(ValueError, match="prefix_on"):
        MixedBatch(model, {"a": trained(model, "prefix", 1), "b": decoder_only})


def test_refuses_an_infix():
    model = tiny("gpt")
    infix = get_peft(model, "prefix", num_virtual_tokens=3, infix=True)
    with pytest.raises(ValueError, match="b: an infix"):
        MixedBatch(model, {"a": trained(model, "prefix", 1), "b": infix})


def test_refuses_a_method_trained_on_another_base():
    model, other = tiny("t5"), tiny_models.tiny("t5", seed=5, decoder_layers=2)
    with pytest.raises(ValueError, match="b trained on a different base model"):
        MixedBatch(model, {"a": trained(model, "prompt", 1), "b": trained(other, "prompt", 2)})


def test_refuses_no_methods():
    with pytest.raises(ValueError, match="at least one trained method"):
        MixedBatch(tiny("t5"), {})


def test_unknown_task_and_wrong_count_are_named():
    model, methods, mixed = mixed_pair("t5", "prompt", {})
    inputs = batch_of_four("t5")
    with pytest.raises(ValueError, match=r"unknown task\(s\) 'c'.*\['a', 'b'\]"):
        mixed(tasks=["a", "b", "c", "a"], **inputs)
    with pytest.raises(minipeft.ShapeError, match="one task per example"):
        mixed(tasks=["a", "b"], **inputs)
    with pytest.raises(ValueError, match="list of 4 names"):
        mixed(tasks="a", **inputs)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 2\)"):
        mixed(tasks=torch.tensor([0, 1, 2, 0]), **inputs)
