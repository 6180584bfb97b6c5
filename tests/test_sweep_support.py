"""Helpers shared by the sweep runner tests (no tests here).

A tiny sweep: runs of one shape (so the persistent compilation cache compiles them once), a few
dozen steps of a 1-layer d_model-16 model on a small synthetic language.
"""

import os
import textwrap
from pathlib import Path


EXPERIMENT = textwrap.dedent(
    """
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.sweeps.plans import Grid

    STEPS = {steps}

    def sweep():
        base = RunConfig(
            name="tg",
            model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
            data=DataConfig(seq_len=16, global_batch=8),
            optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2),
            train=TrainConfig(steps=STEPS, log_every=10, eval_every=STEPS, eval_tokens=128,
                              checkpoint_every={checkpoint_every}, keep_checkpoints=2),
        )
        return Grid(base, {axes})
    """
)


def write_experiment(tmp_path: Path, steps=30, checkpoint_every=15, axes='{"data.seed": [0, 1, 2]}', name="tiny_sweep.py") -> Path:
    path = tmp_path / name
    path.write_text(EXPERIMENT.format(steps=steps, checkpoint_every=checkpoint_every, axes=axes))
    return path


def clean_env(tmp_path: Path, cache: str | None = None) -> dict:
    """A subprocess environment that writes nothing outside tmp_path and uses the CPU; `cache`: a
    JAX compilation cache to share (the session's `compile_cache`: a shape compiles once per session)."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        HOME=str(tmp_path / "home"),
        WANDB_MODE="disabled",
        HF_HOME=str(tmp_path / "hf"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("XLA_FLAGS", None)
    if cache:  # sweep_cmd takes it over --compile-cache; a lone `scaling train` gets jax's own reading of it
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


# `scaling train` of the tiny config for a few seconds, as the kill/resume and gs:// tests launch it
# (tests/test_train.py, tests/test_gcs.py): one shape, so the session's compile cache compiles it once.
TRAIN_STEPS, TRAIN_EVERY = 200, 50
TRAIN_SETS = [
    "model.d_model=32", "model.n_layers=2", "data.seq_len=32", "data.global_batch=16",
    "train.log_every=10", "train.eval_every=100", "train.eval_tokens=1024", "optimizer.warmup_steps=10",
    f"train.steps={TRAIN_STEPS}", f"train.checkpoint_every={TRAIN_EVERY}",
]


def train_cli(workdir, cache: str | None, sets=TRAIN_SETS) -> tuple[list[str], dict]:
    """(argv, env) of `scaling train --config tiny` with `sets`, in a fresh process with one CPU device;
    `cache`: the session's compile_cache (the same program then compiles once per session)."""
    import sys

    cmd = [sys.executable, "-m", "experiments.cli", "train", "--config", "tiny", "--workdir", str(workdir)]
    # one host device; the session's other XLA flags stay (on a GPU: deterministic ops, benchmarks/accelerator_check.py)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, "--xla_force_host_platform_device_count=1"])}
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return cmd + [a for s in sets for a in ("--set", s)], env


def files_with_mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}
