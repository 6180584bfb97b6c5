"""`scaling sweep` / `scaling status` as subprocesses: SIGKILL mid-sweep then relaunch, worker
processes on CPU, the status table."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lib.store.runstore import RunDir
from test_sweep_support import clean_env, files_with_mtimes, write_experiment

REPO = Path(__file__).resolve().parents[1]


def scaling(*args, env, **kw):
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, **kw)


def _run_ids(root):
    return sorted(p.name for p in root.iterdir() if (p / "config.json").exists())


def _checkpoint_steps(run):
    folder = run / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _start_and_signal_mid_second_run(exp, root, env, signum, cache=()) -> subprocess.Popen:
    """Launch the sweep (one run at a time); once its first run is done and the second has a checkpoint, send `signum`."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "sweep", str(exp), "--root", str(root), "--progress", "off", "--pack", "1", *cache],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 540  # generous: a loaded machine, not a speed assertion
        while time.time() < deadline:
            ids = _run_ids(root) if root.exists() else []
            states = [RunDir(root / r).state() for r in ids]
            if states.count("done") == 1 and len(ids) == 2 and "running" in states and _checkpoint_steps(root / ids[states.index("running")]):
                break
            assert proc.poll() is None, "the sweep ended before it could be signalled"
            time.sleep(0.02)
        else:
            pytest.fail("the sweep never reached its second run")
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc


@pytest.mark.timeout(1200)
def test_sigkill_mid_sweep_then_relaunch_completes_only_the_missing_runs(tmp_path):
    env = clean_env(tmp_path)
    exp = write_experiment(tmp_path, steps=300, checkpoint_every=20)
    root = tmp_path / "root"
    _start_and_signal_mid_second_run(exp, root, env, signal.SIGKILL)

    ids = _run_ids(root)
    done_id = next(r for r in ids if RunDir(root / r).state() == "done")
    cut_id = next(r for r in ids if r != done_id)
    assert RunDir(root / cut_id).state() == "running"  # stale: its process is gone
    cut_at = _checkpoint_steps(root / cut_id)[-1]
    assert 0 < cut_at < 300
    done_files = files_with_mtimes(root / done_id)

    res = scaling("sweep", exp, "--root", root, "--progress", "off", "--run-logs", "--pack", "1", env=env, timeout=540)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 already done" in res.stdout
    assert f"[{cut_id}] resumed from checkpoint at step {cut_at}" in res.stdout  # not restarted
    assert f"[{done_id}]" not in res.stdout
    all_ids = _run_ids(root)
    assert len(all_ids) == 3 and all(RunDir(root / r).state() == "done" for r in all_ids)
    assert files_with_mtimes(root / done_id) == done_files  # the finished run is untouched
    assert any((root / ".jax_cache").iterdir())  # the persistent compilation cache lives under the root
    steps = [m["step"] for m in RunDir(root / cut_id).metrics()]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # resumed, no step logged twice


@pytest.mark.timeout(1200)
def test_sigterm_checkpoints_the_current_run_and_stops_the_sweep(tmp_path, compile_cache):
    env = clean_env(tmp_path)
    exp = write_experiment(tmp_path, steps=300, checkpoint_every=20)
    root = tmp_path / "root"
    cache = ("--compile-cache", compile_cache)  # the session's: test_claims's sweeps compiled this shape
    proc = _start_and_signal_mid_second_run(exp, root, env, signal.SIGTERM, cache)
    out = proc.stdout.read()
    assert proc.returncode == 143, out
    assert "stopped: SIGTERM" in out and "1 trained, 0 already done, 0 failed, 2 not run" in out
    ids = _run_ids(root)
    cut = next(r for r in ids if RunDir(root / r).state() != "done")
    assert len(ids) == 2 and RunDir(root / cut).state() == "interrupted"  # the third run never started
    res = scaling("sweep", exp, "--root", root, "--progress", "off", "--pack", "1", *cache, env=env, timeout=540)
    assert res.returncode == 0 and "2 trained, 1 already done" in res.stdout, res.stdout + res.stderr


COOLDOWN_EXPERIMENT = textwrap.dedent(
    """
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.sweeps.cooldowns import Cooldowns
    from lib.sweeps.plans import Schedule

    def sweep():
        base = RunConfig(
            model=ModelConfig(n_heads=2),
            data=DataConfig(seq_len=16, global_batch=8),
            optimizer=OptimizerConfig(lr=1e-2),
            train=TrainConfig(eval_tokens=128, keep_checkpoints=1),
        )
        sizes = [dict(d_model=16, n_layers=1), dict(d_model=16, n_layers=2)]
        return Cooldowns(sizes, tokens=[20 * 128, 32 * 128], decay_frac=0.25, base=base, name="pc",
                         schedule=Schedule(warmup_frac=0.1, log_points=4, eval_points=1, checkpoints=2))
    """
)


@pytest.mark.timeout(900)
def test_worker_processes_on_cpu_share_a_cooldown_sweep_trunks_with_their_branches(tmp_path):
    """Two worker processes, two trunks with two branches each: `--worker i/n` gives a trunk and its
    branches to one worker, which trains the trunk first, so every branch starts from its trunk's
    checkpoint; nobody trains a run twice."""
    env = clean_env(tmp_path)
    exp = tmp_path / "cooldown_sweep.py"
    exp.write_text(COOLDOWN_EXPERIMENT)
    root = tmp_path / "root"
    res = scaling("sweep", exp, "--root", root, "--executor", "processes", "--workers", "2", "--devices-per-worker", "2",
                  "--progress", "off", env=env, timeout=840)
    assert res.returncode == 0, res.stdout + res.stderr
    ids = _run_ids(root)
    assert len(ids) == 6 and all(RunDir(root / r).status()["state"] == "done" for r in ids)
    assert all(RunDir(root / r).status()["attempts"] == 1 for r in ids)  # nobody trained a run twice
    logs = sorted((root / ".logs").glob("*.log"))
    assert [p.name for p in logs] == ["pc-worker0of2.log", "pc-worker1of2.log"]
    trained = [{r for r in ids if f"{r} done" in p.read_text()} for p in logs]
    assert trained[0] | trained[1] == set(ids) and not trained[0] & trained[1]
    summaries = {r: RunDir(root / r).summary() for r in ids}
    branches = {r: s for r, s in summaries.items() if s.get("trunk")}
    assert len(branches) == 4 and all(s["branch_restored"] is True for s in branches.values())
    for share in trained:  # each worker trained whole trunks with their own branches
        assert all(s["trunk"] in share for r, s in branches.items() if r in share)
    assert all(s["n_devices"] == 2 for s in summaries.values())  # each worker saw its own group
    assert "6 trained" in res.stdout


@pytest.mark.timeout(600)
def test_status_prints_states_losses_and_missing_runs(tmp_path):
    env = clean_env(tmp_path)
    root = tmp_path / "root"
    ids = ["tg-seed0-aaaaaa", "tg-seed1-bbbbbb"]
    done, failed = RunDir(root / ids[0]), RunDir(root / ids[1])
    for run in (done, failed):
        run.write_config({"train": {"steps": 30}, "budget": 0.0})
    done.set_state("running")
    done.append_metrics([{"step": 30, "eval_loss": 2.5}])
    done.write_summary({"eval_loss": 2.5, "params": {"total": 4144}, "tokens": 3840, "flops": {"value": 1.2e8}})
    done.set_state("done")
    failed.set_state("running")
    failed.set_state("failed", reason="diverged: non-finite loss (nan) at step 7")
    (root / ".sweeps").mkdir()
    (root / ".sweeps" / "tg.json").write_text(json.dumps({"runs": ids + ["tg-seed2-cccccc"]}))

    res = scaling("status", root, env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    row = next(line for line in lines if line.startswith(ids[0])).split()
    assert row[1:5] == ["done", "1", "30/30", "2.5000"]
    assert any(line.startswith(ids[1]) and " failed " in line for line in lines)
    assert any("at step 7" in line for line in lines)
    assert any(line.startswith("tg-seed2-cccccc") and "missing" in line for line in lines)
    assert lines[-1] == "3 runs: 1 done, 1 failed, 1 missing"
    assert scaling("status", tmp_path / "nope", env=env, timeout=240).returncode == 2
