"""What a lent accelerator must confirm, runnable anywhere (marked `accelerator`).

`benchmarks/accelerator_check.sh` runs every test marked `accelerator` on the machine's default
backend (bf16 against fp32 and a sharded mesh on one device here, the vmapped pack in test_pack.py,
kill-and-resume in test_train.py); the normal suite runs the same tests on CPU. Each uses the
default backend's first device, so on a GPU box they test the GPU. The check itself is tested in
tests/test_accelerator_check.py.
"""

import jax
import numpy as np
import pytest

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.parallel import sharding
from lib.train.step import build_steps

pytestmark = pytest.mark.accelerator

# bf16 compute (fp32 parameters, optimizer and loss) against fp32 compute, same init and batches:
# measured on CPU, the 40 losses (5.89 -> 4.10 nats) differ by at most 0.12% (relative); 2% leaves
# room for a GPU's bf16 kernels (their accumulation order differs from XLA:CPU's).
BF16_RTOL = 0.02


def _cfg(**model) -> RunConfig:
    return RunConfig(
        model=ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, **model),
        data=DataConfig(seq_len=32, global_batch=16),
        optimizer=OptimizerConfig(name="adamw", lr=1e-2, warmup_steps=5),
        train=TrainConfig(steps=40),
    )


def _losses(cfg: RunConfig, devices, steps: int = 40) -> np.ndarray:
    """Train losses of `steps` steps on fixed random batches (the same for every call)."""
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, cfg.model.vocab_size, (cfg.data.global_batch, cfg.data.seq_len + 1), dtype=np.int32) for _ in range(4)]
    out = []
    with sharding.activate(mesh):
        steps_ = build_steps(cfg, mesh)
        state = steps_.init(jax.random.key(0))
        batches = [sharding.global_batch(r, mesh) for r in rows]
        for i in range(steps):
            state, metrics = steps_.train_step(state, batches[i % len(batches)], steps_.horizon)
            out.append(metrics["train_loss"])
    return np.array(jax.device_get(out), np.float64)


def test_bf16_compute_tracks_fp32_within_tolerance():
    device = jax.devices()[:1]
    with jax.default_matmul_precision("float32"):  # the reference in full fp32 (no TF32 on GPUs)
        fp32 = _losses(_cfg(), device)
    bf16 = _losses(_cfg(compute_dtype="bfloat16"), device)
    assert fp32[-1] < fp32[0] - 0.3  # both learn: the comparison is over a real trajectory
    np.testing.assert_allclose(bf16, fp32, rtol=BF16_RTOL)
    assert not np.array_equal(bf16, fp32)  # and bf16 really computed in bf16


def test_a_sharded_mesh_preset_on_one_device_trains_the_dp_numbers():
    """On one device every mesh axis has size 1: fsdp (parameters and optimizer state sharded by the
    rules table) is dp's program up to the order of float sums, so the losses agree to rounding."""
    device = jax.devices()[:1]
    dp, fsdp = (_losses(_cfg().with_overrides({"mesh.preset": p}), device, steps=8) for p in ("dp", "fsdp"))
    assert dp[-1] < dp[0]
    np.testing.assert_allclose(fsdp, dp, rtol=1e-5)
