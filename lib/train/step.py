"""Pure, jit-compiled pieces of one run: the train state, the loss, `train_step`, `eval_step`, `init`.

Everything here is a pure function traced by jax; `build_steps` compiles them for a mesh (with the
shardings from the one rules table) and is what the loop and the throughput benchmark both call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.config import RunConfig
from lib.models.transformer import make_model
from lib.parallel import sharding
from lib.store.checkpoint import abstract_with_shardings
from lib.train.optim import learning_rate, make_direction


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # number of updates applied
    params: Any
    opt_state: Any


def lm_loss(params, model: nn.Module, tokens_BT1, dropout_rng=None):
    """Mean next-token cross-entropy in nats over a [B, T+1] token batch."""
    inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
    deterministic = dropout_rng is None
    rngs = None if deterministic else {"dropout": dropout_rng}
    logits_BTV = model.apply({"params": params}, inputs_BT, deterministic=deterministic, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean()


def make_train_step(model, direction, cfg: RunConfig):
    """`train_step(state, tokens_BT1, horizon)`; horizon = [total_steps, warmup_steps] (int32, traced)."""
    accum, seed, use_dropout = cfg.train.grad_accum, cfg.train.seed, cfg.model.dropout > 0

    def loss_and_grad(params, tokens_BT1, rng):
        return jax.value_and_grad(lm_loss)(params, model, tokens_BT1, rng if use_dropout else None)

    def train_step(state: TrainState, tokens_BT1, horizon):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        if accum == 1:
            loss, grads = loss_and_grad(state.params, tokens_BT1, rng)
        else:
            # Microbatch j takes rows j, j+accum, ...: every device keeps an equal share of each
            # microbatch, so no data moves between devices.
            B, T1 = tokens_BT1.shape
            micro_ABT1 = tokens_BT1.reshape(B // accum, accum, T1).swapaxes(0, 1)
            micro_ABT1 = nn.with_logical_constraint(micro_ABT1, (None, "act_batch", None))

            def one(carry, xs):
                loss_sum, grad_sum = carry
                tokens, j = xs
                loss, grads = loss_and_grad(state.params, tokens, jax.random.fold_in(rng, j))
                return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (loss, grads), _ = jax.lax.scan(one, (jnp.zeros((), jnp.float32), zeros), (micro_ABT1, jnp.arange(accum)))
            loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)
        lr = learning_rate(cfg.optimizer, state.step, horizon[0], horizon[1])
        direction_updates, opt_state = direction.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), direction_updates)
        params = optax.apply_updates(state.params, updates)
        metrics = {"train_loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model):
    def eval_step(params, tokens_BT1):
        return lm_loss(params, model, tokens_BT1)

    return eval_step


def make_init(model, direction, cfg: RunConfig, boxed: bool):
    """`init(rng) -> TrainState`. `boxed=True` keeps flax's logical-axis boxes (only for eval_shape)."""
    dummy_BT = jnp.zeros((1, cfg.data.seq_len), jnp.int32)

    def init(rng):
        params = model.init(rng, dummy_BT)["params"]
        if not boxed:
            params = nn.unbox(params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=direction.init(params))

    return init


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted pieces of one run on one mesh (trace inside `sharding.activate(mesh)`)."""

    init: Any  # rng -> TrainState, born sharded
    train_step: Any  # (state, tokens, horizon) -> (state, metrics); state donated
    eval_step: Any  # (params, tokens) -> mean loss
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the shardings, for checkpoint restore
    horizon: Any  # [total_steps, warmup_steps], replicated: the schedule's run-specific numbers


def build_steps(cfg: RunConfig, mesh) -> Steps:
    """Model, optimizer and shardings -> jitted init/train/eval (the benchmark times these too)."""
    model = make_model(cfg.model)
    direction = make_direction(cfg.optimizer)
    # Shardings come from the logical axis names on the boxed parameters; the state itself is unboxed.
    abstract_boxed = jax.eval_shape(make_init(model, direction, cfg, boxed=True), jax.random.key(0))
    state_shardings = sharding.logical_shardings(abstract_boxed, mesh)
    abstract = jax.eval_shape(make_init(model, direction, cfg, boxed=False), jax.random.key(0))
    batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    return Steps(
        init=jax.jit(make_init(model, direction, cfg, boxed=False), out_shardings=state_shardings),
        train_step=jax.jit(
            make_train_step(model, direction, cfg),
            in_shardings=(state_shardings, batch_sharding, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(make_eval_step(model), in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated),
        state_shardings=state_shardings,
        abstract_state=abstract_with_shardings(abstract, state_shardings),
        horizon=sharding.replicated_array(np.array([cfg.train.steps, cfg.optimizer.warmup_steps], np.int32), mesh),
    )
