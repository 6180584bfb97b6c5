"""Learning rate per point, planned (lib/sweeps/plans.py Sweep.lr_grid), and the plan's warnings when
a tuned lr rule is applied beyond the sizes and horizon it was tuned on (lib/sweeps/rules.py)."""

import dataclasses
import json
import math

import pytest

from lib.config import ConfigError, DataConfig, RunConfig
from lib.config_rules import validate
from lib.sweeps import rules
from lib.sweeps.executors import make_packs
from lib.sweeps.plans import Grid, IsoFlop, TokensPerParam

SIZES = [dict(d_model=d, n_layers=L, n_heads=2) for d, L in [(16, 1), (16, 2), (24, 2), (32, 2)]]
BASE = RunConfig(data=DataConfig(seq_len=32, global_batch=32))


def _iso(**kw):
    return IsoFlop([1e11, 3e11], SIZES, base=BASE, name="iso", **kw)


def test_each_point_trains_at_every_factor_of_its_lr_and_x1_keeps_its_run_id():
    plain, grid = _iso().plan(), _iso(lr_grid=(0.5, 1, 2)).plan()
    assert len(grid.runs) == 3 * len(plain.runs)
    assert {r.run_id for r in plain.runs} <= {r.run_id for r in grid.runs}  # adding a grid reuses the x1 runs
    by_point = {}
    for r in grid.runs:
        by_point.setdefault(r.point, []).append(r)
    assert sorted(by_point) == sorted(r.cfg.name for r in plain.runs)
    centre = {r.cfg.name: r.cfg.optimizer.lr for r in plain.runs}
    for point, runs in by_point.items():
        assert sorted(r.cfg.optimizer.lr_factor for r in runs) == [0.5, 1.0, 2.0]
        for r in runs:  # lr = the point's lr x factor; shape, length and batch are the point's
            assert r.cfg.optimizer.lr == pytest.approx(centre[point] * r.cfg.optimizer.lr_factor, rel=1e-12)
            assert (r.params, r.tokens, r.cfg.train.steps, r.cfg.data.global_batch) == (runs[0].params, runs[0].tokens, runs[0].cfg.train.steps, runs[0].cfg.data.global_batch)
        assert len(make_packs(runs, pack=8)) == 1  # one point: one pack (one pack_key)
    assert any("each point at its lr x 0.5, 1, 2" in n for n in grid.notes)


def test_the_grid_centres_on_the_lr_rule_and_on_a_set_lr():
    rule = rules.PowerLawLR(c=2.0, gamma=0.5)
    plan = _iso(lr_grid=(0.5, 1, 2), lr_rule=rule).plan()
    for r in plan.runs:
        assert r.cfg.optimizer.lr == pytest.approx(2.0 * r.params**-0.5 * r.cfg.optimizer.lr_factor, rel=1e-12)
    forced = _iso(lr_grid=(0.5, 1, 2), lr_rule=rule).plan({"optimizer.lr": 0.01})  # --set lr: the grid centres there
    assert sorted({round(r.cfg.optimizer.lr, 12) for r in forced.runs}) == [0.005, 0.01, 0.02]


def test_grid_and_tokens_per_param_sweeps_take_an_lr_grid():
    tpp = TokensPerParam(SIZES[:2], [20], base=BASE, lr_grid=(0.5, 1, 2)).plan()
    assert len(tpp.runs) == 6
    grid = Grid(BASE, {"model.d_model": [16, 32]}, lr_grid=(1, 3)).plan()
    assert sorted(r.cfg.optimizer.lr for r in grid.runs) == pytest.approx(sorted([BASE.optimizer.lr, 3 * BASE.optimizer.lr] * 2))


def test_bad_grids_are_named_errors():
    with pytest.raises(ConfigError, match="must contain 1"):
        _iso(lr_grid=(0.5, 2)).plan()
    with pytest.raises(ConfigError, match="positive finite"):
        _iso(lr_grid=(0, 1)).plan()
    with pytest.raises(ConfigError, match="lr_grid and an optimizer.lr axis"):
        Grid(BASE, {"optimizer.lr": [1e-3, 1e-2]}, lr_grid=(0.5, 1))
    with pytest.raises(ConfigError, match="optimizer.lr_factor"):
        validate(BASE.with_overrides({"optimizer.lr_factor": -1.0}))


def test_edge_extensions_recorded_under_the_root_add_runs_to_their_point_only(tmp_path):
    sweep = _iso(lr_grid=(0.5, 1, 2))
    before = sweep.plan(root=tmp_path)
    point = before.runs[0].point
    path = tmp_path / rules.LR_GRID_DIR / "iso.json"
    path.parent.mkdir()
    path.write_text(json.dumps({point: [4.0]}))
    after = sweep.plan(root=tmp_path)
    added = {r.run_id for r in after.runs} - {r.run_id for r in before.runs}
    assert len(added) == 1 and len(after.runs) == len(before.runs) + 1
    (new,) = [r for r in after.runs if r.run_id in added]
    assert new.point == point and new.cfg.optimizer.lr_factor == 4.0


def test_a_rule_applied_beyond_its_sizes_or_horizon_is_a_warning_in_the_plan():
    n = [r.params for r in _iso().plan().runs]
    inside = rules.PowerLawLR(c=2.0, gamma=0.5, n_range=(min(n), max(n)), steps=0)
    assert not [x for x in _iso(lr_rule=inside).plan().notes if x.startswith("warning")]
    narrow = dataclasses.replace(inside, n_range=(min(n), min(n) * 1.2))
    (note,) = [x for x in _iso(lr_rule=narrow).plan().notes if x.startswith("warning") and "tuned on N" in x]
    beyond = sum(not min(n) / 1.5 <= p <= min(n) * 1.2 * 1.5 for p in n)
    assert f"sets the lr of {beyond} of {len(n)} points outside it" in note
    plan = _iso(lr_rule=dataclasses.replace(inside, steps=200)).plan()
    steps = [r.cfg.train.steps for r in plan.runs]
    (note,) = [x for x in plan.notes if "tuned at steps 200" in x]
    worst = max(max(s / 200, 200 / s) for s in steps)
    assert f"{sum(not 1 / 1.5 <= s / 200 <= 1.5 for s in steps)} of {len(steps)} points" in note and f"{worst:.3g}x" in note
    tuned_at_budget = dataclasses.replace(inside, budget=1e11)  # Tune(budget=C): the 1e11 points match, 3e11 ones are 3x
    (note,) = [x for x in _iso(lr_rule=tuned_at_budget).plan().notes if "tuned at budget" in x]
    assert f"{sum(r.cfg.budget == 3e11 for r in plan.runs)} of {len(plan.runs)} points" in note
    assert math.isclose(float(note.split("furthest: ")[1].split(", ")[1].split("x")[0]), 3.0)
