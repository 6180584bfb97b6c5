"""How fast the fitting machine is: the 4,500-start Chinchilla fit and a 1,000-resample bootstrap
on the Chinchilla points, against a plain scipy L-BFGS-B loop over the same starts (which must
give the same result). Goals: at least 20x faster than the loop; the bootstrap under a minute
on 2 CPU cores.

    python benchmarks/fit_speed.py [--resamples 1000] [--scipy-starts 4500] [--scipy-resamples 1000]

Data: tests/fixtures/epoch_chinchilla (Besiroglu et al. 2024's reconstruction of Hoffmann et al.
2022, Fig. 4), the 5 highest-loss points dropped as in the replication; D = C/(6N).
The scipy loop is given the objective's exact gradient (numpy), so it is a fair baseline:
`scipy.optimize.minimize(method="L-BFGS-B", jac=True)`, one start at a time, with tolerances
tight enough to reach the same optimum (ftol 1e-15, gtol 1e-10). With scipy's default ftol
(2.2e-9, relative to max(|f|, 1)) a summed Huber objective of ~1e-3 stops after a few steps:
the grid search still finds the optimum from some start, but bootstrap refits barely leave the
full-data fit and the intervals come out far too narrow (`--scipy-tol default` shows it).
`--scipy-starts K` / `--scipy-resamples K` time the loop on the first K only and scale its time
up (the table says so). "cold" includes JAX compilation (a first call in a fresh
process), "warm" is a second call. Ours: every start in float32 first, then a float64 polish of
the starts within 1% of the best (analysis.fit.SolverConfig); the result must match scipy's.
The scipy loop runs with BLAS pinned to one thread (a 240-point dot product gains nothing from
threads, and on a busy machine idle BLAS threads slow it several-fold).
Prints a table; writes benchmarks/results/fit_speed.json.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.bootstrap import bootstrap_law, distinct_starts, interval, resample_weights  # noqa: E402
from analysis.data import apply_filters, from_frame  # noqa: E402
from analysis.fit import fit_law  # noqa: E402
from analysis.laws import CHINCHILLA  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "epoch_chinchilla" / "svg_extracted_data.csv"
RESULTS = ROOT / "benchmarks" / "results" / "fit_speed.json"
DELTA = 1e-3


def chinchilla_points() -> pd.DataFrame:
    raw = pd.read_csv(FIXTURE).rename(columns={"Model Size": "N", "Training FLOP": "C"})
    return apply_filters(from_frame(raw[["N", "C", "loss"]]), exclude_top_loss=5).points


def objective_and_grad(theta, lN, lD, ly, w):
    """Weighted summed Huber loss of log residuals and its exact gradient (numpy)."""
    a, b, e, al, be = theta
    t = np.stack([a - al * lN, b - be * lD, np.full_like(lN, e)])
    m = t.max(axis=0)
    ex = np.exp(t - m)
    s = ex.sum(axis=0)
    r = ly - (m + np.log(s))
    absr = np.abs(r)
    f = np.sum(w * np.where(absr <= DELTA, 0.5 * r * r, DELTA * (absr - 0.5 * DELTA)))
    dr = -w * np.clip(r, -DELTA, DELTA) / s
    return f, np.array([dr @ ex[0], dr @ ex[1], dr @ ex[2], -(dr * ex[0]) @ lN, -(dr * ex[1]) @ lD])


SCIPY_TOL = {"tight": {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 15000, "maxfun": 30000}, "default": {}}


def scipy_loop(starts, lN, lD, ly, weights, tol="tight"):
    from scipy.optimize import minimize

    xs, fs = [], []
    for x0, w in zip(starts, weights):
        r = minimize(objective_and_grad, x0, args=(lN, lD, ly, w), jac=True, method="L-BFGS-B", options=SCIPY_TOL[tol])
        xs.append(r.x)
        fs.append(r.fun)
    return np.array(xs), np.array(fs)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--bootstrap-starts", type=int, default=3, help="starts per resample (default 3)")
    ap.add_argument("--scipy-starts", type=int, default=4500, help="time the scipy loop on the first K grid starts")
    ap.add_argument("--scipy-resamples", type=int, default=1000, help="time the scipy bootstrap on the first K resamples")
    ap.add_argument("--scipy-tol", choices=list(SCIPY_TOL), default="tight", help="scipy's tolerances (default tight: the same optimum)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    pts = chinchilla_points()
    lN, lD, ly = (np.log(pts[c].to_numpy()) for c in ("N", "D", "loss"))
    grid = CHINCHILLA.grid_points()

    # -- the 4,500-start fit --------------------------------------------------------------------
    res, t_cold = timed(fit_law, CHINCHILLA, pts)
    res, t_warm = timed(fit_law, CHINCHILLA, pts)
    k = min(args.scipy_starts, len(grid))
    (sx, sf), t_scipy = timed(scipy_loop, grid[:k], lN, lD, ly, np.ones((k, ly.size)), args.scipy_tol)
    t_scipy_all = t_scipy * len(grid) / k
    best = int(np.argmin(sf))
    rel_f = (sf[best] - res.objective) / sf[best]
    rel_x = float(np.max(np.abs(sx[best] - res.raw) / np.maximum(np.abs(res.raw), 1e-12)))
    fit_row = {
        "starts": len(grid),
        "ours_cold_s": t_cold,
        "ours_warm_s": t_warm,
        "scipy_s": t_scipy_all,
        "scipy_starts_timed": k,
        "speedup_warm": t_scipy_all / t_warm,
        "speedup_cold": t_scipy_all / t_cold,
        "ours_objective": res.objective,
        "scipy_objective": float(sf[best]),
        "objective_rel_diff": float(rel_f),
        "params_max_rel_diff": rel_x,
        "same_result": bool(abs(rel_f) < 1e-6 and rel_x < 1e-3),
        "scipy_tol": args.scipy_tol,
        "ours_params": res.params,
        "scipy_params": {n: float(v) for n, v in CHINCHILLA.to_natural(sx[best]).items()},
    }

    # -- the bootstrap --------------------------------------------------------------------------
    R = args.resamples
    boot, t_boot = timed(bootstrap_law, CHINCHILLA, pts, res, R, 0, None, args.bootstrap_starts)
    boot, t_boot_warm = timed(bootstrap_law, CHINCHILLA, pts, res, R, 0, None, args.bootstrap_starts)
    kr = min(args.scipy_resamples, R)
    starts = distinct_starts(res, args.bootstrap_starts)
    w = resample_weights(np.arange(ly.size), R, 0)[:kr]
    t0 = time.perf_counter()
    s_best, s_f = [], []
    for wi in w:
        xs, fs = scipy_loop(starts, lN, lD, ly, np.tile(wi, (len(starts), 1)), args.scipy_tol)
        s_best.append(xs[np.argmin(fs)])
        s_f.append(fs.min())
    t_scipy_boot = (time.perf_counter() - t0) * R / kr
    s_nat = CHINCHILLA.to_natural(np.array(s_best))
    agree = {n: float(np.median(np.abs(boot.natural[n][:kr] - s_nat[n]) / np.abs(s_nat[n]))) for n in CHINCHILLA.names}
    ours_f = np.array([objective_and_grad(x, lN, lD, ly, wi)[0] for x, wi in zip(boot.raw[:kr], w)])
    f_rel = (ours_f - np.array(s_f)) / np.array(s_f)  # > 0: ours worse
    boot_row = {
        "resamples": R,
        "starts_per_resample": len(starts),
        "ours_cold_s": t_boot,
        "ours_warm_s": t_boot_warm,
        "scipy_s": t_scipy_boot,
        "scipy_resamples_timed": kr,
        "speedup_warm": t_scipy_boot / t_boot_warm,
        "median_rel_diff_per_resample": agree,
        "objective_rel_diff_max": float(f_rel.max()),
        "resamples_ours_worse_by_1e-6": int(np.sum(f_rel > 1e-6)),
        "resamples_scipy_worse_by_1e-6": int(np.sum(f_rel < -1e-6)),
        "scipy_tol": args.scipy_tol,
        "converged_fraction": float(boot.converged.mean()),
        "ci95": {n: interval(boot.natural[n]) for n in CHINCHILLA.names},
    }

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "data": {"points": int(len(pts)), "source": str(FIXTURE.relative_to(ROOT))},
        "fit": fit_row,
        "bootstrap": boot_row,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    scaled = lambda n, of: "" if n == of else f" (timed {n}/{of}, scaled)"  # noqa: E731
    print(f"Chinchilla points: {len(pts)}; {os.cpu_count()} CPUs; 1-min load average {os.getloadavg()[0]:.1f}")
    print(f"scipy L-BFGS-B tolerances: {args.scipy_tol} {SCIPY_TOL[args.scipy_tol]}")
    print(f"{'task':<34}{'ours cold':>11}{'ours warm':>11}{'scipy loop':>12}{'speed-up':>10}")
    print(f"{'fit, 4500 starts':<34}{t_cold:>10.1f}s{t_warm:>10.1f}s{t_scipy_all:>11.1f}s{t_scipy_all / t_warm:>9.0f}x" + scaled(k, len(grid)))
    print(f"{f'bootstrap, {R} x {len(starts)} starts':<34}{t_boot:>10.1f}s{t_boot_warm:>10.1f}s{t_scipy_boot:>11.1f}s{t_scipy_boot / t_boot_warm:>9.0f}x" + scaled(kr, R))
    print(f"same fit: objective {res.objective:.13g} vs scipy {sf[best]:.13g} (rel. diff {rel_f:.1e}), params max rel. diff {rel_x:.1e}")
    print(
        f"same bootstrap: per-resample params median rel. diff {max(agree.values()):.1e}; objective worse than scipy's by >1e-6 in "
        f"{boot_row['resamples_ours_worse_by_1e-6']}/{kr} resamples, better in {boot_row['resamples_scipy_worse_by_1e-6']}/{kr}"
    )
    ci = boot_row["ci95"]
    print("95% intervals: " + ", ".join(f"{n} [{ci[n][0]:.4g}, {ci[n][1]:.4g}]" for n in CHINCHILLA.names))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if fit_row["same_result"] else 1


if __name__ == "__main__":
    sys.exit(main())
