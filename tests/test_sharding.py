"""Sharded training on 8 forced CPU devices equals one device; constraints and specs take effect."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lib.parallel import sharding
from lib.config import MeshConfig, ModelConfig
from lib.models.transformer import make_model
from lib.store.runstore import RunDir
from lib.train.loop import train


def test_the_suite_really_has_eight_devices():
    assert jax.device_count() == 8  # forced in conftest; sharding tests must never fall back to 1


@pytest.mark.parametrize("preset,shape", [("dp", (1, 8, 1, 1, 1)), ("fsdp", (1, 1, 8, 1, 1)), ("fsdp_tp", (1, 1, 4, 1, 2)),
                                          ("ep", (1, 1, 1, 8, 1)), ("fsdp_ep", (1, 1, 4, 2, 1))])
def test_presets_make_the_expected_mesh(preset, shape):
    mesh = sharding.make_mesh(MeshConfig(preset=preset))
    assert tuple(mesh.shape.values()) == shape and mesh.axis_names == ("stage", "data", "fsdp", "expert", "tensor")


def test_parameter_specs_follow_the_rules_table():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, tie_embeddings=False)
    mesh = sharding.make_mesh(MeshConfig(preset="fsdp_tp"))
    boxed = jax.eval_shape(make_model(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    specs = jax.tree.map(lambda s: s.spec, sharding.logical_shardings(boxed, mesh))
    assert specs["embed"] == P("tensor", "fsdp")
    assert specs["head"] == P("fsdp", "tensor")
    assert specs["layer_0"]["attn"]["qkv"] == P(None, "fsdp", "tensor", None)
    assert specs["layer_0"]["mlp"]["wi"] == P("fsdp", "tensor")
    assert specs["layer_0"]["ln1"]["scale"] == P(None)


def test_activation_constraints_take_effect_only_under_the_mesh_and_rules():
    """JAX_NOTES pitfall: without jax.set_mesh, nn.with_logical_constraint silently does nothing."""
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4)
    model = make_model(cfg)
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    tokens = jnp.zeros((8, 8), jnp.int32)
    mesh = sharding.make_mesh(MeshConfig(preset="fsdp_tp"))
    fwd = jax.jit(lambda p, t: model.apply({"params": p}, t))
    with sharding.activate(mesh):
        constrained = fwd.lower(params, tokens).as_text()
    unconstrained = jax.jit(lambda p, t: model.apply({"params": p}, t)).lower(params, tokens).as_text()
    assert constrained.count("sdy.sharding_constraint") >= 5
    # q/k/v (heads-major, [B, H, T, K] in the XLA attention path): batch over data+fsdp+expert, heads over tensor
    assert '[{"data", "fsdp", "expert"}, {"tensor"}, {}, {}]' in constrained
    assert "sharding_constraint" not in unconstrained


@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp"])
def test_sharded_training_gives_the_single_device_losses(tiny_config, tmp_path, preset):
    """8 devices vs 1: same init (threefry is partitionable), same batches; only the order of
    float32 reductions differs. Tolerance: 2e-5 relative on every logged loss over 20 AdamW steps.
    Sequences of 64, so the causal attention runs in its blocks (lib/models/layers.py) under the mesh."""
    cfg = tiny_config.with_overrides({"train.steps": 20, "train.log_every": 2, "train.eval_every": 20, "model.n_heads": 4, "data.seq_len": 64})
    train(cfg, tmp_path / "one", devices=jax.devices()[:1])
    train(cfg.with_overrides({"mesh.preset": preset}), tmp_path / "eight", devices=jax.devices())
    one, eight = RunDir(tmp_path / "one"), RunDir(tmp_path / "eight")
    l1 = [r["train_loss"] for r in one.metrics()]
    l8 = [r["train_loss"] for r in eight.metrics()]
    assert len(l1) == 10 and l1[-1] < l1[0] - 0.5
    np.testing.assert_allclose(l8, l1, rtol=2e-5)
    assert eight.summary()["eval_loss"] == pytest.approx(one.summary()["eval_loss"], rel=2e-5)
    assert eight.summary()["n_devices"] == 8
