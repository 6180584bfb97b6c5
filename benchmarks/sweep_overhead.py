"""Where a sweep's wall time goes: compile, train, eval, checkpoint, bookkeeping (goal: all but
train under 20% of the total).

    python benchmarks/sweep_overhead.py [--experiment quickstart] [--root DIR] [--set KEY=VALUE ...]

Trains the sweep in this process into a fresh root (a temporary folder unless --root; its
compilation cache starts cold, as on a first launch) and splits the wall time with the timings
every run records in its summary.json:
  compile      the train step's compile (compile_time_s) and state init with its compile (init_time_s)
  train        the training loop less evaluation and checkpointing (train_time_s)
  eval         held-out evaluations, their first compile included (eval_time_s)
  checkpoint   orbax saves and the final wait (checkpoint_time_s)
  bookkeeping  the rest of the wall time: planning, data sources, run store writes, skips, report
Prints a table; writes benchmarks/results/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax

from experiments.workflow.experiment import load_sweep
from experiments.workflow.options import SweepOptions
from experiments.workflow.sweep import run_sweep
from lib.config import parse_set_args
from lib.store.runstore import RunDir, run_dirs

RESULTS = Path(__file__).resolve().parent / "results" / "sweep_overhead.json"
CATEGORIES = ("compile", "train", "eval", "checkpoint", "bookkeeping")


def split(summary: dict) -> dict:
    return {
        "run": summary["run_id"],
        "compile": summary["compile_time_s"] + summary["init_time_s"],
        "train": summary["train_time_s"],
        "eval": summary["eval_time_s"],
        "checkpoint": summary["checkpoint_time_s"],
        "steps": summary["steps"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="quickstart")
    p.add_argument("--root", help="default: a temporary folder, removed afterwards")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="sweep_overhead_")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    report = run_sweep(load_sweep(args.experiment), root, SweepOptions(overrides=parse_set_args(args.set), progress="off", spec=args.experiment))
    total = time.perf_counter() - t0
    load_after = os.getloadavg()
    rows = [split(RunDir(r.path).summary()) for r in run_dirs(root) if RunDir(r.path).state() == "done"]
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    totals = {c: sum(r[c] for r in rows) for c in CATEGORIES[:-1]}
    totals["bookkeeping"] = total - sum(totals.values())
    non_train = (total - totals["train"]) / total

    width = max([len(r["run"]) for r in rows] + [5])
    print(f"\n{'run':<{width}} {'steps':>8} " + " ".join(f"{c:>11}" for c in CATEGORIES))
    for r in rows:
        print(f"{r['run']:<{width}} {r['steps']:8d} " + " ".join(f"{r[c]:11.2f}" for c in CATEGORIES[:-1]) + f" {'-':>11}")
    print(f"{'total s':<{width}} {total:8.1f} " + " ".join(f"{totals[c]:11.1f}" for c in CATEGORIES))
    print(f"{'share':<{width}} {'':>8} " + " ".join(f"{totals[c] / total:11.1%}" for c in CATEGORIES))
    print(f"\nnon-training time: {non_train:.1%} of {total:.0f}s (goal < 20%: {'met' if non_train < 0.2 else 'NOT met'}); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} CPUs")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "experiment": args.experiment, "overrides": args.set, "runs": rows, "total_s": total,
        "totals_s": totals, "shares": {c: totals[c] / total for c in CATEGORIES}, "non_training_fraction": non_train,
        "goal": "non-training < 20%", "met": non_train < 0.2, "exit_code": report.exit_code,
        "device": jax.devices()[0].device_kind, "n_devices": jax.device_count(), "cpu_count": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": load_after, "python": platform.python_version(), "jax": jax.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
