"""Where a sweep's wall time goes: compile, train, eval, checkpoint, bookkeeping (goal: all but
train under 20% of the total).

    python benchmarks/sweep_overhead.py [--experiment quickstart] [--root DIR] [--set KEY=VALUE ...]

Trains the sweep in this process into a fresh root (a temporary folder unless --root; its
compilation cache starts cold, as on a first launch) and splits each run's wall time:
  compile      JAX tracing + lowering + XLA compile (or cache load) of every jit, from
               jax.monitoring's duration events
  train        the training loop: summary.json's train_time_s, less checkpoint saves inside it
  eval         held-out evaluations (first eval batch -> metrics row), less compiles inside them
  checkpoint   host time in the orbax Checkpointer (create, save, wait, restore, close)
  bookkeeping  everything else: planning, building the data source, state init, run store writes
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
from jax import monitoring

import lib.train
from experiments.sweep_cmd import SweepOptions, load_sweep, run_sweep
from lib.config import parse_set_args

RESULTS = Path(__file__).resolve().parent / "results" / "sweep_overhead.json"
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
CATEGORIES = ("compile", "train", "eval", "checkpoint", "bookkeeping")


class Timers:
    """Per-run accumulators, filled by the hooks below while lib.train.train runs."""

    def __init__(self):
        self.runs: list[dict] = []
        self.cur: dict | None = None
        self.eval_started: float | None = None
        self.eval_compile = 0.0

    def on_compile(self, event: str, duration: float, **_):
        if self.cur is not None and event in COMPILE_EVENTS:
            self.cur["compile"] += duration
            if self.eval_started is not None:
                self.eval_compile += duration


T = Timers()


def install_hooks() -> None:
    monitoring.register_event_duration_secs_listener(T.on_compile)

    real_train, real_source, real_log = lib.train.train, lib.train.make_source, lib.train.Tracker.log
    Ckpt = lib.train.Checkpointer

    def timed_train(cfg, workdir, devices=None):
        T.cur = dict(run=os.path.basename(os.fspath(workdir)), compile=0.0, eval=0.0, checkpoint=0.0, saves=[], source=0.0)
        t0 = time.perf_counter()
        try:
            summary = real_train(cfg, workdir, devices)
        finally:
            T.cur["wall"] = time.perf_counter() - t0
            T.runs.append(T.cur)
        T.cur["summary"] = summary
        T.cur["steps"] = cfg.train.steps
        T.cur = None
        return summary

    def timed_source(*a, **k):
        t0 = time.perf_counter()
        source = real_source(*a, **k)
        T.cur["source"] += time.perf_counter() - t0
        return _EvalMarkingSource(source)

    def timed_log(self, row):
        if T.eval_started is not None:
            T.cur["eval"] += time.perf_counter() - T.eval_started - T.eval_compile
            T.eval_started, T.eval_compile = None, 0.0
        return real_log(self, row)

    class TimedCheckpointer(Ckpt):
        def __init__(self, *a, **k):
            with _timed("checkpoint"):
                super().__init__(*a, **k)

        def save(self, step, state, force=False):
            t0 = time.perf_counter()
            super().save(step, state, force=force)
            T.cur["saves"].append((step, time.perf_counter() - t0))
            T.cur["checkpoint"] += time.perf_counter() - t0

        def restore(self, *a, **k):
            with _timed("checkpoint"):
                return super().restore(*a, **k)

        def wait(self):
            with _timed("checkpoint"):
                super().wait()

        def close(self):
            with _timed("checkpoint"):
                super().close()

    lib.train.train, lib.train.make_source, lib.train.Tracker.log = timed_train, timed_source, timed_log
    lib.train.Checkpointer = TimedCheckpointer


class _timed:
    def __init__(self, key):
        self.key = key

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        T.cur[self.key] += time.perf_counter() - self.t0


class _EvalMarkingSource:
    """The first eval batch of an evaluation starts the eval clock; the metrics row after it stops it."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        return getattr(self._source, name)

    def eval_batch(self, index, *a, **k):
        if index == 0:
            T.eval_started, T.eval_compile = time.perf_counter(), 0.0
        return self._source.eval_batch(index, *a, **k)


def split(run: dict) -> dict:
    s = run["summary"]
    in_loop_saves = sum(d for step, d in run["saves"] if step < run["steps"])  # inside train_time_s
    out = {
        "compile": run["compile"],
        "train": s["train_time_s"] - in_loop_saves,
        "eval": run["eval"],
        "checkpoint": run["checkpoint"],
    }
    out["bookkeeping"] = run["wall"] - sum(out.values())
    return {"run": run["run"], "wall": run["wall"], **out, "data_source": run["source"], "steps": run["steps"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="quickstart")
    p.add_argument("--root", help="default: a temporary folder, removed afterwards")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="sweep_overhead_")
    load_before = os.getloadavg()
    install_hooks()
    t0 = time.perf_counter()
    report = run_sweep(load_sweep(args.experiment), root, SweepOptions(overrides=parse_set_args(args.set), progress="off", spec=args.experiment))
    total = time.perf_counter() - t0
    load_after = os.getloadavg()
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)

    rows = [split(r) for r in T.runs]
    totals = {c: sum(r[c] for r in rows) for c in CATEGORIES}
    totals["bookkeeping"] += total - sum(r["wall"] for r in rows)  # planning, manifest, skips, report
    non_train = (total - totals["train"]) / total

    width = max([len(r["run"]) for r in rows] + [5])
    print(f"\n{'run':<{width}} {'wall s':>8} " + " ".join(f"{c:>11}" for c in CATEGORIES))
    for r in rows:
        print(f"{r['run']:<{width}} {r['wall']:8.1f} " + " ".join(f"{r[c]:11.2f}" for c in CATEGORIES))
    print(f"{'total':<{width}} {total:8.1f} " + " ".join(f"{totals[c]:11.1f}" for c in CATEGORIES))
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
