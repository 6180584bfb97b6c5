"""The layers the model families share: logical axis names, parameter creation and the muP width
helpers, RMSNorm, RoPE, attention, the GELU/SwiGLU MLP (GELU with its slope saved for the backward
pass), and the pre-norm `Block` whose feed-forward sublayer is swappable (the transformer's MLP,
moe's routed experts). The transformer's outer model (embedding, layer stack, head) is
lib/models/transformer.py; its docstring describes the parametrizations (sp, mup) these implement.

Shape suffixes: B batch, T time (sequence), D d_model, H heads, K head_dim, F ffw size, V vocab.
Parameters are float32 and carry logical axis names (see lib/parallel/sharding.py for the rules);
compute runs in `cfg.compute_dtype`.
"""

from __future__ import annotations

import functools

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
init_dense = nn.initializers.normal(stddev=INIT_STD)
# Logical names of the dimensions that grow with d_model (heads x kv together are one: d_attn).
WIDTH_AXES = ("embed", "mlp", "heads", "kv")


def param(module: nn.Module, name: str, shape, axes, init=init_dense):
    """A float32 parameter of `module` carrying its logical axis names (lib/parallel/sharding.py's rules)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def compute_dtype(cfg: ModelConfig):
    """The dtype activations and matmuls run in (parameters stay float32)."""
    return jnp.dtype(cfg.compute_dtype)


def width_mult(cfg: ModelConfig) -> float:
    """m = d_model / base_width under muP (1 under sp): how far this model is from the tuned width."""
    return cfg.d_model / cfg.base_width if cfg.parametrization == "mup" else 1.0


def is_hidden(axes) -> bool:
    """A hidden matrix has two dimensions that grow with width (heads and kv count as one)."""
    grown = {"heads" if a == "kv" else a for a in axes if a in WIDTH_AXES}
    return len(grown) >= 2


def hidden_init(cfg: ModelConfig):
    """Hidden matrices: N(0, 0.02) under sp; variance / m under muP (1/fan_in scaling from base_width)."""
    return nn.initializers.normal(stddev=INIT_STD / width_mult(cfg) ** 0.5)


class RMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BTD):
        scale_D = param(self, "scale", (x_BTD.shape[-1],), ("norm",), nn.initializers.ones)
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


def token_einsum(spec: str, x, w, n_tokens: int = 2):
    """jnp.einsum(spec, x, w) where `...` in spec stands for x's leading `n_tokens` dims (batch,
    time), flattened into one token dim for the product and restored after it. The same product;
    the point is the backward pass: a weight gradient contracting over two dims (batch and time)
    made XLA:CPU write the activation gradient transposed, a strided copy per dense layer (a d64
    step 1.4x slower); contracting over one token dim it uses the gradient as it lies. The weight's
    dims are left as they are, so their shardings (heads, mlp, ...) need no reshape."""
    lead = x.shape[:n_tokens]
    y = jnp.einsum(spec, x.reshape(-1, *x.shape[n_tokens:]), w)
    at = spec.split("->")[1].index("...")  # the token dim's place in the output
    return y.reshape(*y.shape[:at], *lead, *y.shape[at + 1:])


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


@jax.custom_vjp
def softmax(x):
    """jax.nn.softmax over the last axis (the same forward ops), with the textbook backward
    dx = p * (g - sum(g * p)) from the saved probabilities. Autodiff through exp / sum (jax's
    default, `jax_softmax_custom_jvp` off) materialised a broadcast of 1/sum the size of the
    attention logits, twice per layer."""
    return _softmax_fwd(x)[0]


def _softmax_fwd(x):
    unnormalized = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    probs = unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)
    return probs, probs


softmax.defvjp(_softmax_fwd, lambda probs, g: (probs * (g - jnp.sum(g * probs, axis=-1, keepdims=True)),))


CAUSAL_BLOCK = 32  # query rows per block of causal attention, at least (measured at T = 256: 16 rows 1.0x, 32 1.5x, 64 1.35x)
MAX_CAUSAL_BLOCKS = 8  # and at most this many blocks (two small matmuls each), so long sequences stay a few large ops


def attention_xla(q_BHTK, k_BHSK, v_BHSK, scale: float | None, causal: bool):
    """jax.nn.dot_product_attention's XLA path (the same ops: f32 logits, scale, mask with its large
    negative, f32 softmax), heads-major: with batch and heads leading, both attention matmuls are
    plain batched matmuls and XLA inserts no transposes around them.

    Causal self-attention over T >= 2 * CAUSAL_BLOCK positions attends in blocks of query rows, each
    against the keys up to its last row: the logits above the diagonal's blocks, all masked, are never
    computed (at T = 256, 8 blocks: only 36/64 of the square is computed). With a head dim of 16-64
    the logits and their softmax, not the matmuls, bound a CPU step: d64-L2 at seq 256 steps 1.5x
    faster (docs/speed.md). A masked logit's probability is exactly 0 either way, so this is the same
    function to float rounding: the sums over keys run over fewer zeros (on CPU the forward pass
    is equal to the bit, the gradients agree to 7.7e-7 of their largest entry)."""
    T, S = q_BHTK.shape[2], k_BHSK.shape[2]
    n_blocks = min(T // CAUSAL_BLOCK, MAX_CAUSAL_BLOCKS)
    if not causal or T != S or n_blocks < 2:
        return _attend(q_BHTK, k_BHSK, v_BHSK, scale, 0 if causal else None)
    edges = [i * T // n_blocks for i in range(n_blocks + 1)]
    return jnp.concatenate([_attend(q_BHTK[:, :, lo:hi], k_BHSK[:, :, :hi], v_BHSK[:, :, :hi], scale, lo)
                            for lo, hi in zip(edges[:-1], edges[1:])], axis=2)


def _attend(q_BHTK, k_BHSK, v_BHSK, scale: float | None, first_row: int | None):
    """Attention of q's rows over all of k, v; causal (query row t, at position first_row + t, sees
    keys 0..first_row + t) unless first_row is None."""
    K, T, S = q_BHTK.shape[-1], q_BHTK.shape[2], k_BHSK.shape[2]
    precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q_BHTK.dtype == jnp.bfloat16 else None
    logits = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_BHSK, precision=precision,
                        preferred_element_type=jnp.promote_types(q_BHTK.dtype, jnp.float32))
    logits *= jnp.array(1.0 / K**0.5 if scale is None else scale, dtype=logits.dtype)
    if first_row is not None:
        mask_TS = jnp.tril(jnp.ones((T, S), jnp.bool_), k=first_row)
        logits = jnp.where(mask_TS, logits, jnp.asarray(-0.7 * float(jnp.finfo(logits.dtype).max), logits.dtype))
    probs = softmax(logits.astype(jnp.float32)).astype(k_BHSK.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", probs, v_BHSK)


class Attention(nn.Module):
    cfg: ModelConfig
    causal: bool = True  # the LM; the vit family attends both ways
    use_rope: bool = True  # the vit family adds learned position embeddings instead

    @nn.compact
    def __call__(self, x_BTD):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        D, H, K = cfg.d_model, cfg.n_heads, cfg.head_dim
        w_qkv = param(self, "qkv", (3, D, H, K), (None, "embed", "heads", "kv"), hidden_init(cfg))
        w_out = param(self, "out", (H, K, D), ("heads", "kv", "embed"), hidden_init(cfg))
        scale = 1.0 / K if cfg.parametrization == "mup" else None  # None: 1/sqrt(K)
        if cfg.attention_impl == "xla":  # heads-major: q, k, v come out of the projection as [B, H, T, K]
            qkv = token_einsum("...d,cdhk->c...hk", x_BTD, w_qkv.astype(dt)).transpose(0, 1, 3, 2, 4)  # [3, B, H, T, K]
            position = (lambda x: rope(x, cfg.rope_theta, time_axis=2)) if self.use_rope else (lambda x: x)
            q, k, v = (nn.with_logical_constraint(x, ACT_BHTK) for x in (position(qkv[0]), position(qkv[1]), qkv[2]))
            o_BHTK = nn.with_logical_constraint(attention_xla(q, k, v, scale, self.causal), ACT_BHTK)
            return token_einsum("...hk,hkd->...d", o_BHTK.transpose(0, 2, 1, 3), w_out.astype(dt))
        qkv = token_einsum("...d,cdhk->c...hk", x_BTD, w_qkv.astype(dt))
        position = (lambda x: rope(x, cfg.rope_theta)) if self.use_rope else (lambda x: x)
        q_BTHK = nn.with_logical_constraint(position(qkv[0]), ACT_BTHK)
        k_BTHK = nn.with_logical_constraint(position(qkv[1]), ACT_BTHK)
        v_BTHK = nn.with_logical_constraint(qkv[2], ACT_BTHK)
        o_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, scale=scale, is_causal=self.causal, implementation=cfg.attention_impl)
        o_BTHK = nn.with_logical_constraint(o_BTHK, ACT_BTHK)
        return token_einsum("...hk,hkd->...d", o_BTHK, w_out.astype(dt))


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
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        D, F = cfg.d_model, cfg.ffw_size
        w_in = param(self, "wi", (D, F), ("embed", "mlp"), hidden_init(cfg))
        w_out = param(self, "wo", (F, D), ("mlp", "embed"), hidden_init(cfg))
        h_BTF = token_einsum("...d,df->...f", x_BTD, w_in.astype(dt))
        if cfg.mlp == "swiglu":
            w_gate = param(self, "wg", (D, F), ("embed", "mlp"), hidden_init(cfg))
            h_BTF = nn.silu(token_einsum("...d,df->...f", x_BTD, w_gate.astype(dt))) * h_BTF
        else:
            h_BTF = gelu(h_BTF)
        h_BTF = nn.with_logical_constraint(h_BTF, ACT_BTF)
        return token_einsum("...f,fd->...d", h_BTF, w_out.astype(dt))


class Block(nn.Module):
    """One pre-norm layer: x + attn(ln1(x)), then x + ffn(ln2(x)). The feed-forward sublayer is the
    swappable part: `Mlp` (the transformer, vit), routed experts (lib/models/moe.py's MoeBlock sets
    `ffn` and its parameter scope `ffn_name`, so checkpoints keep their names)."""

    cfg: ModelConfig
    causal: bool = True  # False (and use_rope False): the vit family's encoder block
    use_rope: bool = True
    ffn: type[nn.Module] = Mlp  # a module class: (cfg, name=...)(x_BTD) -> y_BTD
    ffn_name: str = "mlp"

    @nn.compact
    def __call__(self, x_BTD, deterministic: bool):
        drop = base.Dropout(self.cfg.dropout)
        attn = Attention(self.cfg, self.causal, self.use_rope, name="attn")
        x_BTD = x_BTD + drop(attn(RMSNorm(name="ln1")(x_BTD)), deterministic)
        x_BTD = nn.with_logical_constraint(x_BTD, ACT_BTD)
        x_BTD = x_BTD + drop(self.ffn(self.cfg, name=self.ffn_name)(RMSNorm(name="ln2")(x_BTD)), deterministic)
        return nn.with_logical_constraint(x_BTD, ACT_BTD)
