"""Bootstrap intervals: seeded, resampling whole runs, and covering the truth in most seeds."""

import warnings

import numpy as np
import pytest

from analysis import fit
from analysis.bootstrap import bootstrap_law, distinct_starts, interval, resample_weights
from analysis.laws import CHINCHILLA

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def points(seed, sigma=0.01):
    rng = np.random.default_rng(seed)
    N, R = np.meshgrid(np.geomspace(2e7, 4e9, 8), np.geomspace(3, 300, 8))
    N, D = N.ravel(), (N * R).ravel()
    L = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
    return {"N": N, "D": D, "loss": L * np.exp(sigma * rng.standard_normal(N.size))}


STARTS = CHINCHILLA.grid_points()[np.sort(np.random.default_rng(0).choice(4500, 64, replace=False))]


def test_resample_weights_are_seeded_multinomial_counts():
    w1, w2 = resample_weights(np.arange(50), 20, seed=7), resample_weights(np.arange(50), 20, seed=7)
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, resample_weights(np.arange(50), 20, seed=8))
    assert w1.shape == (20, 50) and np.all(w1.sum(axis=1) == 50) and np.all(w1 >= 0)


def test_resampling_runs_keeps_each_runs_points_together():
    groups = np.repeat(["r0", "r1", "r2", "r3", "r4"], 4)  # 5 runs, 4 points each
    w = resample_weights(groups, 100, seed=0)
    for g in np.unique(groups):
        cols = w[:, groups == g]
        assert np.all(cols == cols[:, :1])  # a run's points share one weight
    assert np.all(w.sum(axis=1) == 20)  # 5 runs drawn, 4 points each


def test_interval_is_the_percentile_interval():
    x = np.arange(1001, dtype=float)
    assert interval(x, 0.9) == pytest.approx([50.0, 950.0])
    assert np.isnan(interval([np.nan, np.nan])).all()  # no finite sample: no interval
    assert interval([np.nan, 1.0, np.inf, 3.0], 1.0) == [1.0, 3.0]  # only the finite samples count


def test_same_seed_same_intervals_and_resamples_start_from_distinct_optima():
    d = points(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit.fit_law(CHINCHILLA, d, starts=STARTS)
    s = distinct_starts(res, 3)
    np.testing.assert_array_equal(s[0], res.raw)
    assert all(np.max(np.abs(s[i] - s[j])) > 1e-2 for i in range(len(s)) for j in range(i))
    b1 = bootstrap_law(CHINCHILLA, d, res, n_resamples=40, seed=3, n_starts=2)
    b2 = bootstrap_law(CHINCHILLA, d, res, n_resamples=40, seed=3, n_starts=2)
    np.testing.assert_array_equal(b1.raw, b2.raw)
    assert b1.converged.mean() > 0.9


def test_bootstrap_intervals_cover_the_truth_in_most_seeds():
    seeds = range(8)
    covered = {k: 0 for k in ("E", "alpha", "beta", "A", "B")}
    for seed in seeds:
        d = points(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit.fit_law(CHINCHILLA, d, starts=STARTS)
        boot = bootstrap_law(CHINCHILLA, d, res, n_resamples=100, seed=seed, n_starts=2)
        for k in covered:
            lo, hi = interval(boot.natural[k], 0.95)
            covered[k] += lo <= TRUE[k] <= hi
        # and informative: 64 points with 1% noise pin the exponents to about +-0.05
        for k, width in (("alpha", 0.15), ("beta", 0.15), ("E", 0.3)):
            lo, hi = interval(boot.natural[k], 0.95)
            assert 0 < hi - lo < width, (seed, k, lo, hi)
    # nominal 95%: at least 6 of 8 seeds for every parameter
    assert all(c >= 6 for c in covered.values()), covered


def test_stratified_resamples_keep_each_budgets_count_and_runs_whole():
    strata = np.repeat([0, 1, 2], [4, 6, 5])
    groups = np.array([f"r{i // 2}" for i in range(15)])  # runs of 2 points (the last run alone)
    groups[8:10] = ["x", "x"]
    w = resample_weights(groups, 500, seed=0, strata=strata)
    for s in range(3):  # each budget keeps its number of points in every resample... (runs of equal size here)
        units = np.unique(groups[strata == s])
        drawn = np.stack([w[:, np.flatnonzero(groups == u)[0]] for u in units], axis=1)
        assert np.all(drawn.sum(axis=1) == units.size)  # ...as many runs drawn as the budget has
        assert drawn.mean() == pytest.approx(1.0, abs=0.1)
    for u in np.unique(groups):  # a run's points share a weight
        cols = w[:, groups == u]
        assert np.all(cols == cols[:, :1])
    np.testing.assert_array_equal(w, resample_weights(groups, 500, seed=0, strata=strata))
