"""Optax optimizers and learning-rate schedules from config.

Every decaying schedule reaches its final value at exactly the run's last step (`total_steps - 1`,
the last update applied), as Chinchilla's cosine does; a sweep run of a different length gets its
own schedule, never a truncated longer one.

The schedule is a jnp function of (step, total_steps, warmup_steps), and the train step takes the
last two as a traced array (`horizon`) rather than baking them in: the runs of a sweep that share
a shape then share one compiled step (and one persistent-cache entry), whatever their lengths.
That works because every optimizer here applies the learning rate as its final scaling, so the
unit-rate update times lr(step) is exactly the scheduled optimizer's update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lib.config import OptimizerConfig


def learning_rate(cfg: OptimizerConfig, step, total_steps, warmup_steps):
    """The learning rate at `step` (0-based update index); any argument may be traced."""
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.asarray(warmup_steps, jnp.float32)
    last = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - 1.0, 1.0)
    peak, final = cfg.lr, cfg.lr * cfg.final_lr_frac
    progress = jnp.clip((step - warmup) / jnp.maximum(last - warmup, 1.0), 0.0, 1.0)  # 0 -> 1 over the decay

    if cfg.schedule == "constant":
        after = jnp.asarray(peak, jnp.float32)
    elif cfg.schedule == "cosine":
        after = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif cfg.schedule == "linear":
        after = peak + (final - peak) * progress
    elif cfg.schedule == "exponential":
        rate = cfg.decay_rate or max(cfg.final_lr_frac, 1e-12)  # 0: reach final_lr_frac at the last step
        after = peak * rate**progress
    elif cfg.schedule == "step":
        after = peak * cfg.decay_factor ** jnp.floor((step - warmup) / cfg.decay_every)
    elif cfg.schedule == "wsd":
        # warmup, hold at peak, then linear decay to `final` over the last wsd_decay_frac of the run.
        n_decay = jnp.maximum(jnp.round(cfg.wsd_decay_frac * (last - warmup)), 1.0)
        decay_start = warmup + jnp.maximum(last - warmup - n_decay, 0.0)
        after = peak + (final - peak) * jnp.clip((step - decay_start) / n_decay, 0.0, 1.0)
    else:
        raise ValueError(f"optimizer.schedule: unknown value {cfg.schedule!r}")
    ramp = peak * step / jnp.maximum(warmup, 1.0)
    return jnp.where(step < warmup, ramp, after)


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The schedule of one run of `total_steps`, as an optax schedule (count -> lr)."""
    return lambda count: learning_rate(cfg, count, total_steps, cfg.warmup_steps)


def make_direction(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The optimizer at learning rate 1: its update times lr(step) is the scheduled update."""
    if cfg.name == "sgd":
        opt = optax.sgd(1.0)
    elif cfg.name == "momentum":
        opt = optax.sgd(1.0, momentum=cfg.momentum)
    elif cfg.name == "nesterov":
        opt = optax.sgd(1.0, momentum=cfg.momentum, nesterov=True)
    elif cfg.name == "rmsprop":
        opt = optax.rmsprop(1.0, decay=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adam":
        opt = optax.adam(1.0, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        # Decoupled decay, scaled by the schedule as in optax.adamw; norms' scales are not decayed.
        opt = optax.adamw(1.0, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)
    else:
        raise ValueError(f"optimizer.name: unknown value {cfg.name!r}")
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """A self-contained optax optimizer for one run (the direction scaled by its schedule)."""
    schedule = make_schedule(cfg, total_steps)
    return optax.chain(make_direction(cfg), optax.scale_by_schedule(schedule)), schedule


def _decay_mask(params):
    """Decay weight matrices and embeddings, not norm scales (by name: scanned scales are 2-D)."""

    def decays(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return names[-1] != "scale"

    return jax.tree_util.tree_map_with_path(decays, params)
