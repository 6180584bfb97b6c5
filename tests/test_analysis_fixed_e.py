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


def test_noise_free_data_give_back_the_law():
    fit = fit_law(chinchilla_fixed_E(0.8), _data(0.0))
    assert fit.params == pytest.approx(TRUTH, rel=1e-6)


def test_the_fit_equals_scipys_huber_least_squares_with_E_held():
    data, delta = _data(0.003), 1e-3
    fit = fit_law(chinchilla_fixed_E(0.8), data, delta=delta)
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
