"""A causal convolutional LM, the `cnn` family (gated convolutional networks, Dauphin et al. 2017).

    tokens -> embed (V x d) -> n_layers x [x + GLU(CausalConv(RMSNorm(x)))] -> RMSNorm -> logits

Each block convolves over time with `kernel_size` taps, d -> 2d channels, left-padded by
(kernel_size - 1) * dilation so position t sees only t and earlier (causal), then a gated linear
unit a * sigmoid(b) halves the channels back to d. Layer l is dilated by 2^(l mod dilation_cycle)
(WaveNet style; dilation_cycle 1: none), so the receptive field is
1 + (kernel_size - 1) * sum_l 2^(l mod dilation_cycle) tokens. No biases (each block is pre-normed).
Shape suffixes: B batch, T time, K taps, D d_model, V vocab.

Counts (lib/models/base.py conventions):
  params   embedding V*d; per layer the kernel K*d*2d + its norm d; final norm d; untied head d*V
  forward  2*V*d (embeddings) + n_layers * 2*K*d*2d + 2*d*V
XLA counts the convolution's multiply-adds the same way except for taps that land on the left zero
padding (`padding_flops`: a few % at seq_len 32, less for longer rows), and adds the norms, the gate
and the residual adds.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base
from lib.models.layers import ACT_BTD, RMSNorm, compute_dtype, param

LOGICAL_AXES = ("vocab", "embed", "mlp", "norm", "act_batch", "act_len", "act_embed", "act_mlp", "act_vocab")


def dilation(cfg: ModelConfig, layer: int) -> int:
    return 2 ** (layer % cfg.dilation_cycle)


def receptive_field(cfg: ModelConfig) -> int:
    return 1 + (cfg.kernel_size - 1) * sum(dilation(cfg, i) for i in range(cfg.n_layers))


def causal_conv(x_BTD, w_KDE, rate: int):
    """y[t] = sum_k x[t - (K-1-k)*rate] @ w[k]: zero-padded on the left only, so y[t] sees x[<= t]."""
    K = w_KDE.shape[0]
    return jax.lax.conv_general_dilated(
        x_BTD, w_KDE, window_strides=(1,), padding=[((K - 1) * rate, 0)], rhs_dilation=(rate,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )


class GatedConvBlock(nn.Module):
    cfg: ModelConfig
    rate: int

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        D, K = cfg.d_model, cfg.kernel_size
        w_KDE = param(self, "conv", (K, D, 2 * D), (None, "embed", "mlp"))
        h_BTE = causal_conv(RMSNorm(name="ln")(x_BTD), w_KDE.astype(dt), self.rate)
        h_BTE = nn.with_logical_constraint(h_BTE, ("act_batch", "act_len", "act_mlp"))
        a, b = jnp.split(h_BTE, 2, axis=-1)
        y_BTD = base.Dropout(cfg.dropout)(a * jax.nn.sigmoid(b), deterministic)
        return nn.with_logical_constraint(x_BTD + y_BTD, ACT_BTD)


class ConvLM(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, deterministic: bool = True):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        embed_VD = param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), nn.initializers.normal(1.0))
        x_BTD = nn.with_logical_constraint(jnp.take(embed_VD, tokens_BT, axis=0).astype(dt), ACT_BTD)
        block = nn.remat(GatedConvBlock, static_argnums=(2,)) if cfg.remat else GatedConvBlock
        for i in range(cfg.n_layers):
            x_BTD = block(cfg, dilation(cfg, i), name=f"layer_{i}")(x_BTD, deterministic)
        x_BTD = RMSNorm(name="ln_f")(x_BTD)
        if cfg.tie_embeddings:
            logits_BTV = jnp.einsum("btd,vd->btv", x_BTD, embed_VD.astype(dt)) / jnp.sqrt(jnp.asarray(cfg.d_model, dt))
        else:
            head_DV = param(self, "head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
            logits_BTV = x_BTD @ head_DV.astype(dt)
        return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))


def padding_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Per token, what `forward_flops` counts for taps that fall on the left zero padding (the first
    (K-1)*dilation positions of each layer): XLA's convolution count leaves them out."""
    T, K, D = seq_len, cfg.kernel_size, cfg.d_model
    missing = sum(min(T, j * dilation(cfg, i)) for i in range(cfg.n_layers) for j in range(1, K))
    return 2.0 * D * 2 * D * missing / T


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    D = cfg.d_model
    embedding = base.embedding_params(cfg)
    non_embedding = cfg.n_layers * (cfg.kernel_size * D * 2 * D + D) + D + base.head_params(cfg)
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    return base.embed_and_logits_forward(cfg) + cfg.n_layers * 2.0 * cfg.kernel_size * cfg.d_model * 2 * cfg.d_model


CNN = base.Family(name="cnn", module=ConvLM, param_counts=param_counts, forward_flops=forward_flops, logical_axes=LOGICAL_AXES)


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for this family ==========
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.models.spec import FamilySpec  # noqa: E402


def _check(m: ModelConfig) -> None:
    require(m.kernel_size >= 1, "model.kernel_size", f"must be >= 1 tap, got {m.kernel_size}; e.g. 4")
    require(1 <= m.dilation_cycle <= 16, "model.dilation_cycle",
            f"must be in 1..16 (layer l is dilated by 2^(l mod dilation_cycle); 1: no dilation), got {m.dilation_cycle}")
    require(not m.scan_layers, "model.scan_layers", "the cnn family does not scan its layers (dilations differ); use --set model.scan_layers=false")


SPEC = FamilySpec(name="cnn", validate=_check)
