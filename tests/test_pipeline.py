"""Pipeline parallelism (lib/parallel/pipeline.py) on 8 forced CPU devices: the schedule equals the
plain layer scan, training over S = 2 and 4 stages gives the one-device losses, a checkpoint written
under stages resumes without them, accumulation composes with it, and bad shapes fail by name."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lib.config import (ConfigError, DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig,
                        TrainConfig)
from lib.config_rules import validate
from lib.data import make_source, resolve_vocab
from lib.parallel import pipeline, sharding
from lib.store.runstore import RunDir
from lib.train.loop import train
from lib.train.step import build_steps

# float32 on CPU: only the order of sums differs from one device (microbatch gradients add up in
# the reverse of the schedule, psum over stages, sharded reductions). Seen: <= 3e-7 over 20 steps.
RTOL = 5e-6


def _config():
    return RunConfig(
        name="t",
        model=ModelConfig(d_model=32, n_layers=4, n_heads=4, scan_layers=True),
        data=DataConfig(seq_len=64, global_batch=16),  # 64: the causal attention runs in its blocks inside the schedule
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(steps=20, log_every=2, eval_every=20, eval_tokens=1024, checkpoint_every=10, keep_checkpoints=3),
        tracking=TrackingConfig(console=False),
    )


@pytest.fixture
def cfg():
    return _config()


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    """The reference: the same run on one device with no schedule (shared by the training tests)."""
    workdir = tmp_path_factory.mktemp("one")
    train(_config(), workdir, devices=jax.devices()[:1])
    return RunDir(workdir)


def _losses(run: RunDir):
    return [r["train_loss"] for r in run.metrics()]


# ---- the schedule alone -----------------------------------------------------------------------------
@pytest.mark.parametrize("stages,microbatches", [(1, 3), (2, 2), (2, 3), (4, 4), (4, 6)])
def test_the_schedule_equals_the_plain_layer_scan_forward_and_backward(stages, microbatches):
    mesh = sharding.make_mesh(MeshConfig(stage=stages, data=8 // stages, preset="dp"))
    L, B, D = 8, 12 * 2, 8  # rows: a multiple of every M here and of the data axis

    def layer(w_DD, x_BD):
        return jnp.tanh(x_BD @ w_DD) + x_BD

    def plain(ws, x):
        return jax.lax.scan(lambda h, w: (layer(w, h), None), x, ws)[0]

    ws = jax.random.normal(jax.random.key(0), (L, D, D)) / D**0.5
    x = jax.random.normal(jax.random.key(1), (B, D))
    loss = lambda f: lambda ws, x: jnp.sum(f(ws, x) ** 2)  # noqa: E731
    with sharding.activate(mesh):
        ws_sharded = jax.device_put(ws, NamedSharding(mesh, P("stage")))
        piped = jax.jit(jax.value_and_grad(loss(lambda w, h: pipeline.run(layer, w, h, microbatches)), argnums=(0, 1)))
        value, (g_ws, g_x) = piped(ws_sharded, x)
        hlo = jax.jit(lambda w, h: pipeline.run(layer, w, h, microbatches)).lower(ws_sharded, x).as_text()
    ref_value, (ref_ws, ref_x) = jax.value_and_grad(loss(plain), argnums=(0, 1))(ws, x)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for got, want in ((g_ws, ref_ws), (g_x, ref_x)):  # float32 sums in another order: 1e-6 of the largest entry
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert ("collective_permute" in hlo) == (stages > 1)  # activations really move stage to stage


def test_microbatch_rows_interleave_and_come_back():
    x = np.arange(12 * 3).reshape(12, 3)
    m = pipeline.to_microbatches(jnp.asarray(x), 4)
    assert m.shape == (4, 3, 3) and np.array_equal(m[1], x[1::4])  # microbatch 1: rows 1, 5, 9
    assert np.array_equal(pipeline.from_microbatches(m), x)


@pytest.mark.parametrize("stages,microbatches", [(1, 4), (2, 2), (2, 8), (4, 4), (4, 13)])
def test_bubble_fraction_counts_the_idle_ticks_of_the_schedule(stages, microbatches):
    """Stage s works on microbatch t - s at tick t when that exists; idle otherwise."""
    ticks = microbatches + stages - 1
    busy = sum(0 <= t - s < microbatches for s in range(stages) for t in range(ticks))
    assert pipeline.bubble_fraction(stages, microbatches) == pytest.approx(1 - busy / (stages * ticks))


# ---- training -----------------------------------------------------------------------------------------
def _check_pipelined(summary, run: RunDir, ref: RunDir, stages: int, microbatches: int):
    assert len(_losses(ref)) == 10 and _losses(ref)[-1] < _losses(ref)[0] - 0.5
    np.testing.assert_allclose(_losses(run), _losses(ref), rtol=RTOL)
    assert summary["eval_loss"] == pytest.approx(ref.summary()["eval_loss"], rel=RTOL)
    S, M = stages, microbatches
    assert summary["pipeline"] == {"schedule": "gpipe", "stages": S, "microbatches": M, "bubble_fraction": (S - 1) / (M + S - 1)}
    assert ref.summary()["pipeline"] == {"schedule": None, "stages": 1, "microbatches": 0, "bubble_fraction": 0.0}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("layout", [
    {"mesh.stage": 4, "mesh.data": 2, "train.microbatches": 4},
    {"mesh.stage": 2, "mesh.data": 2, "mesh.fsdp": 2, "train.microbatches": 2, "train.grad_accum": 2},  # with accumulation
], ids=["S4-data2-M4", "S2-data2-fsdp2-M2-accum2"])
def test_pipelined_training_gives_the_one_device_losses(cfg, one_device_losses, tmp_path, layout):
    piped = cfg.with_overrides(layout)
    assert piped.with_overrides({"train.grad_accum": 1}).content_hash() == cfg.content_hash()  # layout, not numbers
    summary = train(piped, tmp_path / "piped", devices=jax.devices())
    _check_pipelined(summary, RunDir(tmp_path / "piped"), one_device_losses, layout["mesh.stage"], layout["train.microbatches"])


@pytest.mark.timeout(600)
def test_two_stages_give_the_one_device_losses_and_their_checkpoint_resumes_on_one_device(cfg, one_device_losses, tmp_path):
    piped = cfg.with_overrides({"mesh.stage": 2, "mesh.data": 2, "mesh.fsdp": 2, "train.microbatches": 4})
    summary = train(piped, tmp_path / "run", devices=jax.devices())
    run = RunDir(tmp_path / "run")
    _check_pipelined(summary, run, one_device_losses, 2, 4)

    # What a kill right after step 10's checkpoint leaves: no later checkpoint, no summary.
    before = run.metrics()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "20")
    (tmp_path / "run" / "summary.json").unlink()
    run.set_state("interrupted", reason="test: cut after step 10")
    summary = train(cfg, tmp_path / "run", devices=jax.devices()[:1])  # stage 1, no schedule
    assert [r["step"] for r in run.metrics()] == [r["step"] for r in one_device_losses.metrics()]
    assert run.metrics()[:5] == before[:5]  # resumed at 10, not redone: rows 2..10 as the pipeline logged them (wall times too)
    np.testing.assert_allclose(_losses(run), _losses(one_device_losses), rtol=RTOL)
    assert summary["eval_loss"] == pytest.approx(one_device_losses.summary()["eval_loss"], rel=RTOL)
    assert summary["pipeline"]["stages"] == 1


def test_each_stage_holds_its_own_contiguous_layers(cfg):
    cfg = resolve_vocab(cfg.with_overrides({"mesh.stage": 4, "mesh.data": 2, "train.microbatches": 4}), make_source(cfg.data))
    mesh = sharding.make_mesh(cfg.mesh)
    assert mesh.axis_names == ("stage", "data", "fsdp", "expert", "tensor") and mesh.shape["stage"] == 4
    with sharding.activate(mesh):
        params = build_steps(cfg, mesh).init(jax.random.key(0)).params
    wi = params["layers"]["block"]["mlp"]["wi"]  # [L, D, F]
    assert wi.sharding.spec[0] == "stage" and params["embed"].sharding.spec == P("tensor", "fsdp")
    for shard in wi.addressable_shards:
        stage = int(np.argwhere(mesh.devices == shard.device)[0][0])
        assert shard.index[0] == slice(stage, stage + 1) and shard.data.shape[0] == 1  # 4 layers / 4 stages


# ---- validation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,field,fix", [
    ({"mesh.stage": 2, "mesh.data": 4}, "train.microbatches", "--set train.microbatches=8"),
    ({"mesh.stage": 4, "mesh.data": 2, "train.microbatches": 2}, "train.microbatches", "use >= 4"),
    ({"mesh.stage": 8, "train.microbatches": 8, "model.n_layers": 4}, "model.n_layers", "multiple of 8 layers"),
    ({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 2, "model.scan_layers": False}, "model.scan_layers", "scan_layers=true"),
    ({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 2, "model.family": "lstm", "model.scan_layers": False}, "mesh.stage", "mesh.stage=1"),
    ({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 2, "model.dropout": 0.1}, "model.dropout", "model.dropout=0"),
    ({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 3}, "train.microbatches", "divisor of 4"),
    ({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 4, "train.grad_accum": 2}, "train.microbatches", "divisor of 2"),
    ({"mesh.stage": 2, "mesh.data": 4, "train.microbatches": 4, "train.eval_tokens": 128}, "train.eval_tokens", "multiple of 256 tokens"),
    ({"mesh.stage": -1, "mesh.data": 1, "train.microbatches": 4}, "model.n_layers", "multiple of 8 layers"),  # -1 resolves to 8
    ({"train.microbatches": -1}, "train.microbatches", "must be >= 0"),
])
def test_pipeline_shapes_are_validated_with_their_field_and_fix(cfg, overrides, field, fix):
    with pytest.raises(ConfigError) as e:
        validate(cfg.with_overrides({"model.vocab_size": 64, **overrides}), device_count=8)
    assert str(e.value).startswith(field + ":") and fix in str(e.value)


def test_a_pipelined_run_refuses_to_train_in_a_pack(cfg, tmp_path):
    from lib.train.loop import train_pack

    piped = cfg.with_overrides({"mesh.stage": 2, "mesh.data": 2, "mesh.fsdp": 2, "train.microbatches": 4})
    with pytest.raises(ConfigError, match="train.microbatches: a pipelined run trains alone"):
        train_pack([piped, piped.with_overrides({"optimizer.lr": 1e-3})], [tmp_path / "a", tmp_path / "b"], devices=jax.devices())


def test_a_sweep_trains_pipelined_runs_one_at_a_time(cfg):
    from lib.sweeps import executors
    from lib.sweeps.plans import PlannedRun

    def planned(c, i):
        return PlannedRun(f"r{i}", c.with_overrides({"optimizer.lr": 1e-3 * (i + 1)}), params=0, tokens=0, flops=0.0)

    piped = cfg.with_overrides({"mesh.stage": 2, "mesh.data": 2, "mesh.fsdp": 2, "train.microbatches": 4})
    assert [len(p) for p in executors.make_packs([planned(cfg, i) for i in range(3)], 4)] == [3]  # without: one pack
    assert [len(p) for p in executors.make_packs([planned(piped, i) for i in range(3)], 4)] == [1, 1, 1]
