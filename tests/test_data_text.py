"""Real text data: tokenizers, the token store, batches, a tiny model learning, and bad input.

Offline, on files the tests write: conftest.py points every Hugging Face cache into a temp dir and
sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE; each test also gets its own HF_HOME under tmp_path.
"""

import dataclasses
import json
import logging
import os
import threading

import jax
import numpy as np
import pytest

from lib.config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
from lib.data import make_source, resolve_vocab, token_store
from lib.data.text import TextSource
from lib.data.tokenizer import ByteTokenizer, train_bpe

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "her brother", "the farmer"]
VERBS = ["sees", "likes", "finds", "walks to", "looks at", "paints", "remembers", "visits"]
OBJECTS = ["the red house", "a green tree", "the quiet river", "an old boat", "the big garden", "a yellow door"]
ENDINGS = [".", " today.", " in the morning.", " again and again.", " with a smile."]
UNICODE = "Ünïcödé — naïve café 🙂 日本語, tabs\tand  double  spaces, a literal <|endoftext|> too"


@pytest.fixture(autouse=True)
def hf_home_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_corpus(path, n_lines, seed=0, blank_every=0, unicode_every=0):
    """English-like lines (one document each); optional blank lines and unicode-heavy lines."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_lines):
        if blank_every and i % blank_every == blank_every - 1:
            lines.append("")
        elif unicode_every and i % unicode_every == unicode_every - 1:
            lines.append(f"{UNICODE} #{i}")
        else:
            sentences = [
                f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}".capitalize()
                for _ in range(rng.integers(1, 4))
            ]
            lines.append(" ".join(sentences))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def text_config(path, **kw):
    base = dict(source="hf", dataset="text", data_files=str(path), seq_len=15, global_batch=8)
    return DataConfig(**{**base, **kw})


def splitmix_held_out(i: int, fraction: float) -> bool:
    """splitmix64 in Python integers: an independent check of the numpy hold-out mask."""
    m = (1 << 64) - 1
    z = (i + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return (z >> 11) < fraction * (1 << 53)


def split_documents(tokens, eot, decode):
    """Decode a token stream back into its documents (each is followed by `eot`)."""
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == eot)
    assert len(tokens) == 0 or ends[-1] == len(tokens) - 1, "stream must end with end-of-text"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [decode(tokens[s:e]) for s, e in zip(starts, ends)]


# ================================================================================================
# tokenizers
# ================================================================================================
def test_bytes_and_bpe_round_trip_text_exactly():
    texts = [UNICODE, "plain words", "  leading and trailing  ", "line one\nline two\r\n", "x"]
    byte_tok = ByteTokenizer()
    for t in texts:
        ids = byte_tok.encode(t)
        assert list(ids) == list(t.encode("utf-8"))  # independent: UTF-8 itself
        assert byte_tok.decode(ids) == t
    bpe = train_bpe([texts * 20, ["the cat sees the red house"] * 50], vocab=300, show_progress=False)
    assert bpe.eot_id == 0 and 257 <= bpe.vocab_size <= 300
    for t in texts:
        ids = bpe.encode(t)
        assert bpe.eot_id not in ids  # a literal "<|endoftext|>" in the text stays text
        assert bpe.decode(ids) == t
    assert len(bpe.encode("the cat sees the red house")) < len("the cat sees the red house")  # merges learned
    stream = bpe.encode_documents(texts)
    assert split_documents(stream, bpe.eot_id, bpe.decode) == texts


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe:320"])
def test_the_store_round_trips_the_documents_and_holds_out_a_deterministic_fraction(tmp_path, tokenizer):
    lines = write_corpus(tmp_path / "c.txt", 1200, blank_every=50, unicode_every=37)
    src = TextSource(text_config(tmp_path / "c.txt", tokenizer=tokenizer, holdout_fraction=0.1), data_root=tmp_path / "store")
    held = [splitmix_held_out(i, 0.1) for i in range(len(lines))]
    want_train = [t for t, h in zip(lines, held) if t and not h]
    want_eval = [t for t, h in zip(lines, held) if t and h]
    assert 0.06 < len(want_eval) / len(lines) < 0.14

    tok, store = src.tokenizer, src.store
    assert split_documents(store.tokens("train"), tok.eot_id, tok.decode) == want_train
    assert split_documents(store.tokens("eval"), tok.eot_id, tok.decode) == want_eval
    counts = store.manifest["counts"]
    assert counts["rows"] == len(lines) and counts["empty_rows"] == lines.count("")
    assert counts["documents"] == len(want_train) and counts["eval_documents"] == len(want_eval)
    assert src.vocab_size == (256 if tokenizer == "bytes" else 320)
    if tokenizer == "bytes":
        assert store.dtype == np.uint8 and counts["train_tokens"] == sum(len(t.encode()) + 1 for t in want_train)
    else:
        assert os.path.exists(os.path.join(store.path, "tokenizer.json"))
        assert counts["train_tokens"] < sum(len(t.encode()) for t in want_train)  # BPE compresses
    # The recorded unigram entropy, recomputed here from the stored tokens.
    freq = np.bincount(np.asarray(store.tokens("train")), minlength=tok.vocab_size) / counts["train_tokens"]
    freq = freq[freq > 0]
    assert src.describe()["unigram_entropy"] == pytest.approx(-(freq * np.log(freq)).sum(), rel=1e-9)


def test_the_store_is_reused_and_rebuilt_when_corrupt_partial_or_missing_its_manifest(tmp_path, caplog):
    write_corpus(tmp_path / "c.txt", 400)
    cfg, root = text_config(tmp_path / "c.txt"), tmp_path / "store"
    first = TextSource(cfg, data_root=root)
    tokens_path = os.path.join(first.store.path, "tokens.bin")
    original = np.fromfile(tokens_path, np.uint8)
    inode = os.stat(tokens_path).st_ino
    assert os.stat(os.path.join(TextSource(cfg, data_root=root).store.path, "tokens.bin")).st_ino == inode  # reused

    def corrupt_flip():
        with open(tokens_path, "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))

    def corrupt_truncate():
        with open(tokens_path, "r+b") as f:
            f.truncate(len(original) // 2)

    def drop_manifest():
        os.remove(os.path.join(first.store.path, "manifest.json"))

    for damage, reason in [(corrupt_flip, "corrupt"), (corrupt_truncate, "truncated"), (drop_manifest, "no manifest")]:
        damage()
        token_store._verified.clear()  # as in the next run's fresh process
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lib.data.token_store"):
            again = TextSource(cfg, data_root=root)
        assert reason in caplog.text and "rebuilding" in caplog.text
        assert os.stat(tokens_path).st_ino != inode  # a new file, not the damaged one
        inode = os.stat(tokens_path).st_ino
        np.testing.assert_array_equal(np.asarray(again.store.tokens("train")), original)
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_concurrent_builders_build_once_and_a_lost_publish_race_uses_the_winner(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        threading.Event().wait(0.3)  # long enough for the other builder to queue on the lock
        w = token_store.TokenWriter(os.path.join(tmp, token_store.TRAIN_FILE), 256)
        w.write(np.arange(100) % 256)
        w.close()
        token_store.TokenWriter(os.path.join(tmp, token_store.EVAL_FILE), 256).close()
        return {"dtype": "uint8"}

    results = []
    threads = [threading.Thread(target=lambda: results.append(token_store.open_or_build(str(tmp_path), "k", build))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1 and len(results) == 2
    np.testing.assert_array_equal(np.asarray(results[1].tokens("train")), np.arange(100) % 256)

    # Another host (no shared lock) publishes while we build: our rename loses, we use theirs.
    import shutil

    def build_and_lose(tmp):
        shutil.copytree(tmp_path / "k", tmp_path / "k2")
        manifest = json.loads((tmp_path / "k2" / "manifest.json").read_text())
        (tmp_path / "k2" / "manifest.json").write_text(json.dumps({**manifest, "key": "k2"}))
        return build(tmp)

    won = token_store.open_or_build(str(tmp_path), "k2", build_and_lose)
    assert won.path == str(tmp_path / "k2") and won.manifest["key"] == "k2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# ================================================================================================
# batches
# ================================================================================================
@pytest.fixture
def small_source(tmp_path):
    write_corpus(tmp_path / "c.txt", 300)
    return TextSource(text_config(tmp_path / "c.txt", seed=3), data_root=tmp_path / "store")


def test_batches_follow_the_seeded_epoch_permutations(small_source):
    src, B, T1 = small_source, 8, 16
    tokens = np.asarray(small_source.store.tokens("train"))
    n = len(tokens) // T1
    windows = tokens[: n * T1].reshape(n, T1)
    assert src.n_windows == n and n > 3 * B
    steps = 2 * n // B + 2  # into the third epoch, across two boundaries
    seen_epoch0 = []
    for step in range(steps):
        g = step * B + np.arange(B)
        want = np.stack([windows[np.random.default_rng([3, e]).permutation(n)[p]] for e, p in zip(g // n, g % n)])
        got = src.batch(step)
        assert got.dtype == np.int32 and got.shape == (B, T1)
        np.testing.assert_array_equal(got, want)
        seen_epoch0 += [i for i, e in zip(src.window_ids(step), g // n) if e == 0]
        assert src.epoch(step) == pytest.approx(step * B / n)
    assert sorted(seen_epoch0) == list(range(n))  # each window exactly once in an epoch
    other_seed = TextSource(dataclasses.replace(src.cfg, seed=4), data_root=os.path.dirname(src.store.path))
    assert other_seed.store.path == src.store.path  # the seed shapes batches, not the store
    assert not np.array_equal(other_seed.batch(0), src.batch(0))


def test_one_host_and_several_simulated_hosts_see_the_same_global_batch(small_source):
    src = small_source
    for step in [0, 1, src.n_windows // 8, 2 * src.n_windows // 8 + 1]:
        whole = src.batch(step, 0, 1)
        for count in (2, 4):
            np.testing.assert_array_equal(np.concatenate([src.batch(step, i, count) for i in range(count)]), whole)
        np.testing.assert_array_equal(np.concatenate([src.eval_rows(step * 8, 8, i, 2) for i in range(2)]), src.eval_rows(step * 8, 8))
    # One process assembles its rows into the global jax.Array the train step receives.
    from lib.parallel import sharding
    from lib.config import MeshConfig

    mesh = sharding.make_mesh(MeshConfig(), jax.devices()[:1])
    np.testing.assert_array_equal(np.asarray(sharding.global_batch(src.batch(5), mesh)), src.batch(5))


def test_resuming_at_step_k_gives_the_batches_of_an_uninterrupted_run(small_source, tmp_path):
    uninterrupted = [small_source.batch(s) for s in range(60)]
    resumed = TextSource(small_source.cfg, data_root=tmp_path / "store")  # a new process's view
    for s in range(37, 60):
        np.testing.assert_array_equal(resumed.batch(s), uninterrupted[s])
    # Eval rows: the held-out windows in order, wrapping when more rows are asked for than there are.
    ev = np.asarray(resumed.store.tokens("eval"))
    n_eval = len(ev) // 16
    want = ev[: n_eval * 16].reshape(n_eval, 16)[(24 + np.arange(8)) % n_eval]
    np.testing.assert_array_equal(resumed.eval_rows(24, 8), want)
    np.testing.assert_array_equal(resumed.eval_rows(n_eval - 3, 6), ev[: n_eval * 16].reshape(n_eval, 16)[np.arange(n_eval - 3, n_eval + 3) % n_eval])
    other_batch = TextSource(dataclasses.replace(small_source.cfg, global_batch=16), data_root=tmp_path / "store")
    np.testing.assert_array_equal(other_batch.eval_rows(0, 32), resumed.eval_rows(0, 32))  # eval rows ignore the batch size


# ================================================================================================
# learning, and the run's config surfaces
# ================================================================================================
@pytest.fixture(scope="module")
def trained_text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-run")
    write_corpus(root / "corpus.txt", 4000)
    cfg = RunConfig(
        name="text",
        model=ModelConfig(d_model=64, n_layers=2, n_heads=4),
        data=DataConfig(source="hf", dataset="text", data_files=str(root / "corpus.txt"), seq_len=64, global_batch=32),
        optimizer=OptimizerConfig(lr=1e-2, warmup_steps=10),
        train=TrainConfig(steps=150, log_every=50, eval_every=150, checkpoint_every=150, eval_tokens=4096),
        tracking=TrackingConfig(console=False),
    )
    from lib.train.loop import train

    summary = train(cfg, root / "runs" / "text", devices=jax.devices()[:1])
    return cfg, root, summary


def test_a_tiny_model_learns_real_text_well_below_its_unigram_entropy(trained_text_run):
    cfg, root, summary = trained_text_run
    data = np.frombuffer((root / "corpus.txt").read_bytes(), np.uint8)
    freq = np.bincount(data, minlength=256) / len(data)
    freq = freq[freq > 0]
    unigram = float(-(freq * np.log(freq)).sum())  # bytes of the file, newline standing in for end-of-text
    assert summary["entropy_floor"] is None and summary["data"]["vocab_size"] == 256
    assert summary["data"]["unigram_entropy"] == pytest.approx(unigram, abs=0.02)
    assert summary["eval_loss"] < 0.5 * unigram, (summary["eval_loss"], unigram)
    assert os.path.isdir(root / "runs" / ".data" / summary["data"]["store_key"])  # default data root: <workdir>/../.data
    rows = [json.loads(line) for line in (root / "runs" / "text" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == pytest.approx(150 * 32 / summary["data"]["windows_per_epoch"])
    # the unique tokens one epoch feeds, as D counts them: D = U x epochs (analysis's data-constrained law reads U)
    assert summary["data"]["unique_tokens"] == summary["data"]["windows_per_epoch"] * 64
    assert summary["tokens"] == pytest.approx(summary["data"]["unique_tokens"] * summary["epochs"], rel=1e-12)


def test_resuming_a_run_with_another_tokenizer_is_refused_before_training(trained_text_run):
    cfg, root, _ = trained_text_run
    from lib.train.loop import train

    workdir = root / "runs" / "text"
    before = {p.name: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"different config.*data\.tokenizer: 'bytes' -> 'bpe:300'"):
        train(cfg.with_overrides({"data.tokenizer": "bpe:300"}), workdir, devices=jax.devices()[:1])
    assert {p.name: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == before
    # An explicit model vocabulary that disagrees with the data's is refused too.
    bpe_cfg = cfg.with_overrides({"data.tokenizer": "bpe:300", "model.vocab_size": 256})
    with pytest.raises(ConfigError, match=r"model.vocab_size=256 does not match the data's vocabulary \(300\)"):
        resolve_vocab(bpe_cfg, make_source(bpe_cfg.data, data_root=str(root / "runs" / ".data")))


def test_resuming_after_the_corpus_changed_is_refused(tmp_path):
    """Same config, different file contents: the token ids differ, so the old checkpoint is not resumed."""
    from lib.train.loop import train

    write_corpus(tmp_path / "corpus.txt", 600)
    cfg = RunConfig(
        name="text", model=ModelConfig(d_model=32, n_layers=1, n_heads=4),
        data=DataConfig(source="hf", dataset="text", data_files=str(tmp_path / "corpus.txt"), seq_len=32, global_batch=8),
        optimizer=OptimizerConfig(warmup_steps=1), train=TrainConfig(steps=4, checkpoint_every=2, eval_tokens=256),
        tracking=TrackingConfig(console=False),
    )
    workdir = tmp_path / "runs" / "r"
    train(cfg.with_overrides({"train.steps": 4}), workdir, devices=jax.devices()[:1])
    write_corpus(tmp_path / "corpus.txt", 700, seed=1)
    with pytest.raises(ConfigError, match="data: the token store changed since this run started"):
        train(cfg, workdir, devices=jax.devices()[:1])


# ================================================================================================
# bad input: a clear ConfigError naming the field, before training
# ================================================================================================
def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data.data_files: no file matches '.*nope\.txt'"):
        TextSource(text_config(tmp_path / "nope.txt"), data_root=tmp_path / "store")


def test_an_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n\n")
    with pytest.raises(ConfigError, match=r"data.data_files: the corpus has no text to train on: 3 rows"):
        TextSource(text_config(tmp_path / "empty.txt"), data_root=tmp_path / "store")
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith("text-")]  # nothing cached


def test_a_text_field_that_does_not_exist_is_a_clear_error(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(50)))
    cfg = text_config(tmp_path / "d.jsonl", dataset="json", tokenizer="bpe:300")
    with pytest.raises(ConfigError, match=r"data.text_field: 'text' is not a column .* its columns are body, id"):
        TextSource(cfg, data_root=tmp_path / "store")


def test_a_corpus_smaller_than_one_batch_or_an_empty_held_out_set_is_a_clear_error(tmp_path):
    write_corpus(tmp_path / "c.txt", 20)
    with pytest.raises(ConfigError, match=r"data.global_batch: .* windows of seq_len\+1 = 65, fewer than one global batch of 32"):
        TextSource(text_config(tmp_path / "c.txt", seq_len=64, global_batch=32), data_root=tmp_path / "store")
    assert not any(splitmix_held_out(i, 0.001) for i in range(20))
    with pytest.raises(ConfigError, match=r"data.holdout_fraction: the held-out 0.001 of the documents holds 0 tokens"):
        TextSource(text_config(tmp_path / "c.txt", global_batch=2, holdout_fraction=0.001), data_root=tmp_path / "store")


def test_bad_tokenizer_specs_and_offline_hub_names_are_clear_errors(tmp_path, monkeypatch):
    write_corpus(tmp_path / "c.txt", 50)
    with pytest.raises(ConfigError, match=r"data.tokenizer: 'bpe:100' needs a vocabulary size of at least 257"):
        TextSource(text_config(tmp_path / "c.txt", tokenizer="bpe:100"), data_root=tmp_path / "store")
    with pytest.raises(ConfigError, match=r"data.tokenizer: could not load a pretrained tokenizer 'gpt2' \(offline mode"):
        TextSource(text_config(tmp_path / "c.txt", tokenizer="gpt2"), data_root=tmp_path / "store")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # in case datasets was imported before the env was set
    with pytest.raises(ConfigError, match=r"data.dataset: could not load 'roneneldan/TinyStories' \(offline mode"):
        TextSource(DataConfig(source="hf", dataset="roneneldan/TinyStories"), data_root=tmp_path / "store")
    with pytest.raises(ConfigError, match=r"data.data_root: set a folder"):
        TextSource(text_config(tmp_path / "c.txt"))


# ================================================================================================
# other inputs: named local splits, pretrained tokenizer files, a token cap
# ================================================================================================
def test_a_named_eval_split_a_tokenizer_file_and_max_tokens(tmp_path):
    train_docs = write_corpus(tmp_path / "train.txt", 600, seed=1)
    eval_docs = write_corpus(tmp_path / "valid.txt", 60, seed=2)
    for name, docs in [("train", train_docs), ("valid", eval_docs)]:
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in docs))
    files = f"train={tmp_path / 'train.jsonl'},validation={tmp_path / 'valid.jsonl'}"
    bpe = TextSource(text_config(files, dataset="json", text_field="content", eval_split="validation", tokenizer="bpe:400"),
                     data_root=tmp_path / "store")
    tok = bpe.tokenizer
    assert split_documents(bpe.store.tokens("train"), tok.eot_id, tok.decode) == train_docs
    assert split_documents(bpe.store.tokens("eval"), tok.eot_id, tok.decode) == eval_docs

    # The trained tokenizer.json used as a pretrained tokenizer: same ids, same stream.
    as_file = TextSource(text_config(files, dataset="json", text_field="content", eval_split="validation",
                                     tokenizer=os.path.join(bpe.store.path, "tokenizer.json")), data_root=tmp_path / "store")
    np.testing.assert_array_equal(np.asarray(as_file.store.tokens("train")), np.asarray(bpe.store.tokens("train")))

    capped = TextSource(text_config(tmp_path / "train.txt", max_tokens=3000, holdout_fraction=0.2), data_root=tmp_path / "store")
    assert capped.store.manifest["counts"]["train_tokens"] == 3000 and capped.describe()["train_tokens"] == 3000

    # Streaming reads the same documents (a separate data root, since streaming does not change the key).
    whole = TextSource(text_config(tmp_path / "train.txt"), data_root=tmp_path / "store")
    streamed = TextSource(text_config(tmp_path / "train.txt", streaming=True), data_root=tmp_path / "store-streamed")
    assert streamed.store.key == whole.store.key
    np.testing.assert_array_equal(np.asarray(streamed.store.tokens("train")), np.asarray(whole.store.tokens("train")))
