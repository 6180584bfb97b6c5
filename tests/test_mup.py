"""muP (model.parametrization = "mup"): the per-layer scales, a coordinate check and lr transfer.

The coordinate check and the transfer run small versions of benchmarks/mup_transfer.py (loaded
from its file): widths 32, 128, 512 for 4 steps; widths 32 and 256 with 5 lrs for 120 steps, the
lr grid vmapped into one program per width. The benchmark's full tables (widths 32..256, 9 lrs,
200 steps, SP beside muP) are what docs/design.md quotes.
"""

import functools
import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig
from lib.config_rules import validate
from lib.models.transformer import Transformer
from lib.train.optim import make_run_direction, mup_labels

_spec = importlib.util.spec_from_file_location("mup_transfer", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "mup_transfer.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _cfg(width=64, base=32, **model):
    return RunConfig(
        model=ModelConfig(d_model=width, n_layers=2, n_heads=4, vocab_size=64, parametrization="mup", base_width=base, **model),
        data=DataConfig(seq_len=16, global_batch=8),
    )


@functools.lru_cache(maxsize=None)
def _params(cfg):
    init = jax.jit(lambda key: Transformer(cfg.model).init(key, jnp.zeros((1, 16), jnp.int32))["params"])
    return nn.unbox(init(jax.random.key(0)))


def test_hidden_matrices_are_found_from_logical_axis_names():
    for tie in (True, False):
        labels = mup_labels(_cfg(tie_embeddings=tie))
        flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
        hidden = {k for k, v in flat.items() if v == "hidden"}
        assert hidden == {f"layer_{i}/{m}" for i in range(2) for m in ("attn/qkv", "attn/out", "mlp/wi", "mlp/wo")}
        assert flat["embed"] == "vector" and flat["ln_f/scale"] == "vector" and flat.get("head", "vector") == "vector"
    scanned = mup_labels(_cfg(scan_layers=True, mlp="swiglu"))["layers"]["block"]
    assert scanned["mlp"]["wg"] == "hidden" and scanned["ln1"]["scale"] == "vector"


def test_init_and_update_scales_follow_the_width():
    wide, base = _cfg(width=128), _cfg(width=32)
    pw, pb = _params(wide), _params(base)
    # Hidden matrices: std 0.02 * sqrt(base/width); embeddings and norms as in SP.
    assert float(jnp.std(pb["layer_0"]["mlp"]["wi"])) == pytest.approx(0.02, rel=0.05)
    assert float(jnp.std(pw["layer_0"]["mlp"]["wi"])) == pytest.approx(0.02 * math.sqrt(32 / 128), rel=0.05)
    assert float(jnp.std(pw["embed"])) == pytest.approx(1.0, rel=0.05)
    # Adam's per-layer rates: hidden updates x base/width (Adam's own update is ~1 per coordinate).
    direction = make_run_direction(wide.with_overrides({"optimizer.weight_decay": 0.0}))
    grads = jax.tree.map(jnp.ones_like, pw)
    updates, _ = jax.jit(direction.update)(grads, direction.init(pw), pw)
    assert float(jnp.abs(updates["layer_1"]["attn"]["qkv"]).max()) == pytest.approx(32 / 128, rel=1e-3)
    assert float(jnp.abs(updates["embed"]).max()) == pytest.approx(1.0, rel=1e-3)
    assert float(jnp.abs(updates["ln_f"]["scale"]).max()) == pytest.approx(1.0, rel=1e-3)


def test_mup_at_its_base_width_starts_where_sp_does():
    mup = _cfg(width=32)
    sp = mup.with_overrides({"model.parametrization": "sp", "model.base_width": 0})
    for a, b in zip(jax.tree.leaves(_params(sp)), jax.tree.leaves(_params(mup))):
        np.testing.assert_array_equal(a, b)


def test_coordinate_check_flat_under_mup_growing_under_sp():
    """Mean |x| of each layer's outputs after 4 Adam steps at lr 1e-2: flat across widths 32..512
    under muP, growing under SP (its two ends suffice there)."""
    mup = {w: bench.coordinates("mup", w, steps=4) for w in (32, 128, 512)}
    sp = {w: bench.coordinates("sp", w, steps=4) for w in (32, 512)}
    for k in mup[32]:
        sizes = [mup[w][k] for w in mup]
        if k != "logits":
            assert max(sizes) / min(sizes) < 1.6, (k, sizes)
            assert sp[512][k] / sp[32][k] > 8, (k, sp[32][k], sp[512][k])
    # Logits: muP's 1/m multiplier keeps them from growing (they shrink towards 0 at init); SP's grow.
    assert mup[512]["logits"] / mup[32]["logits"] < 1.5 and sp[512]["logits"] / sp[32]["logits"] > 1.5


@pytest.mark.timeout(300)
def test_best_lr_transfers_from_width_32_to_256_under_mup():
    lrs = [0.008, 0.016, 0.032, 0.064, 0.128]
    best = {}
    for w in (32, 256):
        losses = bench.lr_grid_losses("mup", w, lrs, steps=120, n_layers=1, batch=8)
        grid, vertex = bench.best_lr(lrs, losses)
        assert 0 < lrs.index(grid) < len(lrs) - 1, (w, losses)  # the optimum is inside the grid
        best[w] = (grid, vertex)
    assert abs(math.log2(best[256][0] / best[32][0])) <= 1, best  # within one grid step (factor 2)
    assert abs(math.log2(best[256][1] / best[32][1])) <= 1, best


@pytest.mark.parametrize(
    "model, match",
    [
        (dict(parametrization="mu-p"), "model.parametrization"),
        (dict(parametrization="mup", base_width=128), "base_width 128 is larger than the model"),
        (dict(parametrization="mup"), "model.base_width"),
        (dict(parametrization="mup", base_width=-1), "model.base_width"),
    ],
)
def test_bad_parametrization_is_a_named_config_error(model, match):
    with pytest.raises(ConfigError, match=match):
        validate(RunConfig(model=ModelConfig(d_model=64, n_heads=4, **model)))


def test_mup_needs_adam():
    with pytest.raises(ConfigError, match="adam"):
        validate(RunConfig(model=ModelConfig(parametrization="mup", base_width=32), optimizer=OptimizerConfig(name="sgd")))


def test_new_fields_leave_old_run_ids_alone():
    assert RunConfig().content_hash() == "8301c6"  # its hash before model.parametrization existed
    assert RunConfig().with_overrides({"model.parametrization": "mup", "model.base_width": 32}).content_hash() != "8301c6"
