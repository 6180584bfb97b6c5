"""Model families, one file each, and the registry: `family(name)`, `make_model(cfg)`, `apply_with_aux`.

The contract a family implements is `lib.models.base.Family` (read its docstring): a flax.linen
module factory, closed-form `param_counts` and `forward_flops` (lib/flops.py dispatches to them for
every convention), and the logical axis names its parameters and activations use (each has a rule
in lib/parallel/sharding.py's one table). Registered families (config: `model.family`):

  transformer  lib/models/transformer.py   decoder-only transformer (RMSNorm, RoPE, GELU/SwiGLU)
  lstm, gru    lib/models/recurrent.py     stacked recurrent layers scanned over time, optional projection
  mlp          lib/models/mlp.py           fixed-window feed-forward LM with a residual MLP stack
  cnn          lib/models/cnn.py           causal gated convolutions, residual, dilations
  moe          lib/models/moe.py           the transformer with routed experts (top-k, capacity, aux losses)

Layers the families share (norms, attention, MLP, RoPE, the pre-norm Block) are lib/models/layers.py.
  resnet       lib/models/resnet.py        pre-activation ResNet image classifier (group or batch norm)
  vit          lib/models/vit.py           Vision Transformer classifier (the transformer's Block, non-causal)

Each family also declares its configuration rules in a `FamilySpec` (lib/models/spec.py), a marked
section at the end of its file: its fields' checks, its task, whether it has attention heads, runs
pipeline stages or muP, and its shape tag. `register(family, spec)` adds both; lib/config_rules.py
runs the spec of whatever family a config names, so a new family touches its file and this registry.

May import: lib.config. Not lib.flops (it counts for the families, so it sits above them).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base, cnn, mlp, moe, recurrent, resnet, transformer, vit
from lib.models.base import Family
from lib.models.spec import FamilySpec

TRANSFORMER = Family(
    name="transformer",
    module=transformer.Transformer,
    param_counts=base.transformer_param_counts,
    forward_flops=base.transformer_forward_flops,
    context_flops=base.attention_context_flops,
    logical_axes=(
        "vocab", "embed", "mlp", "heads", "kv", "norm", "layers",
        "act_batch", "act_len", "act_embed", "act_heads", "act_kv", "act_mlp", "act_vocab",
    ),
)

FAMILIES: dict[str, Family] = {}
SPECS: dict[str, FamilySpec] = {}


def register(fam: Family, spec: FamilySpec) -> None:
    """Add a family: its model contract and its configuration rules, under one name."""
    if fam.name != spec.name:
        raise ValueError(f"a family and its spec must have one name, got Family {fam.name!r} and FamilySpec {spec.name!r}")
    if fam.name in FAMILIES:
        raise ValueError(f"model family {fam.name!r} is already registered")
    FAMILIES[fam.name], SPECS[fam.name] = fam, spec


for _fam, _spec in ((TRANSFORMER, transformer.SPEC), (recurrent.LSTM, recurrent.LSTM_SPEC), (recurrent.GRU, recurrent.GRU_SPEC),
                    (mlp.MLP, mlp.SPEC), (cnn.CNN, cnn.SPEC), (moe.MOE, moe.SPEC), (resnet.RESNET, resnet.SPEC), (vit.VIT, vit.SPEC)):
    register(_fam, _spec)
del _fam, _spec


def _name(name_or_cfg: str | ModelConfig) -> str:
    name = name_or_cfg if isinstance(name_or_cfg, str) else name_or_cfg.family
    if name not in FAMILIES:
        raise ValueError(f"model.family: unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return name


def family(name_or_cfg: str | ModelConfig) -> Family:
    return FAMILIES[_name(name_or_cfg)]


def spec(name_or_cfg: str | ModelConfig) -> FamilySpec:
    """The family's configuration rules (lib/models/spec.py)."""
    return SPECS[_name(name_or_cfg)]


def shape_tag(cfg: ModelConfig) -> str:
    """The short name of a model's shape in reports, e.g. "transformer d_model 64, n_layers 2, n_heads 4"."""
    return spec(cfg).tag(cfg)


def families_of_task(task: str) -> tuple[str, ...]:
    """The registered families that read `task`'s data ("lm": tokens, "classify": images)."""
    return tuple(name for name, s in SPECS.items() if s.task == task)


def make_model(cfg: ModelConfig, layer_stack=None) -> nn.Module:
    """The flax.linen module of `cfg.family`: (tokens_BT, deterministic=True) -> logits_BTV float32.

    `layer_stack` (the transformer shell's scanned layers: transformer, moe): what runs the stack in
    place of nn.scan, (layer_fn, stacked params [L, ...], x) -> (x, sown) -- the pipeline schedule
    (lib/parallel/pipeline.py)."""
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size is unset; resolve it from the data source first (lib.data.resolve_vocab)")
    if layer_stack is None:
        return family(cfg).module(cfg)
    if not spec(cfg).pipeline or not cfg.scan_layers:
        raise ValueError(f"a layer_stack (pipeline) runs a pipeline family's scanned layers, not {cfg.family} "
                         f"with scan_layers={cfg.scan_layers} (lib/config_rules.py validates this)")
    return family(cfg).module(cfg, layer_stack=layer_stack)


def param_axes(cfg: ModelConfig, seq_len: int = 8):
    """The parameter tree with each leaf replaced by its tuple of logical axis names (no compute)."""
    boxed = jax.eval_shape(lambda: make_model(cfg).init(jax.random.key(0), dummy_input(cfg, seq_len))["params"])
    return jax.tree.map(lambda x: tuple(x.names), boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def dummy_input(cfg: ModelConfig, seq_len: int):
    """A batch of one input for `init`: tokens [1, seq_len], or an image [1, H, W, C] (image families)."""
    return family(cfg).dummy_input(cfg, seq_len)


def has_aux(cfg: ModelConfig) -> bool:
    """Whether the family sows auxiliary training terms (then the loss runs `apply_with_aux`)."""
    return bool(family(cfg).aux_weights)


def apply_with_aux(model: nn.Module, params, tokens_BT, **kwargs):
    """`(logits_BTV, penalty, metrics)`: the forward pass, the weighted sum of the auxiliary losses
    the family sows (0 when none), and each sown term averaged over layers (for the train metrics,
    logged apart from the LM loss). Families without aux terms run a plain `apply`."""
    fam = family(model.cfg)
    if not fam.aux_weights:
        return model.apply({"params": params}, tokens_BT, **kwargs), jnp.zeros((), jnp.float32), {}
    logits, state = model.apply({"params": params}, tokens_BT, mutable=["intermediates"], **kwargs)
    metrics = sown_means(state.get("intermediates", {}), [name for name, _ in fam.aux_weights])
    penalty = sum((getattr(model.cfg, weight) * metrics[name] for name, weight in fam.aux_weights if weight), jnp.zeros((), jnp.float32))
    return logits, penalty, metrics


def sown_means(intermediates, names) -> dict:
    """Mean over every sown value (every layer; scanned layers stack them) of each name in `names`."""
    found: dict[str, list] = {n: [] for n in names}
    for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        hit = next((k for k in reversed(keys) if k in found), None)
        if hit is not None:
            found[hit].append(jnp.ravel(leaf).astype(jnp.float32))
    missing = [n for n, v in found.items() if not v]
    if missing:
        raise ValueError(f"the model sowed none of {missing}; its family declares them in aux_weights")
    return {n: jnp.mean(jnp.concatenate(v)) for n, v in found.items()}


__all__ = ["FAMILIES", "SPECS", "Family", "FamilySpec", "apply_with_aux", "dummy_input", "families_of_task", "family", "has_aux", "make_model",
           "param_axes", "register", "shape_tag", "sown_means", "spec"]
