"""Packed training throughput: K runs of one shape as one vmapped step vs K runs one after another.

For each model shape and each pack size K, times the exact jitted pack step a sweep runs
(lib.train.step.build_pack: K runs with different learning rates and data, the run axis leading;
`--chunk all` forces one vmap over all K on CPU too) and, side by side in the same process, the
lone run's step (a pack of one: the program a run trains with alone). Prints a table and writes JSON to benchmarks/results/packed_throughput.json:

    runs/hour   K * 3600 / (pack step time * --run-steps): training alone, no eval or checkpoints
    GFLOP/s     achieved over the pack (K runs' FLOPs / step time), --convention FLOPs per token
    MFU         on accelerators (6N by default there)
    speedup     K * lone step time / pack step time: how much faster than K sequential runs
    cpu x       the same ratio in process CPU time (wall time on a shared machine is noisy)
    faults      minor page faults per step: on CPU, the fresh pages a step's temporary buffers
                touch (a big program's temporaries are mmapped anew each step; docs/design.md, packs)

    python benchmarks/packed_throughput.py                       # CPU: quickstart shapes + d128/d256
    python benchmarks/packed_throughput.py --packs 1 8 --steps 10
    python benchmarks/packed_throughput.py --sweep quickstart:tune   # also: a sweep's wall time, --pack 1 vs auto
On a GPU the default ladder is ~1M-50M-parameter models in bfloat16 at sequence 256.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_json  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lib import flops as flops_lib  # noqa: E402
from lib.config import DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig  # noqa: E402
from lib.parallel import sharding  # noqa: E402
from lib.train.step import build_pack, build_steps  # noqa: E402

# name -> (d_model, n_layers, n_heads): the quickstart's ladder (experiments/quickstart.py), then wider.
CPU_SHAPES = {
    "d16-L1": (16, 1, 2), "d24-L2": (24, 2, 2), "d32-L2": (32, 2, 2), "d40-L3": (40, 3, 2), "d48-L3": (48, 3, 3),
    "d64-L3": (64, 3, 4), "d128-L4": (128, 4, 4), "d256-L4": (256, 4, 8),
}
GPU_SHAPES = {"d128-L4": (128, 4, 4), "d256-L6": (256, 6, 8), "d384-L8": (384, 8, 6), "d512-L8": (512, 8, 8), "d768-L8": (768, 8, 12)}


def config(shape, args, on_accel: bool, lr: float = 1e-3) -> RunConfig:
    d, L, H = shape
    return RunConfig(
        model=ModelConfig(vocab_size=args.vocab, d_model=d, n_layers=L, n_heads=H,
                          compute_dtype="bfloat16" if on_accel else "float32"),
        data=DataConfig(seq_len=args.seq_len, global_batch=args.batch),
        optimizer=OptimizerConfig(name="adamw", lr=lr, warmup_steps=0),
        train=TrainConfig(steps=args.run_steps),
        mesh=MeshConfig(preset="dp"),
    )


def timed_steps(step, state, advance, batches, hparams, n: int):
    """(wall seconds, process CPU seconds, minor page faults) per step over n steps after two warm-up steps."""
    for i in range(2):
        state, m = step(state, advance, batches[i % 2], hparams)
    jax.block_until_ready(m)
    wall, cpu, faults = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(n):
        state, m = step(state, advance, batches[i % 2], hparams)
    jax.block_until_ready(m)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n, faults / n


def bench_shape(name, shape, args, devices, failed: list) -> list[dict]:
    """Rows for `shape`, K = 1 first (the lone run); a K that fails is appended to `failed`."""
    on_accel = devices[0].platform != "cpu"
    mesh = sharding.make_mesh(MeshConfig(preset="dp"), devices)
    rng = np.random.default_rng(0)
    per_token = flops_lib.flops_per_token(config(shape, args, on_accel).model, args.seq_len, args.convention)
    tokens = args.batch * args.seq_len
    rows, lone = [], None
    with sharding.activate(mesh):
        init = build_steps(config(shape, args, on_accel), mesh).init
        start = init(jax.random.key(0))
        for K in [1] + sorted(k for k in args.packs if k != 1):
            if rows and (args.steps + 2) * rows[-1]["step_time_s"] * K / rows[-1]["K"] > args.budget_s:
                print(f"{name:>8} K={K}: skipped (over --budget-s {args.budget_s:g}s)", flush=True)
                break
            try:
                cfgs = [config(shape, args, on_accel, lr=1e-3 * (1 + i / 8)) for i in range(K)]  # an LR grid
                pack = build_pack(cfgs, mesh, chunk=args.chunk)
                state = pack.stack(*[start] * K)
                advance = sharding.replicated_array(np.ones(K, bool), mesh)
                batches = [pack.batch(rng.integers(0, args.vocab, (K, args.batch, args.seq_len + 1), dtype=np.int32), mesh) for _ in range(2)]
                t0 = time.perf_counter()
                compiled = pack.train_step.lower(state, advance, batches[0], pack.hparams).compile()
                compile_s = time.perf_counter() - t0
                memory = compiled.memory_analysis()
                wall, cpu, faults = timed_steps(compiled, state, advance, batches, pack.hparams, args.steps if K < 16 else max(args.steps // 2, 3))
            except Exception as e:  # noqa: BLE001 -- out of memory at a large K, say: recorded, the other rows stand
                text = str(e).strip()
                failed.append({"shape": name, "K": K, "error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:400]})
                print(f"{name:>8} K={K}: FAILED {failed[-1]['error']}", flush=True)
                if K == 1:
                    break  # no lone run to compare the packs with
                continue
            lone = lone or (wall, cpu)  # K = 1 is the lone run's program
            achieved = K * tokens * per_token / wall
            rows.append({
                "shape": name,
                "params": flops_lib.param_counts(cfgs[0].model)["total"],
                "K": K,
                "step_time_s": wall,
                "cpu_time_s": cpu,
                "runs_per_hour": K * 3600 / (wall * args.run_steps),
                "gflops_per_s": achieved / 1e9,
                "mfu": flops_lib.mfu(achieved, devices[0].device_kind, len(devices)),
                "speedup_vs_sequential": K * lone[0] / wall,
                "cpu_speedup_vs_sequential": K * lone[1] / cpu,
                "page_faults_per_step": faults,
                "compile_time_s": compile_s,
                "memory_mb": (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                              + memory.temp_size_in_bytes) / 2**20 if memory else None,
            })
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    return (f"{r['shape']:>8} {r['params']:>10,} {r['K']:>3} {r['step_time_s'] * 1e3:>9.2f} {r['runs_per_hour']:>10.4g} "
            f"{r['gflops_per_s']:>8.3g} {mfu:>6} {r['speedup_vs_sequential']:>8.2f}x {r['cpu_speedup_vs_sequential']:>6.2f}x "
            f"{r['compile_time_s']:>8.2f} {r['memory_mb'] or 0:>9.1f} {r['page_faults_per_step']:>7.0f}")


def sweep_wall_times(experiment: str, sets: list[str]) -> dict:
    """The sweep trained twice into fresh roots (cold compilation caches): --pack 1, then --pack auto."""
    from experiments.workflow.experiment import load_sweep
    from experiments.workflow.options import SweepOptions
    from experiments.workflow.sweep import run_sweep
    from lib.config import parse_set_args

    out = {}
    for pack in ("1", "auto"):
        root = tempfile.mkdtemp(prefix=f"packed_{pack}_")
        t0 = time.perf_counter()
        report = run_sweep(load_sweep(experiment), root, SweepOptions(overrides=parse_set_args(sets), progress="off", pack=pack))
        out[f"pack_{pack}"] = {"wall_s": time.perf_counter() - t0, "exit_code": report.exit_code,
                               "eval_losses": {o.run_id: o.eval_loss for o in report.outcomes}}
        shutil.rmtree(root, ignore_errors=True)
        print(f"{experiment} --pack {pack}: {out[f'pack_{pack}']['wall_s']:.0f}s", flush=True)
    out["speedup"] = out["pack_1"]["wall_s"] / out["pack_auto"]["wall_s"]
    return out


def main() -> None:
    devices = jax.devices()[:1]  # one device: packs fill it (the mesh cases are in tests/test_pack.py)
    on_accel = devices[0].platform != "cpu"
    shapes = GPU_SHAPES if on_accel else CPU_SHAPES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=list(CPU_SHAPES | GPU_SHAPES), default=list(shapes))
    p.add_argument("--packs", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--seq-len", type=int, default=256 if on_accel else 32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32768 if on_accel else 64)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (halved for K >= 16)")
    p.add_argument("--run-steps", type=int, default=1000, help="steps of one run, for runs/hour")
    p.add_argument("--chunk", default="auto", type=lambda x: x if x == "auto" else None if x == "all" else int(x),
                   help="runs computed at once: auto (all on accelerators, one by one on CPU), all (one vmap), or a number")
    p.add_argument("--budget-s", type=float, default=90.0, help="skip larger K once a measurement would take longer than this")
    p.add_argument("--convention", default="6N" if on_accel else "chinchilla", choices=flops_lib.CONVENTIONS)
    p.add_argument("--sweep", help="also time this sweep with --pack 1 and --pack auto (anything `scaling sweep` takes, e.g. quickstart:tune)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --sweep")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "packed_throughput.json"))
    args = p.parse_args()

    print(f"device: {devices[0].device_kind}  seq {args.seq_len}  batch {args.batch}  vocab {args.vocab}  flops {args.convention}  "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"{'shape':>8} {'params':>10} {'K':>3} {'step ms':>9} {'runs/hour':>10} {'GFLOP/s':>8} {'MFU':>6} {'speedup':>9} {'cpu x':>7} "
          f"{'compile s':>8} {'memory MB':>9} {'faults':>7}")
    record = {"device_kind": devices[0].device_kind, "args": {**vars(args), "chunk": str(args.chunk)}, "load_average": os.getloadavg(), "rows": [],
              "failed_attempts": []}
    for name in args.shapes:  # the JSON after each shape: a run killed at a time limit keeps what it measured
        record["rows"] += bench_shape(name, (CPU_SHAPES | GPU_SHAPES)[name], args, devices, record["failed_attempts"])
        write_json(args.out, record)
    if args.sweep:
        record["sweep"] = {args.sweep: sweep_wall_times(args.sweep, args.set)}
    print(f"wrote {write_json(args.out, record)}")
    sys.exit(1 if record["failed_attempts"] else 0)


if __name__ == "__main__":
    main()
