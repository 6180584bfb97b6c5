"""Sweeps on a local Ray cluster (ray.init with 2 CPUs): same run store as the local executor,
and a task whose worker is killed mid-run is retried and resumes from its checkpoint."""

import os
import shutil
import signal
import tempfile
import textwrap
import threading
import time

import jax
import pytest
import ray

from experiments.sweep_cmd import load_sweep
from lib.sweeps.executors import run_local
from lib.sweeps.ray import run_ray
from lib.store.runstore import RunDir

EXPERIMENT = textwrap.dedent(
    """
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.sweeps.plans import Grid

    def sweep():
        base = RunConfig(
            name="ray",
            model=ModelConfig(d_model=32, n_layers=2, n_heads=4),
            data=DataConfig(seq_len=32, global_batch=16),
            optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5),
            train=TrainConfig(steps=300, log_every=20, eval_every=300, eval_tokens=512, checkpoint_every=20, keep_checkpoints=2),
        )
        return Grid(base, {"data.seed": [0, 1]})
    """
)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "ray_sweep.py"
    path.write_text(EXPERIMENT)
    return load_sweep(str(path)).plan({"tracking.console": False})


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}})
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_root(plan, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    report = run_local(plan, root, devices=jax.devices()[:1])
    assert report.exit_code == 0
    return root


def _eval_losses(root, plan):
    return {r.run_id: RunDir(os.path.join(root, r.run_id)).summary()["eval_loss"] for r in plan.runs}


@pytest.mark.timeout(600)
def test_a_sweep_through_ray_lands_the_same_run_store_as_the_local_executor(cluster, plan, local_root, tmp_path, compile_cache):
    report = run_ray(plan, tmp_path, retries=1, compile_cache=compile_cache)  # the session's: later tasks of this shape compile nothing
    assert report.exit_code == 0 and [o.result for o in report.outcomes] == ["done", "done"]
    for r in plan.runs:
        ray_run, local_run = RunDir(tmp_path / r.run_id), RunDir(local_root / r.run_id)
        assert ray_run.state() == "done" and ray_run.config() == local_run.config()
        assert [m["step"] for m in ray_run.metrics()] == [m["step"] for m in local_run.metrics()]
        assert [m["train_loss"] for m in ray_run.metrics()] == pytest.approx([m["train_loss"] for m in local_run.metrics()], rel=1e-6)
        assert ray_run.status()["pid"] != os.getpid()  # trained in a Ray worker, not here
    assert _eval_losses(tmp_path, plan) == pytest.approx(_eval_losses(local_root, plan), rel=1e-6)
    again = run_ray(plan, tmp_path, retries=1, compile_cache=compile_cache)  # relaunch: nothing to do
    assert [o.result for o in again.outcomes] == ["skipped", "skipped"]


@pytest.mark.timeout(600)
def test_a_task_killed_mid_run_is_retried_and_resumes(cluster, plan, local_root, tmp_path, compile_cache):
    first = plan.runs[0]
    result = {}
    thread = threading.Thread(target=lambda: result.update(report=run_ray(plan, tmp_path, retries=2, compile_cache=compile_cache)))
    thread.start()
    run, t0 = RunDir(tmp_path / first.run_id), time.time()
    while not ((tmp_path / first.run_id / "checkpoints" / "20").exists() and (run.status() or {}).get("pid")):
        assert time.time() - t0 < 300, "the task never reached its first checkpoint"
        time.sleep(0.02)
    assert run.state() == "running"
    os.kill(run.status()["pid"], signal.SIGKILL)  # the Ray worker process training this run
    thread.join(timeout=400)
    report = result["report"]
    assert [o.result for o in report.outcomes] == ["done", "done"], report.lines()
    assert run.status()["attempts"] == 2  # the killed attempt, then Ray's retry
    assert [m["step"] for m in run.metrics()] == list(range(20, 301, 20))  # resumed: no step twice
    assert _eval_losses(tmp_path, plan) == pytest.approx(_eval_losses(local_root, plan), rel=1e-6)


def test_per_run_resources_parse_from_the_command_line():
    from experiments.sweep_cmd import _parse_resources
    from lib.config import ConfigError

    assert _parse_resources(["GPU=1", "TPU=4"]) == {"CPU": 1.0, "GPU": 1.0, "TPU": 4.0}
    assert _parse_resources(["CPU=2"]) == {"CPU": 2.0}
    with pytest.raises(ConfigError, match="--resources expects NAME=AMOUNT"):
        _parse_resources(["GPU"])


@pytest.mark.timeout(600)
def test_cooldown_branches_wait_for_their_trunk_task_and_match_the_local_executor(cluster, tmp_path, compile_cache):
    """A trunk and its two branches through Ray: each branch's task depends on its trunk's, so every
    branch starts from the trunk's checkpoint, and the numbers equal the in-process executor's."""
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.sweeps.cooldowns import Cooldowns
    from lib.sweeps.plans import Schedule

    base = RunConfig(model=ModelConfig(n_heads=2), data=DataConfig(seq_len=16, global_batch=8), optimizer=OptimizerConfig(lr=1e-2),
                     train=TrainConfig(eval_tokens=128, keep_checkpoints=1))
    plan = Cooldowns([dict(d_model=16, n_layers=1)], tokens=[20 * 128, 32 * 128], decay_frac=0.25, base=base, name="raycd",
                     schedule=Schedule(warmup_frac=0.1, log_points=4, eval_points=1, checkpoints=2)).plan({"tracking.console": False})
    local = tmp_path / "local"
    assert run_local(plan, local, devices=jax.devices()[:1]).exit_code == 0
    report = run_ray(plan, tmp_path / "ray", retries=1, compile_cache=compile_cache)
    assert [o.result for o in report.outcomes] == ["done"] * 3, report.lines()
    for r in plan.runs[1:]:
        summary = RunDir(tmp_path / "ray" / r.run_id).summary()
        assert summary["trunk"] == plan.runs[0].run_id and summary["branch_restored"] is True
    assert _eval_losses(tmp_path / "ray", plan) == pytest.approx(_eval_losses(local, plan), rel=1e-6)
