"""Everything a lent accelerator should tell us, in one command (run it through accelerator_check.sh).

Stages, each in its own process with its own time limit (one that fails or times out is recorded
and the others still run), inside an overall budget (default 465 s, under 8 minutes on one H100):

  versions           python, jax, jaxlib, flax, optax, orbax, tensorstore, numpy; the devices
  tests              pytest -m accelerator: bf16 against fp32, every mesh preset on one device,
                     the vmapped pack, kill-and-resume (fp32 matmuls at full precision, GPU
                     reductions deterministic, so the bit-exact comparisons mean what they say)
  train_throughput   ~125M and ~350M parameters at seq 1024 in bf16: MFU (goal >= 50% on an H100)
  packed_throughput  two of its GPU shapes (d128-L4, d768-L8), K = 1 and 8: the pack's MFU against one run's
  isoflop_gpu        one budget (1e15 FLOPs, its 3 sizes nearest the optimum) of experiments/isoflop_gpu
                     at its base lr: wall time and each run's eval loss

Writes one JSON (--out) and prints one table. --cpu-smoke: the same stages on CPU at tiny shapes,
in under a minute (the tests stage then only collects the marked tests: the normal suite runs them).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_io import write_json  # noqa: E402

STAGES = ("tests", "train_throughput", "packed_throughput", "isoflop_gpu")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "tensorstore", "numpy", "scipy")
# Modules a synthetic-data run must not need (imported only where used); reported when unimportable.
OPTIONAL = ("datasets", "wandb", "gcsfs")
# Stage -> the seconds it may take at most (estimates for one H100; the overall --budget-s caps them).
LIMITS = {"info": 60, "tests": 180, "train_throughput": 100, "packed_throughput": 100, "isoflop_gpu": 140}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            module = importlib.import_module(name)
            out[name.split(".")[0]] = getattr(module, "__version__", None) or _dist_version(name)
        except ImportError as e:
            out[name.split(".")[0]] = f"missing ({e})"
    return out


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name.replace(".", "-"))
    except metadata.PackageNotFoundError:
        return None


def devices() -> dict:
    import jax

    devs = jax.devices()
    info = {"backend": jax.default_backend(), "count": len(devs), "kind": devs[0].device_kind,
            "platform_version": getattr(getattr(devs[0], "client", None), "platform_version", None)}
    stats = devs[0].memory_stats() or {}
    if "bytes_limit" in stats:
        info["memory_gb"] = stats["bytes_limit"] / 2**30
    return info


def stage_info(smoke: bool, tmp: Path) -> dict:
    return {"ok": True, "versions": versions(), "devices": devices()}


def blocked_modules() -> list[str]:
    return [m for m in OPTIONAL if m in sys.modules and sys.modules[m] is None]


# ---- the stages (each runs in a child process: `python accelerator_check.py --stage NAME`) ----------
def stage_tests(smoke: bool, tmp: Path) -> dict:
    files = ["tests/test_accelerator.py", "tests/test_pack.py", "tests/test_train.py"]
    args = [sys.executable, "-m", "pytest", "-q", "-m", "accelerator", "-p", "no:cacheprovider", *files]
    if smoke:  # the normal suite runs them on CPU; here: that they are marked and import
        args += ["--collect-only", "-k", "not accelerator_check"]
    else:
        args += ["-k", "not accelerator_check"]
    env = dict(os.environ)
    if not smoke:
        env["JAX_PLATFORMS"] = ""  # tests/conftest.py would otherwise pin them to the CPU
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # kill-and-resume starts processes beside the test's own
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "float32"  # exact-comparison tests: no TF32 on GPUs
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    if smoke:
        collected = sum(1 for line in proc.stdout.splitlines() if "::" in line)
        return {"ok": proc.returncode == 0 and collected > 0, "collected": collected, "summary": tail,
                **({} if proc.returncode == 0 else {"error": proc.stdout[-2000:] + proc.stderr[-2000:]})}
    failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return {"ok": proc.returncode == 0, "summary": tail, "failed": failed, **({} if proc.returncode == 0 else {"error": proc.stdout[-6000:]})}


def stage_train_throughput(smoke: bool, tmp: Path) -> dict:
    args = (["--sizes", "d16-L1", "--seq-len", "16", "--batch", "4", "--vocab", "64", "--steps", "2", "--rounds", "1"] if smoke
            else ["--sizes", "125M", "350M", "--seq-len", "1024", "--batch", "32", "--steps", "10", "--rounds", "2"])
    return _benchmark("train_throughput.py", args, tmp)


def stage_packed_throughput(smoke: bool, tmp: Path) -> dict:
    args = (["--shapes", "d16-L1", "--packs", "1", "2", "--steps", "2", "--seq-len", "16", "--batch", "4", "--vocab", "64"] if smoke
            else ["--shapes", "d128-L4", "d768-L8", "--packs", "1", "8", "--steps", "10", "--budget-s", "40"])
    return _benchmark("packed_throughput.py", args, tmp)


def _benchmark(script: str, args: list[str], tmp: Path) -> dict:
    out = tmp / (script + ".json")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"ok": False, "error": (proc.stdout[-2000:] + proc.stderr[-3000:])}
    return {"ok": True, "rows": json.loads(out.read_text())["rows"], "table": proc.stdout.strip()}


def stage_isoflop_gpu(smoke: bool, tmp: Path) -> dict:
    """One budget of experiments/isoflop_gpu at the base lr (the tuned rule needs the tune stage)."""
    from experiments import isoflop_gpu
    from experiments.workflow.options import SweepOptions
    from experiments.workflow.sweep import run_sweep
    from lib.config import parse_set_args

    # the 3 sizes nearest the budget's expected optimum (of 6): each size is a compile, and 3 fit the time limit
    sweep = dataclasses.replace(isoflop_gpu.sweep(), budgets=[1e15], lr_rule=None, per_budget=3)
    sets = []
    if smoke:  # tiny shapes on CPU: two sizes, a few dozen steps each
        sweep = dataclasses.replace(sweep, budgets=[1e9], sizes=[dict(d_model=32, n_layers=1, n_heads=2), dict(d_model=48, n_layers=1, n_heads=2)],
                                    per_budget=2, min_steps=10, min_batch=4, tpp_range=(0.01, 1e4), tolerance=0.1)
        sets = ["data.seq_len=32", "data.global_batch=8", "data.synth_vocab=64", "model.compute_dtype=float32", "train.eval_tokens=512"]
    root = tmp / "isoflop_gpu"
    t0 = time.perf_counter()
    report = run_sweep(sweep, str(root), SweepOptions(overrides=parse_set_args(sets), progress="off"))
    wall = time.perf_counter() - t0
    losses = {o.run_id: o.eval_loss for o in report.outcomes}
    summaries = {}
    for o in report.outcomes:
        path = root / o.run_id / "summary.json"
        if path.exists():
            s = json.loads(path.read_text())
            summaries[o.run_id] = {k: s.get(k) for k in ("eval_loss", "params", "steps", "train_time_s", "compile_time_s", "global_batch")}
    ok = report.exit_code == 0 and bool(losses) and all(v is not None for v in losses.values())
    return {"ok": ok, "wall_s": wall, "budget": sweep.budgets[0], "runs": len(losses), "eval_losses": losses,
            "best_eval_loss": min((v for v in losses.values() if v is not None), default=None), "summaries": summaries,
            **({} if ok else {"error": "\n".join(report.lines())[-2000:]})}


STAGE_FUNCTIONS = {"info": stage_info, "tests": stage_tests, "train_throughput": stage_train_throughput,
                   "packed_throughput": stage_packed_throughput, "isoflop_gpu": stage_isoflop_gpu}


# ---- the driver ----------------------------------------------------------------------------------
def run_stage(name: str, smoke: bool, tmp: Path, limit: float) -> dict:
    """The stage in a child process (its own JAX, its own memory), killed after `limit` seconds."""
    out = tmp / f"stage_{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--stage-out", str(out), "--tmp", str(tmp)]
    cmd += ["--cpu-smoke"] if smoke else []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(limit, 1))
        result = json.loads(out.read_text()) if out.exists() else {"ok": False, "error": (proc.stdout[-2000:] + proc.stderr[-3000:])}
    except subprocess.TimeoutExpired:
        result = {"ok": False, "error": f"timed out after {limit:.0f}s"}
    return {"name": name, "seconds": time.perf_counter() - t0, **result}


def table(record: dict) -> str:
    v, d = record["versions"], record["devices"]
    lines = [f"accelerator check ({record['mode']}): {d['count']} x {d['kind']} [{d['backend']}]  "
             f"python {v['python']}  jax {v['jax']}  jaxlib {v['jaxlib']}  flax {v['flax']}  optax {v['optax']}  "
             f"orbax {v['orbax']}  tensorstore {v['tensorstore']}",
             f"{'stage':<18} {'ok':<4} {'seconds':>8}  result"]
    for s in record["stages"]:
        lines.append(f"{s['name']:<18} {'yes' if s['ok'] else 'NO':<4} {s['seconds']:>8.1f}  {_result(s)}")
    lines.append(f"total {record['seconds']:.0f}s; JSON: {record['out']}")
    return "\n".join(lines)


def _result(s: dict) -> str:
    if s["name"] == "tests" and "summary" in s:
        return s.get("summary", "") + (f"; failed: {', '.join(s['failed'])}" if s.get("failed") else "") + (f" ({s['collected']} collected, not run: the CPU suite runs them)" if "collected" in s else "")
    if not s["ok"]:
        return (s.get("error") or "").strip().splitlines()[-1][:150] if s.get("error") else "failed"
    if s["name"] in ("train_throughput", "packed_throughput"):
        parts = []
        for r in s["rows"]:
            key = r.get("size") or f"{r['shape']} K={r['K']}"
            rate = f"MFU {r['mfu']:.1%}" if r.get("mfu") is not None else (
                f"{r['of_matmul_peak']:.0%} of matmul" if r.get("of_matmul_peak") is not None else f"{r.get('gflops_per_s', 0):.3g} GFLOP/s")
            vs_one = f" ({r['speedup_vs_sequential']:.2f}x K runs alone)" if r.get("K", 1) > 1 else ""
            parts.append(f"{key}: {rate}{vs_one}")
        return "; ".join(parts)
    if s["name"] == "isoflop_gpu":
        return f"{s['runs']} runs at C={s['budget']:.0e} in {s['wall_s']:.0f}s, best eval loss {s['best_eval_loss']:.4f}"
    return ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, under a minute (CI)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accelerator_check.json"))
    p.add_argument("--budget-s", type=float, default=465.0, help="overall time limit for the stages (default 465 s)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--stage", choices=list(STAGE_FUNCTIONS), help=argparse.SUPPRESS)  # internal: run one stage here
    p.add_argument("--stage-out", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cpu_smoke:  # one CPU device (children inherit it), whatever a test session forced
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join(flags)
    if args.stage:
        write_json(args.stage_out, STAGE_FUNCTIONS[args.stage](args.cpu_smoke, Path(args.tmp)))
        return

    t0 = time.perf_counter()
    # This process never touches the accelerator (JAX would hold most of its memory while the stages run).
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as tmp:
        info = run_stage("info", args.cpu_smoke, Path(tmp), LIMITS["info"])
        if not info["ok"]:
            sys.exit(f"accelerator check: could not start JAX: {info.get('error', '')[-2000:]}")
        record = {"mode": "cpu-smoke" if args.cpu_smoke else "accelerator", "versions": info["versions"], "devices": info["devices"],
                  "blocked_modules": blocked_modules(), "stages": [], "out": args.out}
        for i, name in enumerate(args.stages):
            left = args.budget_s - (time.perf_counter() - t0)
            limit = min(LIMITS[name], left - 10 * (len(args.stages) - i - 1))  # keep a little for the stages after
            record["stages"].append(run_stage(name, args.cpu_smoke, Path(tmp), limit))
            print(f"  {name}: {'ok' if record['stages'][-1]['ok'] else 'FAILED'} in {record['stages'][-1]['seconds']:.0f}s", flush=True)
    record["seconds"] = time.perf_counter() - t0
    write_json(args.out, record)
    print(table(record))
    for s in record["stages"]:
        if s.get("table"):
            print(f"\n{s['name']}:\n{s['table']}")
    sys.exit(0 if all(s["ok"] for s in record["stages"]) else 1)


if __name__ == "__main__":
    main()
