"""Functional forms and the compute-optimal closed forms, checked against independent arithmetic."""

import numpy as np
import pytest

from analysis import approaches as ap
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
