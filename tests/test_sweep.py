"""Sweep expansion (lib/sweep.py): budgets spent, schedules ending at each run's last step, run ids,
the static partition. No training here."""

import dataclasses
import math

import pytest

from experiments.cli import load_experiment
from lib import flops as flops_lib
from lib.config import ConfigError, DataConfig, OptimizerConfig, RunConfig
from lib.train.optim import make_schedule
from lib.sweeps.plans import Grid, IsoFlop, TokensPerParam, run_id

SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in [(16, 1, 2), (32, 2, 2), (64, 2, 4), (96, 3, 6), (128, 4, 8)]]


def _untuned(sweep):
    """The shipped sweep with its "tuned" lr rule (which needs a root's lr_rule.json) set aside:
    expansion, budgets and ids are what this file checks (tests/test_tune.py checks the rule)."""
    return dataclasses.replace(sweep, lr_rule=None)


def _sweeps():
    small = IsoFlop([3e10, 1e11, 3e11, 1e12], SIZES, base=RunConfig(data=DataConfig(seq_len=32, global_batch=32)), tpp_range=(1, 500))
    kaplan = IsoFlop([1e11, 1e12], SIZES, base=RunConfig(data=DataConfig(seq_len=64, global_batch=16)).with_overrides({"train.flops_convention": "kaplan"}), name="kap")
    named = {name: _untuned(load_experiment(name).sweep()) for name in ("quickstart", "isoflop_gpu", "chinchilla_tpu")}
    return {"small": small, "kaplan": kaplan, **named}


@pytest.mark.parametrize("name", ["small", "kaplan", "quickstart", "isoflop_gpu", "chinchilla_tpu"])
def test_isoflop_runs_spend_their_budget_within_2_percent(name):
    sweep = _sweeps()[name]
    plan = sweep.plan()
    assert len(plan.runs) >= 5
    convention = sweep.base.train.flops_convention
    for r in plan.runs:
        cfg = r.cfg
        assert cfg.train.flops_convention == convention
        assert cfg.model.vocab_size > 0, "planning must fix the vocabulary the FLOPs were counted with"
        # Independently of the plan's own numbers: tokens the run will see x lib.flops per token.
        tokens = cfg.train.steps * cfg.data.global_batch * cfg.data.seq_len
        realised = tokens * flops_lib.flops_per_token(cfg.model, cfg.data.seq_len, convention)
        assert abs(realised / cfg.budget - 1) <= 0.02, (r.run_id, realised, cfg.budget)
        lo, hi = sweep.tpp_range
        assert lo <= tokens / flops_lib.param_counts(cfg.model)["total"] <= hi * 1.02
        assert cfg.sweep == sweep.name and cfg.name.startswith(f"{sweep.name}-")


def test_isoflop_drops_runs_outside_the_tokens_per_param_range_with_a_note():
    plan = _sweeps()["small"].plan()
    kept = {r.cfg.name for r in plan.runs}
    dropped = [n for n in plan.notes if "outside [1, 500]" in n]
    assert dropped, plan.notes
    assert len(kept) + len(dropped) == 4 * len(SIZES)  # every (budget, size) is either run or explained
    assert "iso-3e10-d128-L4" not in kept and any(n.startswith("iso-3e10-d128-L4:") for n in dropped)


def test_isoflop_per_budget_window_follows_its_center():
    module = load_experiment("quickstart")
    sweep = _untuned(module.sweep())
    plan = sweep.plan()
    for budget in sweep.budgets:
        kept = {(r.cfg.model.d_model, r.cfg.model.n_layers, r.cfg.model.n_heads) for r in plan.runs if r.cfg.budget == budget}
        # Recompute: the PER_BUDGET in-range sizes whose D/N is nearest the center for this budget.
        distance = {}
        for size in module.SIZES:
            m = dataclasses.replace(sweep.base.model, vocab_size=64, **size)
            tpp = budget / flops_lib.flops_per_token(m, 32) / flops_lib.param_counts(m)["total"]
            if sweep.tpp_range[0] <= tpp <= sweep.tpp_range[1]:
                distance[(m.d_model, m.n_layers, m.n_heads)] = abs(math.log(tpp / sweep.center_tpp(budget)))
        assert kept == set(sorted(distance, key=distance.get)[:module.PER_BUDGET])
    assert any(f"not among the {module.PER_BUDGET} sizes with D/N nearest {sweep.center_tpp(sweep.budgets[0]):.3g}" in n
               for n in plan.notes)


def test_isoflop_reduces_the_batch_to_keep_a_minimum_number_of_steps():
    sweep = IsoFlop([1e10], [SIZES[2]], base=RunConfig(data=DataConfig(seq_len=32, global_batch=64)), min_steps=100, min_batch=4, tpp_range=(0.01, 1e4))
    (r,) = sweep.plan().runs
    batch, steps = r.cfg.data.global_batch, r.cfg.train.steps
    assert batch < 64 and steps >= 100
    assert r.tokens / (2 * batch * 32) < 100  # twice the batch would have fallen short of min_steps


def test_every_run_schedule_ends_at_its_own_last_step():
    plan = _sweeps()["quickstart"].plan()
    assert len({r.cfg.train.steps for r in plan.runs}) > 1
    for r in plan.runs:
        o, steps = r.cfg.optimizer, r.cfg.train.steps
        schedule = make_schedule(o, steps)
        assert math.isclose(float(schedule(steps - 1)), o.lr * o.final_lr_frac, rel_tol=1e-5), r.run_id
        assert float(schedule(max(steps // 2, o.warmup_steps))) > o.lr * o.final_lr_frac * 1.5
        assert 0 < o.warmup_steps < steps // 5
        assert r.cfg.train.checkpoint_every <= steps and r.cfg.train.eval_every <= steps


def test_run_ids_are_readable_plus_the_config_hash():
    plan = _sweeps()["quickstart"].plan()
    for r in plan.runs:
        assert r.run_id == run_id(r.cfg)
        assert r.run_id.startswith(f"{r.cfg.name}-") and len(r.run_id) == len(r.cfg.name) + 7
    assert any(r.run_id.startswith("quickstart-3e10-d16-L2-") for r in plan.runs)
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)
    assert plan.runs == _sweeps()["quickstart"].plan().runs  # deterministic: every host agrees


def test_set_overrides_apply_to_every_run_and_change_the_hash_not_the_name():
    sweep = _sweeps()["small"]
    base, changed = sweep.plan(), sweep.plan({"optimizer.lr": 1e-2, "optimizer.warmup_steps": 0})
    assert [r.cfg.name for r in base.runs] == [r.cfg.name for r in changed.runs]
    for a, b in zip(base.runs, changed.runs):
        assert b.cfg.optimizer.lr == 1e-2 and b.cfg.optimizer.warmup_steps == 0  # wins over the planned warmup
        assert a.run_id != b.run_id
    # Planning inputs (seq_len, batch: then not halved) change the plan itself: budgets are still spent.
    for r in sweep.plan({"data.seq_len": 16, "data.global_batch": 64}).runs:
        assert r.cfg.data.global_batch == 64 and r.cfg.data.seq_len == 16
        tokens = r.cfg.train.steps * 64 * 16
        assert abs(tokens * flops_lib.flops_per_token(r.cfg.model, 16) / r.cfg.budget - 1) <= 0.02
    # Forcing a value the sweep derives (a smoke test's step count) is allowed, with a note.
    forced = sweep.plan({"train.steps": 5, "optimizer.warmup_steps": 0})
    assert {r.cfg.train.steps for r in forced.runs} == {5}
    assert any("--set train.steps overrides" in n for n in forced.notes)


def test_worker_partition_for_n3_covers_every_run_exactly_once():
    plan = _sweeps()["quickstart"].plan()
    shares = [plan.partition(i, 3).runs for i in range(3)]
    ids = [r.run_id for share in shares for r in share]
    assert sorted(ids) == sorted(r.run_id for r in plan.runs) and len(ids) == len(set(ids))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ConfigError, match="worker"):
        plan.partition(3, 3)


def test_grid_and_tokens_per_param():
    base = RunConfig(name="g", optimizer=OptimizerConfig(lr=1e-3))
    grid = Grid(base, {"optimizer.lr": [1e-3, 3e-3], "data.seed": [0, 1]}).plan()
    assert sorted(r.cfg.name for r in grid.runs) == ["g-lr0.001-seed0", "g-lr0.001-seed1", "g-lr0.003-seed0", "g-lr0.003-seed1"]
    assert Grid(base).plan().runs[0].cfg.name == "g"
    tpp = TokensPerParam(SIZES[:2], [10, 40], base=RunConfig(data=DataConfig(seq_len=32, global_batch=8))).plan()
    for r in tpp.runs:
        ratio = float(r.cfg.name.split("-")[0][3:])
        assert abs(r.tokens / r.params / ratio - 1) < 0.05
        assert r.cfg.train.steps * 8 * 32 == r.tokens


def test_errors_name_the_field_and_the_fix():
    with pytest.raises(ConfigError, match="model.vocab_size"):
        IsoFlop([1e12], SIZES, base=RunConfig(data=DataConfig(source="hf", dataset="text"))).plan()
    with pytest.raises(ConfigError, match="no runs"):
        IsoFlop([1e3], SIZES).plan()
    with pytest.raises(ConfigError, match="model.d_model"):
        IsoFlop([1e12], [dict(d_model=30, n_layers=1, n_heads=4)], tpp_range=(0, 1e9)).plan()
