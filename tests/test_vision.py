"""Image classification through the one train loop (lib/tasks/classify.py, lib/models/resnet.py, vit.py):
the run store's image keys and the fitter's D, eval metrics against a direct pass, batch-norm
statistics (global under sharding, checkpointed, running averages in eval), crash-and-resume
equality, LM states unchanged, and bad input named. Counts vs the tree and XLA: tests/test_families.py."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lib import models, tasks
from lib.config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig, resolve_model_input
from lib.config_rules import validate
from lib.data import make_source
from lib.store.runstore import RunDir
from lib.sweeps.executors import enable_compile_cache
from lib.train import loop
from lib.train.loop import train

# A tiny pre-activation ResNet with batch norm on 8 x 8 synthetic images (10 classes).
BN = RunConfig(
    name="v",
    model=ModelConfig(family="resnet", widths=(8, 16), depths=(1, 1), norm="batch"),
    data=DataConfig(source="synthetic_images", image_size=8, global_batch=16),
    optimizer=OptimizerConfig(lr=1e-2, warmup_steps=2),
    train=TrainConfig(steps=12, log_every=4, eval_every=6, eval_tokens=32, checkpoint_every=4),
    tracking=TrackingConfig(console=False),
)


def one_device():
    return jax.devices()[:1]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    enable_compile_cache(str(tmp_path_factory.mktemp("jax_cache")))  # runs of one shape compile once
    yield
    enable_compile_cache(None)


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    """(folder, summary) of BN trained uninterrupted: shared by the tests that read it."""
    root = tmp_path_factory.mktemp("bn")
    return root / "run", train(BN, root / "run", devices=one_device())


def _checkpoint(workdir, step):
    with ocp.CheckpointManager(workdir / "checkpoints") as mgr:
        return mgr.restore(step, args=ocp.args.StandardRestore())


def test_a_classifier_run_records_images_error_and_the_bayes_floor_and_the_fitter_reads_images(bn_run):
    workdir, s = bn_run
    source = make_source(BN.data)
    assert s["units"] == "images" and s["images"] == 12 * 16 and "tokens" not in s and s["eval_images"] == 32
    assert s["flops"]["value"] == pytest.approx(s["images"] * s["flops_per_image"])
    assert s["entropy_floor"] == source.entropy_floor and s["bayes_error"] == source.bayes_error
    assert 0.0 <= s["eval_error"] <= 1.0 and s["eval_loss"] > s["entropy_floor"]
    rows = RunDir(workdir).metrics()
    assert [r["step"] for r in rows] == [4, 6, 8, 12] and all(r["images"] == 16 * r["step"] for r in rows)
    assert all("eval_error" in r for r in rows if "eval_loss" in r) and "train_error" in rows[-1]
    # The checkpoint holds the running averages next to the parameters.
    ckpt = _checkpoint(workdir, 12)
    assert set(ckpt) == {"step", "params", "opt_state", "model_state"} and "batch_stats" in ckpt["model_state"]

    from analysis.data import load_run_store

    ds = load_run_store(workdir.parent)
    assert ds.points["D"].tolist() == [12 * 16] and "training images" in ds.conventions["D"]
    assert ds.points["loss"].tolist() == [s["eval_loss"]] and ds.entropy_floor == s["entropy_floor"]
    err = load_run_store(workdir.parent, metric="error")  # `scaling fit --metric error`: the top-1 error and its floor
    assert err.points["loss"].tolist() == [s["eval_error"]] and err.entropy_floor == s["bayes_error"]


def test_eval_scores_the_running_averages_and_equals_a_direct_pass(bn_run):
    """eval_loss / eval_error are the means over the eval images of the model in eval mode (batch
    norm's running averages), computed here directly from the final checkpoint."""
    workdir, s = bn_run
    ckpt = _checkpoint(workdir, 12)
    cfg = resolve_model_input(BN.with_overrides({"model.vocab_size": 10}))
    model = models.make_model(cfg.model)
    batch = make_source(cfg.data).eval_rows(0, 32)
    variables = {"params": ckpt["params"], **ckpt["model_state"]}
    logits = model.apply(variables, jnp.asarray(batch["image"]), train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    error = np.mean(np.argmax(logits, -1) != batch["label"])
    assert s["eval_loss"] == pytest.approx(float(loss), rel=1e-5) and s["eval_error"] == pytest.approx(float(error))
    with_batch_stats = model.apply(variables, jnp.asarray(batch["image"]), train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(logits, with_batch_stats, atol=1e-4)  # train mode would have scored something else


def test_batch_norm_statistics_are_global_under_8_devices_and_equal_one_device(tmp_path):
    """After one step the first norm's running mean is 0.1 x the mean over the WHOLE batch of the stem's
    output (computed here in numpy); 8 data-parallel devices (2 images each) give what 1 device gives."""
    cfg = BN.with_overrides({"train.steps": 3, "train.log_every": 1, "train.eval_every": 3, "train.checkpoint_every": 1,
                             "train.keep_checkpoints": 3, "optimizer.warmup_steps": 0})
    one = train(cfg, tmp_path / "one", devices=one_device())
    eight = train(cfg, tmp_path / "eight", devices=jax.devices()[:8])
    a, b = _checkpoint(tmp_path / "one", 3), _checkpoint(tmp_path / "eight", 3)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6), a["model_state"], b["model_state"])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6), a["params"], b["params"])
    assert eight["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)

    # Independent check of step 1 on 8 devices: the global batch's mean, not one device's 2 images.
    first = _checkpoint(tmp_path / "eight", 1)
    m = resolve_model_input(cfg.with_overrides({"model.vocab_size": 10})).model
    stem = nn.unbox(models.make_model(m).init(jax.random.key(cfg.train.seed), models.dummy_input(m, 0))["params"]["stem"])
    images = make_source(cfg.data).batch(0)["image"]
    out = jax.lax.conv_general_dilated(images, stem, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = 0.1 * np.asarray(out).mean(axis=(0, 1, 2))
    got = first["model_state"]["batch_stats"]["block_0"]["norm1"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    per_device = 0.1 * np.asarray(out)[:2].mean(axis=(0, 1, 2))
    assert not np.allclose(got, per_device, rtol=1e-2)


def test_a_crashed_run_resumes_from_its_checkpoint_bit_identically(bn_run, tmp_path, monkeypatch):
    """Crash at step 10 (the data source raises): the relaunch restores step 8's checkpoint --
    parameters, optimizer state and the batch-norm running averages -- and ends bit for bit where an
    uninterrupted run ends."""
    ref_dir = bn_run[0]

    real = loop.make_source

    class Crashing:
        def __init__(self, source):
            self.source = source

        def __getattr__(self, name):
            return getattr(self.source, name)

        def batch(self, step, *args):
            if step == 10:
                raise KeyboardInterrupt("killed")
            return self.source.batch(step, *args)

    monkeypatch.setattr(loop, "make_source", lambda *a, **k: Crashing(real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        train(BN, tmp_path / "cut", devices=one_device())
    assert RunDir(tmp_path / "cut").summary() is None
    monkeypatch.setattr(loop, "make_source", real)
    again = train(BN, tmp_path / "cut", devices=one_device())
    assert RunDir(tmp_path / "cut").metrics()[-1]["step"] == 12
    ref, cut = _checkpoint(ref_dir, 12), _checkpoint(tmp_path / "cut", 12)
    jax.tree.map(np.testing.assert_array_equal, cut, ref)
    assert [r["train_loss"] for r in RunDir(tmp_path / "cut").metrics()] == [r["train_loss"] for r in RunDir(ref_dir).metrics()]
    assert again["eval_loss"] == RunDir(ref_dir).summary()["eval_loss"]


def test_a_vit_pack_of_two_trains_each_run_as_alone(tmp_path):
    """Image batches (dicts) through a pack: each run's losses are the lone run's."""
    vit = BN.with_overrides({"model.family": "vit", "model.d_model": 16, "model.n_heads": 2, "model.n_layers": 1,
                             "model.patch_size": 4, "model.pool": "cls", "train.steps": 6, "train.eval_every": 6,
                             "train.log_every": 2})
    runs = [vit.with_overrides({"name": "a"}), vit.with_overrides({"name": "b", "optimizer.lr": 3e-3, "train.seed": 1})]
    packed = loop.train_pack(runs, [tmp_path / "pa", tmp_path / "pb"], devices=one_device())
    alone = train(runs[1], tmp_path / "b", devices=one_device())
    assert packed[1]["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-5)
    assert abs(packed[1]["eval_error"] - alone["eval_error"]) <= 1 / 32  # one of the 32 images at most (an argmax tie)
    assert packed[0]["eval_loss"] != packed[1]["eval_loss"]


def test_an_lm_state_flattens_as_before_so_old_checkpoints_restore():
    """No model_state (every LM family): the pytree is (step, params, opt_state), the layout of
    checkpoints written before model_state existed."""
    from lib.train.step import TrainState

    s = TrainState(step=jnp.zeros(()), params={"w": jnp.ones(2)}, opt_state=(jnp.zeros(2),))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(s)]
    assert paths == [".step", ".params['w']", ".opt_state[0]"]
    with_bn = TrainState(step=s.step, params=s.params, opt_state=s.opt_state, model_state={"batch_stats": {"m": jnp.ones(1)}})
    assert jax.tree.map(lambda x: x + 1, with_bn).model_state["batch_stats"]["m"][0] == 2
    assert tasks.task_of(RunConfig()) is tasks.lm and tasks.task_of(BN) is tasks.classify


@pytest.mark.parametrize("overrides, field, fix", [
    ({"model.family": "vit", "model.patch_size": 3}, "model.patch_size", "not divisible by patch_size 3"),
    ({"model.family": "transformer"}, "model.family", "use one of resnet, vit"),
    ({"data.source": "synthetic"}, "data.source", "--set data.source=synthetic_images"),
    ({"model.widths": [8, 12], "model.norm": "group"}, "model.norm_groups", "divisible by norm_groups=8"),
    ({"model.depths": [1]}, "model.depths", "one depth"),
    ({"model.norm": "layer"}, "model.norm", "choose one of group, batch"),
    ({"model.family": "vit", "model.pool": "max"}, "model.pool", "choose one of mean, cls"),
    ({"train.flops_convention": "6N"}, "train.flops_convention", "use chinchilla"),
    ({"model.image_size": 32}, "model.image_size", "leave model.image_size at 0"),
    ({"train.eval_tokens": 12}, "train.eval_tokens", "multiple of 8 images"),
])
def test_bad_image_input_gets_a_named_error(overrides, field, fix):
    cfg = BN.with_overrides(overrides)
    with pytest.raises(ConfigError) as e:
        validate(resolve_model_input(cfg), device_count=8)
    assert str(e.value).startswith(field + ":") and fix in str(e.value), str(e.value)


def test_image_fields_keep_old_run_ids():
    assert RunConfig().content_hash() == RunConfig().with_overrides({"model.widths": [], "model.patch_size": 4}).content_hash()
    assert BN.content_hash() != BN.with_overrides({"model.norm": "group"}).content_hash()


def test_batch_norm_parameters_and_convolutions_carry_logical_names():
    cfg = resolve_model_input(BN.with_overrides({"model.vocab_size": 10})).model
    boxed = jax.eval_shape(models.make_model(cfg).init, jax.random.key(0), models.dummy_input(cfg, 0))
    params = boxed["params"]
    assert params["block_1"]["conv1"].names == (None, None, "embed", "mlp")
    assert params["block_0"]["norm1"]["BatchNorm_0"]["scale"].names == ("norm",)
    assert not isinstance(boxed["batch_stats"]["block_0"]["norm1"]["BatchNorm_0"]["mean"], nn.Partitioned)  # replicated


@pytest.mark.parametrize("name", ["vision_quickstart", "cifar_gpu"])
def test_the_vision_experiments_expand_to_valid_runs_that_spend_their_budgets(name):
    """Checked by expansion (no data, no training): every planned run validates, counts D in images,
    and images x lib.flops' per-image FLOPs is its budget within 2%; each budget has 5 sizes."""
    from experiments.cli import load_experiment
    from lib import flops

    sweep = load_experiment(name).sweep()
    plan = sweep.plan()
    assert len(plan.runs) == 5 * len(sweep.budgets)
    for r in plan.runs:
        cfg = r.cfg
        validate(cfg, device_count=1)
        assert cfg.model.family == "resnet" and cfg.model.vocab_size == 10 and cfg.model.image_size == cfg.data.image_size
        images = cfg.train.steps * cfg.data.global_batch
        assert r.tokens == images  # the plan's D: images (one per row)
        realised = images * flops.flops_per_token(cfg.model, 1, "chinchilla")
        assert abs(realised / cfg.budget - 1) <= 0.02, (r.run_id, realised, cfg.budget)
    if name == "cifar_gpu":
        assert {r.cfg.model.compute_dtype for r in plan.runs} == {"bfloat16"}
        assert {(r.cfg.data.source, r.cfg.data.dataset) for r in plan.runs} == {("hf_images", "uoft-cs/cifar10")}


@pytest.mark.parametrize("family, extra", [
    ("vit", {"model.d_model": 16, "model.n_heads": 2, "model.n_layers": 1, "model.pool": "cls"}),
    ("resnet", {}),
])
def test_fsdp_and_tensor_sharding_on_8_devices_equals_one_device(family, extra):
    """Two train steps with parameters split over fsdp (4) and tensor (2) by their logical names, the
    batch over fsdp: the losses, metrics and the updated state (batch_stats included) equal one device's."""
    from lib.parallel import sharding
    from lib.train.step import build_steps

    def two_steps(cfg, devices):
        cfg = resolve_model_input(cfg.with_overrides({"model.vocab_size": 10}))
        mesh = sharding.make_mesh(cfg.mesh, devices)
        source = make_source(cfg.data)
        with sharding.activate(mesh):
            steps = build_steps(cfg, mesh)
            state, out = steps.init(jax.random.key(0)), []
            for i in range(2):
                state, metrics = steps.train_step(state, sharding.global_batch(source.batch(i), mesh), steps.horizon)
                out.append(jax.device_get(metrics))
            return out, jax.device_get(state), jax.tree.map(lambda x: x.sharding.spec, state.params)

    cfg = BN.with_overrides({"model.family": family, **extra})
    one, one_state, _ = two_steps(cfg, one_device())
    many, many_state, specs = two_steps(cfg.with_overrides({"mesh.preset": "fsdp_tp"}), jax.devices()[:8])
    split = {str(s) for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
    assert any("fsdp" in s for s in split) and any("tensor" in s for s in split), split  # really sharded
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), one, many)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), one_state, many_state)


def test_bfloat16_image_models_keep_float32_parameters_statistics_and_logits():
    for family in ("resnet", "vit"):
        cfg = resolve_model_input(BN.with_overrides({"model.family": family, "model.vocab_size": 10, "model.compute_dtype": "bfloat16",
                                                     "model.d_model": 16, "model.n_heads": 2})).model
        model = models.make_model(cfg)
        variables = jax.eval_shape(model.init, jax.random.key(0), models.dummy_input(cfg, 0))
        logits = jax.eval_shape(lambda v, x: model.apply(nn.unbox(v), x), variables, jnp.zeros((2, 8, 8, 3)))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables))) and logits.dtype == jnp.float32
        # the convolutions and matmuls run in bf16 (the checks above pass with compute_dtype ignored)
        from test_model import matmul_dtypes

        images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
        mm = matmul_dtypes(lambda v, x: model.apply(nn.unbox(v), x), variables, images)
        assert mm.count("bfloat16/bfloat16") > len(mm) / 2, (family, mm)
        ref = models.make_model(dataclasses.replace(cfg, compute_dtype="float32"))
        assert set(matmul_dtypes(lambda v, x: ref.apply(nn.unbox(v), x), variables, images)) == {"float32/float32"}, family


def test_scaling_train_trains_an_image_classifier_from_the_command_line(tmp_path):
    """`scaling train` on synthetic images: the done line reports D in images and the top-1 error."""
    import os
    import subprocess
    import sys

    sets = {"data.source": "synthetic_images", "data.image_size": 8, "data.global_batch": 16, "model.family": "resnet",
            "model.d_model": 8, "model.n_layers": 1, "train.steps": 6, "optimizer.warmup_steps": 1, "train.eval_tokens": 32}
    cmd = [sys.executable, "-m", "experiments.cli", "train", "--config", "tiny", "--workdir", str(tmp_path / "r"),
           *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    out = subprocess.run(cmd, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = RunDir(tmp_path / "r").summary()
    assert summary["units"] == "images" and summary["images"] == 6 * 16
    assert f"images {6 * 16:,}" in out.stdout and f"eval_error {summary['eval_error']:.4f}" in out.stdout


@pytest.mark.parametrize("units, floor_line", [("images", "Bayes cross-entropy of the images): 0.5003 nats/image"),
                                               ("tokens", "over a training window): 0.5003 nats/token")])
def test_the_report_states_the_floor_in_the_runs_units(units, floor_line):
    from analysis.report import markdown
    from test_verify import _record

    record = _record({}, {})
    record["entropy_floor"], record["source"]["units"] = 0.50029, units
    assert floor_line in markdown(record)
