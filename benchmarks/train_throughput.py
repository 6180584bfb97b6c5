"""Training throughput for a ladder of model sizes on the current device(s).

Times the exact jitted step that `scaling train` runs (lib.train.step.build_steps), on random tokens,
and prints a table: params, tokens/s, achieved TFLOP/s, MFU (accelerators only), step time,
compile time, peak memory. Writes JSON to benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py                 # ladder picked for the platform
    python benchmarks/train_throughput.py --sizes 125M 350M --seq-len 1024 --batch 32
On a GPU the ladder is ~125M and ~350M parameters at sequence 1024 in bfloat16 (goal: >= 50% MFU
on an H100); on CPU a few small models in float32 (FLOP/s only, no MFU).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_json  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lib import flops as flops_lib  # noqa: E402
from lib.parallel import sharding  # noqa: E402
from lib.config import DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig  # noqa: E402
from lib.train.step import build_steps  # noqa: E402

# name -> (d_model, n_layers, n_heads). The named sizes are GPT-2/3 shapes at vocab 50304 (a
# multiple of 128); the small CPU shapes are named by shape, their size depending on --vocab.
SIZES = {
    "d64-L2": (64, 2, 4),
    "d128-L4": (128, 4, 4),
    "d256-L6": (256, 6, 8),
    "125M": (768, 12, 12),
    "350M": (1024, 24, 16),
    "760M": (1536, 24, 16),
}


def bench(name: str, args, devices) -> dict:
    d, L, H = SIZES[name]
    on_accel = devices[0].platform != "cpu"
    cfg = RunConfig(
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
    ).validate(len(devices))
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rng = np.random.default_rng(0)
    with sharding.activate(mesh):
        steps = build_steps(cfg, mesh)
        state = steps.init(jax.random.key(0))
        batches = [
            sharding.global_batch(rng.integers(0, args.vocab, (args.batch, args.seq_len + 1), dtype=np.int32), mesh)
            for _ in range(2)
        ]
        t0 = time.perf_counter()
        step = steps.train_step.lower(state, batches[0], steps.horizon).compile()
        compile_s = time.perf_counter() - t0
        for i in range(2):  # warm-up
            state, m = step(state, batches[i % 2], steps.horizon)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, m = step(state, batches[i % 2], steps.horizon)
        jax.block_until_ready(m)
        step_s = (time.perf_counter() - t0) / args.steps

    tokens = args.batch * args.seq_len
    per_token = flops_lib.flops_per_token(cfg.model, args.seq_len, args.convention)
    achieved = tokens * per_token / step_s
    stats = devices[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    if peak is None:  # CPU: the process's peak resident memory
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "size": name,
        "params": flops_lib.param_counts(cfg.model)["total"],
        "tokens_per_s": tokens / step_s,
        "tflops_per_s": achieved / 1e12,
        "mfu": flops_lib.mfu(achieved, devices[0].device_kind, len(devices)),
        "step_time_s": step_s,
        "compile_time_s": compile_s,
        "peak_memory_gb": peak / 2**30,
        "loss": float(m["train_loss"]),
    }


def main() -> None:
    devices = jax.devices()
    on_accel = devices[0].platform != "cpu"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["125M", "350M"] if on_accel else ["d64-L2", "d128-L4", "d256-L6"])
    p.add_argument("--seq-len", type=int, default=1024 if on_accel else 256)
    p.add_argument("--batch", type=int, default=32 if on_accel else 8)
    p.add_argument("--vocab", type=int, default=50304 if on_accel else 256)
    p.add_argument("--steps", type=int, default=20 if on_accel else 5)
    p.add_argument("--mlp", default="gelu", choices=["gelu", "swiglu"])
    p.add_argument("--mesh", default="fsdp" if len(devices) > 1 else "dp")
    p.add_argument("--attention", choices=["xla", "cudnn"])
    p.add_argument("--scan", action="store_true")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--convention", default="6N", choices=flops_lib.CONVENTIONS,
                   help="FLOP count for MFU (6N is the usual MFU convention; chinchilla adds attention)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = p.parse_args()

    rows = [bench(name, args, devices) for name in args.sizes]
    header = f"{'size':>8} {'params':>12} {'tokens/s':>11} {'TFLOP/s':>9} {'MFU':>7} {'step s':>8} {'compile s':>10} {'peak GB':>8}"
    print(f"device: {len(devices)} x {devices[0].device_kind}  seq {args.seq_len}  batch {args.batch}  flops {args.convention}")
    print(header)
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['size']:>8} {r['params']:>12,} {r['tokens_per_s']:>11.4g} {r['tflops_per_s']:>9.3g} {mfu:>7} "
              f"{r['step_time_s']:>8.4f} {r['compile_time_s']:>10.2f} {r['peak_memory_gb']:>8.2f}")
    out = write_json(args.out, {"device_kind": devices[0].device_kind, "n_devices": len(devices), "args": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
