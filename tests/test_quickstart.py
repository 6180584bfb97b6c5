"""The quickstart's design (issue 22 item 6): the ladder's protocol (lr grid per point around a rule
tuned at the sweep's horizons, each budget's minimum bracketed) at a size whose planned time, with
the install, stays within 10 minutes on 2 idle CPU cores. Planning only."""

import dataclasses

import numpy as np

from experiments.cli import load_experiment
from lib.sweeps.plans import size_tag, tag_tokens
from lib.sweeps.rules import EXTRAPOLATION_FACTOR

# The language's theory and the first quickstart's levels (docs/results.md, "Design power").
ALPHA, BETA, E, A, B = 0.30, 0.23, 0.8047, 4.27, 8.51
# What `scaling run quickstart` may spend after a ~2 min install: 10 minutes less install and margin.
TIME_BUDGET_S = 7.5 * 60
# Seconds per training step of one run (batch 32 x 32 tokens) against total parameters, measured on
# 2 idle CPU cores (the first quickstart's runs, /work/fin_qs; single-run packs): below 4.1k the
# 4.1k value (smaller models are faster), between the points log-log interpolation.
STEP_N = np.array([4144, 7248, 15480, 26784, 41160, 60440, 86352, 152000.0])
STEP_S = np.array([2.07, 4.1, 5.6, 6.9, 8.9, 12.9, 15.0, 21.5]) * 1e-3
PACK_FACTOR = 1.15  # a pack of k runs trains ~k x 1.0-1.3 as long as one run (the tune packs of 5 measured there)
PACK_OVERHEAD_S = 5.0  # init + compile + eval + checkpoint of one pack (4-7 s measured for a new shape)
FIT_S = 30.0  # process start, two fits (main and the free-E diagnostic), figures, report: ~20 s measured
HEADROOM = 1.25  # lr-edge extensions: one more run at a point or tune group whose best lr is on an edge


def step_seconds(n: float) -> float:
    return float(np.exp(np.interp(np.log(max(n, STEP_N[0])), np.log(STEP_N), np.log(STEP_S))))


def plan_seconds(runs) -> float:
    """The time model above over planned runs, packed as `scaling sweep --pack auto` packs them (a
    point's lr grid, a tune group: runs of one shape and length)."""
    packs: dict[tuple, list] = {}
    for r in runs:
        packs.setdefault((size_tag(r.cfg), r.cfg.train.steps, r.cfg.data.global_batch), []).append(r)
    total = 0.0
    for rs in packs.values():
        k, r = len(rs), rs[0]
        total += PACK_OVERHEAD_S + k * (PACK_FACTOR if k > 1 else 1.0) * r.cfg.train.steps * step_seconds(r.params)
    return total


def _plan():
    quickstart = load_experiment("quickstart")
    sweep = quickstart.sweep()
    return quickstart, sweep, dataclasses.replace(sweep, lr_rule=None).plan()  # the rule only moves lrs, not N, D or C


def test_the_quickstart_runs_the_ladders_protocol_and_brackets_every_minimum():
    quickstart, sweep, plan = _plan()
    points: dict[float, dict[str, tuple[int, int]]] = {}
    factors: dict[str, set[float]] = {}
    for r in plan.runs:
        points.setdefault(r.cfg.budget, {})[r.point] = (r.params, r.tokens)
        factors.setdefault(r.point, set()).add(round(r.cfg.optimizer.lr_factor or 1.0, 6))
    assert sweep.lr_rule == "tuned" and all(f == set(quickstart.LR_GRID) for f in factors.values())
    assert len(quickstart.LR_GRID) >= 2 and 1.0 in quickstart.LR_GRID
    for C in points:  # one batch per budget, so batch is not confounded with N
        assert len({r.cfg.data.global_batch for r in plan.runs if r.cfg.budget == C}) == 1
    for C, pts in points.items():
        assert len(pts) == quickstart.PER_BUDGET, f"budget {C:g}: {len(pts)} sizes"
        nd = sorted(pts.values())
        loss = [E + A * n**-ALPHA + B * d**-BETA for n, d in nd]  # brute force over the budget's own (N, D)
        assert 0 < int(np.argmin(loss)) < len(nd) - 1, f"budget {C:g}: the theory's minimum is not bracketed"
        # closed form with C = 6 N D: N_opt = G (C/6)^a, G = (alpha A / (beta B))^(1/(alpha+beta))
        n_opt = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (C / 6) ** (BETA / (ALPHA + BETA))
        assert nd[0][0] < n_opt < nd[-1][0]
    # the tune stage: two or more horizons; the sweep's run lengths within its tuned range of D, but
    # for the smallest sizes at the largest budget (the plan warns; the lr grid covers a factor 2)
    horizons = {tag_tokens(size_tag(r.cfg)) for r in quickstart.tune().plan().runs}
    sweep_d = [d for pts in points.values() for _, d in pts.values()]
    assert len(horizons) >= 2 and None not in horizons
    assert min(horizons) / EXTRAPOLATION_FACTOR <= min(sweep_d)
    assert np.median(sweep_d) <= max(horizons) * EXTRAPOLATION_FACTOR
    assert quickstart.verify_allocation is False  # no power at this design (docs/results.md, "Design power")


def test_the_time_model_reproduces_the_first_quickstarts_measured_sweep():
    # The first quickstart's sweep (experiments/quickstart_wsd.py keeps its 15 points): 262 s of
    # run time measured on 2 idle cores (the sum of its runs' init..checkpoint times).
    wsd = load_experiment("quickstart_wsd")
    seconds = plan_seconds(dataclasses.replace(wsd.isoflop(), lr_rule=None).plan().runs)
    assert 0.85 * 262 < seconds < 1.25 * 262, seconds


def test_the_quickstarts_planned_time_fits_10_minutes_with_the_install():
    quickstart, sweep, plan = _plan()
    tune_runs = quickstart.tune().plan().runs
    budgets = sorted({r.cfg.budget for r in plan.runs})
    check_C = budgets[-1] ** 2 / budgets[-2]  # `scaling run`'s next budget: one run at the fitted optimum
    # the check's run: the slowest of the ladder's shapes trainable there (its N is known only after the fit)
    check_sweep = dataclasses.replace(sweep, budgets=[check_C], per_budget=0, lr_grid=(1.0,), lr_rule=None, name="check")
    check = max(plan_seconds([r]) for r in check_sweep.plan().runs)
    total = HEADROOM * (plan_seconds(plan.runs) + plan_seconds(tune_runs)) + check + FIT_S
    assert total < TIME_BUDGET_S, f"{total:.0f} s planned, {TIME_BUDGET_S:.0f} s fit in 10 minutes with the install"
