"""Leave-one-budget-out and --holdout-largest refit COLD from the full fit's starts (a warm start
from the full fit would carry the held-out budget), and approach 3's residual scale is corrected
for its fitted parameters. Checked against refits done by hand, and by Monte Carlo."""

import numpy as np
import pandas as pd
import pytest

from analysis.data import from_frame
from analysis.fit import fit_law
from analysis.laws import CHINCHILLA
from analysis.approaches import group_budgets
from analysis.pipeline import FitOptions, fit_parametric, run_fits
from analysis.predict import chinchilla_frontier
from analysis.costmodel import SIX_N

LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
G_TRUE = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))


def isoflop(budgets=(1e18, 1e19, 1e20), k=5, spread=8.0, noise=0.004, seed=0):
    """k sizes per budget spanning `spread`x around eq. 4's optimum; multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        for N in G_TRUE * (C / 6) ** A_TRUE * np.geomspace(1 / spread, spread, k):
            D = C / (6 * N)
            L = (LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]) * np.exp(noise * rng.standard_normal())
            rows.append({"N": N, "D": D, "C": C, "loss": L, "budget": C, "run": f"c{C:.0e}-n{N:.3g}"})
    return pd.DataFrame(rows)


def same_starts(k, seed=0):  # what FitOptions(n_starts=k, seed=seed) draws, written out
    grid = CHINCHILLA.grid_points()
    return grid[np.sort(np.random.default_rng(seed).choice(len(grid), size=k, replace=False))]


def test_leave_one_budget_out_and_holdout_equal_cold_refits_done_by_hand():
    frame = isoflop()
    rec = run_fits(from_frame(frame), FitOptions(approach="3", bootstrap=0, n_starts=32, holdout_largest=1))
    rows = rec["fits"]["approach3"]["goodness"]["lobo"]["budgets"]
    assert len(rows) == 3
    for row in rows:
        rest = frame[frame.budget != row["C"]]
        fit = fit_law(CHINCHILLA, rest, starts=same_starts(32), warn=False)
        N, _, L = chinchilla_frontier(fit.params, SIX_N, np.array([row["C"]]))
        # the pipeline weighs the budget's points 0 instead of dropping them (the same compiled
        # problem): the same optimum, to the solver's tolerance
        assert row["predicted"]["N_opt"] == pytest.approx(N[0], rel=1e-5)
        assert row["predicted"]["loss"] == pytest.approx(L[0], rel=1e-6)
        assert row["predicted"]["E"] == pytest.approx(fit.params["E"], rel=1e-5)
    held = fit_law(CHINCHILLA, frame[frame.budget < 1e20], starts=same_starts(32), warn=False)
    assert rec["holdout"]["params"] == pytest.approx(held.params, rel=1e-9)


def test_the_residual_scale_is_corrected_for_the_fitted_parameters():
    """15 points (3 budgets x 5 sizes), 5 parameters, noise well inside Huber's quadratic zone:
    the stored scale is sqrt(RSS / (n - 5)) (by hand), and over 24 simulations its square
    averages the true noise variance, where the in-sample RMSE's averages (n - 5)/n = 2/3 of it."""
    sigma = 3e-4  # relative; ~1e-3 nats on losses ~3.5
    ratios_s, ratios_rmse = [], []
    for seed in range(24):
        frame = isoflop(noise=sigma, seed=seed)
        pts = from_frame(frame).points
        # approach 3's entry alone (no leave-one-out refits: minima=[])
        e = fit_parametric("chinchilla", pts, FitOptions(bootstrap=0, n_starts=32), SIX_N, group_budgets(pts), [], (1e18, 1e20))
        p = {k: v["value"] for k, v in e["params"].items()}
        resid = CHINCHILLA.predict(p, N=frame.N, D=frame.D) - frame.loss
        assert e["goodness"]["residual_scale_nats"] == pytest.approx(np.sqrt(np.sum(resid**2) / 10), rel=1e-9)
        assert e["goodness"]["residual_dof"] == 10
        true_var = np.mean((sigma * frame.loss) ** 2)
        ratios_s.append(e["goodness"]["residual_scale_nats"] ** 2 / true_var)
        ratios_rmse.append(e["goodness"]["rmse_nats"] ** 2 / true_var)
    assert np.mean(ratios_s) == pytest.approx(1.0, abs=0.25)
    assert np.mean(ratios_rmse) == pytest.approx(2 / 3, abs=0.17)
