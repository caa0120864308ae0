"""Tokenizers: text → token ids → text, for the two backbones (T5 and GPT-2).

A model never sees text, only ids. This module reads the tokenizer files that Hugging Face
checkpoints ship, without the ``transformers`` or ``tokenizers`` libraries, and gives the same ids.

**T5: SentencePiece unigram (``spiece.model``) with T5's conventions.** With ``n`` pieces in the
SentencePiece model and ``extra_ids`` sentinels (100 by default), the vocabulary reads:

    id 0          <pad>    padding (also the decoder's start token)
    id 1          </s>     end of sequence, appended to every encoded text
    id 2          <unk>    a character the pieces cannot spell
    ids 3 … n-1            pieces; "▁" marks the start of a word ("▁the", "s")
    ids n … n+99           sentinels <extra_id_99> … <extra_id_0>, counted DOWN from the top:
                           <extra_id_i> = n + extra_ids - 1 - i, so <extra_id_0> is the last id
                           (32099 for t5-small, whose n = 32000)

Sentinels stand in for the spans that T5's span corruption (F11.4) hides. SentencePiece normalises
before it splits: NFKC (``ＡＢＣ`` → ``ABC``, ``①`` → ``1``), runs of whitespace become one space,
and leading/trailing spaces go. So ``decode(encode(x))`` is ``x`` normalised, not always ``x``.

**GPT-2: byte-level BPE (``vocab.json`` + ``merges.txt``).**

1. Pre-tokenise: a regex cuts the text into words, numbers, punctuation runs and spaces
   (``"Hello world!"`` → ``"Hello"``, ``" world"``, ``"!"``); merges never cross these cuts.
2. Bytes as characters: each word's UTF-8 bytes, one character per byte (``bytes_to_unicode``;
   a space shows as ``Ġ``), so any text can be spelled and no token is ever unknown.
3. BPE: repeatedly join the adjacent pair that comes first in ``merges.txt`` (rank 0 first).

GPT-2's one special token ``<|endoftext|>`` ends a document. GPT-2 has no padding token, so batches
are padded with it too; the attention mask tells padding from a real ``<|endoftext|>``.

Both tokenizers, like ``transformers``, read special tokens written literally in the text
(``"a <extra_id_3> b"``, ``"x<|endoftext|>y"``) as those tokens. T5 encodes the text between two
special tokens on its own, so it starts a word: ``"a<extra_id_3>b"`` gives ``▁b``, not ``b``, as in
``transformers``. ``tokenizer(texts)`` returns
``input_ids`` and ``attention_mask``, both (B, S) LongTensors padded on the right.

The GPT-2 regex needs ``\\p{L}`` (any letter) and ``\\p{N}`` (any number), which Python's ``re``
lacks; we use the ``regex`` package, as GPT-2's own ``encoder.py`` did.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import regex
import sentencepiece
import torch

# GPT-2's pre-tokenisation: contractions, letters, numbers, other symbols (each may take one
# leading space), then whitespace — the last space before a word is left for that word.
GPT2_SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
T5_CONTROL_TOKENS = {"<pad>": 0, "</s>": 1, "<unk>": 2}
WORD_START = "▁"  # SentencePiece's mark for "a space came before this piece"


def check_text(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"a tokenizer encodes text (str), got {type(text).__name__}: {text!r:.60}")


class T5Tokenizer:
    """SentencePiece unigram tokenizer with T5's pad/eos/unk ids and sentinels."""

    def __init__(self, spiece_model_path: str | Path, extra_ids: int = 100):
        self.path = Path(spiece_model_path)
        self.sentencepiece = load_sentencepiece(self.path)
        self.piece_count = self.sentencepiece.get_piece_size()
        self.extra_ids = extra_ids
        self.vocab_size = self.piece_count + extra_ids
        self.pad_token_id = T5_CONTROL_TOKENS["<pad>"]
        self.eos_token_id = T5_CONTROL_TOKENS["</s>"]
        self.unk_token_id = T5_CONTROL_TOKENS["<unk>"]
        self.special_token_ids = dict(T5_CONTROL_TOKENS)
        for index in range(extra_ids):
            self.special_token_ids[f"<extra_id_{index}>"] = self.sentinel_id(index)
        self.special_token_names = {token_id: name for name, token_id in self.special_token_ids.items()}
        self.special_token_pattern = literal_pattern(self.special_token_ids)

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path, extra_ids: int = 100) -> T5Tokenizer:
        """Load ``spiece.model`` from a Hugging Face T5 checkpoint directory."""
        path = Path(checkpoint_dir) / "spiece.model"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a T5 checkpoint directory keeps its SentencePiece model as "
                "spiece.model; copy that file from the checkpoint into the directory, or pass the "
                "path of a .model file to T5Tokenizer(path)"
            )
        return cls(path, extra_ids)

    def sentinel_id(self, index: int) -> int:
        """Id of ``<extra_id_{index}>``; sentinels count down from the top of the vocabulary."""
        if not 0 <= index < self.extra_ids:
            raise ValueError(f"sentinel {index} does not exist: this tokenizer has <extra_id_0> … "
                             f"<extra_id_{self.extra_ids - 1}>")
        return self.vocab_size - 1 - index

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Ids of ``text``: special tokens written in it by name, SentencePiece for the rest."""
        check_text(text)
        ids = []
        for part in self.special_token_pattern.split(text):
            if part in self.special_token_ids:
                ids.append(self.special_token_ids[part])
            elif part:
                ids.extend(self.sentencepiece.encode(part))
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: pieces joined, ``▁`` → space, the first word's space dropped."""
        pieces = []
        for token_id in as_int_list(ids):
            check_token_id(token_id, self.vocab_size)
            if token_id in self.special_token_names:
                if not skip_special_tokens:
                    pieces.append(self.special_token_names[token_id])
            else:
                pieces.append(self.sentencepiece.id_to_piece(token_id))
        return "".join(pieces).replace(WORD_START, " ").removeprefix(" ")

    def __call__(self, texts: list[str] | str, max_length: int | None = None,
                 padding: bool = True, truncation: bool = False) -> dict[str, torch.Tensor]:
        """Encode a batch: ``input_ids`` and ``attention_mask``, (B, S), padded with ``<pad>``."""
        sequences = [self.encode(text) for text in as_text_list(texts)]
        if truncation and max_length is not None:
            # cut the text but keep </s> last, as transformers does
            sequences = [ids if len(ids) <= max_length else ids[: max_length - 1] + [self.eos_token_id]
                         for ids in sequences]
        return batch_of_ids(sequences, self.pad_token_id, max_length, padding)


class GPT2Tokenizer:
    """Byte-level BPE tokenizer read from GPT-2's ``vocab.json`` and ``merges.txt``."""

    def __init__(self, vocab_file: str | Path, merges_file: str | Path, eos_token: str = "<|endoftext|>"):
        self.vocab_file, self.merges_file = Path(vocab_file), Path(merges_file)
        self.token_ids = read_vocab(self.vocab_file)  # token → id
        self.tokens = {token_id: token for token, token_id in self.token_ids.items()}
        merges = read_merges(self.merges_file, self.token_ids)
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_to_char = bytes_to_unicode()
        self.char_to_byte = {char: byte for byte, char in self.byte_to_char.items()}
        missing = [char for char in self.byte_to_char.values() if char not in self.token_ids]
        if missing:
            raise ValueError(f"{vocab_file} lacks {len(missing)} of the 256 byte tokens (e.g. {missing[:3]}); "
                             "byte-level BPE needs all 256 to spell any text")
        if eos_token not in self.token_ids:
            raise ValueError(f"{vocab_file} has no {eos_token!r} token, GPT-2's end of text")
        self.eos_token = eos_token
        self.eos_token_id = self.token_ids[eos_token]
        self.vocab_size = len(self.token_ids)
        self.special_token_pattern = literal_pattern([eos_token])
        self.cache: dict[str, list[str]] = {}  # word → its tokens, as most words come back often

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> GPT2Tokenizer:
        """Load ``vocab.json`` and ``merges.txt`` from a Hugging Face GPT-2 checkpoint directory."""
        return cls(Path(checkpoint_dir) / "vocab.json", Path(checkpoint_dir) / "merges.txt")

    def bpe(self, word: str) -> list[str]:
        """Tokens of one pre-tokenised word: its bytes as characters, merged in rank order."""
        if word not in self.cache:
            symbols = [self.byte_to_char[byte] for byte in word.encode("utf-8")]
            self.cache[word] = apply_merges(symbols, self.merge_rank)
        return self.cache[word]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (no token added): ``<|endoftext|>`` by name, BPE word by word for the rest."""
        check_text(text)
        ids = []
        for part in self.special_token_pattern.split(text):
            if part == self.eos_token:
                ids.append(self.eos_token_id)
                continue
            for word in GPT2_SPLIT_PATTERN.findall(part):
                ids.extend(self.token_ids[token] for token in self.bpe(word))
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: each token's characters back to bytes, the bytes read as UTF-8."""
        text_bytes = bytearray()
        for token_id in as_int_list(ids):
            if token_id == self.eos_token_id:
                if not skip_special_tokens:
                    text_bytes += self.eos_token.encode("utf-8")
            elif token_id in self.tokens:
                text_bytes += bytes(self.char_to_byte[char] for char in self.tokens[token_id])
            else:
                raise ValueError(f"token id {token_id} is not in vocab.json")
        # a token may end inside a character's bytes; a cut character decodes as '�'
        return text_bytes.decode("utf-8", errors="replace")

    def __call__(self, texts: list[str] | str, max_length: int | None = None,
                 padding: bool = True, truncation: bool = False) -> dict[str, torch.Tensor]:
        """Encode a batch: ``input_ids`` and ``attention_mask``, (B, S), padded with ``<|endoftext|>``."""
        sequences = [self.encode(text) for text in as_text_list(texts)]
        if truncation and max_length is not None:
            sequences = [ids[:max_length] for ids in sequences]
        return batch_of_ids(sequences, self.eos_token_id, max_length, padding)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte → character: printable bytes stand for themselves, the other 68
    (space, control bytes, …) move to 256 + k, so that tokens never hold whitespace (space → 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def apply_merges(symbols: list[str], merge_rank: dict[tuple[str, str], int]) -> list[str]:
    """BPE: while some adjacent pair is a merge, join every occurrence of the best-ranked one."""
    while len(symbols) > 1:
        pairs = zip(symbols, symbols[1:])
        best = min(pairs, key=lambda pair: merge_rank.get(pair, math.inf))
        if best not in merge_rank:
            break
        symbols = merge_pair(symbols, best)
    return symbols


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """``symbols`` with each occurrence of ``pair``, read left to right, joined into one."""
    merged, index = [], 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return merged


def load_sentencepiece(path: Path) -> sentencepiece.SentencePieceProcessor:
    """Load a SentencePiece model and check that it follows T5's ids for pad, eos and unk."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: T5Tokenizer needs a SentencePiece model file "
                                "(spiece.model in a Hugging Face T5 checkpoint)")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.load(str(path))
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{path} is not a SentencePiece model: {error}") from error
    for name, token_id in T5_CONTROL_TOKENS.items():
        if processor.get_piece_size() <= token_id or processor.id_to_piece(token_id) != name:
            raise ValueError(f"{path} does not follow T5's conventions: id {token_id} must be {name!r}; "
                             "train it with pad_id=0, eos_id=1, unk_id=2, bos_id=-1")
    return processor


def read_vocab(path: Path) -> dict[str, int]:
    """``vocab.json``: a JSON object mapping each token to its id."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a GPT-2 checkpoint directory keeps its BPE vocabulary "
                                "as vocab.json (token → id) next to merges.txt")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(vocab, dict) or not all(isinstance(token_id, int) for token_id in vocab.values()):
        raise ValueError(f"{path} must be a JSON object mapping each token to an integer id")
    return vocab


def read_merges(path: Path, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """``merges.txt``: an optional ``#version`` line, then one merge ``"left right"`` per line, best first."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a GPT-2 checkpoint directory keeps its BPE merges "
                                "as merges.txt next to vocab.json")
    merges = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        pair = tuple(line.split(" "))
        if len(pair) != 2 or "" in pair:
            raise ValueError(f"{path}, line {line_number}: expected two tokens separated by one space "
                             f"(like 'Ġ t'), found {line!r}")
        if pair[0] + pair[1] not in vocab:
            raise ValueError(f"{path}, line {line_number}: merging {line!r} makes {pair[0] + pair[1]!r}, "
                             "which is not in vocab.json")
        merges.append(pair)
    return merges


def literal_pattern(names) -> re.Pattern:
    """A regex matching any of ``names`` literally; its group makes ``split`` keep the matches."""
    longest_first = sorted(names, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(name) for name in longest_first) + ")")


def as_text_list(texts: list[str] | str) -> list[str]:
    """A batch of texts; one string is a batch of one."""
    return [texts] if isinstance(texts, str) else list(texts)


def as_int_list(ids) -> list[int]:
    """Token ids as a list of ints, from a list or a 1-D tensor."""
    return ids.tolist() if isinstance(ids, torch.Tensor) else [int(token_id) for token_id in ids]


def check_token_id(token_id: int, vocab_size: int) -> None:
    """Fail clearly on an id outside ``0 … vocab_size - 1``."""
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"token id {token_id} is outside the vocabulary (0 … {vocab_size - 1})")


def batch_of_ids(sequences: list[list[int]], pad_id: int, max_length: int | None,
                 padding: bool) -> dict[str, torch.Tensor]:
    """Stack id lists into (B, S) tensors, padded on the right with ``pad_id`` (mask 0 there)."""
    for index, ids in enumerate(sequences):
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"text {index} is {len(ids)} tokens long, more than max_length={max_length}; "
                             "shorten it, raise max_length, or pass truncation=True")
    lengths = [len(ids) for ids in sequences]
    if not padding and len(set(lengths)) > 1:
        raise ValueError(f"the texts have different lengths {lengths}; pass padding=True to pad them")
    longest = max(lengths, default=0)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, S)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)  # (B, S)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
