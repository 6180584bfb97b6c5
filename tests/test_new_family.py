"""Adding a model family touches its own file and the registry, nothing else: a family defined here
(a module, its closed-form counts, its FamilySpec) is registered, configured, validated by its own
rule and the cross-section rules, counted, and trained a few steps by the one train loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import math
import pytest

from lib import flops, models
from lib.config import ConfigError, ModelConfig, require
from lib.config_rules import validate
from lib.models.base import Family
from lib.models.spec import FamilySpec
from lib.store.runstore import RunDir
from lib.train.loop import train


# ---- the family: what its own file would hold --------------------------------------------------------
class TanhStack(nn.Module):
    """Each token's embedding through n_layers tanh layers (d -> d, bias), then an untied head: a bigram LM."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, deterministic: bool = True):
        m = self.cfg
        init = nn.initializers.normal(0.02)
        embed_VD = self.param("embed", nn.with_logical_partitioning(init, ("vocab", "embed")), (m.vocab_size, m.d_model))
        x_BTD = embed_VD[tokens_BT]
        for i in range(m.n_layers):
            w_DD = self.param(f"w{i}", nn.with_logical_partitioning(init, ("embed", "mlp")), (m.d_model, m.d_model))
            b_D = self.param(f"b{i}", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (m.d_model,))
            x_BTD = jnp.tanh(x_BTD @ w_DD + b_D)
        head_DV = self.param("head", nn.with_logical_partitioning(init, ("embed", "vocab")), (m.d_model, m.vocab_size))
        return (x_BTD @ head_DV).astype(jnp.float32)


def param_counts(m: ModelConfig) -> dict[str, int]:
    embedding = m.vocab_size * m.d_model
    non_embedding = m.n_layers * (m.d_model * m.d_model + m.d_model) + m.d_model * m.vocab_size
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def forward_flops(m: ModelConfig, seq_len: int) -> float:
    return 2.0 * m.vocab_size * m.d_model + m.n_layers * 2.0 * m.d_model**2 + 2.0 * m.d_model * m.vocab_size


def _check(m: ModelConfig) -> None:
    require(m.n_layers <= 4, "model.n_layers", f"the tanh stack has at most 4 layers, got {m.n_layers}; e.g. --set model.n_layers=2")


FAMILY = Family(name="tanh_stack", module=TanhStack, param_counts=param_counts, forward_flops=forward_flops,
                logical_axes=("vocab", "embed", "mlp"))
SPEC = FamilySpec(name="tanh_stack", validate=_check, shape_tag=lambda m: f"tanh d{m.d_model}-L{m.n_layers}")


@pytest.fixture
def registered(monkeypatch):
    """The family in the registry for this test only (the registry's dicts are restored after)."""
    monkeypatch.setattr(models, "FAMILIES", dict(models.FAMILIES))
    monkeypatch.setattr(models, "SPECS", dict(models.SPECS))
    models.register(FAMILY, SPEC)


def test_a_family_defined_outside_lib_is_validated_counted_and_trained(registered, tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"model.family": "tanh_stack", "model.n_layers": 2, "model.n_heads": 3, "optimizer.lr": 3e-2,
                                      "train.steps": 12, "train.log_every": 1, "train.eval_every": 12, "train.checkpoint_every": 12})
    # its own rule and the cross-section rules run for it, each naming the field
    validate(cfg, device_count=8)
    assert validate(cfg.with_overrides({"mesh.preset": "fsdp_tp"}), device_count=8)  # no heads: n_heads=3 need not split over tensor
    with pytest.raises(ConfigError, match=r"^model\.n_layers: the tanh stack has at most 4 layers, got 5"):
        validate(cfg.with_overrides({"model.n_layers": 5}))
    with pytest.raises(ConfigError, match=r"^model\.family: data\.source 'synthetic_images' gives images and labels; 'tanh_stack'"):
        validate(cfg.with_overrides({"data.source": "synthetic_images"}))
    with pytest.raises(ConfigError, match=r"^model\.parametrization: mup is implemented for the .+, not 'tanh_stack'; use sp$"):
        validate(cfg.with_overrides({"model.parametrization": "mup", "model.base_width": 32}))
    assert models.shape_tag(cfg.model) == "tanh d32-L2"

    # counted: the closed form against the parameter tree, leaf by leaf
    m = cfg.model.__class__(**{**cfg.model.__dict__, "vocab_size": 64})
    tree = jax.eval_shape(models.make_model(m).init, jax.random.key(0), models.dummy_input(m, 8))["params"]
    assert flops.param_counts(m)["total"] == sum(math.prod(x.value.shape) for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)))

    # trained by the one loop: it learns (the synthetic language's bigrams), its counts reach the summary
    summary = train(cfg, tmp_path / "run", devices=jax.devices()[:1])
    assert summary["params"]["total"] == flops.param_counts(m)["total"] == 64 * 32 + 2 * (32 * 32 + 32) + 32 * 64
    losses = [r["train_loss"] for r in RunDir(tmp_path / "run").metrics() if "train_loss" in r]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.3, losses
