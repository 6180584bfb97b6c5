"""Chinchilla's law with E pinned at a known floor (analysis/laws.py chinchilla_fixed_E), checked
against scipy's own robust least squares on the same objective."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares

from analysis.errors import AnalysisError
from analysis.fit import fit_law
from analysis.laws import CHINCHILLA, chinchilla_fixed_E

TRUTH = dict(E=0.8, A=300.0, B=200.0, alpha=0.3, beta=0.23)


def _data(noise, seed=0):
    rng = np.random.default_rng(seed)
    N = np.repeat([1e4, 3e4, 1e5, 3e5, 1e6], 4)
    D = np.tile([1e6, 3e6, 1e7, 3e7], 5)
    return pd.DataFrame({"N": N, "D": D, "loss": CHINCHILLA.predict(TRUTH, N=N, D=D) * np.exp(rng.normal(0, noise, N.size))})


def _starts(law, every=15):
    return law.grid_points()[::every]  # 60 of the 900 starts: these data have one basin


def test_noise_free_data_give_back_the_law():
    law = chinchilla_fixed_E(0.8)
    fit = fit_law(law, _data(0.0), starts=_starts(law))
    assert fit.params == pytest.approx(TRUTH, rel=1e-6)


def test_the_fit_equals_scipys_huber_least_squares_with_E_held():
    data, delta = _data(0.003), 1e-3
    law = chinchilla_fixed_E(0.8)
    fit = fit_law(law, data, delta=delta, starts=_starts(law))
    logN, logD, logL = (np.log(data[c].to_numpy()) for c in ("N", "D", "loss"))

    def residuals(p):  # p = log A, log B, alpha, beta; E = 0.8 fixed
        return np.log(0.8 + np.exp(p[0] - p[2] * logN) + np.exp(p[1] - p[3] * logD)) - logL

    # scipy's "huber" is the same Huber function of r / f_scale, up to a constant factor
    ref = least_squares(residuals, [np.log(300), np.log(200), 0.3, 0.23], loss="huber", f_scale=delta, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    expect = {"A": np.exp(ref.x[0]), "B": np.exp(ref.x[1]), "alpha": ref.x[2], "beta": ref.x[3]}
    assert {k: fit.params[k] for k in expect} == pytest.approx(expect, rel=1e-4)
    assert fit.params["E"] == 0.8


def test_a_bad_floor_is_a_named_error():
    with pytest.raises(AnalysisError, match="fixed E"):
        chinchilla_fixed_E(0.0)
    law = chinchilla_fixed_E(1.7)
    assert law.to_natural(law.from_natural({**TRUTH, "E": 1.7}))["E"] == pytest.approx(1.7)


def test_approach3_holds_E_at_a_known_floor_and_keeps_the_free_fit_as_a_diagnostic():
    """A dataset whose every run records the floor: approach 3's primary fit holds E there; the free-E
    fit sits beside it with both fits' predictions at 10x and 100x, each the brute-force minimum of
    its own law along the budget (C = 6ND here)."""
    from dataclasses import replace

    from analysis.data import from_frame
    from analysis.pipeline import FitOptions, pinned_E, run_fits

    ds = replace(from_frame(_data(0.0)), entropy_floor=0.8)
    record = run_fits(ds, FitOptions(approach="3", bootstrap=0, n_starts=64))
    e3 = record["fits"]["approach3"]
    assert e3["E_pinned"] == {"value": 0.8, "source": "the entropy floor every run records"}
    assert {k: v["value"] for k, v in e3["params"].items()} == pytest.approx(TRUTH, rel=1e-6)
    free = record["approach3_free_E"]
    c_max = record["data_range"]["C"][1]
    for key, params in (("E_pinned", {k: v["value"] for k, v in e3["params"].items()}), ("E_free", free["params"])):
        for row, C in zip(free["predictions"][key], (10 * c_max, 100 * c_max)):
            N = np.geomspace(1e2, 1e12, 200_001)
            L = params["E"] + params["A"] / N ** params["alpha"] + params["B"] / (C / (6 * N)) ** params["beta"]
            assert row["C"] == pytest.approx(C) and row["N_opt"] == pytest.approx(N[np.argmin(L)], rel=1e-3)
            assert row["loss"] == pytest.approx(L.min(), rel=1e-9)
    # --free-E: E free whatever the floor; --fix-E pins a CSV's E (which records no floor); 0 pins nothing
    assert pinned_E(0.8, FitOptions(free_E=True)) == (None, None)
    assert pinned_E(None, FitOptions(fix_E=0.8)) == (0.8, "--fix-E") and pinned_E(0.8, FitOptions(fix_E=0.7))[0] == 0.7
    assert pinned_E(None, FitOptions()) == (None, None) and pinned_E(0.8, FitOptions(fix_E=0.0)) == (None, None)
