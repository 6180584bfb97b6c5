"""The family contract, and the closed-form counting pieces the families share.

A model family is a `Family`: a flax.linen module factory, closed-form parameter and FLOP counts,
and the logical axis names its parameters and activations carry. `lib/models/__init__.py` holds
the registry (`family(name)`, `make_model(cfg)`); `lib/flops.py` is the one entry point the rest of
the code calls, and dispatches here. Every LM family is a decoder-style LM over the same tokens:

    module(cfg)(tokens_BT, deterministic=True) -> logits_BTV (float32), causal in T

and every image family (resnet, vit; task "classify") a classifier of images:

    module(cfg)(images_BHWC, deterministic=True, train=False) -> logits_BK (float32)

(`train` selects batch statistics over running averages where the model has batch norm; its
running averages live in the mutable "batch_stats" collection). An image family's counts are per
image (its `seq_len` argument is ignored): D counts images.

and may sow auxiliary training terms into the "intermediates" collection (one scalar per layer,
named as in `Family.aux_weights`); `lib.models.apply_with_aux` collects and weights them, so the
train step never branches on the family.

Counting conventions (every family; lib/flops.py lists them):
  param_counts  total = embedding + non_embedding; embedding is the token table (V*d) only (an
                untied head is a matmul: non-embedding); routed families add `active`, the
                parameters one token passes through (embedding included, like total).
  forward       closed-form forward FLOPs per token in Hoffmann et al. 2022 (appendix F) style:
                2 x the multiply-accumulates of every matmul, embeddings counted as 2*V*d, attention
                with its full T^2 logits and softmax (3*H*T); elementwise work (norms, activations,
                gates, residual adds) is not counted.
  6N            6 * N, N = active where a family has it, else total.
  kaplan        6 * N_non-embedding (active) + 6 * n_attention_layers * n_ctx * d_attn.
  chinchilla    3 * forward (backward = 2 x forward).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig

CONVENTIONS = ("6N", "kaplan", "chinchilla")


@dataclasses.dataclass(frozen=True)
class Family:
    """What a family registers. The closed forms are checked against the parameter tree and against
    XLA's count of the compiled forward pass (tests/test_families_counts.py)."""

    name: str
    module: Callable[[ModelConfig], object]  # cfg -> flax.linen Module: (tokens_BT, deterministic) -> logits_BTV
    param_counts: Callable[[ModelConfig], dict[str, int]]  # total, embedding, non_embedding (+ active)
    forward_flops: Callable[[ModelConfig, int], float]  # closed-form forward FLOPs per token at context seq_len
    logical_axes: tuple[str, ...]  # every logical name its parameters and activations use (one rule each)
    # kaplan's context term: 6 * (attention layers) * seq_len * d_attn for the attention families, else 0
    context_flops: Callable[[ModelConfig, int], float] = lambda m, T: 0.0
    # (sown metric name, the ModelConfig field weighting it in the training loss); a metric whose
    # weight field is None is logged only
    aux_weights: tuple[tuple[str, str | None], ...] = ()
    # (cfg, seq_len) -> a batch of one input for init: tokens [1, seq_len] (LMs) or an image [1, H, W, C]
    dummy_input: Callable[[ModelConfig, int], Any] = lambda m, T: token_dummy(m, T)

    def flops_per_token(self, m: ModelConfig, seq_len: int, convention: str = "chinchilla") -> float:
        """Training FLOPs (forward + backward) per token of context `seq_len`, in `convention`."""
        counts = self.param_counts(m)
        n = counts.get("active", counts["total"])
        if convention == "6N":
            return 6.0 * n
        if convention == "kaplan":
            return 6.0 * (n - counts["embedding"]) + float(self.context_flops(m, seq_len))
        if convention == "chinchilla":
            return 3.0 * float(self.forward_flops(m, seq_len))
        raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}")


def token_dummy(m: ModelConfig, seq_len: int):
    return jnp.zeros((1, seq_len), jnp.int32)


def image_dummy(m: ModelConfig, seq_len: int = 0):
    """One image of the model's input geometry (model.image_size, resolved from the data)."""
    if m.image_size <= 0 or m.image_channels <= 0:
        raise ValueError("model.image_size / image_channels are unset; resolve them from the data first (lib.config.resolve_model_input)")
    return jnp.zeros((1, m.image_size, m.image_size, m.image_channels), jnp.float32)


class Dropout(nn.Dropout):
    """flax's Dropout, whose rate may also be a traced value: the runs of a pack (lib/train/step.py)
    each drop with their own model.dropout. A Python rate takes flax's own path, so a lone run's
    numbers are unchanged; the class keeps flax's name, so the auto-named module paths and with
    them the dropout rngs are the same."""

    def __call__(self, inputs, deterministic: bool | None = None, rng=None):
        if not isinstance(self.rate, jax.Array):
            return super().__call__(inputs, deterministic, rng)
        if nn.merge_param("deterministic", self.deterministic, deterministic):
            return inputs
        keep = (1.0 - self.rate).astype(inputs.dtype)
        mask = jax.random.bernoulli(rng if rng is not None else self.make_rng(self.rng_collection), p=keep, shape=inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


# -- shared closed forms ----------------------------------------------------------------------------
def embedding_params(m: ModelConfig) -> int:
    return m.vocab_size * m.d_model


def head_params(m: ModelConfig, width: int | None = None) -> int:
    """The output head: 0 when tied to the embedding, else width x V (a non-embedding matmul)."""
    return 0 if m.tie_embeddings else (width or m.d_model) * m.vocab_size


def embed_and_logits_forward(m: ModelConfig) -> float:
    """Appendix F's embeddings (2*V*d, though a lookup spends none) plus the logits matmul (2*d*V)."""
    return 2.0 * m.vocab_size * m.d_model + 2.0 * m.d_model * m.vocab_size


def mlp_params(m: ModelConfig) -> int:
    """One transformer MLP (lib.models.layers.Mlp): d -> f -> d, a third matrix for SwiGLU."""
    return (3 if m.mlp == "swiglu" else 2) * m.d_model * m.ffw_size


def mlp_forward(m: ModelConfig) -> float:
    return 2.0 * mlp_params(m)


def attention_params(m: ModelConfig) -> int:
    """q, k, v: d -> H*dh; out: H*dh -> d (H*dh need not equal d); no biases."""
    return 4 * m.d_model * (m.n_heads * m.head_dim)


def attention_forward(m: ModelConfig, seq_len: int) -> float:
    """Per token: QKV 2*3*d*(H*dh), logits 2*T*(H*dh), softmax 3*H*T, softmax@V 2*T*(H*dh),
    out 2*(H*dh)*d -- full T^2 attention, no causal discount, as in appendix F."""
    d, T, H, hd = m.d_model, seq_len, m.n_heads, m.n_heads * m.head_dim
    return float(2 * 3 * d * hd + 2 * T * hd + 3 * H * T + 2 * T * hd + 2 * hd * d)


def attention_context_flops(m: ModelConfig, seq_len: int) -> float:
    """Kaplan et al. 2020, table 1: 2 * n_layer * n_ctx * d_attn forward, x3 for training."""
    return 6.0 * m.n_layers * seq_len * m.n_heads * m.head_dim


# -- the transformer (lib/models/transformer.py) ------------------------------------------------------
def transformer_param_counts(m: ModelConfig) -> dict[str, int]:
    per_layer = attention_params(m) + mlp_params(m) + 2 * m.d_model  # + two RMSNorm scales
    embedding = embedding_params(m)
    non_embedding = m.n_layers * per_layer + m.d_model + head_params(m)  # + final norm
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def transformer_forward_flops(m: ModelConfig, seq_len: int) -> float:
    return embed_and_logits_forward(m) + m.n_layers * (attention_forward(m, seq_len) + mlp_forward(m))
