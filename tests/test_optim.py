"""Schedules end where they should, at exactly the last step; every optimizer optimizes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lib.config import OPTIMIZERS, OptimizerConfig
from lib.train.optim import make_optimizer, make_schedule

STEPS = 100


def lrs(**kw):
    s = make_schedule(OptimizerConfig(lr=1.0, **kw), STEPS)
    return np.array([float(s(i)) for i in range(STEPS)])


def test_cosine_decays_to_ten_percent_at_exactly_the_last_step():
    lr = lrs(schedule="cosine", warmup_steps=10)
    np.testing.assert_allclose(lr[:11], np.arange(11) / 10, atol=1e-6)  # linear warmup to the peak
    assert lr[STEPS - 1] == pytest.approx(0.1, abs=1e-6)
    assert lr[STEPS - 2] > 0.1 + 1e-6
    # Halfway through the decay the cosine is at the midpoint between peak and floor.
    assert lr[10 + (STEPS - 1 - 10) // 2] == pytest.approx(0.55, abs=0.02)
    assert np.all(np.diff(lr[10:]) <= 1e-7)


def test_linear_and_exponential_end_at_the_final_fraction():
    for kw in ({"schedule": "linear"}, {"schedule": "exponential"}, {"schedule": "linear", "warmup_steps": 20}):
        lr = lrs(final_lr_frac=0.05, **kw)
        assert lr[STEPS - 1] == pytest.approx(0.05, rel=1e-4), kw
    lin = lrs(schedule="linear", final_lr_frac=0.0)
    np.testing.assert_allclose(lin, 1 - np.arange(STEPS) / (STEPS - 1), atol=1e-6)


def test_constant_step_and_wsd_shapes():
    assert np.all(lrs(schedule="constant") == 1.0)
    step = lrs(schedule="step", decay_every=30, decay_factor=0.5)
    assert step[29] == 1.0 and step[30] == 0.5 and step[60] == 0.25 and step[99] == 0.125
    wsd = lrs(schedule="wsd", warmup_steps=10, wsd_decay_frac=0.2, final_lr_frac=0.0)
    decay_start = 10 + round(0.8 * (STEPS - 1 - 10))
    assert np.all(wsd[10 : decay_start + 1] == 1.0)
    assert wsd[STEPS - 1] == pytest.approx(0.0, abs=1e-6) and 0 < wsd[decay_start + 5] < 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
    target = jnp.array([1.0, -2.0, 3.0])
    params = {"w": jnp.zeros((3,)), "m": jnp.zeros((2, 3))}
    loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum((p["m"] - 1.0) ** 2)
    opt, _ = make_optimizer(OptimizerConfig(name=name, lr=0.05, schedule="constant", weight_decay=0.0), 200)
    state = opt.init(params)
    start = loss(params)
    for _ in range(200):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < 0.05 * start


def test_adamw_decay_is_decoupled_and_spares_norm_scales():
    """With zero gradients, AdamW shrinks weights by lr * wd per step and leaves 'scale' alone."""
    params = {"dense": {"kernel": jnp.ones((2, 2))}, "ln": {"scale": jnp.ones((2, 3))}}
    opt, _ = make_optimizer(OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5, schedule="constant", clip_norm=0), 10)
    state = opt.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["ln"]["scale"], 1.0)


def test_global_norm_clipping_bounds_the_update():
    opt, _ = make_optimizer(OptimizerConfig(name="sgd", lr=1.0, schedule="constant", clip_norm=1.0), 10)
    g = {"w": jnp.array([30.0, 40.0])}
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
