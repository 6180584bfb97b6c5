"""benchmarks/accelerator_check.sh itself, on CPU: its --cpu-smoke end to end as an offline GPU box would
run it (only JAX and its libraries importable), and the driver's time limits and table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Modules outside the closure of jax, flax, optax, orbax-checkpoint and tensorstore (what an offline GPU box
# has): the check must run without any of them.
NOT_ON_AN_OFFLINE_BOX = ("datasets", "wandb", "gcsfs", "pandas", "matplotlib", "tokenizers", "tqdm", "huggingface_hub", "filelock", "ray")


def test_the_smoke_runs_on_cpu_with_only_jax_and_its_libraries(tmp_path):
    """`accelerator_check.sh --cpu-smoke` end to end, with datasets, wandb, gcsfs, pandas, matplotlib, ...
    unimportable (as on an offline box that has only JAX, flax, optax, orbax and tensorstore): every
    stage passes, each within its limit, and the JSON and the table hold sane values."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor m in {NOT_ON_AN_OFFLINE_BOX!r}:\n    sys.modules[m] = None\n")
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "accelerator_check.sh"), "--cpu-smoke", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["mode"] == "cpu-smoke" and record["versions"]["jax"] == jax.__version__
    assert not any(str(v).startswith("missing") for v in record["versions"].values())
    assert record["devices"]["backend"] == "cpu" and record["devices"]["count"] == 1  # the smoke undoes the suite's 8 devices
    blocked = {"datasets", "wandb", "gcsfs", "pandas", "matplotlib", "tokenizers", "filelock"}
    assert set(record["blocked_modules"]) == blocked and not any(record["optional_modules"][m] for m in blocked)
    stages = {s["name"]: s for s in record["stages"]}
    assert list(stages) == ["tests", "train_throughput", "packed_throughput", "isoflop_gpu"]
    assert all(s["ok"] for s in stages.values()), {k: s.get("error") for k, s in stages.items()}
    assert all(0 < s["seconds"] <= s["limit_s"] + 15 for s in stages.values())
    assert all(s["limit_s"] <= record["budget_s"] for s in stages.values()) and record["seconds"] <= record["budget_s"] + 30
    assert stages["tests"]["collected"] >= 5  # bf16, mesh, the pack (2 chunkings), kill-and-resume
    # train: cuDNN attention fails on a CPU, so the preset's fallback to the XLA path ran and was recorded
    (row,) = stages["train_throughput"]["rows"]
    assert row["attention"] == "xla" and [a["attention"] for a in stages["train_throughput"]["failed_attempts"]] == ["cudnn"]
    assert row["tokens_per_s"] > 0 and 0 < row["of_matmul_peak"] < 2 and row["mfu"] is None  # a CPU has no peak in the table
    packed = stages["packed_throughput"]["rows"]
    assert [r["K"] for r in packed] == [1, 2] and all(r["gflops_per_s"] > 0 and r["speedup_vs_sequential"] > 0 for r in packed)
    assert packed[0]["speedup_vs_sequential"] == 1.0  # K = 1 is the lone run itself
    iso = stages["isoflop_gpu"]
    assert iso["runs"] == 2 and set(iso["summaries"]) == set(iso["eval_losses"])
    # finite and not blown up (14-29 steps at a sqrt(8/256)-scaled lr barely train: ~ln(64) = 4.2 to 6.3 nats seen)
    assert all(0 < v < 2 * np.log(64) + 2 for v in iso["eval_losses"].values())
    assert all(s["steps"] >= 10 and s["params"]["total"] > 0 for s in iso["summaries"].values())
    for s in iso["summaries"].values():  # the whole run's rate, from its summary (a CPU has no peak: no MFU)
        assert s["tokens_per_s"] == pytest.approx(s["tokens"] / s["train_time_s"]) and s["tokens_per_s"] > 0
        assert s["flops_per_s"] == pytest.approx(s["tokens_per_s"] * s["flops_per_token"]) and s["mfu"] is None
        assert s["flops_convention"] == "chinchilla"
    assert record["setup_s"] is not None and 0 <= record["setup_s"] < record["seconds"]  # the shell's checks, before the budget
    assert {"platform", "process_count"} <= set(record["environment"])
    for name in stages:
        assert name in proc.stdout  # the table
    assert "xla, batch 4" in proc.stdout and "failed: d16-L1 cudnn" in proc.stdout


def test_a_stage_past_its_limit_is_killed_with_its_children(tmp_path, monkeypatch):
    """A hung stage (here a process that starts a child and sleeps) is stopped at its limit together
    with everything it started, and recorded as failed with its log."""
    from benchmarks import accelerator_check

    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 300 &\necho started a child\nsleep 300\n")
    hang.chmod(0o755)
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(accelerator_check.sys, "executable", str(hang))
    monkeypatch.setattr(accelerator_check.subprocess, "Popen", popen)
    result = accelerator_check.run_stage("tests", True, tmp_path, limit=1.0)
    assert result["ok"] is False and result["error"].startswith("timed out after 1s") and "started a child" in result["error"]
    assert 1.0 <= result["seconds"] < 12
    with pytest.raises(ProcessLookupError):  # no process of the stage's group is left
        os.killpg(started[0].pid, 0)


def test_a_stage_may_use_what_earlier_stages_left_but_never_the_later_stages_shares():
    from benchmarks.accelerator_check import KILL_GRACE_S, SHARES, STAGES, stage_limit

    stages, budget, kill = list(STAGES), 465.0, KILL_GRACE_S  # each limit leaves the time a kill at it may take
    assert sum(SHARES.values()) == budget  # the default budget is the shares' sum
    assert stage_limit("info", stages, 0, budget) == SHARES["info"] - kill
    assert stage_limit("tests", stages, 10, budget) == budget - 10 - (SHARES["train_throughput"] + SHARES["packed_throughput"] + SHARES["isoflop_gpu"]) - kill
    assert stage_limit("isoflop_gpu", stages, 200, budget) == budget - 200 - kill  # the last stage: all that is left
    assert stage_limit("tests", ["tests", "isoflop_gpu"], 0, budget) == budget - SHARES["isoflop_gpu"] - kill  # --stages: only those chosen
    assert stage_limit("tests", stages, 0, 93.0) == pytest.approx(93.0 * (1 - 315 / 465) - kill)  # a smaller budget scales every share
    assert stage_limit("tests", stages, 500, budget) == 1.0  # over budget: a stage still gets a second to fail cleanly


def test_the_table_names_a_failed_stage_and_its_error():
    from benchmarks.accelerator_check import table

    record = {"mode": "accelerator", "devices": {"count": 1, "kind": "NVIDIA H100 80GB HBM3", "backend": "gpu"},
              "versions": {k: "1" for k in ("python", "jax", "jaxlib", "flax", "optax", "orbax", "tensorstore", "numpy")},
              "stages": [{"name": "isoflop_gpu", "ok": False, "seconds": 115.0, "limit_s": 115.0, "summaries": {"a": {}},
                          "error": "timed out after 115s (killed with its children)\n..."}],
              "seconds": 300.0, "budget_s": 465.0, "out": "x.json"}
    line = table(record).splitlines()[3]
    assert line.split()[:2] == ["isoflop_gpu", "NO"] and "1 runs finished before the limit" in line and "timed out after 115s" in line
    record["stages"] = [
        {"name": "train_throughput", "ok": True, "seconds": 90.0, "limit_s": 140.0, "rows": [{"size": "350M", "mfu": 0.4123, "attention": "xla", "batch": 16}],
         "failed_attempts": [{"size": "350M", "attention": "cudnn", "batch": 32, "error": "XlaRuntimeError: RESOURCE_EXHAUSTED: out of memory"}]},
        {"name": "packed_throughput", "ok": False, "seconds": 50.0, "limit_s": 60.0, "error": "exit code 1",
         "rows": [{"shape": "d768-L8", "K": 1, "mfu": 0.2, "speedup_vs_sequential": 1.0}],
         "failed_attempts": [{"shape": "d768-L8", "K": 8, "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}]}]
    train, packed = table(record).splitlines()[3:5]
    assert "350M: MFU 41.2% (xla, batch 16); failed: 350M cudnn b32 (XlaRuntimeError: RESOURCE_EXHAUSTED" in train
    assert packed.split()[:2] == ["packed_throughput", "NO"] and "d768-L8 K=1: MFU 20.0%; failed: d768-L8 K=8 (" in packed


def test_the_table_reports_an_isoflop_stage_whose_runs_all_failed_and_one_whose_runs_have_an_mfu():
    from benchmarks.accelerator_check import table

    versions = {k: "1" for k in ("python", "jax", "jaxlib", "flax", "optax", "orbax", "tensorstore", "numpy")}
    record = {"mode": "accelerator", "devices": {"count": 1, "kind": "NVIDIA H100 80GB HBM3", "backend": "gpu"}, "versions": versions,
              "stages": [{"name": "isoflop_gpu", "ok": False, "seconds": 90.0, "limit_s": 105.0, "runs": 3, "budget": 1e15, "wall_s": 88.0,
                          "eval_losses": {"a": None, "b": None, "c": None}, "best_eval_loss": None, "summaries": {},
                          "error": "sweep isoflop_gpu: 0 trained, 3 failed"}],
              "seconds": 300.0, "setup_s": 42.0, "budget_s": 465.0, "out": "x.json"}
    lines = table(record).splitlines()
    assert "3 runs at C=1e+15 in 88s, best eval loss none finished" in lines[3] and "3 failed" in lines[3]
    assert "of a 465s budget (and 42s of setup before it)" in lines[-1]
    record["stages"][0].update(ok=True, best_eval_loss=2.5, summaries={
        "a": {"mfu": 0.31, "flops_convention": "chinchilla"}, "b": {"mfu": 0.42, "flops_convention": "chinchilla"}, "c": {"mfu": None}})
    assert "best eval loss 2.5000, MFU 31.0%..42.0% (chinchilla FLOPs)" in table(record).splitlines()[3]


def test_a_killed_benchmark_stage_keeps_its_output(tmp_path):
    """A throughput stage killed before its benchmark wrote JSON still says how far it got."""
    from benchmarks.accelerator_check import salvage

    (tmp_path / "train_throughput.py.log").write_text("125M attention=cudnn batch=32: compiling\n")
    (tmp_path / "train_throughput.py.err").write_text("W external/xla: slow compile\n")
    kept = salvage("train_throughput", tmp_path)
    assert kept["rows"] == [] and "125M attention=cudnn batch=32: compiling" in kept["output"] and "slow compile" in kept["output"]


def test_only_a_failure_inside_cuda_graphs_is_retried_without_them(monkeypatch):
    from benchmarks.accelerator_check import NO_COMMAND_BUFFER, needs_command_buffer_off

    monkeypatch.setenv("XLA_FLAGS", "")
    assert needs_command_buffer_off({"error": "exit code 1\nINTERNAL: Failed to add memset node to a CUDA graph"})
    assert not needs_command_buffer_off({"error": "exit code 1\nRESOURCE_EXHAUSTED: out of memory"})
    assert not needs_command_buffer_off({"error": "timed out after 60s (killed with its children)\n... command buffer ..."})
    monkeypatch.setenv("XLA_FLAGS", NO_COMMAND_BUFFER)  # already off: no second retry
    assert not needs_command_buffer_off({"error": "Failed to add memset node to a CUDA graph"})


def test_without_an_accelerator_the_check_stops_at_once_and_says_why(tmp_path):
    """Full-size stages on a CPU would only time out one after another: the check stops after the
    versions with exit code 2, the reason in the JSON and on stderr."""
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accelerator_check.py"), "--out", str(out)],
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "JAX sees only a CPU" in proc.stderr and "--install cuda12|cuda13" in proc.stderr
    record = json.loads(out.read_text())
    assert record["error"] == "JAX sees only a CPU" and record["stages"] == [] and record["versions"]["jax"] == jax.__version__
