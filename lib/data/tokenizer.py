"""Tokenizers for text corpora: raw bytes (default), a BPE trained on the corpus, or a pretrained one.

`data.tokenizer` picks one:
  bytes         UTF-8 bytes, vocab 256. Documents are separated by byte 0 (NUL) as the end-of-text
                token: text practically never contains NUL, and staying at 256 (not 257) keeps the
                embedding divisible by tensor-parallel sizes. A NUL inside a document is dropped
                (the store counts them), so decode(encode(text)) == text for any text without NUL.
  bpe:<vocab>   byte-level BPE (GPT-2 style: all 256 bytes are in the base alphabet, so nothing is
                unknown and decoding is exact) trained with `tokenizers` on the training documents;
                id 0 is <|endoftext|>. <vocab> counts the 256 bytes and the end-of-text token; a
                small corpus may run out of merges first, and the model still gets <vocab> ids.
  <name|path>   a pretrained tokenizer.json: a path to the file, or a Hugging Face Hub repo name.

Every tokenizer offers `encode_documents(texts) -> ids with eot_id after each document`, `decode`,
and `save`; the token store saves the trained/pretrained tokenizer next to the tokens so every
run of a sweep tokenizes and decodes with the same one.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Iterable, Iterator

import numpy as np

from lib.config import ConfigError

EOT_TEXT = "<|endoftext|>"
# End-of-document tokens of common pretrained tokenizers, in order of preference.
PRETRAINED_EOT_CANDIDATES = (EOT_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")
BYTE_VOCAB = 256
MIN_BPE_VOCAB = BYTE_VOCAB + 1  # the byte alphabet plus <|endoftext|>


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    kind: str  # "bytes" | "bpe" | "pretrained"
    vocab: int = 0  # bpe: target vocabulary size
    name: str = ""  # pretrained: hub name or path to tokenizer.json

    @property
    def trained_or_loaded(self) -> bool:
        """Whether the store must keep a tokenizer.json (everything but bytes)."""
        return self.kind != "bytes"


def parse_spec(spec: str) -> TokenizerSpec:
    spec = spec.strip()
    if spec in ("", "bytes"):
        return TokenizerSpec("bytes")
    if spec.startswith("bpe:") or spec == "bpe":
        raw = spec[4:]
        if not raw.isdigit() or int(raw) < MIN_BPE_VOCAB:
            raise ConfigError(
                f"data.tokenizer: '{spec}' needs a vocabulary size of at least {MIN_BPE_VOCAB} "
                f"(256 bytes + end-of-text), e.g. --set data.tokenizer=bpe:8192"
            )
        return TokenizerSpec("bpe", vocab=int(raw))
    return TokenizerSpec("pretrained", name=spec)


# ================================================================================================
# bytes
# ================================================================================================
class ByteTokenizer:
    kind = "bytes"
    vocab_size = BYTE_VOCAB
    eot_id = 0

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """UTF-8 bytes of each document followed by NUL, as one uint8 array."""
        if not texts:
            return np.zeros(0, np.uint8)
        joined = "\x00".join(t.replace("\x00", "") for t in texts) + "\x00"
        return np.frombuffer(joined.encode("utf-8"), np.uint8)

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.replace("\x00", "").encode("utf-8"), np.uint8)

    def decode(self, ids) -> str:
        return np.asarray(ids, np.uint8).tobytes().decode("utf-8", errors="replace")

    def save(self, path: str) -> bool:
        return False  # nothing to save: bytes need no vocabulary file


# ================================================================================================
# `tokenizers` models (trained BPE, pretrained)
# ================================================================================================
class HFTokenizer:
    """A `tokenizers.Tokenizer` with an end-of-text id; special-token text inside documents stays text."""

    def __init__(self, tokenizer, kind: str, eot_id: int):
        self.kind = kind
        self._tok = tokenizer
        # "<|endoftext|>" written in a document is encoded as ordinary text, so EOT ids appear only
        # between documents and decode(encode(text)) == text.
        self._tok.encode_special_tokens = True
        self.eot_id = eot_id
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        # encode_batch runs on all cores (Rust threads); see benchmarks/data_throughput.py.
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        total = sum(len(e.ids) for e in encodings) + len(encodings)
        eot = (self.eot_id,)
        ids = itertools.chain.from_iterable(itertools.chain(e.ids, eot) for e in encodings)
        return np.fromiter(ids, np.int64, count=total)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str) -> bool:
        self._tok.save(path)
        return True


def train_bpe(text_batches: Iterable[list[str]], vocab: int, show_progress: bool) -> HFTokenizer:
    """Byte-level BPE trained on `text_batches` (lists of documents); id 0 is <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_nonempty(text_batches), trainer=trainer)
    return HFTokenizer(tok, "bpe", eot_id=tok.token_to_id(EOT_TEXT))


def load_saved(path: str, kind: str) -> HFTokenizer:
    """A tokenizer the store saved (tokenizer.json)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    return HFTokenizer(tok, kind, eot_id=_find_eot(tok, path))


def load_pretrained(name: str, cache_dir: str) -> HFTokenizer:
    """A pretrained tokenizer.json from a local path or the Hub (honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    from tokenizers import Tokenizer

    if os.path.isfile(name):
        return _pretrained(Tokenizer.from_file(name), name)
    # hf_hub_download rather than Tokenizer.from_pretrained: it honours offline mode at call time
    # (from_pretrained retries the network for ~25 s first) and takes an explicit cache folder.
    from huggingface_hub import hf_hub_download

    offline = hub_offline()
    try:
        path = hf_hub_download(name, "tokenizer.json", cache_dir=cache_dir, local_files_only=offline)
    except Exception as e:  # noqa: BLE001  (any failure here means: no tokenizer by that name)
        where = "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and it is not cached" if offline else "from the Hugging Face Hub"
        raise ConfigError(
            f"data.tokenizer: could not load a pretrained tokenizer '{name}' ({where}): {type(e).__name__}: {e}. "
            "Use 'bytes', 'bpe:<vocab>', a path to a tokenizer.json, or check the name and the network"
        ) from e
    return _pretrained(Tokenizer.from_file(path), name)


def _pretrained(tok, name: str) -> HFTokenizer:
    return HFTokenizer(tok, "pretrained", eot_id=_find_eot(tok, name))


def hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _find_eot(tok, name: str) -> int:
    for text in PRETRAINED_EOT_CANDIDATES:
        token_id = tok.token_to_id(text)
        if token_id is not None:
            return token_id
    raise ConfigError(
        f"data.tokenizer: '{name}' has none of the end-of-text tokens {', '.join(PRETRAINED_EOT_CANDIDATES)} "
        "to separate documents; use a tokenizer that has one, or bpe:<vocab>"
    )


def _nonempty(text_batches: Iterable[list[str]]) -> Iterator[list[str]]:
    for batch in text_batches:
        if batch:
            yield batch
