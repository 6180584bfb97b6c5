"""Run dependencies as data (PlannedRun.after / init_from), the loop's hook cadence, and the one
function for a run's compute C (lib.flops.run_flops). No training here: planning and ordering only."""

import dataclasses
import itertools

import pytest

from lib import flops as flops_lib
from lib.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from lib.sweeps.cooldowns import Cooldowns, accounting
from lib.sweeps.executors import dependency_order
from lib.sweeps.plans import Plan, PlannedRun, Schedule, _planned
from lib.train.loop import Hook
from lib.train.runtime import InitFrom

B, T = 8, 16
BASE = RunConfig(model=ModelConfig(), data=DataConfig(seq_len=T, global_batch=B), train=TrainConfig(eval_tokens=4 * T * B))


def _run(name: str, after=(), steps=10) -> PlannedRun:
    r = _planned(BASE.with_overrides({"name": name, "train.steps": steps}))
    return dataclasses.replace(r, run_id=name, after=tuple(after))


def _check_order(ordered, runs):
    """Brute force: every run comes once, and after every run it follows that is among `runs`."""
    seen = [r.run_id for members, _ in ordered for r in members]
    assert sorted(seen) == sorted(r.run_id for r in runs)
    at = {run_id: i for i, (members, _) in enumerate(ordered) for run_id in (r.run_id for r in members)}
    for i, (members, waits) in enumerate(ordered):
        for r in members:
            for a in r.after:
                if a in at:
                    assert at[a] < i and at[a] in waits, (r.run_id, a)
        assert all(w < i for w in waits)


def test_dependency_order_puts_each_pack_after_the_runs_it_follows():
    a, b, c = _run("a"), _run("b", after=["a"]), _run("c", after=["b"])
    d = _run("d", after=["gone"])  # follows a run not in the packs (done, or another worker's): no wait
    for packs in ([[c], [b], [a, d]], [[b, c], [a]], [[a, b, c, d]], [[d], [c, a], [b]]):
        ordered = dependency_order(packs)
        _check_order(ordered, [r for members in packs for r in members])
    # a run that follows a run of its own pack moves to a pack of its own after it
    ordered = dependency_order([[a, b, c]])
    assert [[r.run_id for r in m] for m, _ in ordered] == [["a"], ["b"], ["c"]]
    # independent packs keep the order given
    assert [[r.run_id for r in m] for m, _ in dependency_order([[d], [a]])] == [["d"], ["a"]]


def test_partition_keeps_a_run_with_the_runs_it_follows():
    runs = [_run("t1"), _run("b1", ["t1"]), _run("x"), _run("t2"), _run("b2", ["t2"]), _run("bb2", ["b2"]), _run("y")]
    plan = Plan("p", tuple(runs))
    for n in (1, 2, 3, 4):
        shares = [[r.run_id for r in plan.partition(i, n).runs] for i in range(n)]
        assert sorted(itertools.chain(*shares)) == sorted(r.run_id for r in runs)
        owner = {run_id: i for i, share in enumerate(shares) for run_id in share}
        for r in runs:
            assert all(owner[a] == owner[r.run_id] for a in r.after)


def test_cooldown_branches_are_runs_with_dependencies():
    sweep = Cooldowns([dict(d_model=16, n_layers=1, n_heads=2)], tokens=[20 * B * T, 32 * B * T], decay_frac=0.25,
                      decay_shape="cosine", base=BASE, name="cd", schedule=Schedule(warmup_frac=0.1))
    trunk, *branches = sweep.plan().runs
    assert trunk.after == () and trunk.init_from is None
    for b in branches:  # the dependency is the hashed config's data, named by run id
        assert b.after == (trunk.run_id,) and b.init_from == InitFrom(trunk.run_id, b.cfg.train.branch_start)
        assert b.cfg.train.trunk == trunk.run_id
        assert b.own_steps == b.cfg.train.steps - b.cfg.train.branch_start
    # what the plan spends, by hand: the trunk once, and each branch's steps after its start
    per_step = B * T * flops_lib.flops_per_token(trunk.cfg.model, T, trunk.cfg.train.flops_convention)
    own = trunk.cfg.train.steps + sum(b.cfg.train.steps - b.cfg.train.branch_start for b in branches)
    assert accounting(sweep.plan())["spent"] == pytest.approx(own * per_step, rel=1e-12)


def test_run_flops_against_closed_forms():
    cfg = BASE.with_overrides({"train.steps": 12})
    n_active = flops_lib.param_counts(cfg.model)["active"]
    tokens = 12 * B * T
    assert flops_lib.run_flops(cfg, convention="6N") == pytest.approx(6 * n_active * tokens, rel=1e-12)
    assert flops_lib.run_flops(cfg, 5, global_batch=4) == pytest.approx(
        5 * 4 * T * flops_lib.flops_per_token(cfg.model, T, cfg.train.flops_convention), rel=1e-12)
    assert flops_lib.run_flops(cfg, start=9) == pytest.approx(flops_lib.run_flops(cfg) * 3 / 12, rel=1e-12)
    assert _planned(cfg).flops == flops_lib.run_flops(cfg)


def test_hook_cadence_by_brute_force():
    cfg = BASE.with_overrides({"train.steps": 30, "train.log_every": 4, "train.eval_every": 10, "train.checkpoint_every": 7,
                               "train.keep_steps": (3, 11)})
    hooks = {
        "log": Hook("log", None, every=lambda t: (t.log_every, t.eval_every)),
        "checkpoint": Hook("checkpoint", None, every=lambda t: (t.checkpoint_every,), at=lambda t: t.keep_steps),
        "finish": Hook("finish", None),
    }
    expected = {"log": {4, 8, 10, 12, 16, 20, 24, 28, 30}, "checkpoint": {3, 7, 11, 14, 21, 28, 30}, "finish": {30}}

    class Run:
        pass

    r = Run()
    r.cfg = cfg
    for name, hook in hooks.items():
        due = set()
        for step in range(1, 31):
            r.step = step
            if hook.due(r):
                due.add(step)
        assert due == expected[name], name


def test_a_branch_trained_without_its_dependency_is_a_named_error(tmp_path):
    from lib.config import ConfigError
    from lib.train.loop import train

    sweep = Cooldowns([dict(d_model=16, n_layers=1, n_heads=2)], tokens=[20 * B * T], decay_frac=0.25, base=BASE, name="cd",
                      schedule=Schedule(warmup_frac=0.1))
    _, branch = sweep.plan().runs
    with pytest.raises(ConfigError, match="train.trunk"):
        train(branch.cfg, tmp_path / branch.run_id)
    assert not (tmp_path / branch.run_id / "status.json").exists()  # refused before anything was written
