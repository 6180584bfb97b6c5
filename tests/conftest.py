"""Test session setup, done before jax is imported anywhere.

- 8 forced CPU devices, so sharding tests run for real on CPU (never skipped); single-device
  tests pass `devices=jax.devices()[:1]`.
- Every cache a library might write (Hugging Face, wandb, matplotlib) points into a temp dir,
  so the suite writes nothing under ~.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = tempfile.mkdtemp(prefix="scaling-tests-")
for var, sub in {"HF_HOME": "hf", "HF_DATASETS_CACHE": "hf/datasets", "WANDB_DIR": "wandb",
                 "WANDB_CACHE_DIR": "wandb/cache", "WANDB_CONFIG_DIR": "wandb/config",
                 "WANDB_DATA_DIR": "wandb/data", "MPLCONFIGDIR": "mpl"}.items():
    os.environ.setdefault(var, os.path.join(_CACHE, sub))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture
def tiny_config():
    """A seconds-long run on the synthetic language (tests override what they need)."""
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig

    return RunConfig(
        name="t",
        model=ModelConfig(d_model=32, n_layers=2, n_heads=4),
        data=DataConfig(seq_len=32, global_batch=16),
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(steps=30, log_every=5, eval_every=15, eval_tokens=1024, checkpoint_every=10),
        tracking=TrackingConfig(console=False),
    )
