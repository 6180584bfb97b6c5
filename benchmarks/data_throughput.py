"""Data throughput: tokenization MB/s into the token store, batches/s out of it, and batch assembly
time next to a measured train step of quickstart-sized models (goal: data < 5% of a step).

    python benchmarks/data_throughput.py [--mb 20] [--steps 20] [--out benchmarks/results/data_throughput.json]

Everything runs offline on a generated English-like corpus (Zipf-distributed words from a
synthetic lexicon, so a BPE has real merges to learn) in a temp folder, Hugging Face caches included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=20.0, help="size of the generated corpus in MB")
    p.add_argument("--bpe", default="bpe:8192", help="BPE tokenizer spec to measure")
    p.add_argument("--steps", type=int, default=20, help="timed train steps / batch assemblies per model")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (corpus, token stores)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "data_throughput.json"))
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="data-throughput-")
    for var, sub in {"HF_HOME": "hf", "HF_DATASETS_CACHE": "hf/datasets"}.items():
        os.environ.setdefault(var, os.path.join(work, sub))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus_path = os.path.join(work, "corpus.txt")
    t0 = time.perf_counter()
    docs = write_corpus(corpus_path, int(args.mb * 1e6))
    mb = os.path.getsize(corpus_path) / 1e6
    print(f"corpus: {mb:.1f} MB, {len(docs):,} documents (generated in {time.perf_counter() - t0:.1f}s) in {work}")

    import datasets  # noqa: F401  (imported up front so build times measure the pipeline, not imports)
    import jax

    results = {
        "corpus_mb": mb,
        "documents": len(docs),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    root = os.path.join(work, "store")
    sources = {spec: build(spec, corpus_path, root) for spec in ("bytes", args.bpe)}
    results["tokenization"] = [build_row(spec, src, mb) for spec, src in sources.items()]
    results["encoders"] = encoder_speeds(sources[args.bpe].tokenizer, sources["bytes"].tokenizer, docs[:20000])
    results["batches"] = [batch_speed(sources["bytes"], seq_len, batch, root) for seq_len, batch in ((64, 32), (1024, 64), (2048, 256))]
    results["step_vs_batch"] = step_vs_batch(sources[args.bpe].cfg, root, args.steps)

    print_tables(results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"\nwrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ------------------------------------------------------------------------------------------------
def write_corpus(path: str, n_bytes: int) -> list[str]:
    rng = np.random.default_rng(0)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    letter_p = 1.0 / np.arange(1, 27) ** 0.9
    letter_p /= letter_p.sum()
    lexicon = ["".join(rng.choice(letters, size=rng.integers(2, 10), p=letter_p)) for _ in range(20000)]
    word_p = 1.0 / np.arange(1, len(lexicon) + 1) ** 1.1
    word_p /= word_p.sum()
    docs, size = [], 0
    while size < n_bytes:
        words = rng.choice(len(lexicon), size=4096, p=word_p)
        cuts = np.cumsum(rng.integers(20, 400, size=40))
        for chunk in np.split(words, cuts[cuts < len(words)]):
            doc = " ".join(lexicon[w] for w in chunk).capitalize() + "."
            docs.append(doc)
            size += len(doc) + 1
    with open(path, "w") as f:
        f.write("\n".join(docs) + "\n")
    return docs


def build(spec: str, corpus_path: str, root: str):
    from lib.config import DataConfig
    from lib.data.text import TextSource

    cfg = DataConfig(source="hf", dataset="text", data_files=corpus_path, tokenizer=spec, seq_len=64, global_batch=32)
    return TextSource(cfg, data_root=root)


def build_row(spec: str, source, mb: float) -> dict:
    m = source.store.manifest
    tokens = m["counts"]["train_tokens"] + m["counts"]["eval_tokens"]
    return {
        "tokenizer": spec,
        "vocab_size": source.vocab_size,
        "tokenizer_vocab_size": source.tokenizer.vocab_size,
        "tokens": tokens,
        "bytes_per_token": mb * 1e6 / tokens,
        "tokenizer_s": m["tokenizer_seconds"],  # BPE training (or loading)
        "build_s": m["build_seconds"],
        "build_mb_per_s": mb / m["build_seconds"],
    }


def encoder_speeds(bpe, byte_tok, docs: list[str]) -> list[dict]:
    """Encoding alone (no dataset reading): bytes, BPE batch (all cores), BPE one document at a time."""
    mb = sum(len(d.encode()) for d in docs) / 1e6
    rows = []
    for name, fn in [
        ("bytes", lambda: byte_tok.encode_documents(docs)),
        ("bpe encode_batch (threads)", lambda: bpe.encode_documents(docs)),
        ("bpe encode per doc (1 thread)", lambda: [bpe.encode(d) for d in docs]),
    ]:
        t0 = time.perf_counter()
        fn()
        rows.append({"encoder": name, "mb_per_s": mb / (time.perf_counter() - t0)})
    return rows


def batch_speed(source, seq_len: int, batch: int, root: str, n: int = 200) -> dict:
    from lib.data.text import TextSource

    src = TextSource(dataclasses.replace(source.cfg, seq_len=seq_len, global_batch=batch), data_root=root)
    src.batch(0)
    t0 = time.perf_counter()
    for step in range(1, n + 1):  # consecutive steps, as in training (one permutation per epoch)
        src.batch(step)
    dt = (time.perf_counter() - t0) / n
    return {"seq_len": seq_len, "global_batch": batch, "batch_ms": dt * 1e3, "batches_per_s": 1 / dt,
            "tokens_per_s": batch * seq_len / dt}


def step_vs_batch(data_cfg, root: str, steps: int) -> list[dict]:
    """Median train-step time (on a fixed batch) vs median batch assembly (source.batch + global_batch)."""
    import jax

    from lib.parallel import sharding
    from lib.config import ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.config_rules import validate
    from lib.data import make_source, resolve_vocab
    from lib.train.step import build_steps

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from experiments import tiny

    quickstart = [
        ("tiny (experiments/tiny.py)", tiny.config(), 64),
        ("small d128 L4 T128", RunConfig(model=ModelConfig(d_model=128, n_layers=4, n_heads=4), train=TrainConfig(steps=100),
                                         optimizer=OptimizerConfig(warmup_steps=0)), 128),
    ]
    rows = []
    for name, base, seq_len in quickstart:
        cfg = base.with_overrides({
            "data.source": "hf", "data.dataset": data_cfg.dataset, "data.data_files": data_cfg.data_files,
            "data.tokenizer": data_cfg.tokenizer, "data.seq_len": seq_len, "data.data_root": root,
        })
        devices = jax.devices()
        validate(cfg, len(devices))
        source = make_source(cfg.data, data_root=root)
        cfg = resolve_vocab(cfg, source)
        mesh = sharding.make_mesh(cfg.mesh, devices)
        pi, pc = jax.process_index(), jax.process_count()
        with sharding.activate(mesh):
            jitted = build_steps(cfg, mesh)  # the exact jitted step `scaling train` runs
            state, step_fn = jitted.init(jax.random.key(0)), jitted.train_step

            def assemble(step):
                return sharding.global_batch(source.batch(step, pi, pc), mesh)

            batch = assemble(0)
            for _ in range(3):  # compile + warm up
                state, metrics = step_fn(state, batch)
            jax.block_until_ready(metrics)

            def train_step(_):
                nonlocal state
                state, m = step_fn(state, batch)
                jax.block_until_ready(m)

            # Medians: this is often a shared machine, and one descheduled call should not decide.
            step_s = median_time(train_step, steps)
            batch_s = median_time(lambda i: jax.block_until_ready(assemble(i)), steps)
            rows_s = median_time(lambda i: source.batch(i, pi, pc), steps)
        rows.append({"model": name, "params": sum(x.size for x in jax.tree.leaves(state.params)),
                     "seq_len": cfg.data.seq_len, "global_batch": cfg.data.global_batch,
                     "step_ms": step_s * 1e3, "batch_ms": batch_s * 1e3, "host_rows_ms": rows_s * 1e3,
                     "batch_fraction": batch_s / step_s})
    return rows


def median_time(fn, n: int) -> float:
    times = []
    for i in range(1, n + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def print_tables(r: dict) -> None:
    print(f"\nDevice: {r['device']} ({r['backend']}), {r['cpu_count']} CPUs; corpus {r['corpus_mb']:.1f} MB")
    print("\nToken store build (read + tokenize + write + hash; BPE includes training it)")
    print(f"{'tokenizer':<12}{'vocab':>8}{'tokens':>14}{'bytes/tok':>11}{'train s':>9}{'build s':>9}{'MB/s':>9}")
    for t in r["tokenization"]:
        print(f"{t['tokenizer']:<12}{t['vocab_size']:>8}{t['tokens']:>14,}{t['bytes_per_token']:>11.2f}"
              f"{t['tokenizer_s']:>9.2f}{t['build_s']:>9.2f}{t['build_mb_per_s']:>9.2f}")
    print("\nEncoding alone")
    for e in r["encoders"]:
        print(f"{e['encoder']:<34}{e['mb_per_s']:>9.2f} MB/s")
    print("\nBatches from the store (bytes tokens, memory-mapped, consecutive steps)")
    print(f"{'seq_len':>8}{'batch':>7}{'ms/batch':>10}{'batches/s':>11}{'Mtok/s':>9}")
    for b in r["batches"]:
        print(f"{b['seq_len']:>8}{b['global_batch']:>7}{b['batch_ms']:>10.3f}{b['batches_per_s']:>11.0f}{b['tokens_per_s'] / 1e6:>9.1f}")
    print("\nBatch assembly vs train step (goal: < 5%)")
    print("(batch = this host's rows from the store + jax.make_array_from_process_local_data; rows = the first part)")
    print(f"{'model':<28}{'params':>10}{'T':>6}{'B':>5}{'step ms':>10}{'batch ms':>10}{'rows ms':>9}{'ratio':>8}")
    for s in r["step_vs_batch"]:
        print(f"{s['model']:<28}{s['params']:>10,}{s['seq_len']:>6}{s['global_batch']:>5}{s['step_ms']:>10.2f}"
              f"{s['batch_ms']:>10.3f}{s['host_rows_ms']:>9.3f}{s['batch_fraction']:>8.2%}")


if __name__ == "__main__":
    sys.exit(main())
