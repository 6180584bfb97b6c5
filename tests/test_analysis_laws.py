"""Functional forms and the compute-optimal closed forms, checked against independent arithmetic."""

import numpy as np
import pytest

from analysis import approaches as ap
from analysis.fit import SolverConfig
from analysis.laws import CHINCHILLA, KAPLAN, LAWS, get_law
from analysis.errors import AnalysisError

# Hoffmann et al. 2022's unrounded Approach-3 constants (from the paper's TeX source, as quoted by
# Besiroglu et al. 2024, section 2): A 406.4, B 410.7, E 1.6934, alpha 0.33917, beta 0.28491.
CHIN = {"A": 406.4, "B": 410.7, "E": 1.6934, "alpha": 0.33917, "beta": 0.28491}


def test_chinchilla_closed_forms_give_a_0_4565_and_n_opt_4e10_at_gopher_compute():
    a_by_hand = 0.28491 / (0.33917 + 0.28491)
    k = ap.frontier_constants(CHIN)
    assert k["a"] == pytest.approx(a_by_hand, rel=1e-12)
    assert round(float(k["a"]), 4) == 0.4565
    assert k["a"] + k["b"] == pytest.approx(1.0)
    G_by_hand = (0.33917 * 406.4 / (0.28491 * 410.7)) ** (1 / (0.33917 + 0.28491))
    n_opt, d_opt = ap.compute_optimal(CHIN, 5.76e23)
    assert n_opt == pytest.approx(G_by_hand * (5.76e23 / 6) ** a_by_hand, rel=1e-12)
    assert n_opt == pytest.approx(4.0e10, rel=0.03)  # the paper's 40B at Gopher's budget
    assert 6 * n_opt * d_opt == pytest.approx(5.76e23, rel=1e-12)


@pytest.mark.parametrize("C", [1e18, 5.76e23, 1e26])
def test_closed_form_frontier_is_the_argmin_of_the_law_along_the_budget(C):
    # independent: scan N on a fine log grid with D = C/(6N) and take the lowest loss
    n = np.geomspace(1e3, 1e16, 400_001)
    loss = CHIN["E"] + CHIN["A"] / n ** CHIN["alpha"] + CHIN["B"] / (C / (6 * n)) ** CHIN["beta"]
    n_scan = n[np.argmin(loss)]
    n_opt, _ = ap.compute_optimal(CHIN, C)
    assert n_opt == pytest.approx(n_scan, rel=2e-4)


def test_compute_optimal_broadcasts_resamples_against_compute():
    params = {k: np.array([v, v * 1.01]) for k, v in CHIN.items()}
    n, d = ap.compute_optimal(params, np.array([1e20, 1e21, 1e22]))
    assert n.shape == d.shape == (2, 3)
    n0, _ = ap.compute_optimal(CHIN, 1e21)
    assert n[0, 1] == pytest.approx(n0)


def test_predict_matches_the_formulas_written_out():
    rng = np.random.default_rng(0)
    N, D, C = 10 ** rng.uniform(6, 11, 50), 10 ** rng.uniform(8, 12, 50), 10 ** rng.uniform(15, 24, 50)
    direct = CHIN["E"] + CHIN["A"] / N ** CHIN["alpha"] + CHIN["B"] / D ** CHIN["beta"]
    np.testing.assert_allclose(CHINCHILLA.predict(CHIN, N=N, D=D), direct, rtol=1e-12)
    p = {"E": 1.9, "A": 3e3, "alpha": 0.12}
    np.testing.assert_allclose(get_law("power-C").predict(p, C=C), 1.9 + 3e3 * C**-0.12, rtol=1e-12)
    k = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    kap = ((k["N_c"] / N) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / D) ** k["alpha_D"]
    np.testing.assert_allclose(KAPLAN.predict(k, N=N, D=D), kap, rtol=1e-12)


@pytest.mark.parametrize("name", list(LAWS))
def test_raw_natural_round_trip(name):
    law = LAWS[name]
    raw = law.grid_points()[7] + 0.1
    back = law.from_natural({k: float(v) for k, v in law.to_natural(raw).items()})
    np.testing.assert_allclose(back, raw, rtol=1e-12, atol=1e-12)


def test_log_sum_exp_does_not_overflow_where_exp_would():
    # a = 900 overflows exp() in float64; the log-sum-exp form stays finite
    theta = np.array([900.0, 0.0, 0.0, 0.0, 0.0])
    out = CHINCHILLA.log_predict(theta, np.log(np.array([[1e9], [1e10]])), np)
    assert np.isfinite(out).all() and out[0] == pytest.approx(900.0)


def test_chinchilla_grid_is_the_papers_4500_starts():
    g = CHINCHILLA.grid_points()
    assert g.shape == (4500, 5)
    assert sorted(set(g[:, 3])) == [0.0, 0.5, 1.0, 1.5, 2.0]  # alpha
    assert sorted(set(g[:, 2])) == [-1.0, -0.5, 0.0, 0.5, 1.0]  # e
    assert sorted(set(g[:, 0])) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]  # a


def test_unknown_law_is_a_clear_error():
    with pytest.raises(AnalysisError, match="unknown law 'cubic'; choose one of"):
        get_law("cubic")


# ------------------------------------------------------------------ Fits II: tied and data-constrained laws
def _scipy_fit(log_predict_np, x0, n_cols, loss):
    """An independent least-squares fit of log L (scipy, trust-region), from x0."""
    from scipy.optimize import least_squares

    return least_squares(lambda th: log_predict_np(th, *n_cols) - np.log(loss), x0, method="trf", xtol=1e-14, ftol=1e-14, gtol=1e-14).x


def test_tied_exponent_law_recovers_its_parameters_as_scipy_does():
    from analysis.fit import fit_law
    from analysis.laws import CHINCHILLA_TIED

    true = {"E": 1.8, "A": 300.0, "B": 900.0, "alpha": 0.3}
    N, D = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 8), np.geomspace(1e9, 1e12, 8)))
    rng = np.random.default_rng(0)
    loss = (true["E"] + true["A"] / N ** true["alpha"] + true["B"] / D ** true["alpha"]) * np.exp(1e-4 * rng.standard_normal(N.size))
    fit = fit_law(CHINCHILLA_TIED, {"N": N, "D": D, "loss": loss}, starts=CHINCHILLA_TIED.grid_points()[::15], warn=False,
                  config=SolverConfig(float32_first=False))  # 60 starts, float64 only: one compilation

    def by_hand(th, n, d):  # the formula written out: th = log A, log B, log E, alpha
        return np.log(np.exp(th[2]) + np.exp(th[0]) / n ** th[3] + np.exp(th[1]) / d ** th[3])

    ref = _scipy_fit(by_hand, [np.log(200.0), np.log(500.0), np.log(1.5), 0.4], (N, D), loss)
    ours = [np.log(fit.params["A"]), np.log(fit.params["B"]), np.log(fit.params["E"]), fit.params["alpha"]]
    np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=2e-4)
    assert fit.params["alpha"] == pytest.approx(true["alpha"], abs=0.01) and fit.params["E"] == pytest.approx(true["E"], rel=0.01)


def test_effective_data_is_muennighoffs_equation_5():
    from analysis.laws import effective_data

    U = 1e9
    assert effective_data(U, 0.5 * U, 15.0) == pytest.approx(0.5 * U)  # under one epoch: nothing repeats
    assert effective_data(U, U, 15.0) == pytest.approx(U)
    R = 3.0  # four epochs: D' = U + U R* (1 - e^(-R/R*)), written out
    assert effective_data(U, 4 * U, 15.0) == pytest.approx(U + U * 15.0 * (1 - np.exp(-R / 15.0)), rel=1e-12)
    assert effective_data(U, 1e6 * U, 15.0) == pytest.approx(16.0 * U, rel=1e-6)  # endless repeats are worth U (1 + R*)
    eps = 1e-6  # the first repeats are worth almost as much as fresh tokens: dD'/dD -> 1 at one epoch
    assert (effective_data(U, (1 + eps) * U, 15.0) - U) / (eps * U) == pytest.approx(1.0, rel=1e-3)


def test_data_constrained_law_recovers_r_star_from_repeated_epochs_as_scipy_does():
    from analysis.fit import fit_law
    from analysis.laws import DATA_CONSTRAINED, effective_data

    true = {"E": 1.7, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28, "R_star": 15.0}
    rows = [(n, 4e8 * ep, 4e8) for n in np.geomspace(1e7, 1e9, 4) for ep in (0.5, 1, 2, 4, 8, 16, 32, 64)]
    N, D, U = (np.array(c) for c in zip(*rows))
    rng = np.random.default_rng(1)
    Dp = effective_data(U, D, true["R_star"])
    loss = (true["E"] + true["A"] / N ** true["alpha"] + true["B"] / Dp ** true["beta"]) * np.exp(1e-4 * rng.standard_normal(N.size))
    grid = DATA_CONSTRAINED.grid_points()
    starts = grid[np.sort(np.random.default_rng(0).choice(len(grid), 64, replace=False))]
    # 32 points and 64 starts, as the run-store test below: one compilation serves both
    fit = fit_law(DATA_CONSTRAINED, {"N": N, "D": D, "U": U, "loss": loss}, starts=starts, warn=False)
    assert fit.params["R_star"] == pytest.approx(15.0, rel=0.05) and fit.params["beta"] == pytest.approx(0.28, abs=0.01)

    def by_hand(th, n, d, u):  # th = log A, log B, log E, alpha, beta, log R*
        r = np.exp(th[5])
        dp = np.where(d <= u, d, u + u * r * (1 - np.exp(-(d / u - 1) / r)))
        return np.log(np.exp(th[2]) + np.exp(th[0]) / n ** th[3] + np.exp(th[1]) / dp ** th[4])

    x0 = DATA_CONSTRAINED.from_natural({**true, "R_star": 8.0, "alpha": 0.3, "beta": 0.3})
    ref = _scipy_fit(by_hand, x0, (N, D, U), loss)
    np.testing.assert_allclose(fit.raw, ref, rtol=2e-3, atol=2e-3)


def test_a_run_store_gives_unique_tokens_and_the_data_constrained_law_fits_it(tmp_path):
    import json

    from analysis.data import load_run_store
    from analysis.laws import effective_data
    from analysis.report import fit_and_report
    from test_analysis_data import write_run

    root = tmp_path / "runs"
    true = {"E": 1.7, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    i = 0
    for n in np.geomspace(1e7, 1e9, 4):
        for epochs in (0.5, 1, 3, 9, 27):
            U = 4e8
            D = U * epochs
            L = true["E"] + true["A"] / n ** true["alpha"] + true["B"] / effective_data(U, D, 15.0) ** true["beta"]
            write_run(root, f"r{i}", "done", N=n, D=D, C=6 * n * D, eval_loss=L)
            path = root / f"r{i}" / "summary.json"
            s = json.loads(path.read_text())
            if i % 2:  # what lib/data/text.py describes; else only the loop's epochs
                s["data"] = {"unique_tokens": U}
            s["epochs"] = epochs
            path.write_text(json.dumps(s))
            i += 1
    ds = load_run_store(root)
    np.testing.assert_allclose(ds.points["U"], 4e8, rtol=1e-12)
    rec = fit_and_report(ds, tmp_path / "fit", {"law": "data-constrained", "bootstrap": 0, "n_starts": 64, "figures": False,
                                                 "points": ((1e8, 4e9),)})
    e = rec["fits"]["data-constrained"]
    assert e["params"]["R_star"]["value"] == pytest.approx(15.0, rel=0.05)
    (row,) = e["points_table"]  # U not given: no repetition assumed, D' = D
    assert row["U"] == 4e9 and row["loss"]["value"] == pytest.approx(true["E"] + true["A"] / 1e8 ** 0.34 + true["B"] / 4e9 ** 0.28, rel=2e-3)
    from analysis.predict import predict_points

    (row,) = predict_points(rec, "data-constrained", [1e8], [4e9], U=[4e8])  # ten epochs of 4e8 unique tokens
    assert row["loss"]["value"] == pytest.approx(true["E"] + true["A"] / 1e8 ** 0.34 + true["B"] / effective_data(4e8, 4e9, 15.0) ** 0.28, rel=2e-3)
