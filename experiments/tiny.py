"""A tiny run on the embedded synthetic language: about a minute on a laptop CPU."""

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def config() -> RunConfig:
    return RunConfig(
        name="tiny",
        model=ModelConfig(d_model=64, n_layers=2, n_heads=4),
        data=DataConfig(seq_len=64, global_batch=32),
        optimizer=OptimizerConfig(name="adamw", lr=3e-3, warmup_steps=20, schedule="cosine"),
        train=TrainConfig(steps=300, log_every=25, eval_every=100, checkpoint_every=100),
    )
