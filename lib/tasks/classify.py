"""Image classification: cross-entropy over labels (nats per image) and top-1 error.

Batches are {"image": float32 [B, H, W, C], "label": int32 [B]} (lib/data image sources). Training
runs the model with `train=True` (batch norm: this batch's statistics, and its running averages
updated in the returned model_state); eval with `train=False` (the running averages).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lib.config import RunConfig, eval_rows
from lib.models import dummy_input


def dummy(cfg: RunConfig):
    return dummy_input(cfg.model, 0)


def batch_spec(cfg: RunConfig, rows: int):
    m = cfg.model
    return {"image": jax.ShapeDtypeStruct((rows, m.image_size, m.image_size, m.image_channels), jnp.float32),
            "label": jax.ShapeDtypeStruct((rows,), jnp.int32)}


def _scores(logits_BK, labels_B):
    loss = optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B).mean()
    error = jnp.mean((jnp.argmax(logits_BK, axis=-1) != labels_B).astype(jnp.float32))
    return loss, error


def train_loss(params, model_state, model, batch, dropout_rng=None):
    """(mean cross-entropy, ({"train_loss", "train_error"}, model_state updated by this batch))."""
    deterministic = dropout_rng is None
    rngs = None if deterministic else {"dropout": dropout_rng}
    mutable = list(model_state)  # batch_stats where the model has batch norm; none otherwise
    out = model.apply({"params": params, **model_state}, batch["image"], deterministic=deterministic, train=True,
                      rngs=rngs, mutable=mutable or False)
    logits_BK, new_state = out if mutable else (out, {})
    loss, error = _scores(logits_BK, batch["label"])
    return loss, ({"train_loss": loss, "train_error": error}, dict(new_state))


def eval_metrics(params, model_state, model, batch):
    logits_BK = model.apply({"params": params, **model_state}, batch["image"], deterministic=True, train=False)
    loss, error = _scores(logits_BK, batch["label"])
    return {"eval_loss": loss, "eval_error": error}


def summary_fields(cfg: RunConfig, source, last: dict, units: int, flops_per_unit: float, flops_in: dict) -> dict:
    """This task's fields of the run summary (lib/train/summary.py): D as "images" (named by "units"),
    C in the chinchilla convention only (6N and Kaplan count a weight once per image, not once per
    position), the top-1 errors and the source's Bayes error, the eval images, the image shape."""
    return {
        "eval_error": last.get("eval_error"),
        "train_error": last.get("train_error"),
        "units": "images",
        "images": units,
        "flops_per_image": flops_per_unit,
        "flops_all_conventions": {"chinchilla": flops_in["chinchilla"]()},
        "bayes_error": getattr(source, "bayes_error", None),  # the best top-1 error
        "eval_images": eval_rows(cfg.train.eval_tokens, 1),  # held-out images behind eval_loss
        "image_shape": list(source.image_shape),
    }
