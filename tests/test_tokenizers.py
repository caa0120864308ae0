"""minipeft.tokenizers gives the same ids as transformers, on tokenizers trained here.

Offline: a small SentencePiece unigram model (T5's special ids) and a small byte-level BPE
(GPT-2's format) are trained on SAMPLE_LINES in a temporary directory, then read both by our
tokenizers and by transformers' T5Tokenizer / GPT2Tokenizer, which serve as the reference.
"""

import unicodedata

import pytest
import torch

from minipeft.tokenizers import GPT2Tokenizer, T5Tokenizer

SAMPLE_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning models learn patterns from data, and tokenizers split text into pieces.",
    "question: what is the capital of France? context: Paris is the capital of France.",
    "it's we'll they've I'm you'd she'll",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Die Katze schläft auf dem Sofa, während der Regen gegen das Fenster prasselt.",
    "Le renard brun rapide saute par-dessus le chien paresseux, à côté de l'église.",
    "Nous avons mangé des crêpes au café près de la gare à Noël.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "机器学习模型从数据中学习规律。",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Москва — столица России, а Берлин — столица Германии.",
    "Emoji 🙂🚀 and digits 12345 67.89, 😀😃😄 in 1999 42 students read 7 books.",
    "Prices: $3.50, €4.20, £1.99 — 100% sure.",
    "  extra   spaces   here  ",
    "tabs\tand\nnewlines and    many     spaces",
]
# Text the tokenizers never saw in training: special tokens by name, unknown characters, NFKC.
T5_EXTRA_LINES = [
    "Hello <extra_id_3> world <extra_id_0>.",
    "<extra_id_3>fox<extra_id_4><extra_id_99>",
    "<extra_id_100> is not a sentinel with 100 extra ids",
    "a  <extra_id_1>  b and x</s>y and <pad><unk>",
    "Ελληνικά and 日本語 are not in the vocabulary",
    "ＡＢＣ full width ① ﬁ",
    "",
]
GPT2_EXTRA_LINES = ["x<|endoftext|>y", "Ελληνικά 日本語 ½ Ⅻ", "a \n\n b   ", ""]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A checkpoint directory with a small spiece.model (pad 0, eos 1, unk 2, no bos)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("t5")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SAMPLE_LINES * 20), model_prefix=str(directory / "spiece"),
        model_type="unigram", vocab_size=300, hard_vocab_limit=False, character_coverage=1.0,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A checkpoint directory with vocab.json and merges.txt of a small byte-level BPE."""
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers library trains the test BPE")
    directory = tmp_path_factory.mktemp("gpt2")
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(SAMPLE_LINES * 5, vocab_size=600, min_frequency=2,
                                special_tokens=["<|endoftext|>"], show_progress=False)
    trainer.save_model(str(directory))
    return directory


@pytest.fixture(scope="module")
def reference_t5(t5_dir):
    """transformers' T5Tokenizer: from_pretrained converts spiece.model, which needs protobuf."""
    transformers = pytest.importorskip("transformers", reason="transformers is the reference tokenizer")
    pytest.importorskip("google.protobuf", reason="transformers reads spiece.model with protobuf")
    return transformers.T5Tokenizer.from_pretrained(str(t5_dir))


@pytest.fixture(scope="module")
def reference_gpt2(gpt2_dir):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference tokenizer")
    return transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))


# --- T5 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLE_LINES + T5_EXTRA_LINES)
def test_t5_ids_match_transformers(t5_dir, reference_t5, text):
    assert T5Tokenizer.from_dir(t5_dir).encode(text) == reference_t5(text)["input_ids"]


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_t5_decode_matches_transformers(t5_dir, reference_t5, skip_special_tokens):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    for text in SAMPLE_LINES + T5_EXTRA_LINES:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids, skip_special_tokens) == reference_t5.decode(ids, skip_special_tokens)


def test_t5_sentinels_count_down_from_the_top_of_the_vocabulary(t5_dir, reference_t5):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    assert tokenizer.vocab_size == tokenizer.piece_count + 100 == len(reference_t5)
    assert tokenizer.sentinel_id(0) == tokenizer.vocab_size - 1
    assert tokenizer.sentinel_id(99) == tokenizer.piece_count
    for index in range(100):
        assert tokenizer.sentinel_id(index) == reference_t5.convert_tokens_to_ids(f"<extra_id_{index}>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)


@pytest.mark.parametrize("text", SAMPLE_LINES)
def test_t5_decode_gives_back_the_normalised_text(t5_dir, text):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    normalised = " ".join(unicodedata.normalize("NFKC", text).split())
    assert tokenizer.decode(tokenizer.encode(text)) == normalised


def test_t5_batch_matches_transformers(t5_dir, reference_t5):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    batch = tokenizer(SAMPLE_LINES)
    expected = reference_t5(SAMPLE_LINES, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["input_ids"].dtype == torch.long


def test_t5_truncation_keeps_eos_like_transformers(t5_dir, reference_t5):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    batch = tokenizer(SAMPLE_LINES, max_length=8, truncation=True)
    expected = reference_t5(SAMPLE_LINES, max_length=8, truncation=True, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert (batch["input_ids"][:, -1] == tokenizer.eos_token_id).all()


def test_t5_too_long_text_names_its_index_and_length(t5_dir):
    tokenizer = T5Tokenizer.from_dir(t5_dir)
    length = len(tokenizer.encode(SAMPLE_LINES[1]))
    with pytest.raises(ValueError, match=f"text 1 is {length} tokens long.*max_length=5"):
        tokenizer(["a", SAMPLE_LINES[1]], max_length=5)


def test_t5_missing_spiece_model_says_which_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="spiece.model not found"):
        T5Tokenizer.from_dir(tmp_path)


def test_t5_malformed_spiece_model_says_which_file(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"this is not a SentencePiece model")
    with pytest.raises(ValueError, match="spiece.model is not a SentencePiece model"):
        T5Tokenizer.from_dir(tmp_path)


# --- GPT-2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLE_LINES + GPT2_EXTRA_LINES)
def test_gpt2_ids_match_transformers(gpt2_dir, reference_gpt2, text):
    assert GPT2Tokenizer.from_dir(gpt2_dir).encode(text) == reference_gpt2(text)["input_ids"]


@pytest.mark.parametrize("text", SAMPLE_LINES + GPT2_EXTRA_LINES)
def test_gpt2_decode_gives_back_the_exact_text(gpt2_dir, text):
    tokenizer = GPT2Tokenizer.from_dir(gpt2_dir)
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text


def test_gpt2_batch_is_padded_with_endoftext(gpt2_dir, reference_gpt2):
    tokenizer = GPT2Tokenizer.from_dir(gpt2_dir)
    batch = tokenizer(["a", "the quick brown fox"])
    lengths = [len(tokenizer.encode("a")), len(tokenizer.encode("the quick brown fox"))]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["input_ids"][0, lengths[0]:] == tokenizer.eos_token_id).all()
    assert tokenizer.eos_token_id == reference_gpt2.eos_token_id
    assert tokenizer.vocab_size == len(reference_gpt2)


def test_gpt2_missing_vocab_says_which_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json not found"):
        GPT2Tokenizer.from_dir(tmp_path)


def test_gpt2_malformed_merges_names_the_line(gpt2_dir, tmp_path):
    (tmp_path / "vocab.json").write_text((gpt2_dir / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
    good_merge = (gpt2_dir / "merges.txt").read_text(encoding="utf-8").split("\n")[1]
    (tmp_path / "merges.txt").write_text(f"#version: 0.2\n{good_merge}\nthree tokens here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt, line 3: expected two tokens"):
        GPT2Tokenizer.from_dir(tmp_path)


def test_gpt2_too_long_text_is_an_error_unless_truncated(gpt2_dir):
    tokenizer = GPT2Tokenizer.from_dir(gpt2_dir)
    with pytest.raises(ValueError, match="text 0 is .* tokens long"):
        tokenizer([SAMPLE_LINES[0]], max_length=3)
    assert tokenizer([SAMPLE_LINES[0]], max_length=3, truncation=True)["input_ids"].shape == (1, 3)


def test_non_text_input_is_named(t5_dir, gpt2_dir):
    for tokenizer in (T5Tokenizer.from_dir(t5_dir), GPT2Tokenizer.from_dir(gpt2_dir)):
        with pytest.raises(TypeError, match="encodes text \\(str\\), got int: 5"):
            tokenizer.encode(5)
        with pytest.raises(TypeError, match="got bytes"):
            tokenizer([b"the soup"])
