"""What a kill or a damaged file leaves behind is named, kept and routed around: a run killed
between its final checkpoint and summary.json completes from the checkpoint without training; a
truncated, empty or garbage JSON record is moved aside (never deleted) and the run counts as
unfinished for `status`, the fit's reader and a relaunched sweep. Also: `status` on a file, the
processes executor's logs for a gs:// root, wandb's folder per run, the sweep bar in steps."""

import argparse
import shutil
import time

import jax
import pytest

from experiments import sweep_cmd
from experiments.workflow import status, sweep
from lib.config import ConfigError
from lib.store.runstore import RunDir, load_runs
from lib.sweeps.executors import DONE, SKIPPED, Outcome, Progress, run_local
from lib.sweeps.plans import Grid
from test_sweep_support import files_with_mtimes

STEPS = 20


def _config():
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig

    return RunConfig(  # conftest's tiny_config, shorter
        name="t",
        model=ModelConfig(d_model=32, n_layers=2, n_heads=4),
        data=DataConfig(seq_len=32, global_batch=16),
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5),
        train=TrainConfig(steps=STEPS, log_every=5, eval_every=10, eval_tokens=1024, checkpoint_every=10),
        tracking=TrackingConfig(console=False),
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(root, run id, plan, summary) of one finished tiny run, trained once for the module."""
    root = tmp_path_factory.mktemp("finished") / "root"
    plan = Grid(_config()).plan({}, root=str(root))
    report = run_local(plan, str(root), devices=jax.devices()[:1], pack=1)
    assert report.exit_code == 0, report.lines()
    run_id = plan.runs[0].run_id
    return root, run_id, plan, RunDir(root / run_id).summary()


def _copy(finished, tmp_path):
    root, run_id, plan, summary = finished
    dst = tmp_path / "root"
    shutil.copytree(root, dst)
    return dst, dst / run_id, plan, summary


def _relaunch(plan, root):
    return run_local(plan, str(root), devices=jax.devices()[:1], pack=1)


def test_a_kill_between_the_final_checkpoint_and_the_summary_completes_without_training(finished, tmp_path):
    root, run, plan, summary = _copy(finished, tmp_path)
    metrics, checkpoints = (run / "metrics.jsonl").read_bytes(), files_with_mtimes(run / "checkpoints")
    (run / "summary.json").unlink()
    RunDir(run).set_state("running")  # what the killed process left: its claim went with it

    rows = {r["run"]: r for r in status.status_rows(root)}
    assert rows[run.name]["state"] == "stale"  # never "running" once its trainer is gone

    report = _relaunch(plan, root)
    assert [o.result for o in report.outcomes] == [DONE], report.lines()
    again = RunDir(run).summary()
    assert again["eval_loss"] == summary["eval_loss"] and again["train_loss"] == summary["train_loss"]
    assert again["tokens"] == summary["tokens"] and again["flops"] == summary["flops"]
    assert (run / "metrics.jsonl").read_bytes() == metrics  # no step trained, no row added or dropped
    assert files_with_mtimes(run / "checkpoints") == checkpoints  # nor a checkpoint written
    assert RunDir(run).state() == "done"


@pytest.mark.parametrize("name,content", [("summary.json", b'{"eval_loss": 3.1, "par'), ("status.json", b""),
                                          ("config.json", b"\x00\x17garbage")])
def test_a_corrupt_record_is_named_kept_and_the_run_completed_from_its_checkpoint(finished, tmp_path, capsys, name, content):
    root, run, plan, summary = _copy(finished, tmp_path)
    metrics = (run / "metrics.jsonl").read_bytes()
    (run / name).write_bytes(content)

    sweep_cmd.cmd_status(argparse.Namespace(root=str(root)))  # status: no traceback, the file named
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if "corrupt" in x]
    assert str(run / name) in line and "moved aside" in line
    [aside] = list(run.glob(f"{name}.corrupt-*"))
    assert aside.read_bytes() == content  # kept, byte for byte
    assert not (run / name).exists()

    if name != "config.json":  # the fit's reader: the run is not finished, so it is not fitted
        [state] = load_runs(root)["state"]
        assert state != "done"

    report = _relaunch(plan, root)  # the sweep: completes it from the final checkpoint
    assert [o.result for o in report.outcomes] == [DONE], report.lines()
    assert RunDir(run).summary()["eval_loss"] == summary["eval_loss"]
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert RunDir(run).config() is not None and RunDir(run).state() == "done"


def test_status_of_a_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        sweep_cmd.cmd_status(argparse.Namespace(root=str(f)))
    with pytest.raises(ConfigError, match="does not exist"):
        sweep_cmd.cmd_status(argparse.Namespace(root=str(tmp_path / "nowhere")))


def test_worker_logs_of_a_gs_root_go_to_a_named_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = sweep.logs_dir("gs://bucket/sweeps/a")
    assert folder == str(tmp_path / "scaling-logs" / "bucket" / "sweeps" / "a")
    assert "gs:" not in folder
    assert sweep.logs_dir(str(tmp_path / "root")) == str(tmp_path / "root" / ".logs")


def test_the_sweep_bar_counts_steps_across_runs(tmp_path):
    plan = Grid(_config(), {"data.seed": [0, 1]}).plan({}, root=str(tmp_path))
    before, live = plan.runs
    progress = Progress(plan, enabled=True, poll_s=0.05)
    try:
        assert progress.bar.total == 2 * STEPS and progress.bar.unit == "step"
        progress.skipped([Outcome(before.run_id, SKIPPED)], plan)  # done before this sweep: its steps count, not in the rate
        assert progress.bar.n == STEPS and progress.bar.initial == STEPS
        (tmp_path / live.run_id).mkdir()  # the other run trains: rows logged up to step 15
        (tmp_path / live.run_id / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in (5, 10, 15)))
        progress.started(live, 1, [str(tmp_path / live.run_id)])
        deadline = time.time() + 10
        while progress.bar.n != STEPS + 15 and time.time() < deadline:
            time.sleep(0.02)
        assert progress.bar.n == STEPS + 15
        progress.finished(live, Outcome(live.run_id, DONE), trained=True)
        assert progress.bar.n == 2 * STEPS
        assert "remaining" in progress.bar.bar_format  # tqdm's ETA
    finally:
        progress.close()


def test_wandb_files_of_each_run_of_a_process_land_in_its_own_folder(tmp_path, monkeypatch):
    from lib.store.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)  # unset by the user: the library points them at each run's folder
    cfg = _config().with_overrides({"tracking.wandb": True, "tracking.project": "unit"})
    folders = [tmp_path / "runs" / f"r{s}" for s in (0, 1)]
    for folder in folders:  # one process, one run after another (as a sweep's packs make their trackers)
        tracker = Tracker(RunDir(folder), cfg, folder.name, is_writer=True)
        tracker.log({"step": 1, "train_loss": 1.0})
        tracker.finish({"eval_loss": 1.0})
    for folder in folders:
        offline = sorted(p.name for p in (folder / "wandb").rglob("offline-run-*") if p.is_dir())
        assert len(offline) == 1 and offline[0].endswith(f"-{folder.name}"), (folder, offline)  # its own run, only
