"""How often approach 2's 95% interval for a holds the truth when the noise falls with the budget, as the
ladder's seed replicates measured it, with one pooled noise scale against each budget's measured one.

    python benchmarks/noise_coverage.py [--sims 200] [--resamples 100]

Each simulation draws the ladder's design (5 budgets half a decade apart x 9 sizes spanning 4x either
side of eq. 4's optimum) from a known Chinchilla law, with Gaussian noise whose sd per budget is the
ladder's measured seed scatter (0.076, 0.058, 0.035, 0.040, 0.011 nats, smallest budget first;
docs/results.md), plus two seed replicates of every point drawn the same way. It fits approach 2
(analysis/approaches.py) twice on the same draw, each with its bootstrap:

  pooled  one noise scale, the windows' residuals pooled over the budgets (the fit before seed replicates)
  seeds   each budget's own scale from the replicates (analysis/noise.py), the fit's rule since 134a92c
          (commit c8a315f took the larger of it and the pooled one: rmse 0.130, coverage 0.993 there)

and asks whether the 95% percentile interval holds the target: approach 2's a on the noise-free
draw (what the estimator converges to; the law's own a is printed beside it). Prints coverage
(with its binomial standard error), the rmse of a, the mean half-width and the usable resamples,
and writes benchmarks/results/noise_coverage.json.

    python benchmarks/noise_coverage.py --lr-grid 0.05 [--lr-offset 0.35]

adds what the sweep does on top: every point is trained at lr x0.5, x1 and x2 of its rule, each
run with its own noise and a penalty quadratic in log lr (P nats at x0.5 and x2 of the point's
best lr, which sits a uniform +-OFFSET (natural log) from the rule's), and the point's loss is
its best lr's (analysis/lr_grid.py `best_lr`: the parabola through the best run and its
neighbours, or the best run on an edge), as in a real sweep; the replicates are x1 runs. The best
of three noisy runs is then what the fit sees, and the replicates' x1 scatter what it weighs by.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import approaches as ap  # noqa: E402
from analysis.costmodel import SIX_N  # noqa: E402
from analysis.errors import AnalysisError  # noqa: E402
from analysis.lr_grid import best_lr  # noqa: E402
from analysis.noise import budget_noise  # noqa: E402
from benchmarks.pi_coverage import A_TRUE, LAW, n_opt  # noqa: E402  (the same known law as the pi coverage benchmark)
from benchmarks.results_io import write_json  # noqa: E402

BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)
SIGMA = (0.076, 0.058, 0.035, 0.040, 0.011)  # the ladder's seed scatter per budget, smallest first
SIZES = 9


def design() -> pd.DataFrame:
    rows = []
    for C, sd in zip(BUDGETS, SIGMA):
        for N in n_opt(C) * np.geomspace(1 / 4, 4, SIZES):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "budget": C, "sd": sd,
                         "loss": LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]})
    return pd.DataFrame(rows)


FACTORS = (0.5, 1.0, 2.0)


def simulate(base: pd.DataFrame, target: float, resamples: int, seed: int, penalty: float = 0.0, offset: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    curvature = penalty / np.log(2.0) ** 2  # nats per (natural log of lr)^2
    best_at = rng.uniform(-offset, offset, len(base)) if penalty else np.zeros(len(base))  # log(best lr / rule's lr)

    def draw(factor: float) -> pd.DataFrame:
        extra = curvature * (np.log(factor) - best_at) ** 2
        return base.assign(loss=base["loss"] + extra + base["sd"] * rng.standard_normal(len(base)))

    if penalty:
        runs = [draw(f)["loss"].to_numpy() for f in FACTORS]
        main = base.assign(loss=[best_lr(FACTORS, [r[i] for r in runs])["loss"] for i in range(len(base))])
        at_rule = base.assign(loss=runs[1])  # the x1 run at seed 0
    else:
        main = at_rule = draw(1.0)
    others = {1: draw(1.0), 2: draw(1.0)}  # x1 at seeds 1 and 2
    groups = ap.group_budgets(main)
    out = {}
    for name, noise in (("pooled", None), ("seeds", budget_noise(at_rule, others))):
        try:
            a = ap.approach2(main, SIX_N, groups=groups, noise=noise).N_fit.exponent
            boot = ap.bootstrap_approach2(main, groups, SIX_N, resamples, seed, noise=noise)
        except AnalysisError:  # the draw itself leaves too few budgets bracketed
            out[name] = None
            continue
        lo, hi = np.percentile(boot.a, [2.5, 97.5]) if boot.n_used else (np.nan, np.nan)
        out[name] = {"a": float(a), "covered": bool(lo <= target <= hi), "half_width": float((hi - lo) / 2),
                     "usable": boot.n_used / boot.n_resamples}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--resamples", type=int, default=100)
    p.add_argument("--lr-grid", type=float, default=0.0, metavar="P",
                   help="train each point at lr x0.5/1/2 with a penalty of P nats at x0.5 and x2 of its best lr; fit its best")
    p.add_argument("--lr-offset", type=float, default=0.35, help="best lr a uniform +-this (natural log) from the rule's (with --lr-grid)")
    p.add_argument("--out", default="noise_coverage.json")
    args = p.parse_args()
    base = design()
    target = ap.approach2(base.assign(sd=0.0), SIX_N).N_fit.exponent
    t0 = time.perf_counter()
    sims = [simulate(base, target, args.resamples, seed, args.lr_grid, args.lr_offset) for seed in range(args.sims)]
    rows = []
    for name in ("pooled", "seeds"):
        ok = [s[name] for s in sims if s[name] is not None]
        cover = np.mean([r["covered"] for r in ok])
        rows.append({"noise": name, "sims": len(ok), "coverage": float(cover), "coverage_se": float(np.sqrt(cover * (1 - cover) / len(ok))),
                     "rmse_a": float(np.sqrt(np.mean([(r["a"] - target) ** 2 for r in ok]))),
                     "mean_half_width": float(np.mean([r["half_width"] for r in ok])),
                     "usable_resamples": float(np.mean([r["usable"] for r in ok]))})
    grid = f"; each point the best of lr x0.5/1/2 (penalty {args.lr_grid} nats, best lr +-{args.lr_offset})" if args.lr_grid else ""
    print(f"approach 2's a: target (noise-free fit) {target:.4f}, the law's {A_TRUE:.4f}; {args.sims} simulations x "
          f"{args.resamples} resamples{grid}, {time.perf_counter() - t0:.0f} s")
    print(f"{'noise':8} {'sims':>5} {'coverage':>14} {'rmse of a':>10} {'half-width':>11} {'usable':>7}")
    for r in rows:
        print(f"{r['noise']:8} {r['sims']:5d} {r['coverage']:8.3f} +-{r['coverage_se']:.3f} {r['rmse_a']:10.4f} "
              f"{r['mean_half_width']:11.4f} {r['usable_resamples']:7.2f}")
    path = write_json(args.out, {"target_a": target, "law_a": A_TRUE, "budgets": BUDGETS, "sigma": SIGMA, "sizes": SIZES,
                                 "sims": args.sims, "resamples": args.resamples,
                                 "lr_grid_penalty": args.lr_grid, "lr_offset": args.lr_offset if args.lr_grid else None, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
