"""Mixture-of-experts transformer, the `moe` family: lib/models/transformer.py's Transformer with
`MoeBlock` as its layer, the shared pre-norm Block (lib/models/layers.py) with its MLP replaced by
`n_experts` routed experts. The shell is the dense model's, so moe runs the same pipeline stages
(its routing stats come back through the schedule) and the same muP: experts' matrices are hidden
matrices (init and Adam rate / m); the router, a width -> n_experts readout like the head, keeps
sp's init and rate and its logits get the head's 1/m multiplier.

Routing, per group of S tokens (a group is one sequence, so routing never depends on how the batch
is split over devices):
  router    logits_GSE = x W_r (float32, no bias); p = softmax(logits)
  top-k     each token picks its top_k experts; gate weights are p of the chosen experts,
            renormalised to sum to 1 when top_k > 1 (GShard), the raw p when top_k = 1 (Switch)
  capacity  C = min(S, ceil(capacity_factor * top_k * S / n_experts)) slots per expert and group;
            slots are served first come, first served in token order, so whether token t is dropped
            depends only on tokens <= t and the model stays causal (GShard's "first choices first"
            priority would let a later token's first choice push out an earlier token's second).
            A dropped (token, expert) assignment contributes nothing: the residual carries the token.
  dispatch  expert_in[e, g, c] = sum_s dispatch[g, s, e, c] x[g, s]  (einsum, GShard style); the
            constraint act_experts -> mesh `expert` on it makes the compiler exchange tokens between
            devices (all-to-all), and the combine einsum brings them back.
Auxiliary losses (sown per layer into "intermediates", averaged over layers, logged separately
from the LM loss; lib.models.apply_with_aux adds them to the training loss):
  moe_aux_loss      E * sum_e f_e P_e (Switch, Fedus et al. 2022; GShard): f_e the share of the
                    top_k * S assignments routed to e (before capacity), P_e the mean router
                    probability: 1 for uniform routing, E * sum_e P_e^2 >= 1 (Cauchy-Schwarz) when
                    f follows P, and up to E when everything goes to one expert; it can dip just
                    below 1 where f and P disagree slightly. Weighted by moe_aux_weight.
  moe_z_loss        mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022). x moe_z_weight.
  moe_dropped_frac  the share of assignments dropped for capacity (logged, not a loss).

Counts (lib/models/base.py conventions), per layer: attention and two norms as the transformer,
the router d*E, and E experts of (2 or 3)*d*f each.
  total   every expert;  active  the top_k experts a token uses, plus the router (embedding included)
  forward as the transformer with the MLP replaced by 2*d*E (router) + top_k expert MLPs.
What the implementation computes on top (`dispatch_overhead_flops`): every capacity slot, used or
not (E*C slots per group instead of top_k*S), and the dispatch and combine einsums (2 * 2*E*C*d
per token); XLA's count includes both.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base
from lib.models.layers import ACT_BTD, Block, compute_dtype, hidden_init, param, width_mult
from lib.models.transformer import Transformer

ACT_ECGD = ("act_experts", "act_group", "act_capacity", "act_embed")
ACT_ECGF = ("act_experts", "act_group", "act_capacity", "act_mlp")
LOGICAL_AXES = (
    "vocab", "embed", "mlp", "heads", "kv", "norm", "layers", "experts",
    "act_batch", "act_len", "act_embed", "act_heads", "act_kv", "act_mlp", "act_vocab",
    "act_experts", "act_group", "act_capacity",
)
AUX_WEIGHTS = (("moe_aux_loss", "moe_aux_weight"), ("moe_z_loss", "moe_z_weight"), ("moe_dropped_frac", None))


def capacity(cfg: ModelConfig, group_size: int) -> int:
    """Slots per expert in a group of `group_size` tokens (an expert gets a token at most once)."""
    return int(min(group_size, max(1, math.ceil(cfg.capacity_factor * cfg.top_k * group_size / cfg.n_experts))))


def route(logits_GSE, top_k: int, capacity: int):
    """Top-k routing with capacity. Returns (dispatch_GSEC in {0, 1}, combine_GSEC gate weights,
    stats {moe_aux_loss, moe_z_loss, moe_dropped_frac}), all float32."""
    logits_GSE = logits_GSE.astype(jnp.float32)
    E = logits_GSE.shape[-1]
    probs = jax.nn.softmax(logits_GSE, axis=-1)
    remaining, masks, gates = probs, [], []
    for _ in range(top_k):
        mask = jax.nn.one_hot(jnp.argmax(remaining, axis=-1), E, dtype=jnp.float32)
        masks.append(mask)
        gates.append(jnp.sum(probs * mask, axis=-1, keepdims=True))
        remaining = jnp.where(mask > 0, -1.0, remaining)  # probabilities are >= 0: never picked again
    chosen_GSE = sum(masks)
    if top_k > 1:
        total = sum(gates)
        weight_GSE = sum(m * g / total for m, g in zip(masks, gates))
    else:
        weight_GSE = probs * chosen_GSE
    slot_GSE = jnp.cumsum(chosen_GSE, axis=1) - chosen_GSE  # assignments to e from earlier tokens
    keep_GSE = chosen_GSE * (slot_GSE < capacity)
    dispatch_GSEC = jax.nn.one_hot(slot_GSE.astype(jnp.int32), capacity, dtype=jnp.float32) * keep_GSE[..., None]
    combine_GSEC = dispatch_GSEC * weight_GSE[..., None]
    f_E = jnp.mean(chosen_GSE, axis=(0, 1)) / top_k
    p_E = jnp.mean(probs, axis=(0, 1))
    stats = {
        "moe_aux_loss": E * jnp.sum(f_E * p_E),
        "moe_z_loss": jnp.mean(jax.nn.logsumexp(logits_GSE, axis=-1) ** 2),
        "moe_dropped_frac": 1.0 - jnp.sum(keep_GSE) / jnp.sum(chosen_GSE),
    }
    return dispatch_GSEC, combine_GSEC, stats


class MoeMlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_GSD):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        D, F, E = cfg.d_model, cfg.ffw_size, cfg.n_experts
        router_DE = param(self, "router", (D, E), ("embed", None))
        w_in = param(self, "wi", (E, D, F), ("experts", "embed", "mlp"), hidden_init(cfg))
        w_out = param(self, "wo", (E, F, D), ("experts", "mlp", "embed"), hidden_init(cfg))
        logits_GSE = jnp.einsum("gsd,de->gse", x_GSD.astype(jnp.float32), router_DE)
        if cfg.parametrization == "mup":  # the readout's multiplier, as the head's logits
            logits_GSE = logits_GSE * (1.0 / width_mult(cfg))
        dispatch, combine, stats = route(logits_GSE, cfg.top_k, capacity(cfg, x_GSD.shape[1]))
        for name, value in stats.items():
            self.sow("intermediates", name, value)
        x_EGCD = jnp.einsum("gsec,gsd->egcd", dispatch.astype(dt), x_GSD)
        x_EGCD = nn.with_logical_constraint(x_EGCD, ACT_ECGD)  # the all-to-all: tokens to their experts
        h_EGCF = jnp.einsum("egcd,edf->egcf", x_EGCD, w_in.astype(dt))
        if cfg.mlp == "swiglu":
            w_gate = param(self, "wg", (E, D, F), ("experts", "embed", "mlp"), hidden_init(cfg))
            h_EGCF = nn.silu(jnp.einsum("egcd,edf->egcf", x_EGCD, w_gate.astype(dt))) * h_EGCF
        else:
            h_EGCF = nn.gelu(h_EGCF)
        h_EGCF = nn.with_logical_constraint(h_EGCF, ACT_ECGF)
        y_EGCD = nn.with_logical_constraint(jnp.einsum("egcf,efd->egcd", h_EGCF, w_out.astype(dt)), ACT_ECGD)
        y_GSD = jnp.einsum("gsec,egcd->gsd", combine.astype(dt), y_EGCD)  # and back
        return nn.with_logical_constraint(y_GSD, ACT_BTD)


class MoeBlock(Block):
    """The shared pre-norm layer with routed experts as its feed-forward sublayer (params under "moe")."""

    ffn: type[nn.Module] = MoeMlp
    ffn_name: str = "moe"


class MoeTransformer(Transformer):
    """The transformer shell (embedding, scanned or pipelined stack, norm, head, muP) with MoeBlock layers."""

    block: type[nn.Module] = MoeBlock


# -- closed forms -----------------------------------------------------------------------------------
def param_counts(cfg: ModelConfig) -> dict[str, int]:
    D, E, k = cfg.d_model, cfg.n_experts, cfg.top_k
    shared = base.attention_params(cfg) + 2 * D + D * E  # attention, two norms, router
    embedding = base.embedding_params(cfg)
    rest = D + base.head_params(cfg)  # final norm, untied head
    non_embedding = cfg.n_layers * (shared + E * base.mlp_params(cfg)) + rest
    active_non_embedding = cfg.n_layers * (shared + k * base.mlp_params(cfg)) + rest
    return {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
        "active": embedding + active_non_embedding,
    }


def forward_flops(cfg: ModelConfig, seq_len: int) -> float:
    routed = 2.0 * cfg.d_model * cfg.n_experts + cfg.top_k * base.mlp_forward(cfg)
    return base.embed_and_logits_forward(cfg) + cfg.n_layers * (base.attention_forward(cfg, seq_len) + routed)


def dispatch_overhead_flops(cfg: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token the implementation spends beyond `forward_flops`: all E*C capacity
    slots of a group run their expert (instead of top_k*S assignments), plus the dispatch and
    combine einsums, 2*E*C*d each per token (groups are sequences: S = seq_len)."""
    S, C, E, D = seq_len, capacity(cfg, seq_len), cfg.n_experts, cfg.d_model
    slots = (E * C / S - cfg.top_k) * base.mlp_forward(cfg)
    return cfg.n_layers * (slots + 2 * 2.0 * E * C * D)


MOE = base.Family(
    name="moe", module=MoeTransformer, param_counts=param_counts, forward_flops=forward_flops, logical_axes=LOGICAL_AXES,
    context_flops=base.attention_context_flops, aux_weights=AUX_WEIGHTS,
)


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for this family ==========
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.models.spec import FamilySpec, check_heads  # noqa: E402


def _check(m: ModelConfig) -> None:
    check_heads(m, rope=True)
    require(m.n_experts >= 1, "model.n_experts", f"must be >= 1, got {m.n_experts}; e.g. 8")
    require(1 <= m.top_k <= m.n_experts, "model.top_k",
            f"top_k={m.top_k} must be in 1..n_experts ({m.n_experts}); e.g. --set model.top_k={min(2, max(m.n_experts, 1))}")
    require(m.capacity_factor > 0 and math.isfinite(m.capacity_factor), "model.capacity_factor",
            f"must be > 0 (slots per expert = capacity_factor * top_k * seq_len / n_experts), got {m.capacity_factor}; e.g. 1.25")
    for name in ("moe_aux_weight", "moe_z_weight"):
        value = getattr(m, name)
        require(value >= 0 and math.isfinite(value), f"model.{name}", f"must be >= 0 (0 turns the loss off), got {value}")


def _check_mesh(m: ModelConfig, sizes: dict[str, int]) -> None:
    expert = sizes["expert"]
    require(m.n_experts % expert == 0, "mesh.expert",
            f"n_experts={m.n_experts} is not divisible by the expert-parallel size {expert}; pick mesh.expert dividing "
            f"n_experts (e.g. --set mesh.expert={math.gcd(m.n_experts, expert)}) or more experts")


SPEC = FamilySpec(name="moe", attention=True, pipeline=True, mup=True, validate=_check, check_mesh=_check_mesh)
