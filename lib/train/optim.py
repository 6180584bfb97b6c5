"""Optax optimizers and learning-rate schedules from config.

Every decaying schedule reaches its final value at exactly the run's last step (`total_steps - 1`,
the last update applied), as Chinchilla's cosine does; a sweep run of a different length gets its
own schedule, never a truncated longer one.

The schedule is a jnp function of (step, total_steps, warmup_steps), and the train step takes the
last two as a traced array (`horizon`) rather than baking them in: the runs of a sweep that share
a shape then share one compiled step (and one persistent-cache entry), whatever their lengths.
That works because every optimizer here applies the learning rate as its final scaling, so the
unit-rate update times lr(step) is exactly the scheduled optimizer's update.

muP's per-layer rates (`model.parametrization = "mup"`) are one more static link of that chain:
`optax.multi_transform` scales the updates of hidden matrices (found from the parameters' logical
axis names, lib.models.layers.is_hidden) by base_width / d_model and leaves embeddings, the
untied head and vectors alone. The scale is a property of the parameter tree, not of the run's
traced hyperparameters, so runs of one shape share it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.config import OptimizerConfig, RunConfig
from lib.models import layers, param_axes


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
        # warmup, hold at peak, then decay to `final` over the last wsd_decay_frac of the run, in the
        # shape wsd_decay_shape. Before the decay starts the rate is exactly `peak` (the constant
        # schedule's), so a constant-rate trunk's state at any step before it is this run's, bit for
        # bit: lib/sweeps/cooldowns.py branches from there (wsd_decay_start gives the step).
        n_decay = jnp.maximum(jnp.round(cfg.wsd_decay_frac * (last - warmup)), 1.0)
        decay_start = warmup + jnp.maximum(last - warmup - n_decay, 0.0)
        p = jnp.clip((step - decay_start) / n_decay, 0.0, 1.0)
        shape = getattr(cfg, "wsd_decay_shape", "linear")
        if shape == "linear":
            after = peak + (final - peak) * p
        elif shape == "cosine":
            after = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
        elif shape == "1-sqrt":
            after = final + (peak - final) * (1.0 - jnp.sqrt(p))
        else:
            raise ValueError(f"optimizer.wsd_decay_shape: unknown value {shape!r}")
        after = jnp.where(step <= decay_start, jnp.asarray(peak, jnp.float32), after)
    else:
        raise ValueError(f"optimizer.schedule: unknown value {cfg.schedule!r}")
    ramp = peak * step / jnp.maximum(warmup, 1.0)
    return jnp.where(step < warmup, ramp, after)


def wsd_decay_start(total_steps: int, warmup_steps: int, decay_frac: float) -> int:
    """The step at which the wsd schedule of a run of `total_steps` starts its decay (its rate there
    is still the peak; every earlier step's is the constant schedule's): computed in float32 as
    `learning_rate` does, so a constant-rate trunk checkpointed here branches into exactly that run."""
    f32 = np.float32
    last = max(f32(total_steps) - f32(1.0), f32(1.0))
    warmup = f32(warmup_steps)
    n_decay = max(np.round(f32(decay_frac) * (last - warmup)), f32(1.0))
    return int(warmup + max(last - warmup - n_decay, f32(0.0)))


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
    if not isinstance(cfg.clip_norm, (int, float)) or cfg.clip_norm > 0:  # traced (a pack's per-run norms): on
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt


def make_run_direction(cfg: RunConfig) -> optax.GradientTransformation:
    """The run's direction: the optimizer's, then muP's per-layer scale when the model asks for it."""
    direction = make_direction(cfg.optimizer)
    if cfg.model.parametrization == "mup":
        direction = optax.chain(direction, mup_scale(cfg))
    return direction


def mup_scale(cfg: RunConfig) -> optax.GradientTransformation:
    """Hidden matrices' updates x base_width/d_model (Adam's muP rates); everything else x 1."""
    labels = mup_labels(cfg)
    m = layers.width_mult(cfg.model)
    return optax.multi_transform({"hidden": optax.scale(1.0 / m), "vector": optax.identity()}, labels)


def mup_labels(cfg: RunConfig):
    """"hidden" or "vector" per parameter, from its logical axis names."""
    axes = param_axes(cfg.model, cfg.data.seq_len)
    return jax.tree.map(lambda names: "hidden" if layers.is_hidden(names) else "vector", axes, is_leaf=lambda x: isinstance(x, tuple))


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
