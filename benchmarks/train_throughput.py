"""Training throughput for a ladder of model sizes on the current device(s).

Times the exact jitted step that `scaling train` runs (lib.train.step.build_steps), on random tokens,
and prints a table: params, tokens/s, achieved TFLOP/s, MFU (accelerators only), the fraction of a
plain matmul's rate measured in this process ("of peak"), step time, compile time, peak memory.
Writes JSON to benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py                 # ladder picked for the platform
    python benchmarks/train_throughput.py --preset quickstart   # the quickstart's shapes: seq 32, batch 32, vocab 64
    python benchmarks/train_throughput.py --sizes 125M 350M --seq-len 1024 --batch 32
On a GPU the ladder is ~125M and ~350M parameters at sequence 1024 in bfloat16 (goal: >= 50% MFU
on an H100); on CPU a few small models in float32 (no MFU: the CPU has no nominal peak).

"of peak" divides the step's FLOP rate by a square matmul's (1024^2 fp32 on CPU, 8192^2 in the compute
dtype on accelerators), timed in alternation with the step, round by round, and reports the median
round's ratio: on a machine shared with other work both slow down together, so the ratio holds
where either rate alone would not. "cpu" is the same ratio in process CPU time (CPU only).
`--run-steps N` (CPU) also times two whole runs per size through `lib.train.loop.train` -- compile,
init, evaluations and host work included -- each against a matmul timed just before it: the first
run of its program in the process ("cold") and a second one ("warm", as a sweep's later runs of one
shape). Before/after a change: run this script in both trees, alternately.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import shutil
import subprocess
import types
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_io import write_json  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lib import flops as flops_lib  # noqa: E402
from lib import models  # noqa: E402
from lib.parallel import sharding  # noqa: E402
from lib.config import DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig  # noqa: E402
from lib.config_rules import validate  # noqa: E402
from lib.train.step import build_steps  # noqa: E402

# name -> (d_model, n_layers, n_heads). The named sizes are GPT-2/3 shapes at vocab 50304 (a
# multiple of 128); the small CPU shapes are named by shape, their size depending on --vocab.
SIZES = {
    "d16-L1": (16, 1, 2),  # the quickstart's ladder (experiments/quickstart.py): smallest, middle, largest
    "d32-L2": (32, 2, 2),
    "d48-L3": (48, 3, 3),
    "d64-L3": (64, 3, 4),
    "d64-L2": (64, 2, 4),
    "d128-L4": (128, 4, 4),
    "d256-L6": (256, 6, 8),
    "125M": (768, 12, 12),
    "350M": (1024, 24, 16),
    "760M": (1536, 24, 16),
}
PRESETS = {  # name -> (sizes, seq_len, batch, vocab)
    "quickstart": (["d16-L1", "d32-L2", "d48-L3", "d64-L3"], 32, 32, 64),
}


def matmul_rate(dtype, n: int, reps: int = 3) -> tuple[float, float]:
    """(FLOP/s of wall time, FLOP/s of process CPU time) of an n x n @ n x n matmul in `dtype`."""
    a = jnp.ones((n, n), dtype)
    jax.block_until_ready(_matmul(a, a))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(reps):
        out = _matmul(a, a)
    jax.block_until_ready(out)
    work = 2.0 * n**3 * reps
    return work / (time.perf_counter() - wall), work / max(time.process_time() - cpu, 1e-9)


_matmul = jax.jit(lambda a, b: a @ b)


def step_config(name: str, args, devices) -> RunConfig:
    """The run whose step this benchmark times for size `name` (SIZES): `args` gives seq_len, batch,
    vocab, steps, mlp, attention, scan, remat and mesh; bfloat16 compute on accelerators, float32 on CPU."""
    d, L, H = SIZES[name]
    on_accel = devices[0].platform != "cpu"
    return validate(RunConfig(
        model=ModelConfig(
            vocab_size=args.vocab, d_model=d, n_layers=L, n_heads=H, mlp=args.mlp,
            compute_dtype="bfloat16" if on_accel else "float32",
            attention_impl=args.attention or ("cudnn" if devices[0].platform == "gpu" else "xla"),
            scan_layers=args.scan, remat=args.remat,
        ),
        data=DataConfig(seq_len=args.seq_len, global_batch=args.batch),
        optimizer=OptimizerConfig(name="adamw", lr=1e-4, warmup_steps=0),
        train=TrainConfig(steps=args.steps + 2),
        mesh=MeshConfig(preset=args.mesh),
    ), len(devices))


def bench(name: str, args, devices) -> list[dict]:
    """Rows for size `name`: this tree's step, and with --baseline the baseline's, timed in the same rounds."""
    on_accel = devices[0].platform != "cpu"
    cfg = step_config(name, args, devices)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rng = np.random.default_rng(0)
    tokens = args.batch * args.seq_len
    per_token = flops_lib.flops_per_token(cfg.model, args.seq_len, args.convention)
    peak_dtype, peak_n = (jnp.bfloat16, 8192) if on_accel else (jnp.float32, 1024)
    variants = {"this": None, **({f"at {args.baseline}": args.baseline} if args.baseline else {})}
    with sharding.activate(mesh):
        batches = [
            sharding.global_batch(rng.integers(0, args.vocab, (args.batch, args.seq_len + 1), dtype=np.int32), mesh)
            for _ in range(2)
        ]
        runs = {}  # variant -> [compiled step, state, horizon, compile seconds, rounds, last metrics]
        for variant, rev in variants.items():
            with transformer_at(rev):
                steps = build_steps(cfg, mesh)
            state = steps.init(jax.random.key(0))
            t0 = time.perf_counter()
            step = steps.train_step.lower(state, batches[0], steps.horizon).compile()
            runs[variant] = [step, state, steps.horizon, time.perf_counter() - t0, [], None]
        for variant, run in runs.items():  # warm-up
            for i in range(2):
                run[1], run[5] = run[0](run[1], batches[i % 2], run[2])
            jax.block_until_ready(run[5])
        for _ in range(args.rounds):  # each round: the matmul, then every variant's steps
            peak_wall, peak_cpu = matmul_rate(peak_dtype, peak_n)
            for variant, run in runs.items():
                step, state, horizon = run[:3]
                t0, c0 = time.perf_counter(), time.process_time()
                for i in range(args.steps):
                    state, m = step(state, batches[i % 2], horizon)
                jax.block_until_ready(m)
                wall, cpu = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
                run[1], run[5] = state, m
                run[4].append((wall, tokens * per_token / wall / peak_wall, tokens * per_token / cpu / peak_cpu, peak_wall))

    stats = devices[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    if peak is None:  # CPU: the process's peak resident memory
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = []
    for variant, (_, _, _, compile_s, rounds, m) in runs.items():
        step_s, of_peak, of_peak_cpu, peak_rate = (float(np.median([r[k] for r in rounds])) for k in range(4))
        achieved = tokens * per_token / step_s
        rows.append({
            "size": name,
            "variant": variant,
            "params": flops_lib.param_counts(cfg.model)["total"],
            "tokens_per_s": tokens / step_s,
            "tflops_per_s": achieved / 1e12,
            "mfu": flops_lib.mfu(achieved, devices[0].device_kind, len(devices)),
            "of_matmul_peak": of_peak,  # median over rounds of (step FLOP/s) / (matmul FLOP/s timed just before)
            "of_matmul_peak_cpu": None if on_accel else of_peak_cpu,  # the same in process CPU time
            "matmul_peak_tflops_per_s": peak_rate / 1e12,
            "step_time_s": step_s,
            "compile_time_s": compile_s,
            "peak_memory_gb": peak / 2**30,
            "loss": float(m["train_loss"]),
        })
    if args.run_steps and not on_accel:
        rows[0].update(time_runs(cfg, args, tokens * per_token * args.run_steps, peak_dtype, peak_n))
    if args.baseline:  # this tree's speed over the baseline's, round by round (both in the same round)
        ratios = [b[0] / t[0] for t, b in zip(*(run[4] for run in runs.values()))]
        rows[0]["speedup_vs_baseline"] = float(np.median(ratios))
    return rows


def time_runs(cfg: RunConfig, args, run_flops: float, peak_dtype, peak_n) -> dict:
    """Whole runs of `args.run_steps` steps through `lib.train.loop.train` (the quickstart's cadence:
    20 metrics rows, 4 evaluations of 16 batches, one checkpoint; the synthetic language at --vocab),
    each as a fraction of the matmul's rate timed just before it: compile, init, evaluation and host
    work included. "cold": this process's first run of the program; "warm": a second run of the same
    program, as a sweep's later runs of one shape are. Both with a persistent compilation cache that
    starts empty, as a sweep's first launch has (lib.sweeps.executors.enable_compile_cache)."""
    import tempfile

    from lib.sweeps.executors import enable_compile_cache
    from lib.train.loop import train

    n = args.run_steps
    run_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, source="synthetic", synth_vocab=args.vocab),
        train=dataclasses.replace(cfg.train, steps=n, log_every=max(n // 20, 1), eval_every=max(n // 4, 1), checkpoint_every=n,
                                  keep_checkpoints=1, eval_tokens=16 * args.seq_len * args.batch),
    )
    run_cfg = dataclasses.replace(run_cfg, tracking=dataclasses.replace(run_cfg.tracking, console=False))
    out = {}
    cache = tempfile.mkdtemp(prefix="train_throughput_cache")
    enable_compile_cache(cache)
    for label in ("cold", "warm"):
        peak_wall, peak_cpu = matmul_rate(peak_dtype, peak_n)
        with tempfile.TemporaryDirectory() as workdir:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = train(run_cfg, workdir)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"run_{label}_s"] = wall
        out[f"run_{label}_of_matmul_peak"] = run_flops / wall / peak_wall
        out[f"run_{label}_of_matmul_peak_cpu"] = run_flops / cpu / peak_cpu
        out[f"run_{label}_eval_loss"] = summary.get("eval_loss")
    enable_compile_cache(None)
    shutil.rmtree(cache, ignore_errors=True)
    return out


@contextlib.contextmanager
def transformer_at(rev: str | None):
    """While building a step: the transformer family's module as lib/models/transformer.py (and the
    lib/models/layers.py it imports) was at git revision `rev` (None: this tree's). A
    benchmark-only switch, for before/after in one process."""
    if rev is None:
        yield
        return
    def module_at(path: str, name: str):
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        module = sys.modules.setdefault(name, types.ModuleType(name))  # flax's dataclasses look it up
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
        return module

    # The shared layers moved to lib/models/layers.py: the old transformer imports them as they were at `rev`.
    has_layers = subprocess.run(["git", "cat-file", "-e", f"{rev}:lib/models/layers.py"], cwd=REPO, stderr=subprocess.DEVNULL).returncode == 0
    layers_now = sys.modules["lib.models.layers"]
    try:
        if has_layers:
            sys.modules["lib.models.layers"] = module_at("lib/models/layers.py", f"layers_at_{rev}")
        module = module_at("lib/models/transformer.py", f"transformer_at_{rev}")
    finally:
        sys.modules["lib.models.layers"] = layers_now
    current = models.FAMILIES["transformer"]
    models.FAMILIES["transformer"] = dataclasses.replace(current, module=module.Transformer)
    try:
        yield
    finally:
        models.FAMILIES["transformer"] = current


def main() -> None:
    devices = jax.devices()
    on_accel = devices[0].platform != "cpu"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), help="sizes, seq len, batch and vocab of a named setting (flags given override them)")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES))
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--steps", type=int, default=10 if on_accel else 5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (matmul, steps); the median round is reported")
    p.add_argument("--mlp", default="gelu", choices=["gelu", "swiglu"])
    p.add_argument("--mesh", default="fsdp" if len(devices) > 1 else "dp")
    p.add_argument("--attention", choices=["xla", "cudnn"])
    p.add_argument("--scan", action="store_true")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--baseline", metavar="GIT_REV", help="also time the transformer as it was at this git revision, "
                   "in the same rounds (before/after in one process; speedup = its step time / this tree's)")
    p.add_argument("--run-steps", type=int, default=0, help="CPU: also time two whole runs of this many steps per size "
                   "(compile, init, evals included; the second a later run of the same program), as a fraction of the matmul's rate")
    p.add_argument("--convention", default="6N" if on_accel else "chinchilla", choices=flops_lib.CONVENTIONS,
                   help="FLOP count (6N is the usual MFU convention; chinchilla, the quickstart's, adds attention)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = p.parse_args()
    sizes, seq_len, batch, vocab = PRESETS[args.preset] if args.preset else (
        ["125M", "350M"] if on_accel else ["d64-L2", "d128-L4", "d256-L6"], 1024 if on_accel else 256, 32 if on_accel else 8,
        50304 if on_accel else 256)
    args.sizes, args.seq_len = args.sizes or sizes, args.seq_len or seq_len
    args.batch, args.vocab = args.batch or batch, args.vocab or vocab

    rows = [r for name in args.sizes for r in bench(name, args, devices)]
    header = (f"{'size':>8} {'variant':>12} {'params':>12} {'tokens/s':>11} {'TFLOP/s':>9} {'MFU':>7} {'of peak':>8} {'cpu':>6} {'step s':>8} "
              f"{'compile s':>10} {'peak GB':>8} {'speedup':>8}")
    print(f"device: {len(devices)} x {devices[0].device_kind}  seq {args.seq_len}  batch {args.batch}  vocab {args.vocab}  "
          f"flops {args.convention}  matmul peak {np.median([r['matmul_peak_tflops_per_s'] for r in rows]):.3g} TFLOP/s  "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(header)
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        cpu = f"{r['of_matmul_peak_cpu']:.1%}" if r["of_matmul_peak_cpu"] is not None else "-"
        speedup = f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else ""
        print(f"{r['size']:>8} {r['variant']:>12} {r['params']:>12,} {r['tokens_per_s']:>11.4g} {r['tflops_per_s']:>9.3g} {mfu:>7} {r['of_matmul_peak']:>8.1%} {cpu:>6} "
              f"{r['step_time_s']:>8.4f} {r['compile_time_s']:>10.2f} {r['peak_memory_gb']:>8.2f} {speedup:>8}")
    out = write_json(args.out, {"device_kind": devices[0].device_kind, "n_devices": len(devices), "args": vars(args), "rows": rows})
    for r in rows:
        if "run_cold_s" in r:
            print(f"{r['size']:>8} whole run of {args.run_steps} steps: cold {r['run_cold_s']:.2f} s ({r['run_cold_of_matmul_peak']:.1%} of peak, "
                  f"cpu {r['run_cold_of_matmul_peak_cpu']:.1%}), warm {r['run_warm_s']:.2f} s ({r['run_warm_of_matmul_peak']:.1%}, "
                  f"cpu {r['run_warm_of_matmul_peak_cpu']:.1%}), eval loss {r['run_warm_eval_loss']}")
    print(f"wrote {out}")


# ---- --gpu-preset: the accelerator check's measurement (benchmarks/accelerator_check.py) ----------
def gpu_preset(argv: list[str]) -> int:
    """`train_throughput.py --gpu-preset [flags]`: ~125M and ~350M parameters at sequence 1024 in
    bf16 (MFU: goal >= 50% on an H100), each size measured by main() on its own, so one failure
    does not lose the other: cuDNN attention first and the XLA path where that fails (for the
    later sizes too), the batch halved on out-of-memory; every failed attempt is recorded. The
    JSON is rewritten after each size (a run killed at its time limit keeps what it measured).
    Flags override the preset's shapes (the accelerator check's --cpu-smoke runs it at tiny
    ones). Exit code 1 if a size got no row."""
    import gc
    import json
    import tempfile

    p = argparse.ArgumentParser(prog="train_throughput.py --gpu-preset", description=gpu_preset.__doc__)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["125M", "350M"])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--min-batch", type=int, default=4, help="halve the batch on out-of-memory down to this")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--attention", nargs="+", choices=["cudnn", "xla"], default=["cudnn", "xla"], help="implementations to try, in order")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput_gpu.json"))
    args = p.parse_args(argv)
    devices = jax.devices()
    record = {"device_kind": devices[0].device_kind, "n_devices": len(devices), "preset": vars(args), "rows": [], "failed_attempts": []}
    broken = set()  # attention implementations that failed other than by memory: not tried again for later sizes
    ran_out = False  # an attempt in this process ran out of memory
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        for size in args.sizes:
            attempts = [(a, b) for a in args.attention if a not in broken or a == args.attention[-1] for b in _halvings(args.batch, args.min_batch)]
            while attempts:
                attention, batch = attempts.pop(0)
                out = Path(tmp) / f"{size}-{attention}-{batch}.json"
                sys.argv = [str(Path(__file__)), "--sizes", size, "--seq-len", str(args.seq_len), "--batch", str(batch), "--vocab",
                            str(args.vocab), "--steps", str(args.steps), "--rounds", str(args.rounds), "--attention", attention, "--out", str(out)]
                try:
                    main()
                except (Exception, SystemExit) as e:  # noqa: BLE001 -- recorded (SystemExit: main()'s flags refused), the next attempt goes on
                    text = str(e).strip()
                    error = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:400]
                    print(f"{size} attention={attention} batch={batch}: FAILED {error}", flush=True)
                    record["failed_attempts"].append({"size": size, "attention": attention, "batch": batch, "error": error})
                    oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
                    broken |= set() if oom else {attention}
                    ran_out |= oom
                    attempts = [(a, b) for a, b in attempts if (b < batch if oom else a != attention)]  # smaller batch, or next attention
                    gc.collect()
                    continue
                rows = [{**r, "attention": attention, "batch": batch} for r in json.loads(out.read_text())["rows"]]
                if ran_out:
                    for r in rows:  # JAX's peak is the process's: it would count the attempt that ran out of memory
                        r.update(peak_memory_gb=None, peak_memory_note="not measured: an earlier attempt in this process ran out of memory")
                record["rows"] += rows
                break
            write_json(args.out, record)
    measured = {r["size"] for r in record["rows"]}
    print(f"--gpu-preset: {len(measured)} of {len(args.sizes)} sizes measured" + "".join(
        f"; {r['size']}: MFU {r['mfu']:.1%}" if r["mfu"] is not None else f"; {r['size']}: {r['tflops_per_s']:.3g} TFLOP/s" for r in record["rows"])
        + f"; wrote {args.out}", flush=True)
    return 0 if measured == set(args.sizes) else 1


def _halvings(batch: int, least: int) -> list[int]:
    """batch, batch/2, ... down to `least` (at least the batch itself)."""
    out = [batch]
    while out[-1] // 2 >= least:
        out.append(out[-1] // 2)
    return out


if __name__ == "__main__":
    if "--gpu-preset" in sys.argv[1:]:
        sys.exit(gpu_preset([a for a in sys.argv[1:] if a != "--gpu-preset"]))
    main()
