"""Everything a lent accelerator should tell us, in one command (run it through accelerator_check.sh).

Stages, each a process group of its own with its own time limit (one that fails, hangs or times
out is killed with its children and recorded, and the others still run), inside an overall budget
(default 465 s, under 8 minutes on one H100 with the start-up):

  info               python, jax, jaxlib, the CUDA plugin, flax, optax, orbax, tensorstore, numpy;
                     the devices, nvidia-smi's driver line; stops the check if JAX sees only a CPU
  tests              pytest -m accelerator: bf16 against fp32, a sharded mesh preset on one device,
                     the vmapped pack, kill-and-resume (fp32 matmuls at full precision, GPU
                     reductions deterministic, so the bit-exact comparisons mean what they say)
  train_throughput   train_throughput.py --gpu-preset: ~125M and ~350M parameters at seq 1024 in
                     bf16, MFU (goal >= 50% on an H100; 6N FLOPs per token)
  packed_throughput  two of its GPU shapes (d128-L4, d768-L8), K = 1 and 8: the pack's MFU against one run's
  isoflop_gpu        one budget (1e15 FLOPs, its 3 sizes nearest the optimum) of experiments/isoflop_gpu
                     at its base lr: wall time and each run's eval loss

Each stage has a share of the budget (SHARES); a stage may also use what the stages before it left,
never the shares of those after it, so one hang cannot eat the others' time. A stage killed at its
limit keeps what it had written (the throughput rows so far, the finished IsoFLOP runs). A stage
that fails inside XLA's CUDA graphs (command buffers) is run once more without them.

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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_io import write_json  # noqa: E402

STAGES = ("tests", "train_throughput", "packed_throughput", "isoflop_gpu")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "tensorstore", "numpy", "scipy")
# The CUDA plugin's distributions (jax[cuda12] / jax[cuda13] install them): their versions must match jaxlib's.
PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt")
# Modules a synthetic-data run must not need (imported only where used): reported, never required.
OPTIONAL = ("datasets", "wandb", "gcsfs", "pandas", "matplotlib", "tokenizers", "pytest_timeout", "filelock")
# Seconds of the default budget (465) each stage may count on; estimates for one H100, not yet run on one.
SHARES = {"info": 40, "tests": 110, "train_throughput": 140, "packed_throughput": 60, "isoflop_gpu": 115}
# What a stage writes as it goes, read back when it is killed at its limit (relative to the check's temp folder).
PARTIAL = {"tests": "pytest.log", "train_throughput": "train_throughput.py.json", "packed_throughput": "packed_throughput.py.json",
           "isoflop_gpu": "isoflop_gpu"}


# ---- the stages (each runs in a child process: `python accelerator_check.py --stage NAME`) ----------
def stage_info(smoke: bool, tmp: Path) -> dict:
    import jax

    devs = jax.devices()
    dev = {"backend": jax.default_backend(), "count": len(devs), "kind": devs[0].device_kind,
           "platform_version": getattr(getattr(devs[0], "client", None), "platform_version", None)}
    try:
        stats = devs[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 -- some backends have none
        stats = {}
    if "bytes_limit" in stats:  # what JAX's allocator may use (75% of the device by default); nvidia-smi has the total
        dev["allocator_limit_gb"] = stats["bytes_limit"] / 2**30
    # What jax.print_environment_info says, less its nvidia-smi call (no timeout there: a hung driver
    # would stop the check here; the driver asks nvidia-smi itself, with one).
    env = {"platform": platform.platform(), "process_count": jax.process_count(), "local_devices": jax.local_device_count(),
           **{k: v for k, v in sorted(os.environ.items()) if k.startswith(("JAX_", "XLA_"))}}
    return {"ok": True, "versions": versions(), "optional": optional_modules(), "devices": dev, "environment": env}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            module = importlib.import_module(name)
            out[name.split(".")[0]] = getattr(module, "__version__", None) or _dist_version(name.replace(".", "-"))
        except ImportError as e:
            out[name.split(".")[0]] = f"missing ({e})"
    for dist in PLUGINS:
        if (v := _dist_version(dist)) is not None:
            out[dist] = v
    return out


def optional_modules() -> dict:
    import importlib.util

    def present(m):
        try:
            return importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):  # ValueError: blocked (sys.modules[m] is None)
            return False

    return {m: present(m) for m in OPTIONAL}


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def stage_tests(smoke: bool, tmp: Path) -> dict:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return {"ok": False, "error": f"pytest is not installed for {sys.executable} (offline: pip install --no-index --find-links DIR pytest)"}
    files = ["tests/test_accelerator.py", "tests/test_pack.py", "tests/test_train.py"]
    args = [sys.executable, "-m", "pytest", "-m", "accelerator", "-p", "no:cacheprovider", *files]
    env = dict(os.environ)
    if smoke:  # the normal suite runs them on CPU; here: that they are marked and import
        args += ["-q", "--collect-only"]
    else:
        env["JAX_PLATFORMS"] = os.environ.get("JAX_PLATFORMS", "")  # tests/conftest.py would otherwise pin them to the CPU
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # kill-and-resume starts processes beside the test's own
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "float32"  # exact-comparison tests: no TF32 on GPUs
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
        args.append("-v")  # each test's PASSED/FAILED line as it ends: a stage killed at its limit still names them
        if importlib.util.find_spec("pytest_timeout") is not None:
            args.append("--timeout=100")  # a hung test is named in the log (the stage's limit kills it anyway)
    log = tmp / PARTIAL["tests"]
    with open(log, "w") as f:
        proc = subprocess.run(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    out = log.read_text()
    lines = [line for line in out.strip().splitlines() if line.strip()]
    tail = lines[-1].strip("= ") if lines else ""
    if smoke:
        collected = sum(1 for line in out.splitlines() if "::" in line)
        return {"ok": proc.returncode == 0 and collected > 0, "collected": collected, "summary": tail,
                **({} if proc.returncode == 0 else {"error": out[-4000:]})}
    passed = [line.split()[0] for line in out.splitlines() if " PASSED" in line and "::" in line]
    failed = [line.split()[1] for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return {"ok": proc.returncode == 0, "summary": tail, "passed": passed, "failed": failed,
            **({} if proc.returncode == 0 else {"error": out[-6000:]})}


def stage_train_throughput(smoke: bool, tmp: Path) -> dict:
    args = ["--gpu-preset"]
    if smoke:  # cudnn fails on CPU: the fallback to the XLA attention runs in CI too
        args += ["--sizes", "d16-L1", "--seq-len", "16", "--batch", "4", "--vocab", "64", "--steps", "2", "--rounds", "1", "--attention", "cudnn", "xla"]
    return _benchmark("train_throughput.py", args, tmp)


def stage_packed_throughput(smoke: bool, tmp: Path) -> dict:
    args = (["--shapes", "d16-L1", "--packs", "1", "2", "--steps", "2", "--seq-len", "16", "--batch", "4", "--vocab", "64"] if smoke
            else ["--shapes", "d128-L4", "d768-L8", "--packs", "1", "8", "--steps", "10", "--budget-s", "30"])
    return _benchmark("packed_throughput.py", args, tmp)


def _benchmark(script: str, args: list[str], tmp: Path) -> dict:
    """The benchmark in a child process, its output streamed to files (unbuffered): a stage killed at
    its limit still shows how far it got (`salvage`)."""
    out, (log, err) = tmp / PARTIAL[script.removesuffix(".py")], _benchmark_output(script.removesuffix(".py"), tmp)
    with open(log, "w") as f, open(err, "w") as e:
        proc = subprocess.run([sys.executable, "-u", str(REPO / "benchmarks" / script), *args, "--out", str(out)], cwd=REPO,
                              stdout=f, stderr=e, text=True)
    record = json.loads(out.read_text()) if out.exists() else {}
    result = {"ok": proc.returncode == 0 and bool(record.get("rows")), "rows": record.get("rows", []), "table": _tail(log, 6000).strip()}
    if record.get("failed_attempts"):
        result["failed_attempts"] = record["failed_attempts"]
    if not result["ok"]:
        result["error"] = _tail(log, 2000) + _tail(err, 3000)
    return result


def _benchmark_output(stage: str, tmp: Path) -> tuple[Path, Path]:
    """Where a benchmark stage's child writes its stdout and stderr (read back by `salvage` too)."""
    return tmp / f"{stage}.py.log", tmp / f"{stage}.py.err"


def stage_isoflop_gpu(smoke: bool, tmp: Path) -> dict:
    """One budget of experiments/isoflop_gpu at the base lr (the tuned rule needs the tune stage)."""
    from experiments import isoflop_gpu
    from experiments.workflow.options import SweepOptions
    from experiments.workflow.sweep import run_sweep
    from lib import flops as flops_lib
    from lib.config import parse_set_args

    # the 3 sizes nearest the budget's expected optimum (of 6): each size is a compile, and 3 fit the time limit
    sweep = dataclasses.replace(isoflop_gpu.sweep(), budgets=[1e15], lr_rule=None, per_budget=3)
    sets = []
    if smoke:  # tiny shapes on CPU: two sizes, a few dozen steps each
        sweep = dataclasses.replace(sweep, budgets=[1e9], sizes=[dict(d_model=32, n_layers=1, n_heads=2), dict(d_model=48, n_layers=1, n_heads=2)],
                                    per_budget=2, min_steps=10, min_batch=4, tpp_range=(0.01, 1e4), tolerance=0.1)
        sets = ["data.seq_len=32", "data.global_batch=8", "data.synth_vocab=64", "model.compute_dtype=float32", "train.eval_tokens=512"]
    root = tmp / PARTIAL["isoflop_gpu"]
    t0 = time.perf_counter()
    report = run_sweep(sweep, str(root), SweepOptions(overrides=parse_set_args(sets), progress="off"))
    wall = time.perf_counter() - t0
    losses = {o.run_id: o.eval_loss for o in report.outcomes}
    ok = report.exit_code == 0 and bool(losses) and all(v is not None for v in losses.values())
    summaries = isoflop_summaries(root)
    for s in summaries.values():  # the whole run's MFU (here, where JAX and the peak table may be imported)
        s["mfu"] = None if s["flops_per_s"] is None else flops_lib.mfu(s["flops_per_s"], s["device_kind"], s["n_devices"])
    return {"ok": ok, "wall_s": wall, "budget": sweep.budgets[0], "runs": len(losses), "eval_losses": losses,
            "best_eval_loss": min((v for v in losses.values() if v is not None), default=None), "summaries": summaries,
            **({} if ok else {"error": "\n".join(report.lines())[-2000:]})}


def isoflop_summaries(root: Path) -> dict:
    """run id -> the numbers of its summary.json, for the runs that finished under `root`, with the
    training rate over the whole run: tokens and FLOPs (the run's flops_convention, chinchilla for
    isoflop_gpu: attention included, where the throughput stage counts 6N) per second of its loop,
    less compile, eval and checkpoint time (a pack's runs share that time: isoflop_gpu trains one run
    per size, so its packs are of one)."""
    keys = ("eval_loss", "params", "steps", "global_batch", "tokens", "flops_per_token", "train_time_s", "compile_time_s",
            "device_kind", "n_devices")
    out = {}
    for p in sorted(root.glob("*/summary.json")):
        if not isinstance(s := _read_json(p), dict):
            continue
        row = {k: s.get(k) for k in keys}
        timed = bool(row["tokens"] and row["train_time_s"])
        row["tokens_per_s"] = row["tokens"] / row["train_time_s"] if timed else None
        row["flops_per_s"] = row["tokens_per_s"] * row["flops_per_token"] if timed and row["flops_per_token"] else None
        row["flops_convention"] = (_read_json(p.parent / "config.json") or {}).get("train", {}).get("flops_convention")
        out[p.parent.name] = row
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


STAGE_FUNCTIONS = {"info": stage_info, "tests": stage_tests, "train_throughput": stage_train_throughput,
                   "packed_throughput": stage_packed_throughput, "isoflop_gpu": stage_isoflop_gpu}


# ---- the driver (never imports JAX: it would hold the accelerator's memory while the stages run) ----
KILL_GRACE_S = 10.0  # a stage killed at its limit may take this long to go (_kill_group: SIGTERM, 5 s, SIGKILL, 5 s)


def stage_limit(stage: str, stages: list[str], elapsed: float, budget: float) -> float:
    """Seconds `stage` may run: what is left of the budget minus the shares of the stages after it
    (scaled to the budget), so a slow stage eats into its own and earlier stages' leftovers only, less
    the time its kill may take, so a stage killed at its limit still ends inside the budget."""
    scale = budget / sum(SHARES[s] for s in ["info", *STAGES])
    later = stages[stages.index(stage) + 1:] if stage in stages else list(stages)
    return max(budget - elapsed - scale * sum(SHARES[s] for s in later) - KILL_GRACE_S, 1.0)


NO_COMMAND_BUFFER = "--xla_gpu_enable_command_buffer="  # what accelerator_check.sh --no-command-buffer sets


def needs_command_buffer_off(stage: dict) -> bool:
    """A failure inside XLA's CUDA-graph command buffers (seen with some driver and JAX pairs), while they are on."""
    text = (stage.get("error") or "").lower()
    return (NO_COMMAND_BUFFER not in os.environ.get("XLA_FLAGS", "") and not text.startswith("timed out")
            and ("command buffer" in text or "cuda graph" in text))


def run_stage(name: str, smoke: bool, tmp: Path, limit: float) -> dict:
    """The stage in a child process group (its own JAX, its own memory), killed with all its children
    after `limit` seconds; what it wrote so far is kept (`salvage`)."""
    out, log = tmp / f"stage_{name}.json", tmp / f"stage_{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--stage-out", str(out), "--tmp", str(tmp)]
    cmd += ["--cpu-smoke"] if smoke else []
    env = dict(os.environ)
    if not smoke and name not in ("info", "tests"):  # the largest packs and the 350M model want more than JAX's default 75%
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
    if timed_out:
        result = {"ok": False, "error": f"timed out after {limit:.0f}s (killed with its children)\n{_tail(log, 1500)}", **salvage(name, tmp)}
    elif out.exists():
        result = json.loads(out.read_text())
    else:
        result = {"ok": False, "error": f"exit code {proc.returncode}\n{_tail(log, 4000)}", **salvage(name, tmp)}
    if name == "info":  # JAX's own warnings (a CUDA plugin that did not load, say) are printed, not raised
        result["log"] = _tail(log, 3000)
    return {"name": name, "seconds": time.perf_counter() - t0, "limit_s": limit, **result}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group (its pytest, its training processes), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()  # reap the leader, so only live members keep the group
            time.sleep(0.05)


def _tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def salvage(name: str, tmp: Path) -> dict:
    """What a stage that was killed or crashed had already written."""
    path = tmp / PARTIAL.get(name, "-")
    if name in ("train_throughput", "packed_throughput"):
        record = (_read_json(path) if path.exists() else None) or {}
        output = "".join(_tail(f, 1500) for f in _benchmark_output(name, tmp))
        return {"rows": record.get("rows", []), **({"failed_attempts": record["failed_attempts"]} if record.get("failed_attempts") else {}),
                **({"output": output} if output else {})}
    if name == "isoflop_gpu" and path.exists():
        return {"summaries": isoflop_summaries(path)}
    if name == "tests" and path.exists():
        text = path.read_text(errors="replace")
        return {"passed": [line.split()[0] for line in text.splitlines() if " PASSED" in line and "::" in line],
                "failed": [line.split()[0] for line in text.splitlines() if (" FAILED" in line or " ERROR" in line) and "::" in line]}
    return {}


def nvidia_smi() -> str | None:
    """nvidia-smi's name, driver, memory, max SM clock and power limit per GPU (None without it)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return proc.stdout.strip() or proc.stderr.strip()[-300:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"


def table(record: dict) -> str:
    v, d = record["versions"], record["devices"]
    plugin = "  ".join(f"{k} {v[k]}" for k in PLUGINS if k in v)
    lines = [f"accelerator check ({record['mode']}): {d['count']} x {d['kind']} [{d['backend']}]"
             + (f"  nvidia-smi: {record['nvidia_smi']}" if record.get("nvidia_smi") else ""),
             f"python {v['python']}  jax {v['jax']}  jaxlib {v['jaxlib']}  {plugin + '  ' if plugin else ''}flax {v['flax']}  "
             f"optax {v['optax']}  orbax {v['orbax']}  tensorstore {v['tensorstore']}  numpy {v['numpy']}",
             f"{'stage':<18} {'ok':<4} {'seconds':>8} {'limit':>6}  result"]
    for s in record["stages"]:
        lines.append(f"{s['name']:<18} {'yes' if s['ok'] else 'NO':<4} {s['seconds']:>8.1f} {s.get('limit_s', 0):>6.0f}  {_result(s)}")
    setup = f" (and {record['setup_s']:.0f}s of setup before it)" if record.get("setup_s") is not None else ""
    lines.append(f"total {record['seconds']:.0f}s of a {record['budget_s']:.0f}s budget{setup}; JSON: {record['out']}")
    return "\n".join(lines)


def _result(s: dict) -> str:
    parts = []
    if s["name"] == "tests":
        if "collected" in s:
            parts.append(f"{s['collected']} collected (not run: the CPU suite runs them)")
        elif s.get("passed") or s.get("failed"):
            parts.append(f"{len(s.get('passed', []))} passed" + (f"; failed: {', '.join(s['failed'])}" if s.get("failed") else ""))
        if s.get("summary") and "collected" not in s:
            parts.append(s["summary"])
    for r in s.get("rows", []):
        key = r.get("size") or f"{r['shape']} K={r['K']}"
        rate = (f"MFU {r['mfu']:.1%}" if r.get("mfu") is not None else
                f"{r['tflops_per_s']:.3g} TFLOP/s" if r.get("tflops_per_s") is not None else f"{r.get('gflops_per_s', 0):.3g} GFLOP/s")
        how = f" ({r['attention']}, batch {r['batch']})" if "attention" in r else ""
        vs_one = f" ({r['speedup_vs_sequential']:.2f}x K runs alone)" if r.get("K", 1) > 1 else ""
        parts.append(f"{key}: {rate}{how}{vs_one}")
    if s.get("failed_attempts"):
        parts.append("failed: " + ", ".join(" ".join({"K": "K=", "batch": "b"}.get(k, "") + str(a[k]) for k in ("size", "shape", "attention", "K", "batch") if k in a)
                                            + f" ({a['error'][:60]})" for a in s["failed_attempts"]))
    if s["name"] == "isoflop_gpu":
        if s.get("runs"):
            best = "none finished" if s.get("best_eval_loss") is None else f"{s['best_eval_loss']:.4f}"
            timed = [r for r in s.get("summaries", {}).values() if r.get("mfu") is not None]
            mfus = [r["mfu"] for r in timed]
            parts.append(f"{s['runs']} runs at C={s['budget']:.0e} in {s['wall_s']:.0f}s, best eval loss {best}"
                         + (f", MFU {min(mfus):.1%}..{max(mfus):.1%} ({timed[0]['flops_convention']} FLOPs)" if timed else ""))
        elif s.get("summaries"):
            parts.append(f"{len(s['summaries'])} runs finished before the limit")
    if not s["ok"] and s.get("error"):
        parts.append(s["error"].strip().splitlines()[0][:150])
    return "; ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, under a minute (CI)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accelerator_check.json"))
    p.add_argument("--budget-s", type=float, help="overall time limit for the stages (default 465 s; 220 s with --cpu-smoke, for a loaded CI machine)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--allow-cpu", action="store_true", help="run the full-size stages even when JAX sees only a CPU")
    p.add_argument("--stage", choices=list(STAGE_FUNCTIONS), help=argparse.SUPPRESS)  # internal: run one stage here
    p.add_argument("--stage-out", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.budget_s = args.budget_s or (220.0 if args.cpu_smoke else float(sum(SHARES.values())))
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0 seconds, got {args.budget_s:g}")
    if args.cpu_smoke:  # one CPU device (children inherit it), whatever a test session forced
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join(flags)
    if args.stage:
        write_json(args.stage_out, STAGE_FUNCTIONS[args.stage](args.cpu_smoke, Path(args.tmp)))
        return

    t0 = time.perf_counter()
    started = os.environ.get("ACCELERATOR_CHECK_STARTED")  # accelerator_check.sh's start: its install and import checks took this long
    setup_s = max(time.time() - float(started), 0.0) if started else None
    record = {"mode": "cpu-smoke" if args.cpu_smoke else "accelerator", "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "python_executable": sys.executable, "setup_s": setup_s, "budget_s": args.budget_s, "out": args.out,
              "blocked_modules": [m for m in OPTIONAL if m in sys.modules and sys.modules[m] is None],
              "nvidia_smi": None if args.cpu_smoke else nvidia_smi(), "stages": []}
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as tmp:
        info = run_stage("info", args.cpu_smoke, Path(tmp), stage_limit("info", args.stages, 0.0, args.budget_s))
        if not info["ok"]:
            record.update(seconds=time.perf_counter() - t0, error=f"could not start JAX: {info.get('error', '')[-3000:]}")
            write_json(args.out, record)
            print(f"accelerator check: could not start JAX with {sys.executable}:\n{info.get('error', '')[-3000:]}", file=sys.stderr)
            sys.exit(2)
        record.update(versions=info["versions"], optional_modules=info["optional"], devices=info["devices"], environment=info["environment"])
        print("\n".join(table({**record, "stages": [], "seconds": 0}).splitlines()[:2]), flush=True)
        if not args.cpu_smoke and info["devices"]["backend"] == "cpu" and not args.allow_cpu:
            record.update(seconds=time.perf_counter() - t0, error="JAX sees only a CPU")
            write_json(args.out, record)
            print("accelerator check: JAX sees only a CPU. Is the CUDA plugin installed (--install cuda12|cuda13, "
                  "or pip install 'jax[cuda12]'), does its version match jaxlib's (above), is the driver new enough "
                  "(CUDA 12: >= 525, CUDA 13: >= 580), is JAX_PLATFORMS set? (--allow-cpu runs anyway.) JAX said:\n"
                  + info["log"][-1500:], file=sys.stderr)
            sys.exit(2)
        for name in args.stages:
            limit = stage_limit(name, args.stages, time.perf_counter() - t0, args.budget_s)
            s = run_stage(name, args.cpu_smoke, Path(tmp), limit)
            if not s["ok"] and needs_command_buffer_off(s):  # XLA's CUDA graphs fail on some drivers: once more without them
                os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_COMMAND_BUFFER}".strip()  # and for the later stages
                print(f"  {name}: failed in a CUDA graph (command buffer); again with {NO_COMMAND_BUFFER}", flush=True)
                first = s
                s = run_stage(name, args.cpu_smoke, Path(tmp), stage_limit(name, args.stages, time.perf_counter() - t0, args.budget_s))
                s.update(seconds=s["seconds"] + first["seconds"], first_attempt_error=first["error"][-2000:], xla_flags_added=NO_COMMAND_BUFFER)
            record["stages"].append(s)
            print(f"  {name}: {'ok' if s['ok'] else 'FAILED'} in {s['seconds']:.0f}s (limit {limit:.0f}s)", flush=True)
            record["seconds"] = time.perf_counter() - t0
            write_json(args.out, record)  # after each stage: a check cut short still leaves its JSON
    record["seconds"] = time.perf_counter() - t0
    write_json(args.out, record)
    print(table(record))
    for s in record["stages"]:
        if s.get("table"):
            print(f"\n{s['name']}:\n{s['table']}")
    sys.exit(0 if all(s["ok"] for s in record["stages"]) else 1)


if __name__ == "__main__":
    main()
