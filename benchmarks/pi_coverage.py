"""How often approach 3's 95% prediction interval holds a new run's loss, on simulated IsoFLOP data.

    python benchmarks/pi_coverage.py [--sims 200] [--resamples 100] [--noise 0.002] [--starts 64]

Each simulation draws the quickstart-like design (3 budgets x 5 sizes = 15 points, the sizes
spanning 8x either side of eq. 4's optimum) from a known Chinchilla law with multiplicative
Gaussian noise, fits it (a seeded subset of the grid's starts), bootstraps it, and asks for the
prediction interval of a NEW run drawn from the same law at three (N, D): the middle budget's
optimum (inside the data), a 4x over-trained model at 10x the largest budget (extrapolation), and
the largest budget's optimum. Four constructions, the same refits and draws:

  new    residual scale sqrt(RSS / (n - k)) (analysis.predict.residual_scale), bootstrap stratified by budget
  old    the in-sample RMSE (what fit.json's pi used before), resampling points across budgets
  rmse   the in-sample RMSE, stratified bootstrap (the dof correction alone)
  plain  the corrected scale, points across budgets (the stratification alone)

Prints a table of coverage per point and construction (with its binomial standard error) and
writes benchmarks/results/pi_coverage.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.bootstrap import bootstrap_law  # noqa: E402
from analysis.fit import fit_law  # noqa: E402
from analysis.laws import CHINCHILLA  # noqa: E402
from analysis.predict import prediction_band  # noqa: E402
from benchmarks.results_io import write_json  # noqa: E402

LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
G_TRUE = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
BUDGETS = (1e18, 1e19, 1e20)


def law(N, D):
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def n_opt(C):
    return G_TRUE * (C / 6) ** A_TRUE


def design():
    rows = [(N, C / (6 * N), C) for C in BUDGETS for N in n_opt(C) * np.geomspace(1 / 8, 8, 5)]
    N, D, C = (np.array(c) for c in zip(*rows))
    return N, D, C


QUERIES = {  # name -> (N, D)
    "middle budget's optimum": (n_opt(1e19), 1e19 / (6 * n_opt(1e19))),
    "4x over-trained at 10x C_max": (n_opt(1e21) / 2, 1e21 / (6 * n_opt(1e21) / 2)),
    "largest budget's optimum": (n_opt(1e20), 1e20 / (6 * n_opt(1e20))),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=100)
    ap.add_argument("--noise", type=float, default=0.002, help="relative noise of a run's loss")
    ap.add_argument("--starts", type=int, default=64)
    ap.add_argument("--out", default="pi_coverage.json")
    args = ap.parse_args(argv)

    N, D, C = design()
    n, k = N.size, CHINCHILLA.n_params
    grid = CHINCHILLA.grid_points()
    starts = grid[np.sort(np.random.default_rng(0).choice(len(grid), args.starts, replace=False))]
    qN = np.array([q[0] for q in QUERIES.values()])
    qD = np.array([q[1] for q in QUERIES.values()])
    log_q = np.log(np.stack([qN, qD]))
    truth = law(qN, qD)
    hits = {c: [] for c in ("new", "old", "rmse", "plain")}
    widths = {c: [] for c in hits}
    t0 = time.perf_counter()
    for sim in range(args.sims):
        rng = np.random.default_rng(1000 + sim)
        loss = law(N, D) * np.exp(args.noise * rng.standard_normal(n))
        data = {"N": N, "D": D, "loss": loss}
        fit = fit_law(CHINCHILLA, data, starts=starts, warn=False)
        resid = CHINCHILLA.predict(fit.params, N=N, D=D) - loss
        scale = {"s": float(np.sqrt(resid @ resid / (n - k))), "rmse": float(np.sqrt(np.mean(resid**2)))}
        preds = {}
        for name, strata in (("strat", C), ("plain", None)):
            boot = bootstrap_law(CHINCHILLA, data, fit, args.resamples, seed=sim, strata=strata)
            ok = boot.converged & np.all(np.isfinite(boot.raw), axis=1)
            preds[name] = np.exp(CHINCHILLA.log_predict(boot.raw[ok], log_q, np))  # [R, 3]
        new_run = truth * np.exp(args.noise * rng.standard_normal(truth.size))  # a new run at each query
        for c, (p, s) in {"new": ("strat", "s"), "old": ("plain", "rmse"), "rmse": ("strat", "rmse"), "plain": ("plain", "s")}.items():
            lo, hi = prediction_band(preds[p], scale[s], 0.95)
            hits[c].append((lo <= new_run) & (new_run <= hi))
            widths[c].append(hi - lo)
        if (sim + 1) % 25 == 0:
            print(f"  {sim + 1} simulations, {time.perf_counter() - t0:.0f}s", flush=True)
    out = {"sims": args.sims, "resamples": args.resamples, "noise": args.noise, "starts": args.starts, "n_points": int(n),
           "n_params": int(k), "queries": {q: {"N": float(a), "D": float(b)} for q, (a, b) in QUERIES.items()},
           "seconds": time.perf_counter() - t0, "coverage": {}, "mean_width_nats": {}}
    print(f"\n95% prediction interval coverage over {args.sims} simulations ({n} points, {k} parameters, noise {args.noise:g}):")
    print(f"{'construction':<8} " + " ".join(f"{q:>30}" for q in QUERIES))
    for c in hits:
        h = np.array(hits[c])  # [sims, 3]
        cov = h.mean(axis=0)
        se = np.sqrt(cov * (1 - cov) / len(h))
        out["coverage"][c] = dict(zip(QUERIES, cov.tolist()))
        out["mean_width_nats"][c] = dict(zip(QUERIES, np.mean(widths[c], axis=0).tolist()))
        print(f"{c:<8} " + " ".join(f"{f'{v:.1%} +- {e:.1%}':>30}" for v, e in zip(cov, se)))
    path = write_json(args.out, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
