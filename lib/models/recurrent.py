"""Recurrent LMs, the `lstm` and `gru` families: stacked recurrent layers scanned over time.

    tokens -> embed (V x d) -> n_layers x [cell over time (jax.lax.scan) -> optional projection]
           -> RMSNorm -> logits (tied: / sqrt(d), as the transformer; untied: a head)

Shape suffixes: B batch, T time, I layer input, H hidden (rnn_hidden, 0: d_model), G gates
(4 for the LSTM, 3 for the GRU), P projection (rnn_proj), R recurrent state (P for LSTMP, else H).

Cells (our own rather than flax.linen's, for the LSTMP projection and the logical axis names; the
same speed as `nn.RNN(nn.OptimizedLSTMCell)`, whose form they take: each step multiplies x_t and
the state by all gates' weights at once. Hoisting the input matmul out of the time loop (one
[B*T, I] x [I, G*H] matmul) was slower on CPU; benchmarks/recurrent_cells.py measures all three):
  lstm  g = x_t Wx + r_{t-1} Wh + b;  i, f, o = sigmoid(g_i, g_f, g_o);  u = tanh(g_u)
        c_t = f c_{t-1} + i u;  h_t = o tanh(c_t);  r_t = h_t Wp (rnn_proj > 0: LSTMP, Sak et al. 2014) else h_t
        forget-gate bias starts at 1 (Jozefowicz et al. 2015).
  gru   (the cuDNN / flax form) r, z = sigmoid(x_t Wx_rz + b_rz + h Wh_rz);  n = tanh(x_t Wx_n + b_n + r (h Wh_n + b_hn))
        h_t = (1 - z) n + z h_{t-1};  output h_t Wp when rnn_proj > 0 (the state stays h_t).
Matrices start at N(0, 1/fan_in) (the embedding is N(0, 1), so gate inputs start O(1)); the cell
state and the carried state are float32 whatever the compute dtype.

Counts (lib/models/base.py conventions), per layer with input I:
  lstm  params I*4H + R*4H + 4H (+ H*P)      forward 2*(I*4H + R*4H + H*P)
  gru   params I*3H + H*3H + 3H + H (+ H*P)  forward 2*(I*3H + H*3H + H*P)
plus the final norm (O = P or H) and an untied head O*V; forward adds 2*V*d (embeddings) + 2*O*V.
XLA also counts the gate arithmetic (~10-15 H flops per step and layer) and the norm.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base
from lib.models.layers import ACT_BTD, RMSNorm, compute_dtype, param

ACT_BTH = ("act_batch", "act_len", "act_mlp")
LOGICAL_AXES = ("vocab", "embed", "mlp", "norm", "act_batch", "act_len", "act_embed", "act_mlp", "act_vocab")


def _fan_in_init(fan_in: int):
    return nn.initializers.normal(stddev=fan_in**-0.5)


def sizes(cfg: ModelConfig) -> tuple[int, int, int]:
    """(H, P, O): hidden units, projection (0: none), each layer's output size."""
    H = cfg.rnn_hidden or cfg.d_model
    P = cfg.rnn_proj
    return H, P, P or H


def layer_inputs(cfg: ModelConfig) -> list[int]:
    _, _, O = sizes(cfg)
    return [cfg.d_model] + [O] * (cfg.n_layers - 1)


def _dot(x, w, dt):
    return jnp.dot(x.astype(dt), w, preferred_element_type=jnp.float32)


class LSTMLayer(nn.Module):
    cfg: ModelConfig
    in_dim: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x_BTI):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        H, P, _ = sizes(cfg)
        R = P or H
        w_x = param(self, "wx", (self.in_dim, 4 * H), ("embed", "mlp"), _fan_in_init(self.in_dim)).astype(dt)
        w_h = param(self, "wh", (R, 4 * H), ("embed", "mlp"), _fan_in_init(R)).astype(dt)
        bias = param(self, "b", (4 * H,), ("mlp",), lambda key, shape, dtype: jnp.zeros(shape, dtype).at[H : 2 * H].set(1.0))
        w_p = param(self, "wp", (H, P), ("mlp", "embed"), _fan_in_init(H)).astype(dt) if P else None

        def step(carry, x_BI):
            c_BH, r_BR = carry
            g_BG = _dot(x_BI, w_x, dt) + _dot(r_BR, w_h, dt) + bias  # gates i, f, o, u
            i, f, o, u = jnp.split(g_BG, 4, axis=-1)
            c_BH = jax.nn.sigmoid(f) * c_BH + jax.nn.sigmoid(i) * jnp.tanh(u)
            h_BH = jax.nn.sigmoid(o) * jnp.tanh(c_BH)
            r_BR = h_BH if w_p is None else _dot(h_BH, w_p, dt)
            return (c_BH, r_BR), r_BR

        B = x_BTI.shape[0]
        carry = (jnp.zeros((B, H), jnp.float32), jnp.zeros((B, R), jnp.float32))
        _, y_TBR = jax.lax.scan(step, carry, jnp.swapaxes(x_BTI, 0, 1), unroll=self.unroll)
        return jnp.swapaxes(y_TBR, 0, 1).astype(dt)


class GRULayer(nn.Module):
    cfg: ModelConfig
    in_dim: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x_BTI):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        H, P, _ = sizes(cfg)
        w_x = param(self, "wx", (self.in_dim, 3 * H), ("embed", "mlp"), _fan_in_init(self.in_dim)).astype(dt)
        w_h = param(self, "wh", (H, 3 * H), ("embed", "mlp"), _fan_in_init(H)).astype(dt)
        b_x = param(self, "b", (3 * H,), ("mlp",), nn.initializers.zeros)
        b_hn = param(self, "b_hn", (H,), ("mlp",), nn.initializers.zeros)

        def step(h_BH, x_BI):
            gx_r, gx_z, gx_n = jnp.split(_dot(x_BI, w_x, dt) + b_x, 3, axis=-1)
            gh_r, gh_z, gh_n = jnp.split(_dot(h_BH, w_h, dt), 3, axis=-1)
            r, z = jax.nn.sigmoid(gx_r + gh_r), jax.nn.sigmoid(gx_z + gh_z)
            n = jnp.tanh(gx_n + r * (gh_n + b_hn))
            h_BH = (1.0 - z) * n + z * h_BH
            return h_BH, h_BH

        h0 = jnp.zeros((x_BTI.shape[0], H), jnp.float32)
        _, h_TBH = jax.lax.scan(step, h0, jnp.swapaxes(x_BTI, 0, 1), unroll=self.unroll)
        y_BTH = jnp.swapaxes(h_TBH, 0, 1).astype(dt)
        if P:
            w_p = param(self, "wp", (H, P), ("mlp", "embed"), _fan_in_init(H))
            y_BTH = y_BTH @ w_p.astype(dt)
        return y_BTH


class RecurrentLM(nn.Module):
    """`cfg.family` lstm or gru. `unroll` unrolls the time scan (XLA's cost analysis counts a loop
    body once, so the FLOP check unrolls it fully; training keeps 1)."""

    cfg: ModelConfig
    unroll: int = 1

    @nn.compact
    def __call__(self, tokens_BT, deterministic: bool = True):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        embed_VD = param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), nn.initializers.normal(1.0))
        x = nn.with_logical_constraint(jnp.take(embed_VD, tokens_BT, axis=0).astype(dt), ACT_BTD)
        layer_cls = {"lstm": LSTMLayer, "gru": GRULayer}[cfg.family]
        if cfg.remat:
            layer_cls = nn.remat(layer_cls)
        drop = base.Dropout(cfg.dropout)
        for i, in_dim in enumerate(layer_inputs(cfg)):
            if i:
                x = drop(x, deterministic)
            x = nn.with_logical_constraint(layer_cls(cfg, in_dim, self.unroll, name=f"layer_{i}")(x), ACT_BTH)
        x = RMSNorm(name="ln_f")(x)
        if cfg.tie_embeddings:  # validate() has checked that the output size is d_model
            logits_BTV = jnp.einsum("btd,vd->btv", x, embed_VD.astype(dt)) / jnp.sqrt(jnp.asarray(cfg.d_model, dt))
        else:
            head_OV = param(self, "head", (x.shape[-1], cfg.vocab_size), ("embed", "vocab"))
            logits_BTV = x @ head_OV.astype(dt)
        return nn.with_logical_constraint(logits_BTV.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))


# -- closed forms -----------------------------------------------------------------------------------
def _layer_params(cfg: ModelConfig, in_dim: int) -> tuple[int, int]:
    """(parameters, matmul multiply-accumulates per token) of one layer."""
    H, P, _ = sizes(cfg)
    proj = H * P if P else 0
    if cfg.family == "lstm":
        R = P or H
        macs = in_dim * 4 * H + R * 4 * H + proj
        return macs + 4 * H, macs
    macs = in_dim * 3 * H + H * 3 * H + proj
    return macs + 3 * H + H, macs


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    _, _, O = sizes(cfg)
    layers = sum(_layer_params(cfg, i)[0] for i in layer_inputs(cfg))
    embedding = base.embedding_params(cfg)
    non_embedding = layers + O + base.head_params(cfg, O)
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    _, _, O = sizes(cfg)
    macs = sum(_layer_params(cfg, i)[1] for i in layer_inputs(cfg))
    return 2.0 * cfg.vocab_size * cfg.d_model + 2.0 * macs + 2.0 * O * cfg.vocab_size


def _family(name: str) -> base.Family:
    return base.Family(name=name, module=RecurrentLM, param_counts=param_counts, forward_flops=forward_flops, logical_axes=LOGICAL_AXES)


LSTM = _family("lstm")
GRU = _family("gru")


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for lstm and gru ==========
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.models.spec import FamilySpec  # noqa: E402


def _check(m: ModelConfig) -> None:
    require(m.rnn_hidden >= 0, "model.rnn_hidden", f"must be positive (or 0 for d_model), got {m.rnn_hidden}")
    require(m.rnn_proj >= 0, "model.rnn_proj", f"must be positive (or 0 for no projection), got {m.rnn_proj}")
    out = m.rnn_proj or m.rnn_hidden or m.d_model
    require(
        out == m.d_model or not m.tie_embeddings,
        "model.tie_embeddings",
        f"the {m.family}'s output size ({out}: rnn_proj, else rnn_hidden) differs from d_model={m.d_model}, so the "
        f"embedding cannot be tied to the output head; set model.rnn_proj={m.d_model} or model.tie_embeddings=false",
    )
    require(not m.scan_layers, "model.scan_layers",
            f"{m.family} layers differ in input size and are not scanned; use --set model.scan_layers=false")


LSTM_SPEC = FamilySpec(name="lstm", validate=_check)
GRU_SPEC = FamilySpec(name="gru", validate=_check)
