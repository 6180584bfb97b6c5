"""`scaling plan --power` (analysis/power.py): each number against an independent computation.

- approach 2 on noiseless data: sd 0, and the bias is what the parabola alone gives (the vertex of
  a plain least-squares parabola through each budget's exact losses vs the brute-force minimum of
  the true law along that IsoFLOP);
- approach 3's per-dataset fits, bootstrap intervals, and so its bias, sd and coverage, against
  scipy.optimize.least_squares on the same simulated datasets and resamples;
- the CLI's --json keys.
"""

import json

import numpy as np
import pytest
from scipy.optimize import least_squares, minimize_scalar

from analysis import power as P
from analysis.bootstrap import resample_weights
from analysis.costmodel import fit_cost_model
from analysis.predict import local_exponents

# a law whose IsoFLOP profile is lopsided (alpha << beta), so a parabola's vertex misses the optimum;
# A and B small, so the parabola's misfit (1e-5 nats) stays below the robust fit's outlier scale
# (1e-4) and the robust parabola is the least-squares one
FLAT = dict(E=0.8, A=0.03, B=0.9, alpha=0.2, beta=0.45)


def _law(t, N, D):
    return t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"]


def _brute_log10_nopt(t, C):
    f = lambda x: _law(t, 10.0**x, C / (6 * 10.0**x))  # noqa: E731
    return minimize_scalar(f, bounds=(2, 9), method="bounded", options={"xatol": 1e-11}).x


def _isoflop_design(t, budgets, offsets, ratio=1.8, floor=None):
    """5 sizes per budget `ratio` apart, centred `offset` decades off the true optimum; C = 6ND."""
    N, D, C = [], [], []
    for c, off in zip(budgets, offsets):
        n = 10 ** (_brute_log10_nopt(t, c) + off + np.log10(ratio) * np.arange(-2, 3))
        N += list(n)
        D += list(c / (6 * n))
        C += [c] * 5
    return P.Design(np.array(N), np.array(D), np.array(C, float), np.array(C, float), floor)


def test_noiseless_approach2_has_no_spread_and_the_parabolas_bias(tmp_path):
    budgets = [1e11, 1e12]
    design = _isoflop_design(FLAT, budgets, offsets=(0.25, -0.2))
    rec = P.power(design, FLAT, P.PowerOptions(n_sims=3, noise=0.0, bootstrap=0, approaches=("2",)))
    true_x = [_brute_log10_nopt(FLAT, c) for c in budgets]
    a_true = (true_x[1] - true_x[0]) / np.log10(budgets[1] / budgets[0])
    assert rec["truth"]["a"] == pytest.approx(a_true, abs=1e-6)
    vertex = []
    for k in range(2):  # the parabola alone: plain least squares through the exact losses, its vertex
        sel = slice(5 * k, 5 * k + 5)
        c2, c1, _ = np.polyfit(np.log10(design.N[sel]), _law(FLAT, design.N[sel], design.D[sel]), 2)
        vertex.append(-c1 / (2 * c2))
    parabola_bias = (vertex[1] - vertex[0]) / np.log10(budgets[1] / budgets[0]) - a_true
    a2 = rec["approaches"]["approach2"]["a"]
    assert a2["sd"] == 0.0 and a2["n"] == 3
    assert abs(parabola_bias) > 5e-3  # the design makes a bias worth measuring
    assert a2["bias"] == pytest.approx(parabola_bias, abs=2e-4)
    assert rec["bracketed_fraction"] == 1.0


def _scipy_fit(log_N, log_D, y, E, x0, delta=1e-3):
    """Approach 3's objective (Huber, delta, on log residuals; E held) by scipy from x0 = (log A, log B, alpha, beta);
    a point's integer weight repeats it."""
    def resid(p):
        a, b, al, be = p
        return y - np.log(np.exp(a - al * log_N) + np.exp(b - be * log_D) + E)

    # from x0 and from two far corners of (alpha, beta): a resample of 15 noisy points can have a second
    # basin (seen: alpha 0.76, beta 0.21 beside alpha 0.24, beta 0.54); the lower Huber objective wins
    fits = [least_squares(resid, x, loss="huber", f_scale=delta, method="trf", xtol=1e-14, ftol=1e-14, gtol=1e-14)
            for x in (x0, [x0[0], x0[1], 0.8, 0.2], [x0[0], x0[1], 0.2, 0.8])]
    return min(fits, key=lambda f: f.cost).x


def _huber_objective(q, log_N, log_D, y, E, delta=1e-3):
    r = y - np.log(np.exp(q[0] - q[2] * log_N) + np.exp(q[1] - q[3] * log_D) + E)
    return np.sum(np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)))


@pytest.mark.timeout(600)
def test_approach3_estimates_and_coverage_match_scipy_on_the_same_datasets(monkeypatch):
    """Per simulated dataset, approach 3's fit equals scipy's; every bootstrap refit is at least as good
    as scipy's best of three starts (a resample can have a second basin that scipy falls into: the
    batched refit must not); bias and sd equal scipy's, and the coverage is the fraction of the refits'
    percentile intervals that hold the truth."""
    truth = dict(E=0.8047, A=2.7132, B=90.661, alpha=0.2, beta=0.45)
    budgets = [1e11, 3e11, 1e12]
    design = _isoflop_design(truth, budgets, offsets=(0.0, 0.1, -0.1), ratio=1.7, floor=truth["E"])
    K, R = 4, 10  # 40 resamples refitted both ways (4 x 11 x 3 scipy fits); power()'s own batched fits are seen
    opts = P.PowerOptions(n_sims=K, noise=0.01, bootstrap=R, seed=3, approaches=("3",))
    seen = []
    batched = P.approach3
    monkeypatch.setattr(P, "approach3", lambda *a: seen.append(batched(*a)) or seen[-1])  # power()'s own call, to see each refit
    rec = P.power(design, truth, opts)
    (a3,) = seen
    Y = P.simulate(design, truth, opts.noise, K, np.random.default_rng(opts.seed))  # the same draws as power()
    cost = fit_cost_model(design.N, design.D, design.C, "recorded")
    c_range = (design.C.min(), design.C.max())
    w = resample_weights(np.arange(design.N.size), R, opts.seed, design.budget)
    x0 = [np.log(truth["A"]), np.log(truth["B"]), truth["alpha"], truth["beta"]]
    lN, lD = np.log(design.N), np.log(design.D)
    est = {k: [] for k in ("a", "alpha", "beta")}
    for k, y in enumerate(np.log(Y)):
        p = _scipy_fit(lN, lD, y, truth["E"], x0)
        assert [a3["params"][n][k] for n in ("alpha", "beta")] == pytest.approx(p[2:], abs=1e-4)
        est["a"].append(float(local_exponents({"E": truth["E"], "A": np.exp(p[0]), "B": np.exp(p[1]), "alpha": p[2], "beta": p[3]},
                                              cost, *c_range)[0]))
        est["alpha"].append(p[2])
        est["beta"].append(p[3])
        assert a3["usable"][k].all()
        for r, wr in enumerate(w):  # a resample: each point repeated by its weight
            rep = np.repeat(np.arange(design.N.size), wr.astype(int))
            q = _scipy_fit(lN[rep], lD[rep], y[rep], truth["E"], p)
            mine = np.array([np.log(a3["samples"]["A"][k, r]), np.log(a3["samples"]["B"][k, r]), a3["samples"]["alpha"][k, r], a3["samples"]["beta"][k, r]])
            f_mine, f_scipy = (_huber_objective(x, lN[rep], lD[rep], y[rep], truth["E"]) for x in (mine, q))
            assert f_mine <= f_scipy * (1 + 1e-6) + 1e-15
    e3 = rec["approaches"]["approach3"]
    assert "E" not in e3 and e3["E_pinned"] == truth["E"]
    for key in ("a", "alpha", "beta"):
        true = rec["truth"][key]
        v = np.array(est[key])
        assert e3[key]["bias"] == pytest.approx(v.mean() - true, abs=1e-4)
        assert e3[key]["sd"] == pytest.approx(v.std(ddof=1), rel=1e-3)
        smp = a3["a_samples"] if key == "a" else a3["samples"][key]
        lo, hi = np.percentile(smp, [2.5, 97.5], axis=1)
        assert e3[key]["coverage"] == np.mean((lo <= true) & (true <= hi))


def test_plan_power_json_has_the_issues_keys(tmp_path, monkeypatch, capsys):
    from experiments.cli import main
    from test_allocation import LADDER
    from test_sweep_support import clean_env

    for k, v in clean_env(tmp_path).items():  # what the command would see as a fresh process, in-process (no jax import twice)
        if k in ("HOME", "WANDB_MODE", "HF_HOME"):
            monkeypatch.setenv(k, v)
    exp = tmp_path / "alloc.py"
    exp.write_text(LADDER)  # a small IsoFLOP experiment (2 budgets, no tune stage): a quick plan
    code = main(["plan", str(exp), "--power", "--truth", "alpha=0.3,beta=0.3,A=5,B=60", "--noise", "0.01", "--sims", "3",
                 "--bootstrap", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    rec = json.loads(out)
    assert {"n_sims", "noise", "truth", "approaches", "bracketed_fraction", "check_power", "compute", "est_seconds"} <= set(rec)
    assert rec["n_sims"] == 3 and rec["noise"] == 0.01
    from lib.config import DataConfig
    from lib.data import make_source

    assert rec["truth"]["E"] == make_source(DataConfig(seq_len=16, global_batch=16)).entropy_floor  # E defaults to the source's floor
    assert set(rec["approaches"]) == {"approach2", "approach3"} and "approach1" in rec["skipped"]
    assert set(rec["approaches"]["approach3"]) >= {"a", "alpha", "beta"}
    for stats in (rec["approaches"]["approach3"]["a"], rec["approaches"]["approach2"]["a"]):
        assert {"bias", "sd", "coverage"} <= set(stats)
    assert 0 <= rec["bracketed_fraction"] <= 1 and rec["compute"] > 0 and rec["est_seconds"] is None
    from experiments.workflow.plan import format_power

    text = format_power(rec)  # what the command prints without --json
    assert "approach3" in text and "allocation check at C = 3.6e+09" in text
    code = main(["plan", str(exp), "--power", "--truth", "alpha=0.2,gamma=1"])
    _, err = capsys.readouterr()
    assert code == 2 and "gamma" in err and err.count("\n") == 1, err
