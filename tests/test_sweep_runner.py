"""The in-process sweep runner: relaunch is a no-op, divergence and failures never stop a sweep,
`--worker i/n` shares add up to the sweep."""

import json
import math

import pytest

import lib.train.loop
from experiments.workflow.experiment import load_sweep
from experiments.workflow.options import SweepOptions
from experiments.workflow.sweep import run_sweep
from lib.sweeps.executors import enable_compile_cache
from lib.store.runstore import RunDir
from test_sweep_support import files_with_mtimes, write_experiment


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield
    enable_compile_cache(None)  # later tests' compiles must not land in this test's cache


@pytest.fixture
def opts(compile_cache):
    def make(**kw):
        return SweepOptions(progress="off", compile_cache=compile_cache, **kw)

    return make


def _sweep(tmp_path, **kw):
    return load_sweep(str(write_experiment(tmp_path, **kw)))


def _run_folders(root):
    return {k: v for k, v in files_with_mtimes(root).items() if not k.startswith(".")}


def test_relaunching_a_finished_sweep_trains_nothing_and_says_so(tmp_path, capsys, monkeypatch, opts):
    root = tmp_path / "root"
    first = run_sweep(_sweep(tmp_path), root, opts())
    assert [o.result for o in first.outcomes] == ["done"] * 3 and first.exit_code == 0
    assert all(RunDir(root / o.run_id).state() == "done" for o in first.outcomes)
    before = _run_folders(root)
    capsys.readouterr()

    calls = []
    for name in ("train", "train_pack"):  # a pack of one calls train(), a larger pack train_pack()
        monkeypatch.setattr(lib.train.loop, name, lambda *a, **k: calls.append(a) or pytest.fail("trained again"))
    second = run_sweep(_sweep(tmp_path), root, opts())
    out = capsys.readouterr().out
    assert calls == [] and [o.result for o in second.outcomes] == ["skipped"] * 3 and second.exit_code == 0
    assert "3 already done" in out and "nothing trained" in out
    assert _run_folders(root) == before


def test_a_diverging_run_is_marked_failed_with_its_step_and_the_others_finish(tmp_path, opts):
    root = tmp_path / "root"
    sweep = _sweep(tmp_path, steps=30, axes='{"data.seed": [0, 1], "optimizer.lr": [0.003, 1e30]}')
    report = run_sweep(sweep, root, opts(retries=2))
    order = [o.run_id for o in report.outcomes]
    assert "lr1e30" in order[1] and "lr1e30" not in order[2]  # the sweep went on after it
    assert report.exit_code == 1
    for o in report.outcomes:
        status = RunDir(root / o.run_id).status()
        if "lr1e30" in o.run_id:
            assert o.result == "failed" and status["state"] == "failed" and status["diverged"] is True
            assert "non-finite" in status["reason"] and 1 <= status["step"] < 30
            assert status["attempts"] == 1  # not retried: it would diverge again
            steps_logged = [m["step"] for m in RunDir(root / o.run_id).metrics()]
            assert max(steps_logged, default=0) < 30  # it stopped early
        else:
            assert o.result == "done" and status["state"] == "done"
            assert math.isfinite(RunDir(root / o.run_id).summary()["eval_loss"])
    # A relaunch reports the diverged runs again without training anything.
    again = run_sweep(sweep, root, opts(retries=2))
    assert [o.result for o in again.outcomes] == ["skipped", "failed", "skipped", "failed"]
    assert all(RunDir(root / r).status()["attempts"] == 1 for r in order)


def test_failed_runs_are_retried_up_to_retries_then_reported(tmp_path, monkeypatch, opts):
    root = tmp_path / "root"
    sweep = _sweep(tmp_path)
    real_train, calls = lib.train.loop.train, []

    def flaky(cfg, workdir, devices=None):
        calls.append(cfg.name)
        if cfg.name == "tg-seed1":  # fails like train() does: counted as an attempt, marked failed
            run = RunDir(workdir)
            run.write_config(cfg.to_dict())
            run.set_state("running")
            run.set_state("failed", reason="OSError: disk went away")
            raise OSError("disk went away")
        return real_train(cfg, workdir, devices)

    monkeypatch.setattr(lib.train.loop, "train", flaky)
    report = run_sweep(sweep, root, opts(retries=1, pack="1"))  # one run at a time: train() per run
    assert calls == ["tg-seed0", "tg-seed1", "tg-seed1", "tg-seed2"]  # the others still ran
    failed = report.of("failed")
    assert [o.run_id.rsplit("-", 1)[0] for o in failed] == ["tg-seed1"] and "after 2 attempts" in failed[0].reason
    assert report.exit_code == 1 and "disk went away" in "\n".join(report.lines())

    calls.clear()  # retries used up: reported, not tried
    report = run_sweep(sweep, root, opts(retries=1, pack="1"))
    assert calls == [] and "gave up after 2 attempts" in report.of("failed")[0].reason
    report = run_sweep(sweep, root, opts(retries=2, pack="1"))  # one more allowed
    assert calls == ["tg-seed1"]


def test_three_workers_take_every_run_exactly_once(tmp_path, monkeypatch, opts):
    root = tmp_path / "root"
    sweep = _sweep(tmp_path, axes='{"data.seed": [0, 1, 2, 3, 4]}')
    trained = []
    real_train = lib.train.loop.train
    monkeypatch.setattr(lib.train.loop, "train", lambda cfg, wd, devices=None: trained.append(cfg.name) or real_train(cfg, wd, devices))
    shares = []
    for i in range(3):
        report = run_sweep(sweep, root, opts(worker=(i, 3), pack="1"))  # train() per run
        assert report.exit_code == 0
        shares.append({o.run_id for o in report.outcomes if o.result == "done"})
    everything = {r.run_id for r in sweep.plan().runs}
    assert set.union(*shares) == everything and sum(map(len, shares)) == 5 and len(trained) == 5
    assert all(RunDir(root / r).status()["attempts"] == 1 for r in everything)
    manifest = json.loads((root / ".sweeps" / "tg.json").read_text())
    assert sorted(manifest["runs"]) == sorted(everything)
