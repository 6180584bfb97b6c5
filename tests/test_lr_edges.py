"""Learning rate per point, closed in the sweep (experiments/workflow/lr_edges.py): a point whose best lr
sits on its grid's edge gets one run past it, once; a relaunch plans the same runs and trains nothing."""

import json

import pytest

from experiments.workflow.options import SweepOptions
from experiments.workflow.sweep import run_sweep
from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
from lib.store.runstore import RunDir
from lib.sweeps import rules
from lib.sweeps.executors import enable_compile_cache
from lib.sweeps.plans import Grid


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield
    enable_compile_cache(None)


def test_a_point_best_at_its_grids_high_edge_gets_one_run_past_it(tmp_path, compile_cache, capsys):
    # lr 1e-4 for 40 steps is far too low: the loss falls with every factor, so x2 is best and x4 is added.
    base = RunConfig(name="edge", model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
                     data=DataConfig(seq_len=16, global_batch=8), optimizer=OptimizerConfig(lr=1e-4, warmup_steps=2),
                     train=TrainConfig(steps=40, log_every=10, eval_every=40, eval_tokens=256, checkpoint_every=40),
                     tracking=TrackingConfig(console=False))
    sweep = Grid(base, name="edge", lr_grid=(0.5, 1, 2))
    options = SweepOptions(progress="off", compile_cache=compile_cache)
    report = run_sweep(sweep, tmp_path, options)
    assert report.exit_code == 0
    recorded = json.loads((tmp_path / rules.LR_GRID_DIR / "edge.json").read_text())
    assert recorded == {"edge": [4.0]}
    plan = sweep.plan(root=tmp_path)
    assert sorted(r.cfg.optimizer.lr_factor for r in plan.runs) == [0.5, 1.0, 2.0, 4.0]
    losses = {r.cfg.optimizer.lr_factor: RunDir(tmp_path / r.run_id).summary()["eval_loss"] for r in plan.runs}
    assert losses[2.0] < losses[1.0] < losses[0.5]  # why the edge was high
    assert "adding one run each past it" in capsys.readouterr().out
    # Once: the x4 run may still be best (an edge again), but the point is not extended a second time.
    again = run_sweep(sweep, tmp_path, options)
    assert again.exit_code == 0 and json.loads((tmp_path / rules.LR_GRID_DIR / "edge.json").read_text()) == recorded
    assert "adding one run" not in capsys.readouterr().out
