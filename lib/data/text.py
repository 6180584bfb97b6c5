"""Real text as a data source: documents -> tokens (once, into a token store) -> windows -> batches.

    --set data.source=hf --set data.dataset=text --set data.data_files=/path/corpus.txt
    --set data.source=hf --set data.dataset=roneneldan/TinyStories --set data.tokenizer=bpe:8192

Tokens: the training documents, each followed by the tokenizer's end-of-text id, as one stream
(lib/data/tokenizer.py says which id), stored once per (corpus, split, field, tokenizer, holdout)
under the data root (lib/data/token_store.py) and memory-mapped by every run and host.

Batches: the stream is cut into non-overlapping windows of seq_len + 1 tokens (a trailing partial
window is unused). Global row r of step s is sample g = s * B + r; sample g reads window
perm_e[g mod n] of epoch e = g // n, where perm_e = default_rng([seed, e]).permutation(n). So
windows are drawn without replacement within an epoch, `batch(step)` is a pure function of
(seed, step), and each process reads only its own rows. Eval row i is eval window i mod n_eval, in
corpus order, whatever the batch size.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from lib.config import ConfigError, DataConfig
from lib.data import corpus
from lib.data.base import EpochSampler, local_rows
from lib.data.token_store import EVAL_FILE, TOKENIZER_FILE, TRAIN_FILE, TokenStore, TokenWriter, file_sha256, open_or_build, store_key
from lib.data.tokenizer import ByteTokenizer, TokenizerSpec, load_pretrained, load_saved, parse_spec, train_bpe
from lib.store.storage import is_url

# A BPE learns its merges from at most this many characters of training text (the first ones):
# plenty for a stable vocabulary, and it bounds the one-off training time on huge corpora.
BPE_TRAIN_CHARS = 256 << 20


class TextSource:
    def __init__(self, cfg: DataConfig, data_root: str | os.PathLike | None = None):
        self.cfg = cfg
        root = _data_root(cfg, data_root)
        self._hf_cache = corpus.configure_hf_cache(root)
        spec = parse_spec(cfg.tokenizer)
        inputs = store_inputs(cfg, spec)
        key = store_key(inputs, label=f"{cfg.dataset.rsplit('/', 1)[-1]}-{spec.kind}{spec.vocab or ''}")
        self.store = open_or_build(root, key, lambda tmp: build_store(cfg, spec, inputs, tmp, self._hf_cache))
        self.tokenizer = _stored_tokenizer(self.store, spec)
        # bpe:<vocab> gives the model <vocab> ids even when a small corpus ran out of merges first,
        # so a sweep's embedding sizes follow its config, not the corpus.
        self.vocab_size = max(self.tokenizer.vocab_size, spec.vocab)
        self.entropy_floor = None  # unknown for real text; describe() gives the unigram entropy as a reference
        self._train_windows = _windows(self.store.tokens("train"), cfg.seq_len + 1)
        self._eval_windows = _windows(self.store.tokens("eval"), cfg.seq_len + 1)
        self.n_windows, self.n_eval_windows = len(self._train_windows), len(self._eval_windows)
        self._check_sizes()  # the train loop warns when train.eval_tokens asks for more rows than there are held-out windows
        self._sampler = EpochSampler(self.n_windows, cfg.global_batch, cfg.seed)

    # -- the Source interface ---------------------------------------------------------------------
    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        return np.asarray(self._train_windows[self.window_ids(step, process_index, process_count)], np.int32)

    def eval_rows(self, start_row: int, n_rows: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        rows = local_rows(n_rows, process_index, process_count)
        samples = start_row + np.arange(rows.start, rows.stop, dtype=np.int64)
        return np.asarray(self._eval_windows[samples % self.n_eval_windows], np.int32)

    def epoch(self, step: int) -> float:
        """Passes over the training windows after `step` steps (1.0 = each window seen once)."""
        return self._sampler.epoch(step)

    def describe(self) -> dict:
        c, m = self.cfg, self.store.manifest
        return {
            "source": "hf",
            "dataset": c.dataset,
            "dataset_config": c.dataset_config or None,
            "data_files": c.data_files or None,
            "split": c.split,
            "held_out": f"split {c.eval_split}" if c.eval_split else f"{c.holdout_fraction:g} of the documents",
            "tokenizer": c.tokenizer,
            "vocab_size": self.vocab_size,
            "tokenizer_vocab_size": self.tokenizer.vocab_size,
            "eot_id": self.tokenizer.eot_id,
            "store": self.store.path,
            "store_key": self.store.key,
            "train_tokens": m["counts"]["train_tokens"],
            "eval_tokens": m["counts"]["eval_tokens"],
            "documents": m["counts"]["documents"],
            "eval_documents": m["counts"]["eval_documents"],
            "windows_per_epoch": self.n_windows,
            "unique_tokens": self.n_windows * c.seq_len,  # the training tokens one epoch feeds, as D counts them (analysis: repeated data)
            "steps_per_epoch": self.n_windows / c.global_batch,
            "eval_windows": self.n_eval_windows,
            "unigram_entropy": m["unigram_entropy"],  # nats/token: what a context-free model reaches
        }

    # -- sampling ---------------------------------------------------------------------------------
    def window_ids(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """Training windows of this process's rows of batch `step` (see the module docstring)."""
        return self._sampler.ids(step, process_index, process_count)

    def _check_sizes(self) -> None:
        c, counts = self.cfg, self.store.manifest["counts"]
        if self.n_windows < c.global_batch:
            raise ConfigError(
                f"data.global_batch: the training corpus has {counts['train_tokens']:,} tokens = {self.n_windows} windows "
                f"of seq_len+1 = {c.seq_len + 1}, fewer than one global batch of {c.global_batch} windows; "
                "lower data.global_batch or data.seq_len, or use more text"
            )
        if self.n_eval_windows == 0:
            field, what = ("data.eval_split", f"split '{c.eval_split}'") if c.eval_split else ("data.holdout_fraction", f"the held-out {c.holdout_fraction:g} of the documents")
            raise ConfigError(
                f"{field}: {what} holds {counts['eval_tokens']:,} tokens, less than one window of seq_len+1 = "
                f"{c.seq_len + 1}; raise data.holdout_fraction, name a larger data.eval_split, or lower data.seq_len"
            )


# ================================================================================================
# building the store
# ================================================================================================
def store_inputs(cfg: DataConfig, spec: TokenizerSpec) -> dict:
    """Everything that determines the stored tokens (and nothing else: not seq_len, batch or seed)."""
    inputs = {
        "dataset": cfg.dataset,
        "dataset_config": cfg.dataset_config,
        "data_files": corpus.files_fingerprint(cfg),
        "split": cfg.split,
        "eval_split": cfg.eval_split,
        "holdout_fraction": None if cfg.eval_split else cfg.holdout_fraction,
        "text_field": cfg.text_field,
        "tokenizer": cfg.tokenizer,
        "max_tokens": cfg.max_tokens,
    }
    if spec.kind == "bpe":
        inputs["bpe_train_chars"] = BPE_TRAIN_CHARS
    if spec.kind == "pretrained" and os.path.isfile(spec.name):
        inputs["tokenizer_sha256"] = file_sha256(spec.name)
    return inputs


def build_store(cfg: DataConfig, spec: TokenizerSpec, inputs: dict, tmp: str, hf_cache: str) -> dict:
    """Tokenize the corpus into `tmp` (token files, tokenizer); returns the manifest's fields."""
    train_ds = corpus.load_split(cfg, cfg.split, "data.split", hf_cache)
    eval_ds = corpus.load_split(cfg, cfg.eval_split, "data.eval_split", hf_cache) if cfg.eval_split else None
    holdout = None if eval_ds is not None else cfg.holdout_fraction
    where = f"{cfg.dataset} [{cfg.split}]"
    corpus.check_text_field(train_ds, cfg.text_field, where)  # before a BPE is trained on it

    def training_texts():
        for b in corpus.document_batches(train_ds, cfg.text_field, holdout, where, action="training BPE on"):
            yield b.train

    t0 = time.perf_counter()
    tokenizer = _new_tokenizer(spec, training_texts)
    tokenizer_seconds = round(time.perf_counter() - t0, 3)
    has_tokenizer_file = tokenizer.save(os.path.join(tmp, TOKENIZER_FILE))
    train = TokenWriter(os.path.join(tmp, TRAIN_FILE), tokenizer.vocab_size, count_unigrams=True)
    held_out = TokenWriter(os.path.join(tmp, EVAL_FILE), tokenizer.vocab_size)
    counts = dict.fromkeys(("rows", "empty_rows", "documents", "eval_documents", "characters", "nul_dropped"), 0)

    def write(writer: TokenWriter, texts: list[str], cap: int) -> bool:
        """Append `texts`; True once `cap` tokens (0: no cap) are written."""
        ids = tokenizer.encode_documents(texts)
        if cap:
            ids = ids[: cap - writer.tokens]
        writer.write(ids)
        counts["characters"] += sum(map(len, texts))
        if tokenizer.kind == "bytes":
            counts["nul_dropped"] += sum(t.count("\x00") for t in texts)
        return bool(cap) and writer.tokens >= cap

    try:
        for b in corpus.document_batches(train_ds, cfg.text_field, holdout, where):
            counts["rows"] += b.rows
            counts["empty_rows"] += b.empty
            counts["documents"] += len(b.train)
            counts["eval_documents"] += len(b.held_out)
            write(held_out, b.held_out, 0)
            if write(train, b.train, cfg.max_tokens):
                break
        if eval_ds is not None:
            # With max_tokens, an eval split is capped at holdout_fraction * max_tokens tokens.
            eval_cap = math.ceil(cfg.max_tokens * cfg.holdout_fraction) if cfg.max_tokens else 0
            for b in corpus.document_batches(eval_ds, cfg.text_field, None, f"{cfg.dataset} [{cfg.eval_split}]"):
                counts["eval_documents"] += len(b.train)
                if write(held_out, b.train, eval_cap):
                    break
    finally:
        train.close()
        held_out.close()
    if counts["documents"] == 0:
        field = "data.data_files" if corpus.is_local_builder(cfg) else "data.dataset"
        raise ConfigError(
            f"{field}: the corpus has no text to train on: {counts['rows']} rows in {where}, "
            f"{counts['empty_rows']} of them empty in field '{cfg.text_field}'; check the file(s) and data.text_field"
        )
    return {
        "inputs": inputs,
        "tokenizer": {"spec": cfg.tokenizer, "kind": spec.kind, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
                      "file": TOKENIZER_FILE if has_tokenizer_file else None},
        "tokenizer_seconds": tokenizer_seconds,  # training a BPE, loading a pretrained one
        "dtype": train.dtype.name,
        "counts": {**counts, "train_tokens": train.tokens, "eval_tokens": held_out.tokens},
        "unigram_entropy": _entropy(train.unigrams),
    }


def _new_tokenizer(spec: TokenizerSpec, training_texts):
    # A BPE reads the training documents once more before they are encoded (a streamed corpus is
    # streamed twice); only the first BPE_TRAIN_CHARS characters of that pass are read.
    if spec.kind == "bytes":
        return ByteTokenizer()
    if spec.kind == "bpe":
        return train_bpe(_first_chars(training_texts(), BPE_TRAIN_CHARS), spec.vocab, corpus.show_progress())
    return load_pretrained(spec.name, corpus.hub_cache())


def _stored_tokenizer(store: TokenStore, spec: TokenizerSpec):
    recorded = store.manifest["tokenizer"]
    tokenizer = ByteTokenizer() if spec.kind == "bytes" else load_saved(store.tokenizer_file, spec.kind)
    if (tokenizer.vocab_size, tokenizer.eot_id) != (recorded["vocab_size"], recorded["eot_id"]):
        raise ConfigError(f"data.tokenizer: the stored tokenizer in {store.path} disagrees with its manifest; delete that folder to rebuild it")
    return tokenizer


def _first_chars(text_batches, limit: int):
    seen = 0
    for texts in text_batches:
        yield texts
        seen += sum(map(len, texts))
        if seen >= limit:
            return


def _windows(tokens: np.ndarray, width: int) -> np.ndarray:
    n = len(tokens) // width
    return tokens[: n * width].reshape(n, width)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _data_root(cfg: DataConfig, data_root: str | os.PathLike | None) -> str:
    root = os.fspath(data_root or cfg.data_root)
    if not root:
        raise ConfigError("data.data_root: set a folder for the token store, e.g. --set data.data_root=/data/tokens")
    if is_url(root):
        raise ConfigError(f"data.data_root: token stores are memory-mapped, so they need a local or mounted folder, got '{root}'")
    return os.path.abspath(os.path.expanduser(root))


# == configuration: the rules lib/config_rules.py runs for data.source=hf ==============================
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.data.base import SourceSpec  # noqa: E402


def _check(d: DataConfig) -> None:
    require(bool(d.dataset), "data.dataset", "set a hub name or a builder (text|json|parquet|csv), e.g. --set data.dataset=text")
    require(d.max_tokens >= 0, "data.max_tokens", f"must be >= 0 (0: the whole split), got {d.max_tokens}")


SOURCE = SourceSpec(name="hf", task="lm", make=lambda cfg, data_root: TextSource(cfg, data_root=data_root), validate=_check)
