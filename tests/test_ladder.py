"""The ladder experiment's design (issue 22 item 5): >= 5 budgets over >= 2 decades, >= 7 sizes per
budget around the theory's optimum, the per-point lr grid, a tune stage at several horizons, the
allocation check, and a planned compute that fits 90 minutes on 2 CPU cores. Planning only."""

import dataclasses
import math

import numpy as np

from experiments.cli import load_experiment
from lib.sweeps.plans import size_tag, tag_tokens
from lib.sweeps.rules import EXTRAPOLATION_FACTOR

# The language's theory (lib/data/synthetic.py, issue 22): alpha 0.30, beta 0.23 and the floor at
# seq_len 32; A and B: least squares of the quickstart's 15 losses (/work/base/runs_qs) on
# N^-0.30 and D^-0.23 with E fixed (docs/results.md, "Design power").
ALPHA, BETA, E, A, B = 0.30, 0.23, 0.8047, 4.27, 8.51
# 90 minutes at the ladder's own measured rate on the faster step (commit eb3ee5f, docs/results.md):
# `scaling run ladder` trained 1.16e14 FLOPs (215 runs: tune, sweep, lr-edge extensions, check) in
# 55.0 min on 2 idle cores, 3.5e10 FLOP/s from launch to verdict (compile, eval and fits included).
# (Before, 90 min at the first quickstart's ~7e12 FLOPs in ~300 s: 2.3e10.)
COMPUTE_BUDGET_FLOPS = 90 * 60 * 1.16e14 / (55.0 * 60)
CHECK_SIZES = 5  # analysis.allocation.N_SIZES


def _plan():
    ladder = load_experiment("ladder")
    sweep = ladder.sweep()
    return ladder, sweep, dataclasses.replace(sweep, lr_rule=None).plan()  # the rule only moves lrs, not N, D or C


def test_the_ladder_meets_the_issues_design_constraints():
    ladder, sweep, plan = _plan()
    assert ladder.verify_allocation is True
    points: dict[float, dict[str, tuple[int, int]]] = {}
    factors: dict[str, set[float]] = {}
    for r in plan.runs:
        if not r.point:  # a seed replicate (its own sweep), not a member of a point's lr grid
            continue
        points.setdefault(r.cfg.budget, {})[r.point] = (r.params, r.tokens)
        factors.setdefault(r.point, set()).add(round(r.cfg.optimizer.lr_factor or 1.0, 6))
    budgets = sorted(points)
    assert len(budgets) >= 5 and budgets[-1] / budgets[0] >= 100
    assert all(f == {0.5, 1.0, 2.0} for f in factors.values())  # every point at the rule's lr x 0.5, 1, 2
    for C in {r.cfg.budget for r in plan.runs}:  # one batch per budget, so batch is not confounded with N
        assert len({r.cfg.data.global_batch for r in plan.runs if r.cfg.budget == C}) == 1
    for C, pts in points.items():
        N = np.array(sorted(n for n, _ in pts.values()), float)
        assert len(N) >= 7, f"budget {C:g}: {len(N)} sizes"
        # brute force: the theory's loss over the budget's own (N, D) is lowest at an inner size
        nd = sorted(pts.values())
        loss = [E + A * n**-ALPHA + B * d**-BETA for n, d in nd]
        assert 0 < int(np.argmin(loss)) < len(nd) - 1, f"budget {C:g}: the theory's minimum is not bracketed"
        # closed form with C = 6 N D: N_opt = G (C/6)^a, G = (alpha A / (beta B))^(1/(alpha+beta))
        a = BETA / (ALPHA + BETA)
        n_opt = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (C / 6) ** a
        assert N[0] < n_opt < N[-1]
    # the tune stage: several horizons spanning the sweep's range of D (no D extrapolation warning)
    tune = ladder.tune()
    tune_plan = tune.plan()
    horizons = {tag_tokens(size_tag(r.cfg)) for r in tune_plan.runs}
    sweep_d = [d for pts in points.values() for _, d in pts.values()]
    assert len(horizons) >= 2 and None not in horizons
    assert min(horizons) / EXTRAPOLATION_FACTOR <= min(sweep_d) and max(sweep_d) <= max(horizons) * EXTRAPOLATION_FACTOR


def test_the_ladders_planned_compute_fits_90_minutes_on_2_cores():
    ladder, sweep, plan = _plan()
    tune_plan = ladder.tune().plan()
    grid = len(sweep.lr_grid)
    sweep_flops = sum(r.flops for r in plan.runs)
    tune_flops = sum(r.flops for r in tune_plan.runs)
    budgets = sorted({r.cfg.budget for r in plan.runs})
    n_points = len({r.point for r in plan.runs if r.point})
    assert math.isclose(sweep_flops, sum(r.cfg.budget for r in plan.runs), rel_tol=0.03)  # each run spends its C (2%)
    assert n_points >= 7 * len(budgets)
    check_C = budgets[-1] ** 2 / budgets[-2]  # `scaling run`'s next budget
    check = CHECK_SIZES * grid * check_C  # 5 sizes, each at the lr grid
    nominal = sweep_flops + tune_flops + check
    # headroom for lr-edge extensions: one more run at a point (or a tune group) whose best lr is on
    # an edge: +1/3 of a point's compute (+1/5 of a tune group's); 25% lets 3 in 4 points extend
    total = 1.25 * nominal
    assert total < COMPUTE_BUDGET_FLOPS, f"{total:.3g} FLOPs planned, {COMPUTE_BUDGET_FLOPS:.3g} fit in 90 minutes"


def test_scaling_run_asks_for_the_allocation_check_when_the_experiment_does():
    from experiments.workflow import run
    from experiments.workflow.experiment import load_experiment
    from experiments.workflow.options import RunOptions

    for experiment, want in (("ladder", True), ("quickstart", False)):  # neither passes --allocation
        assert run._allocation(RunOptions(spec=experiment, root="unused"), load_experiment(experiment)) is want
    assert run._allocation(RunOptions(spec="quickstart", root="unused", allocation=True), load_experiment("quickstart")) is True
