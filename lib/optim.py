"""Optax optimizers and learning-rate schedules from config.

Every decaying schedule reaches its final value at exactly the run's last step (`total_steps - 1`,
the last update applied), as Chinchilla's cosine does; a sweep run of a different length gets its
own schedule, never a truncated longer one.
"""

from __future__ import annotations

import optax

from lib.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    peak, final = cfg.lr, cfg.lr * cfg.final_lr_frac
    warmup = cfg.warmup_steps
    last = max(total_steps - 1, 1)
    decay_steps = max(last - warmup, 1)

    def with_warmup(after: optax.Schedule) -> optax.Schedule:
        if warmup == 0:
            return after
        ramp = optax.linear_schedule(0.0, peak, warmup)
        return optax.join_schedules([ramp, after], [warmup])

    if cfg.schedule == "constant":
        return with_warmup(optax.constant_schedule(peak))
    if cfg.schedule == "cosine":
        return with_warmup(optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.final_lr_frac))
    if cfg.schedule == "linear":
        return with_warmup(optax.linear_schedule(peak, final, decay_steps))
    if cfg.schedule == "step":
        boundaries = {s: cfg.decay_factor for s in range(cfg.decay_every, total_steps, cfg.decay_every)}
        return with_warmup(optax.piecewise_constant_schedule(peak, boundaries))
    if cfg.schedule == "exponential":
        # decay_rate 0 means: reach final_lr_frac at the last step.
        rate = cfg.decay_rate or max(cfg.final_lr_frac, 1e-12)
        return with_warmup(optax.exponential_decay(peak, transition_steps=decay_steps, decay_rate=rate))
    if cfg.schedule == "wsd":
        # warmup, hold at peak, then linear decay to `final` over the last wsd_decay_frac of the run.
        n_decay = max(int(round(cfg.wsd_decay_frac * (last - warmup))), 1)
        n_stable = max(last - warmup - n_decay, 0)
        stable_then_decay = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, final, n_decay)], [n_stable]
        )
        return with_warmup(stable_then_decay)
    raise ValueError(f"optimizer.schedule: unknown value {cfg.schedule!r}")


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = make_schedule(cfg, total_steps)
    if cfg.name == "sgd":
        opt = optax.sgd(lr)
    elif cfg.name == "momentum":
        opt = optax.sgd(lr, momentum=cfg.momentum)
    elif cfg.name == "nesterov":
        opt = optax.sgd(lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.name == "rmsprop":
        opt = optax.rmsprop(lr, decay=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        # Decoupled decay; norms' scales are not pulled toward zero.
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)
    else:
        raise ValueError(f"optimizer.name: unknown value {cfg.name!r}")
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt, lr


def _decay_mask(params):
    """Decay weight matrices and embeddings, not norm scales (by name: scanned scales are 2-D)."""
    import jax

    def decays(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return names[-1] != "scale"

    return jax.tree_util.tree_map_with_path(decays, params)
