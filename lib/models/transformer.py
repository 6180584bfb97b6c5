"""Decoder-only transformer LM in flax.linen: pre-norm (RMSNorm), RoPE, causal attention through
`jax.nn.dot_product_attention`, GELU or SwiGLU MLP, tied or untied embeddings.

This is the decoder shell (embedding, layer stack, final norm, head) with a swappable layer: its
`block` field is the layer class, lib/models/layers.py's `Block` here, and lib/models/moe.py's
`MoeBlock` (routed experts in place of the MLP) for the moe family, which is this class with that
block. The shared layers live in lib/models/layers.py.

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

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models.layers import ACT_BTD, ACT_BTV, Block, RMSNorm, compute_dtype, param, token_einsum, width_mult


class ScannedBlock(nn.Module):
    """A layer (`block`) with the (carry, xs) -> (carry, ys) signature nn.scan needs."""

    cfg: ModelConfig
    block: type[nn.Module] = Block

    @nn.compact
    def __call__(self, x_BTD, _, deterministic: bool):
        return self.block(self.cfg, name="block")(x_BTD, deterministic), None


def one_layer(cfg: ModelConfig, deterministic: bool, block: type[nn.Module] = Block):
    """(params of one scanned layer, x_BTD) -> (x_BTD, what the layer sowed into "intermediates"):
    a layer of the stack as a pure function ({} sown for the dense block; moe's routing stats)."""
    scanned = ScannedBlock(cfg, block, parent=None)  # detached: not a child of the module tracing it

    def layer(params, x_BTD):
        (x_BTD, _), state = scanned.apply({"params": params}, x_BTD, None, deterministic, mutable=["intermediates"])
        return x_BTD, state.get("intermediates", {})

    return jax.checkpoint(layer, prevent_cse=False) if cfg.remat else layer  # as nn.remat in the scan


class Transformer(nn.Module):
    cfg: ModelConfig
    # Runs the scanned stack instead of nn.scan: (layer_fn, stacked params [L, ...], x_BTD) ->
    # (x_BTD, sown [L, ...]), e.g. the pipeline schedule (lib/parallel/pipeline.py, given by
    # lib/train/step.py). Init always uses nn.scan, so the parameters (and checkpoints) are the same
    # with or without it.
    layer_stack: Callable | None = None
    block: type[nn.Module] = Block  # the decoder layer: (cfg, name=...)(x_BTD, deterministic) -> x_BTD

    @nn.compact
    def __call__(self, tokens_BT, deterministic: bool = True):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        embed_VD = param(self, "embed", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), nn.initializers.normal(1.0))
        x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(dt)
        x_BTD = nn.with_logical_constraint(x_BTD, ACT_BTD)

        if cfg.scan_layers and self.layer_stack is not None and not self.is_initializing():
            layer = one_layer(cfg, deterministic, self.block)
            x_BTD, sown = self.layer_stack(layer, self.variables["params"]["layers"], x_BTD)
            if sown and self.is_mutable_collection("intermediates"):  # where nn.scan would have put them
                self.put_variable("intermediates", "layers", sown)
        elif cfg.scan_layers:
            block = ScannedBlock
            if cfg.remat:
                block = nn.remat(block, static_argnums=(3,), prevent_cse=False)
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BTD, _ = stack(cfg, self.block, name="layers")(x_BTD, None, deterministic)
        else:
            block = nn.remat(self.block, static_argnums=(2,)) if cfg.remat else self.block
            for i in range(cfg.n_layers):
                x_BTD = block(cfg, name=f"layer_{i}")(x_BTD, deterministic)

        x_BTD = RMSNorm(name="ln_f")(x_BTD)
        if cfg.tie_embeddings:
            # Scaled so tied logits start O(1) despite the unit-variance embedding table; under muP
            # 1/sqrt(base_width) x 1/m, so trained logits stay O(1) as the width grows.
            width = cfg.base_width if cfg.parametrization == "mup" else cfg.d_model
            divisor = width**0.5 * width_mult(cfg)
            logits_BTV = token_einsum("...d,vd->...v", x_BTD, embed_VD.astype(dt)) / jnp.asarray(divisor, dt)
        else:
            head_DV = param(self, "head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
            logits_BTV = token_einsum("...d,dv->...v", x_BTD, head_DV.astype(dt))
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
