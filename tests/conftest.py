"""Test session setup, done before jax is imported anywhere.

- 8 forced CPU devices, so sharding tests run for real on CPU (never skipped); single-device
  tests pass `devices=jax.devices()[:1]`.
- Every cache a library might write (Hugging Face, wandb, matplotlib) points into a temp dir,
  so the suite writes nothing under ~.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = tempfile.mkdtemp(prefix="scaling-tests-")
for var, sub in {"HF_HOME": "hf", "HF_DATASETS_CACHE": "hf/datasets", "WANDB_DIR": "wandb",
                 "WANDB_CACHE_DIR": "wandb/cache", "WANDB_CONFIG_DIR": "wandb/config",
                 "WANDB_DATA_DIR": "wandb/data", "MPLCONFIGDIR": "mpl"}.items():
    os.environ.setdefault(var, os.path.join(_CACHE, sub))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture
def tiny_config():
    """A seconds-long run on the synthetic language (tests override what they need)."""
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig

    return RunConfig(
        name="t",
        model=ModelConfig(d_model=32, n_layers=2, n_heads=4),
        data=DataConfig(seq_len=32, global_batch=16),
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(steps=30, log_every=5, eval_every=15, eval_tokens=1024, checkpoint_every=10),
        tracking=TrackingConfig(console=False),
    )


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
    """One JAX compilation cache for the session: a program compiles once, not per test (the tests in
    this process through _session_compile_cache; CLI subprocesses and Ray tasks when handed it)."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(autouse=True)
def _session_compile_cache(compile_cache):
    """Every test compiles through the session's persistent cache: most tests train the same few tiny
    shapes, and a cache hit costs ~0.1 s where a compile costs seconds. A test (or a sweep it runs)
    may point jax elsewhere or turn the cache off; the next test gets the session's back."""
    import jax

    from lib.sweeps.executors import enable_compile_cache

    if jax.config.jax_compilation_cache_dir is None:
        enable_compile_cache(compile_cache)
    yield
    if jax.config.jax_compilation_cache_dir != compile_cache:
        enable_compile_cache(compile_cache)


def _once_per_session(tmp_path_factory, name: str, make):
    """make(folder) -> a JSON-able result, run once per test session and its result shared: with
    pytest-xdist (`-n 2` in CI) the workers share the base temp folder's parent and take a file
    lock, so the first worker to ask builds it and the others wait for it and read its result."""
    import contextlib
    import json

    base = tmp_path_factory.getbasetemp()
    lock = contextlib.nullcontext()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # filelock (a dev extra) only where workers share: a GPU box may lack it
        from filelock import FileLock

        base = base.parent
        lock = FileLock(str(base / name) + ".lock")
    folder = base / name
    with lock:
        done = base / f"{name}.json"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(make(folder)))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory, compile_cache):
    """(experiment file, root, the finished process) of `scaling run` on tests/test_run_command.py's
    tiny IsoFLOP sweep with --no-verify, trained once for the session (across xdist workers too):
    test_run_command reads it, tests/test_verify.py relaunches `scaling run` on a copy of the root for
    the check stage, tests/test_plan_cmd.py plans over it. Nothing may write into the root."""
    import pathlib
    import subprocess
    import sys

    from test_run_command import EXPERIMENT
    from test_sweep_support import clean_env

    def make(folder):
        exp = folder / "mini.py"
        exp.write_text(EXPERIMENT)
        root = folder / "root"
        proc = subprocess.run([sys.executable, "-m", "experiments.cli", "run", str(exp), "--root", str(root), "--progress", "off", "--no-verify"],
                              env=clean_env(folder, cache=compile_cache), capture_output=True, text=True, timeout=540)
        return {"exp": str(exp), "root": str(root), "args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    r = _once_per_session(tmp_path_factory, "mini_run", make)
    proc = subprocess.CompletedProcess(r["args"], r["returncode"], r["stdout"], r["stderr"])
    return pathlib.Path(r["exp"]), pathlib.Path(r["root"]), proc


@pytest.fixture(scope="session")
def reference_train_run(tmp_path_factory, compile_cache):
    """The folder of one uninterrupted `scaling train` (tests/test_sweep_support.py's TRAIN_SETS) in a
    fresh process, trained once for the session (across xdist workers too): the run that test_train's
    kill and test_gcs's gs:// runs must reproduce bit for bit. It compiles into compile_cache, which
    their launches read."""
    import pathlib
    import subprocess

    from test_sweep_support import train_cli

    def make(folder):
        workdir = folder / "r1"
        cmd, env = train_cli(workdir, compile_cache)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-5000:]
        return str(workdir)

    return pathlib.Path(_once_per_session(tmp_path_factory, "reference_train", make))
