"""A fixed-window feed-forward LM, the `mlp` family (Bengio et al. 2003, with a residual MLP stack).

    tokens -> embed (V x d) -> window: position t concatenates the embeddings of tokens
    t-C+1 .. t (C = cfg.context; zeros before the start) -> W_in (C*d -> d)
    -> n_layers x [x + Mlp(RMSNorm(x))] (the transformer's MLP: gelu or swiglu, d_ff)
    -> RMSNorm -> logits (tied: / sqrt(d); untied: a head)

Causal by construction: position t sees nothing after t, and nothing before t-C+1.
Shape suffixes: B batch, T time, C context, D d_model, V vocab.

Counts (lib/models/base.py conventions):
  params   embedding V*d; W_in C*d*d; per layer the MLP (2 or 3)*d*f + its norm d; final norm d; untied head d*V
  forward  2*V*d (embeddings) + 2*C*d*d + n_layers * 2*(2 or 3)*d*f + 2*d*V
XLA also counts the norms, the activation and the residual adds.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base
from lib.models.layers import ACT_BTD, Mlp, RMSNorm, compute_dtype, param

LOGICAL_AXES = ("vocab", "embed", "mlp", "norm", "act_batch", "act_len", "act_embed", "act_mlp", "act_vocab")


def window(x_BTD, context: int):
    """[B, T, D] -> [B, T, C, D]: slot k holds the embedding of token t-k (zeros before the start)."""
    T = x_BTD.shape[1]
    padded = jnp.pad(x_BTD, ((0, 0), (context - 1, 0), (0, 0)))
    return jnp.stack([padded[:, context - 1 - k : context - 1 - k + T] for k in range(context)], axis=2)


class ResidualMlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool):
        h = Mlp(self.cfg, name="mlp")(RMSNorm(name="ln")(x_BTD))
        return nn.with_logical_constraint(x_BTD + base.Dropout(self.cfg.dropout)(h, deterministic), ACT_BTD)


class WindowMLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, deterministic: bool = True):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        C, D = cfg.context, cfg.d_model
        embed_VD = param(self, "embed", (cfg.vocab_size, D), ("vocab", "embed"), nn.initializers.normal(1.0))
        x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(dt)
        # N(0, 1/(C*d)): the residual stream starts at unit variance, as the transformer's embedding does.
        w_in = param(self, "w_in", (C, D, D), (None, "embed", "mlp"), nn.initializers.normal((C * D) ** -0.5))
        x_BTD = jnp.einsum("btcd,cde->bte", window(x_BTD, C), w_in.astype(dt))
        x_BTD = nn.with_logical_constraint(x_BTD, ACT_BTD)
        block = nn.remat(ResidualMlp, static_argnums=(2,)) if cfg.remat else ResidualMlp
        for i in range(cfg.n_layers):
            x_BTD = block(cfg, name=f"layer_{i}")(x_BTD, deterministic)
        x_BTD = RMSNorm(name="ln_f")(x_BTD)
        if cfg.tie_embeddings:
            logits_BTV = jnp.einsum("btd,vd->btv", x_BTD, embed_VD.astype(dt)) / jnp.sqrt(jnp.asarray(D, dt))
        else:
            head_DV = param(self, "head", (D, cfg.vocab_size), ("embed", "vocab"))
            logits_BTV = x_BTD @ head_DV.astype(dt)
        return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    D = cfg.d_model
    embedding = base.embedding_params(cfg)
    non_embedding = cfg.context * D * D + cfg.n_layers * (base.mlp_params(cfg) + D) + D + base.head_params(cfg)
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    return base.embed_and_logits_forward(cfg) + 2.0 * cfg.context * cfg.d_model**2 + cfg.n_layers * base.mlp_forward(cfg)


MLP = base.Family(name="mlp", module=WindowMLP, param_counts=param_counts, forward_flops=forward_flops, logical_axes=LOGICAL_AXES)


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for this family ==========
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.models.spec import FamilySpec  # noqa: E402


def _check(m: ModelConfig) -> None:
    require(m.context >= 1, "model.context", f"the window must hold at least the current token, got {m.context}; e.g. 8")
    require(not m.scan_layers, "model.scan_layers", "the mlp family does not scan its layers; use --set model.scan_layers=false")


SPEC = FamilySpec(name="mlp", validate=_check)
