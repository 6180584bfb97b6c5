"""Multi-host on one machine: 2 local processes x 4 CPU devices, joined by jax.distributed on
localhost with gloo collectives, against 1 process x 8 devices."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lib.store.runstore import RunDir
from lib.train.loop import train

SETS = {
    "mesh.preset": "fsdp", "model.d_model": 32, "data.seq_len": 32, "data.global_batch": 16,
    "train.steps": 60, "train.log_every": 5, "train.eval_every": 30, "train.eval_tokens": 1024,
    "train.checkpoint_every": 10, "optimizer.warmup_steps": 5, "tracking.console": True,
}
TOL = 2e-5  # relative, on every logged loss: only the order of float32 reductions differs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, port, cache):
    """Two processes of 4 CPU devices; `cache`: the session's compile cache (the relaunch compiles nothing)."""
    sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.cli", "train", "--config", "tiny", "--workdir", str(workdir), *sets,
             "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), "--heartbeat-timeout", "10"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]


def _finish(procs, timeout=300):
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run in this process on 8 devices."""
    from experiments.cli import load_experiment

    cfg = load_experiment("tiny").config().with_overrides(SETS)
    workdir = tmp_path_factory.mktemp("ref") / "run"
    train(cfg, workdir, devices=jax.devices())
    return RunDir(workdir)


def _losses(run):
    return [r["train_loss"] for r in run.metrics()]


@pytest.mark.timeout(600)
def test_two_processes_train_as_one_of_eight_devices_and_a_dead_one_stops_the_other_and_a_relaunch_resumes(reference, tmp_path, compile_cache):
    """One launch of two processes (not two: the start-up and compiles are most of the time): the rows
    they log before one is killed and after the relaunch are the one-process run's, written once."""
    workdir = tmp_path / "run"
    procs = _launch(workdir, _free_port(), compile_cache)
    t0 = time.time()
    while not (workdir / "checkpoints" / "10").exists():
        assert all(p.poll() is None for p in procs) and time.time() - t0 < 240
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, err = procs[0].communicate(timeout=120)  # no hang: the heartbeat timeout is 10 s
    assert time.time() - killed_at < 60
    assert procs[0].returncode != 0
    # JAX's words for a dead peer vary with timing: the collective fails, or the heartbeat check fires.
    dead_peer = r"another task died|stopped sending heartbeats|heartbeat timeout|Gloo all-reduce failed"
    assert re.search(dead_peer, err), err[-2000:]
    status = RunDir(workdir).status()
    assert status["state"] in ("failed", "running") and RunDir(workdir).summary() is None
    procs[1].wait()

    outs = _finish(_launch(workdir, _free_port(), compile_cache))
    resumed_at = int(outs[0][0].split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed_at >= 10
    run = RunDir(workdir)
    assert run.status()["attempts"] == 2
    assert run.state() == "done"
    assert [r["step"] for r in run.metrics()] == list(range(5, 61, 5))  # written once, by process 0 only
    np.testing.assert_allclose(_losses(run), _losses(reference), rtol=TOL)
    assert run.summary()["eval_loss"] == pytest.approx(reference.summary()["eval_loss"], rel=TOL)
    assert run.summary()["n_devices"] == 8
