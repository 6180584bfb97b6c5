"""Packs: K runs of one shape trained as one vmapped program, each into its own folder.

Every run of a pack must be the run it would be alone: its losses (within PACK_RTOL: the batched
kernels round differently from the lone ones), its folder (the same files and keys; only timings
differ), its own clipping, and its own fate when it diverges.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
from lib.store.runstore import RunDir
from lib.sweeps.executors import enable_compile_cache
from lib.train.loop import RunDiverged, train, train_pack
from test_sweep_support import files_with_mtimes

# Measured: a pack's losses are within ~1e-7 of the lone runs' after 20 steps (float32 on CPU).
PACK_RTOL = 1e-5
TIMINGS = {"step_time_s", "tokens_per_s", "flops_per_s", "mfu", "init_time_s", "compile_time_s", "train_time_s",
           "eval_time_s", "checkpoint_time_s"}

BASE = RunConfig(
    name="p",
    model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
    data=DataConfig(seq_len=16, global_batch=8),
    optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2),
    train=TrainConfig(steps=20, log_every=5, eval_every=10, eval_tokens=128, checkpoint_every=10),
    tracking=TrackingConfig(console=False),
)
# Different learning rates, warmups, init seeds and data seeds (two runs share data seed 0: one batch read).
RUNS = {
    "a": {"optimizer.lr": 3e-3, "train.seed": 0, "data.seed": 0},
    "b": {"optimizer.lr": 1e-2, "train.seed": 1, "data.seed": 0},
    "c": {"optimizer.lr": 3e-2, "train.seed": 2, "data.seed": 1, "optimizer.warmup_steps": 5},
    "d": {"optimizer.lr": 1e-3, "train.seed": 3, "data.seed": 2},
}


def cfg(name, **extra):
    return BASE.with_overrides({**RUNS.get(name, {}), **extra, "name": name})


def one_device():
    return jax.devices()[:1]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    enable_compile_cache(str(tmp_path_factory.mktemp("jax_cache")))  # lone runs of one lr compile once
    yield
    enable_compile_cache(None)


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Each run of RUNS trained by itself."""
    root = tmp_path_factory.mktemp("alone")
    for name in RUNS:
        train(cfg(name), root / name, devices=one_device())
    return root


def _losses(folder):
    return np.array([m["train_loss"] for m in RunDir(folder).metrics()])


def _without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


@pytest.mark.accelerator
@pytest.mark.parametrize("chunk", ["auto", None], ids=["cpu-default", "vmap"])
def test_a_pack_trains_every_run_as_it_would_alone(alone, tmp_path, chunk):
    """On CPU a pack computes its runs one by one inside its program (chunk 1); chunk None vmaps all of them."""
    results = train_pack([cfg(n) for n in RUNS], [tmp_path / n for n in RUNS], devices=one_device(), chunk=chunk)
    assert [r["run_id"] for r in results] == list(RUNS)
    for name in RUNS:
        packed, lone = RunDir(tmp_path / name), RunDir(alone / name)
        np.testing.assert_allclose(_losses(tmp_path / name), _losses(alone / name), rtol=PACK_RTOL)
        assert abs(packed.summary()["eval_loss"] / lone.summary()["eval_loss"] - 1) < PACK_RTOL
        # The same folder: files, config, state, metrics rows and summary keys; numbers apart from timings.
        assert sorted(os.listdir(tmp_path / name)) == sorted(os.listdir(alone / name))
        assert packed.config() == lone.config() and packed.state() == lone.state() == "done"
        rows, lone_rows = packed.metrics(), lone.metrics()
        assert [set(r) for r in rows] == [set(r) for r in lone_rows]
        for row, lone_row in zip(rows, lone_rows):
            for k in set(row) - TIMINGS:
                assert row[k] == pytest.approx(lone_row[k], rel=PACK_RTOL, abs=1e-9), (name, k)
        summary, lone_summary = packed.summary(), lone.summary()
        assert set(summary) == set(lone_summary)
        same = {k for k in summary if k not in TIMINGS | {"eval_loss", "train_loss"}}
        assert {k: summary[k] for k in same} == {k: lone_summary[k] for k in same}
        assert sorted(os.listdir(tmp_path / name / "checkpoints")) == sorted(os.listdir(alone / name / "checkpoints"))
        assert packed.status()["pack"] == len(RUNS)  # ops info: it trained in a pack of 4


@pytest.mark.parametrize("chunk", ["auto", None], ids=["cpu-default", "vmap"])
def test_a_diverging_run_fails_alone_and_the_others_finish_as_they_would_alone(alone, tmp_path, chunk):
    names = ["a", "x", "c"]
    cfgs = [cfg("a"), cfg("x", **{"optimizer.lr": 1e30, "train.seed": 7}), cfg("c")]
    results = train_pack(cfgs, [tmp_path / n for n in names], devices=one_device(), chunk=chunk)
    assert isinstance(results[1], RunDiverged)
    status = RunDir(tmp_path / "x").status()
    assert status["state"] == "failed" and status["diverged"] is True and "non-finite loss" in status["reason"]
    assert 1 <= status["step"] < 20 and status["reason"].endswith(f"at step {status['step']}")
    assert not (tmp_path / "x" / "summary.json").exists()
    assert max((m["step"] for m in RunDir(tmp_path / "x").metrics()), default=0) < 20  # it stopped early
    for name in ("a", "c"):
        assert RunDir(tmp_path / name).state() == "done"
        np.testing.assert_allclose(_losses(tmp_path / name), _losses(alone / name), rtol=PACK_RTOL)
    if chunk is None:
        return
    with pytest.raises(RunDiverged, match=r"non-finite loss .* at step \d+"):  # a lone run still raises
        train(cfgs[1], tmp_path / "x-alone", devices=one_device())


@pytest.mark.parametrize("chunk", [None, 1], ids=["vmap", "one-by-one"])
def test_clipping_and_norms_are_per_run(tmp_path, chunk):
    """Two runs, one step from one state: only the run whose gradient norm exceeds its clip norm is clipped,
    and each run's update is exactly what it would get alone (never clipped by the stack's norm)."""
    from lib.data import make_source, resolve_vocab
    from lib.parallel import sharding
    from lib.train.step import build_pack, build_steps

    clips = [1e-3, 1e3]  # the first run's gradients exceed its norm, the second's do not
    cfgs = [resolve_vocab(cfg("a", **{"optimizer.clip_norm": c, "optimizer.name": "sgd", "optimizer.lr": 1.0, "optimizer.warmup_steps": 0}),
                          make_source(BASE.data)) for c in clips]
    mesh = sharding.make_mesh(BASE.mesh, one_device())
    tokens = jnp.asarray(make_source(BASE.data).batch(0))
    with sharding.activate(mesh):
        pack = build_pack(cfgs, mesh, chunk=chunk)
        assert pack.traced == ("clip_norm",) and pack.chunk == chunk
        lone = [build_steps(c, mesh) for c in cfgs]
        start = lone[0].init(jax.random.key(0))
        before = jax.device_get(start.params)
        state, metrics = pack.train_step(pack.stack(start, start), jnp.array([True, True]), jnp.stack([tokens, tokens]), pack.hparams)
        after = jax.device_get(state.params)
        norm = float(metrics["grad_norm"][0])
        assert norm == pytest.approx(float(metrics["grad_norm"][1])) and clips[0] < norm < clips[1]
        for i, steps in enumerate(lone):
            alone, m = steps.train_step(steps.init(jax.random.key(0)), tokens, steps.horizon)
            assert float(m["grad_norm"]) == pytest.approx(float(metrics["grad_norm"][i]), rel=PACK_RTOL)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=PACK_RTOL, atol=1e-7), after, jax.device_get(alone.params))
    moved = [np.sqrt(sum(float(np.sum((a[i] - b) ** 2)) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))) for i in range(2)]
    lr = cfgs[0].optimizer.lr
    assert moved[0] == pytest.approx(lr * clips[0], rel=1e-3)  # clipped to its norm
    assert moved[1] == pytest.approx(lr * norm, rel=1e-3)  # untouched


@pytest.mark.parametrize("chunk, scan", [(None, True), ("auto", False)], ids=["vmap-scanned", "one-by-one"])
def test_runs_with_their_own_dropout_rates_and_seeds_pack_as_they_train_alone(tmp_path, chunk, scan):
    """model.dropout is traced per run (with the seed behind each run's masks): a pack of two rates
    trains each run as it trains alone, and a rate of 0 (no dropout) is another program."""
    from lib.train.step import pack_hparams, pack_key

    runs = {"lo": {"model.dropout": 0.1, "train.seed": 0}, "hi": {"model.dropout": 0.3, "train.seed": 1}}
    cfgs = [BASE.with_overrides({**extra, "name": n, "model.scan_layers": scan, "train.steps": 8, "train.eval_every": 8,
                                 "train.checkpoint_every": 8}) for n, extra in runs.items()]
    assert pack_key(cfgs[0]) == pack_key(cfgs[1]) != pack_key(cfgs[0].with_overrides({"model.dropout": 0.0}))
    traced, hp = pack_hparams(cfgs)
    assert set(traced) == {"dropout", "seed"} and hp["dropout"].tolist() == pytest.approx([0.1, 0.3])
    train_pack(cfgs, [tmp_path / "pack" / n for n in runs], devices=one_device(), chunk=chunk)
    for c, n in zip(cfgs, runs):
        train(c, tmp_path / "alone" / n, devices=one_device())
        np.testing.assert_allclose(_losses(tmp_path / "pack" / n), _losses(tmp_path / "alone" / n), rtol=PACK_RTOL)
    assert not np.allclose(_losses(tmp_path / "alone" / "lo"), _losses(tmp_path / "alone" / "hi"), rtol=1e-3)  # the rates matter


def test_a_finished_run_is_never_retrained_and_the_rest_pack_without_it(alone, tmp_path):
    import shutil

    shutil.copytree(alone / "a", tmp_path / "a")  # finished before this relaunch
    before = files_with_mtimes(tmp_path / "a")
    seen = []
    results = train_pack([cfg("a"), cfg("b"), cfg("c")], [tmp_path / n for n in "abc"], devices=one_device(),
                         on_done=lambda i, result: seen.append(i))
    assert files_with_mtimes(tmp_path / "a") == before and results[0] == RunDir(alone / "a").summary()
    assert sorted(seen) == [1, 2] and RunDir(tmp_path / "b").status()["pack"] == 2  # only the other two trained
    np.testing.assert_allclose(_losses(tmp_path / "b"), _losses(alone / "b"), rtol=PACK_RTOL)


def test_a_run_resumed_ahead_of_the_others_waits_for_them(alone, tmp_path):
    """Runs of a pack step in lockstep: one that resumes from a later checkpoint (killed between two runs'
    saves) holds still until the others reach it, so the pack is again the pack it was."""
    import shutil

    shutil.copytree(alone / "a", tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "20")  # as if killed after its step-10 checkpoint
    (tmp_path / "a" / "summary.json").unlink()
    RunDir(tmp_path / "a").set_state("running")
    train_pack([cfg("a"), cfg("b")], [tmp_path / "a", tmp_path / "b"], devices=one_device())
    assert [m["step"] for m in RunDir(tmp_path / "a").metrics()] == [5, 10, 15, 20]  # nothing twice
    for name in "ab":
        np.testing.assert_allclose(_losses(tmp_path / name), _losses(alone / name), rtol=PACK_RTOL)


def test_runs_of_different_lengths_leave_the_pack_as_they_finish(alone, tmp_path):
    results = train_pack([cfg("a", **{"train.steps": 30, "train.checkpoint_every": 15}), cfg("b")],
                         [tmp_path / "long", tmp_path / "b"], devices=one_device())
    assert results[0]["steps"] == 30 and results[1]["steps"] == 20
    assert [m["step"] for m in RunDir(tmp_path / "long").metrics()] == [5, 10, 15, 20, 25, 30]
    np.testing.assert_allclose(_losses(tmp_path / "b"), _losses(alone / "b"), rtol=PACK_RTOL)


def test_a_pack_refuses_runs_of_different_shapes(tmp_path):
    with pytest.raises(ConfigError, match="differ in what a pack shares"):
        train_pack([cfg("a"), cfg("b", **{"model.d_model": 32})], [tmp_path / "a", tmp_path / "b"], devices=one_device())


def test_pack_keys_group_what_one_program_can_train():
    from lib.train.step import pack_hparams, pack_key

    key = pack_key(cfg("a"))
    assert all(pack_key(cfg(n)) == key for n in RUNS)  # lr, warmup, seeds: per run
    assert pack_key(cfg("a", **{"train.steps": 40, "optimizer.b2": 0.99, "optimizer.clip_norm": 0.5})) == key
    for different in ({"model.d_model": 32}, {"data.global_batch": 16}, {"optimizer.name": "adam"},
                      {"optimizer.schedule": "linear"}, {"optimizer.clip_norm": 0.0}, {"train.grad_accum": 2}):
        assert pack_key(cfg("a", **different)) != key, different
    traced, hp = pack_hparams([cfg(n) for n in RUNS])
    assert traced == ("lr",) and list(hp["warmup_steps"]) == [2, 2, 5, 2] and list(hp["total_steps"]) == [20] * 4
    assert pack_hparams([cfg("a")])[0] == ()  # a pack of one traces nothing new: a lone run's program


def test_executors_group_runs_into_packs_that_fit(monkeypatch):
    from lib.sweeps import executors
    from lib.sweeps.plans import Grid

    plan = Grid(BASE, {"model.d_model": [16, 32], "train.seed": [0, 1, 2]}).plan()
    sizes = lambda packs: sorted(len(p) for p in packs)  # noqa: E731
    assert sizes(executors.make_packs(plan.runs, 1)) == [1] * 6
    assert sizes(executors.make_packs(plan.runs, 2)) == [1, 1, 2, 2]
    lengths = Grid(BASE, {"train.steps": [40, 30, 10, 12]}).plan()  # a pack's runs overlap for at least half its longest
    assert sorted([r.cfg.train.steps for r in p] for p in executors.make_packs(lengths.runs, 8)) == [[12, 10], [40, 30]]
    # The memory rule: K = budget // (bytes of one run's compiled step), at least 1, at most 32.
    budget = executors.device_memory_budget(jax.devices()[0])  # CPU: a quarter of the RAM, per device
    assert budget == executors.HOST_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / jax.local_device_count()
    monkeypatch.setattr(executors, "device_memory_budget", lambda device: 1e12)
    packs = executors.make_packs(plan.runs, "auto", one_device())
    assert sizes(packs) == [3, 3] and all(len({r.cfg.model.d_model for r in p}) == 1 for p in packs)
    assert executors.auto_pack_size(plan.runs[0].cfg, one_device()) == executors.MAX_PACK  # capped
    monkeypatch.setattr(executors, "device_memory_budget", lambda device: 1.0)
    assert executors.auto_pack_size(plan.runs[0].cfg, one_device()) == 1
    monkeypatch.setattr(executors, "device_memory_budget", lambda device: 2.5 * _step_bytes(plan.runs[0].cfg))
    assert executors.auto_pack_size(plan.runs[0].cfg, one_device()) == 2


def _step_bytes(c):
    from lib.data import make_source, resolve_vocab
    from lib.parallel import sharding
    from lib.train.step import step_memory_bytes

    c = resolve_vocab(c, make_source(c.data))
    mesh = sharding.make_mesh(c.mesh, one_device())
    with sharding.activate(mesh):
        return step_memory_bytes(c, mesh)


@pytest.mark.timeout(600)
def test_on_eight_devices_a_pack_is_spread_over_data_or_replicated_and_sharded(alone, tmp_path):
    """Spread: 8 runs, run i on device i (dp mesh, no collectives). Replicated: 2 runs, each sharded over
    fsdp=8 as it would be alone. Either way each run equals its lone single-device run."""
    from lib.parallel import sharding
    from lib.train.step import build_pack

    devices = jax.devices()
    assert len(devices) == 8
    spread = [cfg("a" if i == 0 else "b" if i == 1 else "z", **({} if i < 2 else {"train.seed": 10 + i})) for i in range(8)]
    train_pack(spread, [tmp_path / f"s{i}" for i in range(8)], devices=devices)
    for i, name in enumerate("ab"):
        np.testing.assert_allclose(_losses(tmp_path / f"s{i}"), _losses(alone / name), rtol=PACK_RTOL)
    fsdp = [c.with_overrides({"mesh.preset": "fsdp"}) for c in (cfg("a"), cfg("b"))]
    train_pack(fsdp, [tmp_path / "fa", tmp_path / "fb"], devices=devices)
    for name in "ab":
        np.testing.assert_allclose(_losses(tmp_path / f"f{name}"), _losses(alone / name), rtol=1e-4)  # sharded reductions

    from lib.data import make_source, resolve_vocab
    from lib.train.step import build_steps

    resolved = [resolve_vocab(c, make_source(c.data)) for c in spread]
    mesh = sharding.make_mesh(BASE.mesh, devices)
    with sharding.activate(mesh):
        pack = build_pack(resolved, mesh, spread=True)
        state = pack.stack(*[build_steps(resolved[0], mesh).init(jax.random.key(0))] * 8)
        leaf = jax.tree.leaves(state.params)[0]
        assert leaf.sharding.spec[0] == "data" and len(leaf.addressable_shards) == 8
        assert all(s.data.shape[0] == 1 for s in leaf.addressable_shards)  # one whole run per device
        replicated = build_pack([resolve_vocab(c, make_source(c.data)) for c in fsdp], sharding.make_mesh(fsdp[0].mesh, devices))
        assert replicated.spread is False


def test_the_sweep_command_packs_and_reports_runs(tmp_path, capsys):
    from experiments.workflow.experiment import load_sweep
    from experiments.workflow.options import SweepOptions
    from experiments.workflow.sweep import run_sweep
    from test_sweep_support import write_experiment

    sweep = load_sweep(str(write_experiment(tmp_path, steps=20, checkpoint_every=20, axes='{"data.seed": [0, 1, 2], "optimizer.lr": [0.003, 1e30]}')))
    report = run_sweep(sweep, tmp_path / "root", SweepOptions(progress="off", compile_cache="off", pack="6"))
    out = capsys.readouterr().out
    assert report.exit_code == 1 and sorted(o.result for o in report.outcomes) == ["done"] * 3 + ["failed"] * 3
    assert all(RunDir(tmp_path / "root" / o.run_id).status()["pack"] == 6 for o in report.outcomes)
    assert all(f"{o.run_id} {o.result}" in out for o in report.outcomes)  # one line per run, not per pack
    again = run_sweep(sweep, tmp_path / "root", SweepOptions(progress="off", compile_cache="off", pack="1"))
    assert sorted(o.result for o in again.outcomes) == ["failed"] * 3 + ["skipped"] * 3


# ---- kill -9 and relaunch, in subprocesses ------------------------------------------------------
@pytest.mark.timeout(600)
def test_sigkill_mid_pack_then_relaunch_is_bit_identical_to_an_uninterrupted_pack(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import orbax.checkpoint as ocp

    from test_sweep_support import clean_env, write_experiment

    env = clean_env(tmp_path)
    exp = write_experiment(tmp_path, steps=300, checkpoint_every=20, axes='{"data.seed": [0, 1], "optimizer.lr": [0.003, 0.01]}')
    cmd = [sys.executable, "-m", "experiments.cli", "sweep", str(exp), "--progress", "off", "--pack", "4",
           "--compile-cache", str(tmp_path / "cache")]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ref = subprocess.run([*cmd, "--root", str(tmp_path / "ref")], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    ids = sorted(p.name for p in (tmp_path / "ref").iterdir() if (p / "config.json").exists())
    assert len(ids) == 4

    cut = tmp_path / "cut"
    proc = subprocess.Popen([*cmd, "--root", str(cut)], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not all((cut / r / "checkpoints" / "20").exists() for r in ids):  # every run of the pack checkpointed
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert all(RunDir(cut / r).state() == "running" for r in ids)  # really cut mid-pack
    assert all(max(m["step"] for m in RunDir(cut / r).metrics()) < 300 for r in ids)

    out = subprocess.run([*cmd, "--root", str(cut), "--run-logs"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(f"[{r}] resumed from checkpoint at step" in out.stdout for r in ids)
    for r in ids:
        a, b = RunDir(tmp_path / "ref" / r), RunDir(cut / r)
        assert b.state() == "done" and [m["step"] for m in b.metrics()] == [m["step"] for m in a.metrics()]
        assert [m["train_loss"] for m in b.metrics()] == [m["train_loss"] for m in a.metrics()]
        assert b.summary()["eval_loss"] == a.summary()["eval_loss"]
        with ocp.CheckpointManager(tmp_path / "ref" / r / "checkpoints") as m1, ocp.CheckpointManager(cut / r / "checkpoints") as m2:
            jax.tree.map(np.testing.assert_array_equal, m1.restore(300, args=ocp.args.StandardRestore())["params"],
                         m2.restore(300, args=ocp.args.StandardRestore())["params"])
    assert json.loads((cut / ids[0] / "status.json").read_text())["attempts"] == 2
