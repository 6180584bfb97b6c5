"""The language-modelling task: next-token cross-entropy (nats per token) over token rows [B, T+1]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lib.config import RunConfig, eval_rows
from lib.models import apply_with_aux, dummy_input


def dummy(cfg: RunConfig):
    return dummy_input(cfg.model, cfg.data.seq_len)


def batch_spec(cfg: RunConfig, rows: int):
    return jax.ShapeDtypeStruct((rows, cfg.data.seq_len + 1), jnp.int32)


def token_losses(params, model, tokens_BT1, dropout_rng=None):
    """[B, T] next-token cross-entropy in nats of each predicted token of a [B, T+1] token batch."""
    inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
    deterministic = dropout_rng is None
    rngs = None if deterministic else {"dropout": dropout_rng}
    logits_BTV = model.apply({"params": params}, inputs_BT, deterministic=deterministic, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)


def lm_loss(params, model, tokens_BT1, dropout_rng=None):
    """Mean next-token cross-entropy in nats over a [B, T+1] token batch."""
    return token_losses(params, model, tokens_BT1, dropout_rng).mean()


def train_loss(params, model_state, model, tokens_BT1, dropout_rng=None):
    """(what training minimises, (logged, model_state)): the LM loss plus the family's weighted
    auxiliary losses (moe: load balancing, router z-loss; lib.models.apply_with_aux), and
    {"train_loss": the LM loss alone, each auxiliary term by name}. Eval scores `lm_loss` only."""
    inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
    deterministic = dropout_rng is None
    rngs = None if deterministic else {"dropout": dropout_rng}
    logits_BTV, penalty, aux = apply_with_aux(model, params, inputs_BT, deterministic=deterministic, rngs=rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean()
    return loss + penalty, ({"train_loss": loss, **aux}, model_state)


def eval_metrics(params, model_state, model, tokens_BT1):
    return {"eval_loss": lm_loss(params, model, tokens_BT1)}


def summary_fields(cfg: RunConfig, source, last: dict, units: int, flops_per_unit: float, flops_in: dict) -> dict:
    """This task's fields of the run summary (lib/train/summary.py): D as "tokens" (no "units" key:
    tokens, as every run recorded before images), C in every flops convention, the eval tokens."""
    return {
        "tokens": units,
        "flops_per_token": flops_per_unit,
        "flops_all_conventions": {c: flops() for c, flops in flops_in.items()},
        "eval_tokens": eval_rows(cfg.train.eval_tokens, cfg.data.seq_len) * cfg.data.seq_len,  # held-out tokens behind eval_loss
        "seq_len": cfg.data.seq_len,
    }
