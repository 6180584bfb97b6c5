"""A Vision Transformer image classifier, the `vit` family (Dosovitskiy et al. 2021).

    image [H, W, C] -> P = (H/p)(W/p) patches of p*p*C values -> dense (+ bias) to d_model
      (+ a class token when pool = "cls") + learned position embeddings
      -> n_layers x the transformer's Block (lib/models/layers.py; non-causal, no RoPE)
      -> RMSNorm -> mean over the patch tokens (pool "mean") or the class token -> dense (+ bias) -> logits

The blocks are the LM's own (pre-norm RMSNorm, attention through jax.nn.dot_product_attention,
GELU or SwiGLU MLP), so the attention and MLP counts are the transformer's at T = P (+1) tokens.
Shapes: B batch, H/W height/width, C channels, N tokens (patches, + class token), D d_model, K classes.

Counts (lib/models/base.py conventions):
  params   embedding = the position table N*D (+ the class token D): added, not multiplied;
           non-embedding = patch projection p*p*C*D + D, n_layers transformer layers, final norm D,
           head D*K + K
  forward  per image: patch projection 2*P*p*p*C*D, N x (attention_forward(N) + mlp_forward) per
           layer, head 2*D*K (the position add, norms, pooling are not counted)
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base
from lib.models.layers import ACT_BTD, Block, RMSNorm, compute_dtype, param

LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv", "norm",
                "act_batch", "act_len", "act_embed", "act_heads", "act_kv", "act_mlp", "act_vocab")


def n_patches(cfg: ModelConfig) -> int:
    return (cfg.image_size // cfg.patch_size) ** 2


def n_tokens(cfg: ModelConfig) -> int:
    return n_patches(cfg) + (cfg.pool == "cls")


def patchify(images_BHWC, p: int):
    """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C], patches in row-major order."""
    B, H, W, C = images_BHWC.shape
    x = images_BHWC.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


class ViT(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images_BHWC, deterministic: bool = True, train: bool = False):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        D, p = cfg.d_model, cfg.patch_size
        x_BPE = patchify(images_BHWC.astype(dt), p)
        w_patch = param(self, "patch", (x_BPE.shape[-1], D), (None, "embed"))
        b_patch = param(self, "patch_bias", (D,), ("embed",), nn.initializers.zeros)
        x_BND = x_BPE @ w_patch.astype(dt) + b_patch.astype(dt)
        if cfg.pool == "cls":
            cls_D = param(self, "cls", (D,), ("embed",), nn.initializers.zeros)
            x_BND = jnp.concatenate([jnp.broadcast_to(cls_D.astype(dt), (x_BND.shape[0], 1, D)), x_BND], axis=1)
        pos_ND = param(self, "pos", (n_tokens(cfg), D), (None, "embed"))
        x_BND = nn.with_logical_constraint(x_BND + pos_ND.astype(dt), ACT_BTD)
        x_BND = base.Dropout(cfg.dropout)(x_BND, deterministic)
        block = nn.remat(Block, static_argnums=(2,)) if cfg.remat else Block
        for i in range(cfg.n_layers):
            x_BND = block(cfg, causal=False, use_rope=False, name=f"layer_{i}")(x_BND, deterministic)
        x_BND = RMSNorm(name="ln_f")(x_BND)
        pooled_BD = x_BND[:, 0] if cfg.pool == "cls" else jnp.mean(x_BND.astype(jnp.float32), axis=1).astype(dt)
        head = param(self, "head", (D, cfg.vocab_size), ("embed", "vocab"), nn.initializers.zeros)
        bias = param(self, "head_bias", (cfg.vocab_size,), ("vocab",), nn.initializers.zeros)
        logits_BK = pooled_BD @ head.astype(dt) + bias.astype(dt)
        return nn.with_logical_constraint(logits_BK.astype(jnp.float32), ("act_batch", "act_vocab"))


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    D, K = cfg.d_model, cfg.vocab_size
    embedding = n_tokens(cfg) * D + (D if cfg.pool == "cls" else 0)
    per_layer = base.attention_params(cfg) + base.mlp_params(cfg) + 2 * D
    non_embedding = cfg.patch_size**2 * cfg.image_channels * D + D + cfg.n_layers * per_layer + D + D * K + K
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def forward_flops(cfg: ModelConfig, seq_len: int = 1) -> float:
    """Per image (seq_len is ignored: an image is one unit of D; its tokens are its patches)."""
    D, N = cfg.d_model, n_tokens(cfg)
    patch = 2.0 * n_patches(cfg) * cfg.patch_size**2 * cfg.image_channels * D
    layers = cfg.n_layers * N * (base.attention_forward(cfg, N) + base.mlp_forward(cfg))
    return patch + layers + 2.0 * D * cfg.vocab_size


VIT = base.Family(name="vit", module=ViT, param_counts=param_counts, forward_flops=forward_flops,
                  logical_axes=LOGICAL_AXES, dummy_input=base.image_dummy)


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for this family ==========
from lib.config import DataConfig, one_of, require  # noqa: E402  (the config section sits at the end)
from lib.models.spec import FamilySpec, check_heads, check_image_input  # noqa: E402

POOLS = ("mean", "cls")  # model.pool: the mean over patch tokens, or a class token


def _check(m: ModelConfig) -> None:
    check_image_input(m)
    require(not m.scan_layers, "model.scan_layers", "the vit family does not scan its layers; use --set model.scan_layers=false")
    require(m.patch_size >= 1, "model.patch_size", f"must be >= 1, got {m.patch_size}; e.g. 4")
    one_of(m.pool, POOLS, "model.pool")
    check_heads(m, rope=False)  # learned position embeddings: any head size


def _check_data(m: ModelConfig, d: DataConfig) -> None:
    require(m.patch_size > 0 and d.image_size % m.patch_size == 0, "model.patch_size",
            f"image size {d.image_size} is not divisible by patch_size {m.patch_size}; pick a patch size dividing it "
            f"(e.g. {max(p for p in (1, 2, 4, 8) if d.image_size % p == 0)})")


SPEC = FamilySpec(name="vit", task="classify", attention=True, validate=_check, check_data=_check_data)
