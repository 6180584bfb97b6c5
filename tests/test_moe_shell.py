"""moe as the transformer shell with a routed-expert block (lib/models/moe.py): it runs the pipeline
schedule (with its routing stats carried through it) and muP, as the dense model does. On 8
forced CPU devices (tests/conftest.py), like tests/test_pipeline.py."""

import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.config_rules import validate
from lib.config import ConfigError, DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
from lib.models import make_model
from lib.parallel import pipeline, sharding
from lib.store.runstore import RunDir
from lib.train.loop import train
from lib.train.optim import mup_labels

RTOL = 5e-6  # float32, only the order of sums differs (as tests/test_pipeline.py)
MOE = dict(family="moe", n_experts=4, top_k=2, capacity_factor=1.0)


def _model(**kw):
    return ModelConfig(**{**dict(d_model=32, n_layers=4, n_heads=4, vocab_size=64, scan_layers=True), **MOE, **kw})


# ---- pipeline stages ---------------------------------------------------------------------------------
def test_the_pipelined_moe_stack_gives_the_scanned_logits_and_per_microbatch_routing_stats():
    cfg, M = _model(n_layers=2), 2
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 64)
    params = nn.unbox(make_model(cfg).init(jax.random.key(0), tokens[:1])["params"])
    plain = jax.jit(lambda p, x: make_model(cfg).apply({"params": p}, x, mutable=["intermediates"]))
    logits, state = plain(params, tokens)
    # Independently: the plain model on each microbatch's rows (m, m+M, ...), its stats averaged.
    per_micro = [plain(params, tokens[m::M])[1]["intermediates"]["layers"]["block"]["moe"] for m in range(M)]
    mesh = sharding.make_mesh(MeshConfig(stage=2, data=1, expert=4, preset="dp"))
    with sharding.activate(mesh):
        piped = jax.jit(lambda p, x: make_model(cfg, layer_stack=pipeline.layer_stack(M)).apply({"params": p}, x, mutable=["intermediates"]))
        p_logits, p_state = piped(params, tokens)
    np.testing.assert_allclose(p_logits, logits, rtol=RTOL, atol=1e-6)
    sown = p_state["intermediates"]["layers"]["block"]["moe"]
    assert set(sown) == set(state["intermediates"]["layers"]["block"]["moe"]) == {"moe_aux_loss", "moe_z_loss", "moe_dropped_frac"}
    for name in sown:
        (values_L,) = sown[name]
        assert values_L.shape == (cfg.n_layers,)
        expected_L = np.mean([pm[name][0] for pm in per_micro], axis=0)
        np.testing.assert_allclose(values_L, expected_L, rtol=1e-5, atol=1e-7)
    # aux loss is a product of batch means: per-microbatch differs from the whole batch's (why the
    # training reference below accumulates over the same microbatches)
    assert not np.allclose(sown["moe_aux_loss"][0], state["intermediates"]["layers"]["block"]["moe"]["moe_aux_loss"][0], rtol=1e-6)


def _run(**model):
    return RunConfig(
        name="t", model=_model(vocab_size=0, **model), data=DataConfig(seq_len=16, global_batch=16),
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2),
        train=TrainConfig(steps=8, log_every=1, eval_every=8, eval_tokens=256, checkpoint_every=8, keep_checkpoints=1),
        tracking=TrackingConfig(console=False),
    )


@pytest.mark.timeout(300)
def test_moe_trains_over_two_stages_with_its_experts_sharded_as_it_does_without_them(tmp_path):
    """Stages 2 x expert 4, M = 2 microbatches against one device accumulating the same 2
    microbatches (grad_accum: the aux losses are per-microbatch means in both)."""
    cfg = _run()
    ref = train(cfg.with_overrides({"train.grad_accum": 2}), tmp_path / "ref", devices=jax.devices()[:1])
    piped = cfg.with_overrides({"mesh.stage": 2, "mesh.expert": 4, "mesh.data": 1, "train.microbatches": 2})
    summary = train(piped, tmp_path / "piped", devices=jax.devices())
    a, b = RunDir(tmp_path / "piped").metrics(), RunDir(tmp_path / "ref").metrics()
    assert len(a) == len(b) == 8 and b[-1]["train_loss"] < b[0]["train_loss"]
    for key in ("train_loss", "moe_aux_loss", "moe_z_loss", "moe_dropped_frac"):
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=RTOL, atol=1e-7, err_msg=key)
    assert summary["eval_loss"] == pytest.approx(ref["eval_loss"], rel=RTOL)
    assert summary["pipeline"]["stages"] == 2 and summary["pipeline"]["microbatches"] == 2


# ---- muP -------------------------------------------------------------------------------------------
def _mup(width=64, base=32, **kw):
    return RunConfig(model=_model(d_model=width, n_layers=2, parametrization="mup", base_width=base, tie_embeddings=False, **kw),
                     data=DataConfig(seq_len=16, global_batch=8))


def test_moe_experts_are_hidden_matrices_and_its_router_a_readout_under_mup():
    labels = mup_labels(_mup(mlp="swiglu"))["layers"]["block"]
    assert {k: labels["moe"][k] for k in ("wi", "wo", "wg", "router")} == {"wi": "hidden", "wo": "hidden", "wg": "hidden", "router": "vector"}
    assert labels["attn"]["qkv"] == "hidden" and labels["ln2"]["scale"] == "vector"
    model = make_model(_mup(width=128).model)
    wide = jax.jit(lambda k: nn.unbox(model.init(k, jnp.zeros((1, 16), jnp.int32))["params"]))(jax.random.key(0))["layers"]["block"]["moe"]
    assert float(jnp.std(wide["wi"])) == pytest.approx(0.02 * math.sqrt(32 / 128), rel=0.05)
    assert float(jnp.std(wide["router"])) == pytest.approx(0.02, rel=0.1)


def test_moe_under_mup_at_its_base_width_is_sp():
    mup = _mup(width=32)
    sp = mup.with_overrides({"model.parametrization": "sp", "model.base_width": 0})
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    outs = []
    for c in (sp, mup):
        model = make_model(c.model)
        variables = jax.jit(model.init)(jax.random.key(0), tokens)
        outs.append((variables, jax.jit(model.apply)(variables, tokens)))
    for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
        np.testing.assert_array_equal(a, b)
    # only attention's 1/K (not 1/sqrt K) differs at m = 1: the logits are close, not equal
    assert not np.array_equal(outs[0][1], outs[1][1]) and np.allclose(outs[0][1], outs[1][1], atol=0.5)


_spec = importlib.util.spec_from_file_location("mup_transfer", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "mup_transfer.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.timeout(300)
def test_moe_coordinate_check_flat_under_mup_growing_under_sp():
    """tests/test_mup.py's check on the moe family (router logits x 1/m, experts as hidden
    matrices): widths 32 and 256 after 4 Adam steps at lr 1e-2."""
    kw = dict(family="moe", n_experts=4, top_k=2, scan_layers=False, tie_embeddings=False)
    mup = {w: bench.coordinates("mup", w, steps=4, **kw) for w in (32, 256)}
    sp = {w: bench.coordinates("sp", w, steps=4, **kw) for w in (32, 256)}
    for k in mup[32]:
        ratio_mup, ratio_sp = mup[256][k] / mup[32][k], sp[256][k] / sp[32][k]
        assert ratio_mup < 1.6, (k, ratio_mup)
        if k != "logits":
            assert ratio_sp > 4, (k, ratio_sp)
    assert sp[256]["logits"] / sp[32]["logits"] > 1.5


def test_moe_pipeline_and_mup_pass_config_validation_and_recurrent_families_still_fail():
    ok = _run().with_overrides({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 2})
    validate(ok, 8)
    validate(_run(parametrization="mup", base_width=16).with_overrides({"optimizer.name": "adamw"}))
    lstm = RunConfig(model=ModelConfig(family="lstm", d_model=32, n_layers=2), data=DataConfig(seq_len=16, global_batch=16))
    with pytest.raises(ConfigError, match="mesh.stage"):
        validate(lstm.with_overrides({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 2}), 8)
    with pytest.raises(ConfigError, match="model.parametrization"):
        validate(lstm.with_overrides({"model.parametrization": "mup", "model.base_width": 16}))
