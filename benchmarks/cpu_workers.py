"""One process or two on a CPU's cores: the same quickstart-shape runs trained three ways.

- one: one process, XLA's default threads, the runs back to back (what `scaling run` does on CPU);
- two: two processes side by side, each with half of the runs (what `--executor processes
  --workers 2` does), default threads;
- two-pinned: the same, each process pinned to one core (`taskset`) with single-threaded XLA.

Every run is a whole `lib.train.loop.train` (compiles, init, evaluations, checkpoint included) of the
quickstart's config at one shape and lr, in a fresh process per mode (empty in-process caches, no
persistent compilation cache). Prints wall time per mode, its speedup over "one", and the largest
difference of a run's eval loss from "one" (0: bit-identical). Writes JSON.

    python benchmarks/cpu_workers.py [--runs d16-L1:400 d32-L2:300 d48-L3:200] [--lrs 0.02 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.results_io import write_json

# the benchmarks' one table of shapes: name -> (d_model, n_layers, n_heads)
from benchmarks.train_throughput import SIZES

SINGLE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def child(runs: list[dict]) -> None:
    """Train `runs` ({"shape": a SIZES name, "steps", "lr"}) one after another; one JSON line each."""
    import dataclasses
    import tempfile

    from experiments.quickstart import BASE
    from lib.train.loop import train

    for r in runs:
        d, L, h = SIZES[r["shape"]]
        cfg = dataclasses.replace(
            BASE, model=dataclasses.replace(BASE.model, d_model=d, n_layers=L, n_heads=h),
            optimizer=dataclasses.replace(BASE.optimizer, lr=r["lr"]),
            train=dataclasses.replace(BASE.train, steps=r["steps"], log_every=max(r["steps"] // 20, 1), eval_every=max(r["steps"] // 4, 1),
                                      checkpoint_every=r["steps"]),
            tracking=dataclasses.replace(BASE.tracking, console=False))
        with tempfile.TemporaryDirectory() as workdir:
            t0 = time.perf_counter()
            summary = train(cfg, workdir)
            print(json.dumps({**r, "wall_s": time.perf_counter() - t0, "eval_loss": summary["eval_loss"]}), flush=True)


def launch(shares: list[list[dict]], env: dict, pin: bool) -> tuple[float, list[dict]]:
    """Start one child per share side by side (pinned to core i if `pin`); (wall s, every run's row)."""
    t0 = time.perf_counter()
    procs = []
    for i, share in enumerate(shares):
        argv = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(share)]
        if pin:
            argv = ["taskset", "-c", str(i)] + argv
        procs.append(subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"a child failed (exit codes {[p.returncode for p in procs]})")
    return wall, [json.loads(line) for out in outs for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["d16-L1:400", "d32-L2:300", "d48-L3:200"], help="SHAPE:STEPS (SHAPE from train_throughput's SIZES)")
    p.add_argument("--lrs", nargs="+", type=float, default=[0.02, 0.01])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default="cpu_workers.json")
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    runs = [{"shape": s.split(":")[0], "steps": int(s.split(":")[1]), "lr": lr} for lr in args.lrs for s in args.runs]
    unknown = sorted({r["shape"] for r in runs} - set(SIZES))
    if unknown:
        raise SystemExit(f"--runs: unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    halves = [runs[: len(runs) // 2], runs[len(runs) // 2 :]]
    modes = {"one": ([runs], {}, False), "two": (halves, {}, False)}
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        flags = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_FLAGS}".strip()
        modes["two-pinned"] = (halves, {"XLA_FLAGS": flags}, True)
    key = lambda r: (r["shape"], r["steps"], r["lr"])
    record, base = {"runs": runs, "modes": {}}, None
    print(f"{'mode':<12} {'wall s':>8} {'speedup':>8} {'max |d eval loss|':>18}")
    for name, (shares, env, pin) in modes.items():
        wall, rows = launch(shares, env, pin)
        losses = {key(r): r["eval_loss"] for r in rows}
        base = base or (wall, losses)
        diff = max(abs(losses[k] - base[1][k]) for k in losses)
        record["modes"][name] = {"wall_s": wall, "speedup": base[0] / wall, "max_eval_loss_diff": diff, "rows": rows}
        print(f"{name:<12} {wall:>8.1f} {base[0] / wall:>7.2f}x {diff:>18.2e}")
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
