"""The train loop: run store contents, learning, relaunch, divergence, kill-and-resume, SIGTERM."""

import json
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lib.data.synthetic import PhraseLanguage
from lib.train.optim import make_schedule
from lib.store.runstore import RunDir
from lib.train.loop import RunDiverged, train
from test_sweep_support import TRAIN_EVERY, TRAIN_STEPS, train_cli

def one_device():
    return jax.devices()[:1]


METRIC_FIELDS = {"step", "tokens", "flops", "train_loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "mfu"}


def test_a_tiny_run_writes_the_run_store_and_learns(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides(
        {"optimizer.lr": 1e-2, "train.steps": 200, "train.eval_every": 100, "train.checkpoint_every": 100}
    )
    summary = train(cfg, tmp_path / "run", devices=one_device())
    run = RunDir(tmp_path / "run")
    assert run.state() == "done"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["vocab_size"] == 64

    rows = run.metrics()
    assert [r["step"] for r in rows] == list(range(5, 201, 5))
    assert all(METRIC_FIELDS <= set(r) for r in rows)
    assert [r["step"] for r in rows if r.get("eval_loss") is not None] == [100, 200]
    assert rows[-1]["tokens"] == 200 * 16 * 32 and rows[-1]["mfu"] is None  # CPU: no MFU
    assert rows[-1]["flops"] == pytest.approx(rows[-1]["tokens"] * summary["flops_per_token"])

    on_disk = run.summary()
    assert on_disk["eval_loss"] == pytest.approx(summary["eval_loss"])
    assert set(on_disk["params"]) == {"total", "embedding", "non_embedding", "active"}  # active: per token (moe < total)
    assert on_disk["flops"]["convention"] == "chinchilla" and on_disk["tokens"] == 200 * 16 * 32
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [100, 200]

    # The logged lr is the schedule at the update that step applied (0-based index step - 1).
    schedule = make_schedule(cfg.optimizer, cfg.train.steps)
    np.testing.assert_allclose([r["lr"] for r in rows], [float(schedule(r["step"] - 1)) for r in rows], rtol=1e-6)
    assert set(on_disk) >= {"init_time_s", "compile_time_s", "train_time_s", "eval_time_s", "checkpoint_time_s"}

    # Above the exact floor, well below what a context-free (unigram) model can do.
    lang = PhraseLanguage(cfg.data)
    assert on_disk["entropy_floor"] == pytest.approx(lang.entropy_floor)  # the window floor at seq_len 32
    assert on_disk["entropy_rate"] == pytest.approx(lang.entropy_rate) and lang.entropy_rate < lang.entropy_floor
    assert on_disk["eval_tokens"] == cfg.train.eval_tokens == 1024
    assert lang.entropy_floor < summary["eval_loss"] < lang.unigram_entropy() - 1.0
    # The language's theory beside the floor: its exponents, and the never-seen-phrase margin at this D,
    # which the loss respects (it is a lower bound on loss - floor).
    theory = on_disk["theory"]
    assert theory == pytest.approx({**lang.theory(), "never_seen_bound": lang.never_seen_bound(200 * 16 * 32)})
    assert summary["eval_loss"] - lang.entropy_floor > theory["never_seen_bound"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 1.0


def test_runs_that_differ_only_in_batch_evaluate_the_very_same_tokens(tiny_config):
    """One set of parameters scored under batch 16, 8 and 12 (chunks of 16, 8, gcd(32, 12) = 4 rows):
    the same 32 eval rows each time, and the same loss as one direct pass over those rows."""
    import jax.numpy as jnp

    from lib.data import make_source, resolve_vocab
    from lib.models.transformer import make_model
    from lib.parallel import sharding
    from lib.train.loop import make_evaluate
    from lib.train.step import build_steps, lm_loss

    class Spy:
        def __init__(self, source):
            self.source, self.rows = source, []

        def eval_rows(self, first, n, process_index=0, process_count=1):
            self.rows += range(first, first + n)
            return self.source.eval_rows(first, n, process_index, process_count)

    mesh = sharding.make_mesh(tiny_config.mesh, one_device())
    losses, state = {}, None
    with sharding.activate(mesh):
        for batch in (16, 8, 12):
            cfg = tiny_config.with_overrides({"data.global_batch": batch})
            source = Spy(make_source(cfg.data))
            cfg = resolve_vocab(cfg, source.source)
            steps = build_steps(cfg, mesh)
            state = steps.init(jax.random.key(0)) if state is None else state
            evaluate, eval_tokens = make_evaluate(cfg, steps, source, mesh)
            losses[batch] = evaluate(state)["eval_loss"]
            assert source.rows == list(range(32)) and eval_tokens == 32 * 32 == cfg.train.eval_tokens
    rows = PhraseLanguage(cfg.data).eval_rows(0, 32)
    direct = float(lm_loss(jax.device_get(state.params), make_model(cfg.model), jnp.asarray(rows)))
    np.testing.assert_allclose(list(losses.values()), direct, rtol=2e-6)


def test_runs_of_different_lengths_share_one_compiled_step(tiny_config):
    """Length and warmup are traced inputs, so a sweep compiles once per shape, not once per run."""
    from lib.parallel import sharding
    from lib.data import make_source, resolve_vocab
    from lib.train.step import build_steps

    def lowered(steps, warmup, d_model=32):
        cfg = tiny_config.with_overrides({"train.steps": steps, "optimizer.warmup_steps": warmup, "model.d_model": d_model})
        cfg = resolve_vocab(cfg, make_source(cfg.data))
        mesh = sharding.make_mesh(cfg.mesh, one_device())
        with sharding.activate(mesh):
            s = build_steps(cfg, mesh)
            batch = jax.ShapeDtypeStruct((16, 33), np.int32, sharding=sharding.batch_sharding(mesh))
            return s.train_step.lower(s.abstract_state, batch, s.horizon).as_text()

    assert lowered(50, 5) == lowered(800, 40)
    assert lowered(50, 5) != lowered(50, 5, d_model=64)  # a different shape is a different program


def test_a_later_run_of_the_same_program_reuses_it_and_trains_bit_for_bit(tiny_config, tmp_path):
    """A sweep's runs of one program (they differ in name, length, warmup, data seed) share the
    jitted steps and compiled train step kept in the process: the second run adds no program, and
    its numbers equal those of the same run built from scratch. Another lr is another train step,
    with the same init and eval, and the same numbers as when built from scratch."""
    from lib.train import step as step_lib

    short = {"train.steps": 10, "train.log_every": 5, "train.eval_every": 5, "train.checkpoint_every": 10}
    a = tiny_config.with_overrides({**short, "name": "a", "optimizer.warmup_steps": 2})
    b = tiny_config.with_overrides({**short, "name": "b", "train.steps": 12, "data.seed": 1})
    assert step_lib.program_key(a) == step_lib.program_key(b)
    assert step_lib.program_key(b) != step_lib.program_key(b.with_overrides({"optimizer.lr": 1e-2}))  # a lone run's constant
    train(a, tmp_path / "a", devices=one_device())
    programs = dict(step_lib._PROGRAMS)
    train(b, tmp_path / "b", devices=one_device())
    assert all(step_lib._PROGRAMS[k] is v for k, v in programs.items()) and len(step_lib._PROGRAMS) == len(programs)
    step_lib._PROGRAMS.clear()  # the same run again, traced and compiled afresh
    train(b, tmp_path / "b_fresh", devices=one_device())
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s")) and k != "mfu"} for r in rows]  # noqa: E731
    rows = strip(RunDir(tmp_path / "b").metrics())
    assert rows == strip(RunDir(tmp_path / "b_fresh").metrics()) and [r["step"] for r in rows if "eval_loss" in r] == [5, 10, 12]

    # another lr (an lr grid's edge extension) is another train step, but the same init and eval
    c = b.with_overrides({"name": "c", "optimizer.lr": b.optimizer.lr / 4})
    train(c, tmp_path / "c", devices=one_device())
    kinds = [k[0] for k in step_lib._PROGRAMS]
    steps_b, steps_c = [v for k, v in step_lib._PROGRAMS.items() if k[0] == "steps"]
    assert kinds.count("state") == 1 and kinds.count("steps") == 2
    assert steps_b.init is steps_c.init and steps_b.eval_step is steps_c.eval_step and steps_b.train_step is not steps_c.train_step
    step_lib._PROGRAMS.clear()
    train(c, tmp_path / "c_fresh", devices=one_device())
    assert strip(RunDir(tmp_path / "c").metrics()) == strip(RunDir(tmp_path / "c_fresh").metrics())


def test_relaunching_a_finished_run_does_nothing(tiny_config, tmp_path, capsys):
    cfg = tiny_config.with_overrides({"train.steps": 10, "tracking.console": True})
    first = train(cfg, tmp_path / "run", devices=one_device())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir() if p.is_file()}
    capsys.readouterr()
    again = train(cfg, tmp_path / "run", devices=one_device())
    assert again == json.loads(json.dumps(first))
    assert "already finished" in capsys.readouterr().out
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir() if p.is_file()}


def test_a_relative_workdir_works(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(tiny_config.with_overrides({"train.steps": 8}), "runs/rel", devices=one_device())
    assert RunDir(tmp_path / "runs" / "rel").state() == "done"
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "8").is_dir()


def test_a_run_killed_before_its_first_checkpoint_restarts_with_a_clean_log(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides({"train.steps": 10, "train.checkpoint_every": 10})
    run = RunDir(tmp_path / "run")
    run.write_config(cfg.with_overrides({"model.vocab_size": 64}).to_dict())
    run.set_state("running")
    run.append_metrics([{"step": 5, "train_loss": 99.0}])  # logged, then killed before step 10's checkpoint
    train(cfg, tmp_path / "run", devices=one_device())
    rows = run.metrics()
    assert [r["step"] for r in rows] == [5, 10] and rows[0]["train_loss"] != 99.0


def test_a_workdir_refuses_a_different_config(tiny_config, tmp_path):
    from lib.config import ConfigError

    train(tiny_config.with_overrides({"train.steps": 8}), tmp_path / "run", devices=one_device())
    with pytest.raises(ConfigError, match=r"different config \(model.d_model: 32 -> 64"):
        train(tiny_config.with_overrides({"train.steps": 8, "model.d_model": 64}), tmp_path / "run", devices=one_device())


def test_a_diverging_run_stops_early_and_is_marked_failed(tiny_config, tmp_path):
    cfg = tiny_config.with_overrides(
        {"optimizer.name": "sgd", "optimizer.lr": 1e12, "optimizer.clip_norm": 0.0, "optimizer.warmup_steps": 0, "train.steps": 50}
    )
    with pytest.raises(RunDiverged, match=r"non-finite loss .* at step \d+"):
        train(cfg, tmp_path / "run", devices=one_device())
    status = RunDir(tmp_path / "run").status()
    assert status["state"] == "failed" and "non-finite loss" in status["reason"]
    step = int(status["reason"].rsplit("step ", 1)[1])
    assert step < 50 and not (tmp_path / "run" / "summary.json").exists()


def test_gradient_accumulation_matches_the_full_batch(tiny_config, tmp_path):
    """Same rows, same mean loss: two microbatches give the full-batch update (float32 rounding aside)."""
    base = tiny_config.with_overrides({"train.steps": 10, "train.log_every": 1, "train.eval_every": 10})
    train(base, tmp_path / "a", devices=one_device())
    train(base.with_overrides({"train.grad_accum": 2}), tmp_path / "b", devices=one_device())
    la = [r["train_loss"] for r in RunDir(tmp_path / "a").metrics()]
    lb = [r["train_loss"] for r in RunDir(tmp_path / "b").metrics()]
    np.testing.assert_allclose(la, lb, rtol=2e-5)
    assert la[0] != la[-1]


# ---- kill and resume, in subprocesses -------------------------------------------------------
# `scaling train` of test_sweep_support's TRAIN_SETS (200 steps, a checkpoint every 50), compiled once per
# session into compile_cache; the uninterrupted run is conftest's reference_train_run.


def _final_params(workdir, step):
    with ocp.CheckpointManager(workdir / "checkpoints") as mgr:
        return mgr.restore(step, args=ocp.args.StandardRestore())["params"]


def _wait_for_checkpoint(workdir, proc, step, timeout=240):
    t0 = time.time()
    while not (workdir / "checkpoints" / str(step)).exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process exited early"
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.accelerator
@pytest.mark.timeout(600)
def test_sigkill_after_a_checkpoint_then_relaunch_equals_an_uninterrupted_run(tmp_path, reference_train_run, compile_cache):
    cmd, env = train_cli(tmp_path / "cut", compile_cache)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(tmp_path / "cut", proc, TRAIN_EVERY)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cut = RunDir(tmp_path / "cut")
    assert cut.state() == "running" and cut.summary() is None  # really cut mid-run
    logged_before = max(r["step"] for r in cut.metrics())
    assert logged_before < TRAIN_STEPS

    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300)
    assert "resumed from checkpoint" in out.stdout
    ref, cut = RunDir(reference_train_run), RunDir(tmp_path / "cut")
    assert cut.state() == "done"
    # Same logged history (no duplicated steps after the resume) and the same final numbers.
    ref_rows, cut_rows = ref.metrics(), cut.metrics()
    assert [r["step"] for r in cut_rows] == [r["step"] for r in ref_rows]
    assert [r["train_loss"] for r in cut_rows] == [r["train_loss"] for r in ref_rows]
    assert cut.summary()["eval_loss"] == ref.summary()["eval_loss"]
    jax.tree.map(np.testing.assert_array_equal, _final_params(tmp_path / "cut", TRAIN_STEPS), _final_params(reference_train_run, TRAIN_STEPS))


@pytest.mark.timeout(600)
def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(tmp_path, compile_cache):
    cmd, env = train_cli(tmp_path / "run", compile_cache)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(tmp_path / "run", proc, TRAIN_EVERY)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    status = RunDir(tmp_path / "run").status()
    assert status["state"] == "interrupted" and "SIGTERM" in status["reason"]
    stopped_at = int(status["reason"].split("step ")[1].split()[0])
    assert (tmp_path / "run" / "checkpoints" / str(stopped_at)).exists()  # checkpointed where it stopped
    assert stopped_at < TRAIN_STEPS
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    assert RunDir(tmp_path / "run").state() == "done"
