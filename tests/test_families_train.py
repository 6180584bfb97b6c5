"""Every family through the one train loop: learning on experiments/tiny.py's budget, the moe
auxiliary terms in the metrics, expert-parallel training equal to one device, and kill-and-resume
bit for bit for a recurrent family and for moe."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lib.store.runstore import RunDir
from lib.train.loop import train

UNIGRAM_ENTROPY = 3.71  # the synthetic language's (docs/design.md, lib/data/synthetic.py)
MOE = {"model.family": "moe", "model.n_experts": 4, "model.top_k": 2}


def _tiny():
    from experiments.cli import load_experiment

    return load_experiment("tiny").config()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["lstm", "gru", "mlp", "cnn", "moe"])
def test_every_family_learns_on_the_tiny_budget(family, tmp_path):
    """tiny.py's run (d_model 64, 2 layers, 300 steps of 32 x 64 tokens) with only the family changed
    (moe: 4 experts of d_ff 128, top-2): the eval loss ends far below the unigram entropy (3.71 nats)."""
    overrides = {"model.family": family, **({**MOE, "model.d_ff": 128} if family == "moe" else {})}
    cfg = _tiny().with_overrides({**overrides, "train.eval_tokens": 4096, "train.eval_every": 300, "tracking.console": False})
    summary = train(cfg, tmp_path / family, devices=jax.devices()[:1])
    assert summary["eval_loss"] < UNIGRAM_ENTROPY - 1.5, summary["eval_loss"]
    counts = summary["params"]
    assert {"total", "embedding", "non_embedding", "active"} <= set(counts)
    rows = RunDir(tmp_path / family).metrics()
    if family == "moe":
        assert counts["active"] < counts["total"]
        assert summary["flops_all_conventions"]["6N"] == 6 * counts["active"] * summary["tokens"]
        for name in ("moe_aux_loss", "moe_z_loss", "moe_dropped_frac"):
            assert all(name in r for r in rows), name  # logged apart from train_loss (the LM loss alone)
        assert 0.9 < rows[-1]["moe_aux_loss"] < 1.5  # near balanced after training (1: uniform)
        assert 0.0 <= rows[-1]["moe_dropped_frac"] < 0.5
    else:
        assert counts["active"] == counts["total"] and "moe_aux_loss" not in rows[-1]


@pytest.mark.timeout(600)
def test_moe_training_with_experts_sharded_gives_the_one_device_losses(tiny_config, tmp_path):
    """8 devices, experts 4 ways (data 2 x expert 4) and 2 x 2 with fsdp (data 2 x fsdp 2 x expert 2),
    vs 1 device: same init, same batches, only float32 reduction order differs. Tolerance: 2e-5
    relative on every logged loss over 12 AdamW steps, 1e-4 on the auxiliary terms."""
    cfg = tiny_config.with_overrides({**MOE, "model.n_experts": 8, "model.n_layers": 1, "train.steps": 12, "train.log_every": 2,
                                      "train.eval_every": 12, "train.checkpoint_every": 12})
    train(cfg, tmp_path / "one", devices=jax.devices()[:1])
    one = RunDir(tmp_path / "one").metrics()
    assert len(one) == 6 and one[-1]["train_loss"] < one[0]["train_loss"] - 0.2
    for name, mesh in [("ep4", {"mesh.data": 2, "mesh.expert": 4}), ("fsdp2-ep2", {"mesh.data": 2, "mesh.fsdp": 2, "mesh.expert": 2})]:
        train(cfg.with_overrides(mesh), tmp_path / name, devices=jax.devices())
        many = RunDir(tmp_path / name).metrics()
        np.testing.assert_allclose([r["train_loss"] for r in many], [r["train_loss"] for r in one], rtol=2e-5)
        for key in ("moe_aux_loss", "moe_z_loss", "moe_dropped_frac"):
            np.testing.assert_allclose([r[key] for r in many], [r[key] for r in one], rtol=1e-4, atol=1e-6)
        assert RunDir(tmp_path / name).summary()["eval_loss"] == pytest.approx(RunDir(tmp_path / "one").summary()["eval_loss"], rel=2e-5)


# ---- kill and resume, in subprocesses (as tests/test_train.py does for the transformer) -------------
SMALL = ["--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "data.seq_len=32", "--set", "data.global_batch=16",
         "--set", "train.log_every=10", "--set", "train.eval_every=1000", "--set", "train.eval_tokens=1024",
         "--set", "optimizer.warmup_steps=10"]


def _cli(workdir, steps, every, extra, cache):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",  # the session's compile cache: the
           "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # cut and resumed runs reuse ref's
    cmd = [sys.executable, "-m", "experiments.cli", "train", "--config", "tiny", "--workdir", str(workdir), *SMALL,
           "--set", f"train.steps={steps}", "--set", f"train.checkpoint_every={every}", *extra]
    return cmd, env


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["gru", "moe"])
def test_a_killed_run_resumes_bit_for_bit(family, tmp_path, compile_cache):
    extra = [x for k, v in ({"model.family": family} if family == "gru" else MOE).items() for x in ("--set", f"{k}={v}")]
    steps, every = 120, 20  # killed once step 20 is checkpointed: 100 steps and 5 checkpoints still to go
    cmd, env = _cli(tmp_path / "ref", steps, every, extra, compile_cache)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=400)

    cmd, env = _cli(tmp_path / "cut", steps, every, extra, compile_cache)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (tmp_path / "cut" / "checkpoints" / str(every)).exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < 300, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cut = RunDir(tmp_path / "cut")
    assert cut.state() == "running" and cut.summary() is None  # really cut mid-run

    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=400)
    assert "resumed from checkpoint" in out.stdout
    ref, cut = RunDir(tmp_path / "ref"), RunDir(tmp_path / "cut")
    assert cut.state() == "done"
    ref_rows, cut_rows = ref.metrics(), cut.metrics()
    assert [r["step"] for r in cut_rows] == [r["step"] for r in ref_rows]
    keys = ["train_loss"] + (["moe_aux_loss", "moe_z_loss", "moe_dropped_frac"] if family == "moe" else [])
    assert [[r[k] for k in keys] for r in cut_rows] == [[r[k] for k in keys] for r in ref_rows]
    assert cut.summary()["eval_loss"] == ref.summary()["eval_loss"]

    def final(workdir):
        with ocp.CheckpointManager(workdir / "checkpoints") as mgr:
            return mgr.restore(steps, args=ocp.args.StandardRestore())["params"]

    jax.tree.map(np.testing.assert_array_equal, final(tmp_path / "cut"), final(tmp_path / "ref"))
