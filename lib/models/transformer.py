"""Decoder-only transformer LM in flax.linen: pre-norm (RMSNorm), RoPE, causal attention through
`jax.nn.dot_product_attention`, GELU or SwiGLU MLP, tied or untied embeddings.

Shape suffixes: B batch, T time (sequence), D d_model, H heads, K head_dim, F ffw size, V vocab.
Parameters are float32 and carry logical axis names (see lib/parallel/sharding.py for the rules);
compute runs in `cfg.compute_dtype`; logits come out float32 so the loss is computed in full precision.
With a `layer_stack` (lib/parallel/pipeline.py's schedule) the scanned layers run through it; the
embedding before and the final norm and head after stay here, outside it.

Parametrization (`cfg.parametrization`):
  sp   every matrix N(0, 0.02), embeddings N(0, 1), attention logits / sqrt(head_dim), tied logits / sqrt(D).
  mup  Tensor Programs V (Yang et al. 2022, table 3 in its output-multiplier form), with m = D / base_width:
       hidden matrices (two dimensions that grow with width: qkv, out, wi, wo, wg) N(0, 0.02^2 / m);
       embeddings, the untied head and norm scales as in sp; attention logits / head_dim; logits x 1/m
       (tied: / sqrt(base_width) x 1/m, which is sp's 1/sqrt(D) at m = 1). The per-layer Adam rates
       (hidden matrices x 1/m) are in lib/train/optim.py, found from the logical axis names here.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lib.config import ModelConfig
from lib.models import base

# Activation axis names are distinct from parameter axis names: activations shard the batch over
# (data, fsdp), parameters shard d_model over fsdp; one name for both would map fsdp twice.
ACT_BTD = ("act_batch", "act_len", "act_embed")
ACT_BTHK = ("act_batch", "act_len", "act_heads", "act_kv")
ACT_BHTK = ("act_batch", "act_heads", "act_len", "act_kv")
ACT_BTF = ("act_batch", "act_len", "act_mlp")
ACT_BTV = ("act_batch", "act_len", "act_vocab")

INIT_STD = 0.02
_init_dense = nn.initializers.normal(stddev=INIT_STD)
# Logical names of the dimensions that grow with d_model (heads x kv together are one: d_attn).
WIDTH_AXES = ("embed", "mlp", "heads", "kv")


def _param(module: nn.Module, name: str, shape, axes, init=_init_dense):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _dtype(cfg: ModelConfig):
    return jnp.dtype(cfg.compute_dtype)


def width_mult(cfg: ModelConfig) -> float:
    """m = d_model / base_width under muP (1 under sp): how far this model is from the tuned width."""
    return cfg.d_model / cfg.base_width if cfg.parametrization == "mup" else 1.0


def is_hidden(axes) -> bool:
    """A hidden matrix has two dimensions that grow with width (heads and kv count as one)."""
    grown = {"heads" if a == "kv" else a for a in axes if a in WIDTH_AXES}
    return len(grown) >= 2


def _hidden_init(cfg: ModelConfig):
    """Hidden matrices: N(0, 0.02) under sp; variance / m under muP (1/fan_in scaling from base_width)."""
    return nn.initializers.normal(stddev=INIT_STD / width_mult(cfg) ** 0.5)


def logical_axes(cfg: ModelConfig, seq_len: int = 8):
    """The parameter tree with each leaf replaced by its tuple of logical axis names (no compute)."""
    boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))["params"])
    return jax.tree.map(lambda x: tuple(x.names), boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class RMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BTD):
        scale_D = _param(self, "scale", (x_BTD.shape[-1],), ("norm",), nn.initializers.ones)
        x32 = x_BTD.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale_D).astype(x_BTD.dtype)


@functools.lru_cache(maxsize=64)
def rope_tables(T: int, K: int, theta: float):
    """cos and signed sin [T, K] (numpy float32) for `rope`: the rotate-half pair (x1, x2) -> (x1 cos -
    x2 sin, x2 cos + x1 sin) is x * cos + swap_halves(x) * sin with sin's first half negated. Host
    constants of the program: computed in the graph, XLA:CPU recomputed sin and cos inside every
    fusion using them (and numpy, unlike an eager jnp computation, is safe inside shard_map)."""
    inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, K, 2, dtype=np.float32) / np.float32(K)))).astype(np.float32)
    angles_TK2 = np.arange(T, dtype=np.float32)[:, None] * inv_freq[None, :]
    sin, cos = np.sin(angles_TK2), np.cos(angles_TK2)
    return np.concatenate([cos, cos], axis=-1), np.concatenate([-sin, sin], axis=-1)


def swap_halves(x):
    """(x1, x2) -> (x2, x1) on the last axis, as a reshape and a reverse (one elementwise pass, where
    split + concatenate left XLA a pad and a concatenate per use in the backward pass)."""
    K = x.shape[-1]
    return jnp.flip(x.reshape(*x.shape[:-1], 2, K // 2), axis=-2).reshape(x.shape)


def rope(x, theta: float, time_axis: int = 1):
    """Rotary position embedding (rotate-half form), positions 0..T-1 along `time_axis`, head_dim last."""
    T, K = x.shape[time_axis], x.shape[-1]
    cos_TK, sin_TK = rope_tables(T, K, theta)
    where = (slice(None),) + (None,) * (x.ndim - time_axis - 2) + (slice(None),)  # [T, 1.., K] against x
    cos, sin = cos_TK[where], sin_TK[where]
    x32 = x.astype(jnp.float32)
    return (x32 * cos + swap_halves(x32) * sin).astype(x.dtype)


def attention_xla(q_BHTK, k_BHSK, v_BHSK, scale: float | None, causal: bool):
    """jax.nn.dot_product_attention's XLA path (the same ops: f32 logits, scale, mask with its large
    negative, f32 softmax), heads-major: with batch and heads leading, both attention matmuls are
    plain batched matmuls and XLA inserts no transposes around them."""
    K, T, S = q_BHTK.shape[-1], q_BHTK.shape[2], k_BHSK.shape[2]
    precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q_BHTK.dtype == jnp.bfloat16 else None
    logits = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_BHSK, precision=precision,
                        preferred_element_type=jnp.promote_types(q_BHTK.dtype, jnp.float32))
    logits *= jnp.array(1.0 / K**0.5 if scale is None else scale, dtype=logits.dtype)
    if causal:
        mask_TS = jnp.tril(jnp.ones((T, S), jnp.bool_))
        logits = jnp.where(mask_TS, logits, jnp.asarray(-0.7 * float(jnp.finfo(logits.dtype).max), logits.dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(k_BHSK.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", probs, v_BHSK)


class Attention(nn.Module):
    cfg: ModelConfig
    causal: bool = True  # the LM; the vit family attends both ways
    use_rope: bool = True  # the vit family adds learned position embeddings instead

    @nn.compact
    def __call__(self, x_BTD):
        cfg, dt = self.cfg, _dtype(self.cfg)
        D, H, K = cfg.d_model, cfg.n_heads, cfg.head_dim
        w_qkv = _param(self, "qkv", (3, D, H, K), (None, "embed", "heads", "kv"), _hidden_init(cfg))
        w_out = _param(self, "out", (H, K, D), ("heads", "kv", "embed"), _hidden_init(cfg))
        scale = 1.0 / K if cfg.parametrization == "mup" else None  # None: 1/sqrt(K)
        if cfg.attention_impl == "xla":  # heads-major: q, k, v come out of the projection as [B, H, T, K]
            qkv = jnp.einsum("btd,cdhk->cbhtk", x_BTD, w_qkv.astype(dt))
            position = (lambda x: rope(x, cfg.rope_theta, time_axis=2)) if self.use_rope else (lambda x: x)
            q, k, v = (nn.with_logical_constraint(x, ACT_BHTK) for x in (position(qkv[0]), position(qkv[1]), qkv[2]))
            o_BHTK = nn.with_logical_constraint(attention_xla(q, k, v, scale, self.causal), ACT_BHTK)
            return jnp.einsum("bhtk,hkd->btd", o_BHTK, w_out.astype(dt))
        qkv = jnp.einsum("btd,cdhk->cbthk", x_BTD, w_qkv.astype(dt))
        position = (lambda x: rope(x, cfg.rope_theta)) if self.use_rope else (lambda x: x)
        q_BTHK = nn.with_logical_constraint(position(qkv[0]), ACT_BTHK)
        k_BTHK = nn.with_logical_constraint(position(qkv[1]), ACT_BTHK)
        v_BTHK = nn.with_logical_constraint(qkv[2], ACT_BTHK)
        o_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, scale=scale, is_causal=self.causal, implementation=cfg.attention_impl)
        o_BTHK = nn.with_logical_constraint(o_BTHK, ACT_BTHK)
        return jnp.einsum("bthk,hkd->btd", o_BTHK, w_out.astype(dt))


@jax.custom_vjp
def gelu(x):
    """flax's nn.gelu (the tanh approximation), with its derivative computed in the same pass as the
    value and saved: autodiff's backward recomputes tanh, and XLA:CPU duplicated that fusion into
    both consumers of the hidden gradient (the input gradient and the weight gradient)."""
    return _gelu_and_slope(x)[0]


def _gelu_and_slope(x):
    c = np.sqrt(2 / np.pi).astype(x.dtype)
    x2 = x * x
    t = jnp.tanh(c * (x + 0.044715 * (x2 * x)))
    cdf = 0.5 * (1.0 + t)
    slope = cdf + x * (0.5 * (1.0 - t * t)) * (c * (1.0 + 3 * 0.044715 * x2))
    return x * cdf, slope


def _gelu_fwd(x):
    y, slope = _gelu_and_slope(x)
    return y, slope


gelu.defvjp(_gelu_fwd, lambda slope, g: (g * slope,))


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD):
        cfg, dt = self.cfg, _dtype(self.cfg)
        D, F = cfg.d_model, cfg.ffw_size
        w_in = _param(self, "wi", (D, F), ("embed", "mlp"), _hidden_init(cfg))
        w_out = _param(self, "wo", (F, D), ("mlp", "embed"), _hidden_init(cfg))
        h_BTF = x_BTD @ w_in.astype(dt)
        if cfg.mlp == "swiglu":
            w_gate = _param(self, "wg", (D, F), ("embed", "mlp"), _hidden_init(cfg))
            h_BTF = nn.silu(x_BTD @ w_gate.astype(dt)) * h_BTF
        else:
            h_BTF = gelu(h_BTF)
        h_BTF = nn.with_logical_constraint(h_BTF, ACT_BTF)
        return h_BTF @ w_out.astype(dt)


class Block(nn.Module):
    cfg: ModelConfig
    causal: bool = True  # False (and use_rope False): the vit family's encoder block
    use_rope: bool = True

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool):
        drop = base.Dropout(self.cfg.dropout)
        attn = Attention(self.cfg, self.causal, self.use_rope, name="attn")
        x_BTD = x_BTD + drop(attn(RMSNorm(name="ln1")(x_BTD)), deterministic)
        x_BTD = nn.with_logical_constraint(x_BTD, ACT_BTD)
        x_BTD = x_BTD + drop(Mlp(self.cfg, name="mlp")(RMSNorm(name="ln2")(x_BTD)), deterministic)
        return nn.with_logical_constraint(x_BTD, ACT_BTD)


class ScannedBlock(nn.Module):
    """`Block` with the (carry, xs) -> (carry, ys) signature nn.scan needs."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, _, deterministic: bool):
        return Block(self.cfg, name="block")(x_BTD, deterministic), None


def one_layer(cfg: ModelConfig, deterministic: bool):
    """(params of one scanned layer, x_BTD) -> x_BTD: a layer of the stack as a pure function."""
    block = ScannedBlock(cfg, parent=None)  # detached: not a child of the module tracing it

    def layer(params, x_BTD):
        return block.apply({"params": params}, x_BTD, None, deterministic)[0]

    return jax.checkpoint(layer, prevent_cse=False) if cfg.remat else layer  # as nn.remat in the scan


class Transformer(nn.Module):
    cfg: ModelConfig
    # Runs the scanned stack instead of nn.scan: (layer_fn, stacked params [L, ...], x_BTD) -> x_BTD,
    # e.g. the pipeline schedule (lib/parallel/pipeline.py, given by lib/train/step.py). Init always
    # uses nn.scan, so the parameters (and checkpoints) are the same with or without it.
    layer_stack: Callable | None = None

    @nn.compact
    def __call__(self, tokens_BT, deterministic: bool = True):
        cfg, dt = self.cfg, _dtype(self.cfg)
        embed_VD = _param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), nn.initializers.normal(1.0))
        x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(dt)
        x_BTD = nn.with_logical_constraint(x_BTD, ACT_BTD)

        if cfg.scan_layers and self.layer_stack is not None and not self.is_initializing():
            x_BTD = self.layer_stack(one_layer(cfg, deterministic), self.variables["params"]["layers"], x_BTD)
        elif cfg.scan_layers:
            block = ScannedBlock
            if cfg.remat:
                block = nn.remat(block, static_argnums=(3,), prevent_cse=False)
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BTD, _ = stack(cfg, name="layers")(x_BTD, None, deterministic)
        else:
            block = nn.remat(Block, static_argnums=(2,)) if cfg.remat else Block
            for i in range(cfg.n_layers):
                x_BTD = block(cfg, name=f"layer_{i}")(x_BTD, deterministic)

        x_BTD = RMSNorm(name="ln_f")(x_BTD)
        if cfg.tie_embeddings:
            # Scaled so tied logits start O(1) despite the unit-variance embedding table; under muP
            # 1/sqrt(base_width) x 1/m, so trained logits stay O(1) as the width grows.
            width = cfg.base_width if cfg.parametrization == "mup" else cfg.d_model
            divisor = width**0.5 * width_mult(cfg)
            logits_BTV = jnp.einsum("btd,vd->btv", x_BTD, embed_VD.astype(dt)) / jnp.asarray(divisor, dt)
        else:
            head_DV = _param(self, "head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
            logits_BTV = x_BTD @ head_DV.astype(dt)
            if cfg.parametrization == "mup":
                logits_BTV = logits_BTV * jnp.asarray(1.0 / width_mult(cfg), dt)
        return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ACT_BTV)


def make_model(cfg: ModelConfig) -> Transformer:
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size is unset; resolve it from the data source first (lib.data.resolve_vocab)")
    return Transformer(cfg)


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for this family ==========
from lib.models.spec import FamilySpec, check_heads  # noqa: E402  (the config section sits at the end)


def _check(m: ModelConfig) -> None:
    check_heads(m, rope=True)


SPEC = FamilySpec(name="transformer", attention=True, pipeline=True, mup=True, validate=_check)
