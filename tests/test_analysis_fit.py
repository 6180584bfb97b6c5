"""The fitting machine: the batched L-BFGS against scipy's, recovery of known laws, its warnings."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from analysis import fit
from analysis.errors import AnalysisError, FitWarning
from analysis.laws import CHINCHILLA, KAPLAN, get_law
from analysis.lbfgs import LbfgsConfig

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_points(seed=0, sigma=0.005, n_sizes=12, n_ratios=10, params=TRUE):
    """N from 2e7 to 4e9, 3 to 300 tokens per parameter, multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    N, R = np.meshgrid(np.geomspace(2e7, 4e9, n_sizes), np.geomspace(3, 300, n_ratios))
    N, D = N.ravel(), (N * R).ravel()
    L = params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]
    return {"N": N, "D": D, "loss": L * np.exp(sigma * rng.standard_normal(N.size))}


def subset(law, k, seed=0):
    g = law.grid_points()
    return g[np.sort(np.random.default_rng(seed).choice(len(g), k, replace=False))]


def huber_objective_numpy(theta, lN, lD, ly, delta=1e-3):
    """Written out independently of analysis.laws: sum of Huber losses of log residuals, and its
    gradient, for theta = (log A, log B, log E, alpha, beta)."""
    a, b, e, al, be = theta
    t = np.stack([a - al * lN, b - be * lD, np.full_like(lN, e)])
    m = t.max(axis=0)
    ex = np.exp(t - m)
    s = ex.sum(axis=0)
    r = ly - (m + np.log(s))
    f = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = -np.clip(r, -delta, delta) / s  # d f / d prediction, times 1/s
    g = np.array([dr @ ex[0], dr @ ex[1], dr @ ex[2], -(dr * ex[0]) @ lN, -(dr * ex[1]) @ lD])
    return f, g


def test_objective_matches_an_independent_numpy_computation():
    d = chinchilla_points()
    lx, ly = fit.inputs_matrix(CHINCHILLA, d)
    theta = np.array([6.0, 6.1, 0.5, 0.33, 0.29])
    ours = fit.objective(CHINCHILLA, theta, lx, ly, np.ones_like(ly), 1e-3, xp=np)
    f, _ = huber_objective_numpy(theta, np.log(d["N"]), np.log(d["D"]), np.log(d["loss"]))
    assert ours == pytest.approx(f, rel=1e-12)


def test_batched_lbfgs_reaches_the_same_optimum_as_scipy_lbfgsb():
    d = chinchilla_points(seed=3, sigma=0.01)
    lN, lD, ly = np.log(d["N"]), np.log(d["D"]), np.log(d["loss"])
    starts = subset(CHINCHILLA, 8, seed=1)
    lx_ly = fit.inputs_matrix(CHINCHILLA, d)
    # float64 throughout, start by start comparable with scipy
    theta, value, _, status = fit.solve(CHINCHILLA, starts, *lx_ly, np.ones((8, ly.size)), fit.SolverConfig(float32_first=False))
    # the default (float32 presolve, float64 polish of the best) must find the same best
    _, value_mixed, _, _ = fit.solve(CHINCHILLA, starts, *lx_ly, np.ones((8, ly.size)))
    ref = [
        minimize(huber_objective_numpy, s, args=(lN, lD, ly), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
        for s in starts
    ]
    ref_f = np.array([r.fun for r in ref])
    best, ref_best = np.argmin(value), np.argmin(ref_f)
    # same optimum: objective equal to 1e-7 relative, parameters to 1e-3
    assert value[best] <= ref_f[ref_best] * (1 + 1e-7)
    assert value[best] == pytest.approx(ref_f[ref_best], rel=1e-7)
    assert value_mixed.min() == pytest.approx(ref_f[ref_best], rel=1e-7)
    np.testing.assert_allclose(theta[best], ref[ref_best].x, rtol=1e-3, atol=1e-4)
    # and start by start, where both land in the same basin
    same = np.abs(value - ref_f) <= 1e-7 * ref_f
    assert same.sum() >= 4
    for i in np.flatnonzero(same):
        np.testing.assert_allclose(theta[i], ref[i].x, rtol=1e-3, atol=1e-4)


def test_recovers_a_known_chinchilla_law_within_stated_tolerances():
    d = chinchilla_points(seed=0, sigma=0.005)
    res = fit.fit_law(CHINCHILLA, d, starts=subset(CHINCHILLA, 256))
    p = res.params
    # tolerances for 120 points with 0.5% noise: E within 2%, exponents within 0.02, A and B
    # (strongly correlated with the exponents) within 30%
    assert p["E"] == pytest.approx(TRUE["E"], rel=0.02)
    assert p["alpha"] == pytest.approx(TRUE["alpha"], abs=0.02)
    assert p["beta"] == pytest.approx(TRUE["beta"], abs=0.02)
    assert p["A"] == pytest.approx(TRUE["A"], rel=0.3)
    assert p["B"] == pytest.approx(TRUE["B"], rel=0.3)
    assert res.converged and res.n_points == 120


def test_recovers_noise_free_laws_almost_exactly():
    d = chinchilla_points(sigma=0.0)
    p = fit.fit_law(CHINCHILLA, d, starts=subset(CHINCHILLA, 256)).params
    for k, v in TRUE.items():
        assert p[k] == pytest.approx(v, rel=2e-3), k


def test_recovers_a_power_law_in_compute():
    rng = np.random.default_rng(1)
    C = np.geomspace(1e17, 1e21, 40)
    L = (2.0 + 1e3 * C**-0.15) * np.exp(0.002 * rng.standard_normal(C.size))
    res = fit.fit_law(get_law("power-C"), {"C": C, "loss": L})
    assert res.params["alpha"] == pytest.approx(0.15, abs=0.01)
    assert res.params["E"] == pytest.approx(2.0, rel=0.03)
    assert res.n_starts == len(get_law("power-C").grid_points())


def test_recovers_kaplans_law():
    k = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    N, D = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 8), np.geomspace(1e8, 1e11, 8)))
    L = ((k["N_c"] / N) ** (k["alpha_N"] / k["alpha_D"]) + k["D_c"] / D) ** k["alpha_D"]
    res = fit.fit_law(KAPLAN, {"N": N, "D": D, "loss": L}, starts=subset(KAPLAN, 64))
    assert res.params["alpha_N"] == pytest.approx(0.076, rel=0.01)
    assert res.params["alpha_D"] == pytest.approx(0.095, rel=0.01)
    assert np.log10(res.params["N_c"]) == pytest.approx(np.log10(8.8e13), abs=0.05)


def test_fewer_points_than_parameters_is_an_error():
    d = {k: v[:4] for k, v in chinchilla_points().items()}
    with pytest.raises(AnalysisError, match="4 data points cannot determine the 5 parameters"):
        fit.fit_law(CHINCHILLA, d)


def test_warns_when_the_fit_lies_outside_the_starting_grid():
    # E = 30: e = log E = 3.4, far beyond the grid's e in [-1, 1]
    d = chinchilla_points(sigma=0.0, params={**TRUE, "E": 30.0})
    with pytest.warns(FitWarning, match="outside the starting grid in e="):
        res = fit.fit_law(CHINCHILLA, d, starts=subset(CHINCHILLA, 128))
    assert any("widen the grid" in w for w in res.warnings)


def test_edge_rule_warns_only_when_no_interior_start_reaches_the_best_objective():
    grid = CHINCHILLA.grid_points()
    ends = np.tile([6.0, 6.0, 0.5, 0.3, 0.3], (len(grid), 1))  # all inside the grid's span
    value = np.ones(len(grid))
    edge = int(np.flatnonzero(grid[:, 3] == 2.0)[0])  # alpha start 2.0: the grid's edge
    interior = int(np.flatnonzero(np.all((grid > grid.min(0)) & (grid < grid.max(0)), axis=1))[0])
    value[edge] = 0.5
    msgs = fit._grid_warnings(CHINCHILLA, grid, ends, value, edge, is_grid=True)
    assert len(msgs) == 1 and "reached only from starts on the grid's edge" in msgs[0]
    value[interior] = 0.5 * (1 + 1e-9)  # an interior start reaches the same optimum
    assert fit._grid_warnings(CHINCHILLA, grid, ends, value, edge, is_grid=True) == []


def test_parameter_that_never_moves_is_reported():
    # loss depends on D only; from a start where the N term is already ~e^-41 of the loss,
    # the data cannot move a or alpha
    d = chinchilla_points(sigma=0.0, params={**TRUE, "A": 1e-30})
    with pytest.warns(FitWarning, match=r"parameter\(s\) a, alpha did not move"):
        fit.fit_law(CHINCHILLA, d, starts=np.array([[0.0, 5.0, 0.0, 2.0, 0.5]]))


def test_no_convergence_is_reported():
    d = chinchilla_points()
    with pytest.warns(FitWarning, match="did not converge"):
        res = fit.fit_law(CHINCHILLA, d, starts=subset(CHINCHILLA, 16), config=fit.SolverConfig(float32_first=False, lbfgs=LbfgsConfig(maxiter=3)))
    assert not res.converged and res.status == "max iterations"


def test_clean_fit_has_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        res = fit.fit_law(CHINCHILLA, chinchilla_points(), starts=subset(CHINCHILLA, 256))
    assert res.warnings == ()


def test_non_positive_values_reaching_the_fitter_are_refused():
    d = chinchilla_points()
    d["loss"][3] = -1.0
    with pytest.raises(AnalysisError, match="column loss has 1 non-positive"):
        fit.fit_law(CHINCHILLA, d)


def _rosenbrock_vg():
    import jax

    def f(x, a):
        return (a - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2

    batched = jax.vmap(jax.value_and_grad(f))

    def vg(x, a, shared):
        return batched(x, a)

    return vg


ROSENBROCK_VG = _rosenbrock_vg()


def test_batched_lbfgs_solves_each_problem_and_keeps_them_in_order():
    """200 Rosenbrock problems with different minima (a, a^2); they finish at different
    iterations, so the batch shrinks (256 -> 64 rows) while they run."""
    import jax
    import jax.numpy as jnp

    from analysis import lbfgs

    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 2.0, 200)
    x0 = rng.uniform(-2.0, 2.0, (200, 2))
    with jax.enable_x64(True):
        x, f, it, status = lbfgs.minimize(ROSENBROCK_VG, jnp.asarray(x0), jnp.asarray(a), (), LbfgsConfig(gtol=1e-9, chunk=5))
    assert np.all(np.isin(status, lbfgs.CONVERGED))
    np.testing.assert_allclose(x[:, 0], a, rtol=1e-5)
    np.testing.assert_allclose(x[:, 1], a**2, rtol=1e-5)
    assert np.all(f < 1e-12) and it.min() < it.max()  # problems did finish at different times


def test_float32_presolve_reaches_the_float64_optimum():
    d = chinchilla_points(seed=5, sigma=0.01)
    starts = subset(CHINCHILLA, 256, seed=2)
    mixed = fit.fit_law(CHINCHILLA, d, starts=starts, warn=False)
    f64 = fit.fit_law(CHINCHILLA, d, starts=starts, config=fit.SolverConfig(float32_first=False), warn=False)
    assert mixed.objective == pytest.approx(f64.objective, rel=1e-9)
    np.testing.assert_allclose(mixed.raw, f64.raw, rtol=1e-4, atol=1e-6)
