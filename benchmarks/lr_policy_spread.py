"""Where an lr grid's policy spread comes from: the rule's centring, or each point's own lr curve.

`scaling fit` reports the lr-policy spread of a (fit.json `lr_sensitivity`): every approach refitted
with all points at lr x0.5, x1 and x2 of the sweep's rule, and at each point's best lr. A large
spread has two possible causes: the rule is centred well at some budgets and badly at others (so
one factor is near the optimum at small budgets and far from it at large ones, which tilts the
IsoFLOP minima), or each point's loss moves so much with its lr that no policy fixes it. This
script tells them apart from a finished sweep's own runs, without training anything:

1. per point, a parabola in log lr through its runs' losses (exact through 3 runs; least squares
   through 4, an lr-edge extension), the point's lr curve;
2. the policies "rule x f" (f = 0.5, 1, 2) read off those curves at the tuned rule's lr -- the same
   policies `lr_sensitivity` fits from the measured runs, here through the model, to show how closely
   the curves reproduce them;
3. the same policies around a re-centred rule: lr = c N^-gamma D^-delta fitted by least squares to
   every point's curve vertex (clamped to its tried lrs), i.e. the rule the sweep's own best lrs ask
   for. A curve is read at most half a grid step (log 2 / 2) beyond the lrs the point tried.

Each policy's points go through the same fit as `scaling fit` (no bootstrap). If the re-centred
spread is small, the tuned rule's centring is the cause (and a better-centred rule the remedy);
if not, the points' own lr curves are.

    python benchmarks/lr_policy_spread.py runs/ladder [--out lr_policy_spread.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.data import COLUMNS, load_run_store
from analysis.errors import FitWarning
from analysis.lr_grid import POINT_KEYS
from analysis.pipeline import FitOptions, run_fits
from benchmarks.results_io import write_json

FACTORS = (0.5, 1.0, 2.0)
REACH = np.log(2.0) / 2  # how far past its tried lrs a point's curve is read


def lr_curves(runs: pd.DataFrame) -> list[dict]:
    """Per point: its parabola in log lr (numpy polyfit coefficients), the log lrs it tried, the rule's lr
    (its run at factor 1) and that run's row (the point's N, D, C, ... for the fit)."""
    curves = []
    for _, g in runs.groupby(list(POINT_KEYS), sort=True):
        g = g[np.isfinite(g["loss"].astype(float))]
        at_rule = g[np.isclose(g["lr_factor"].astype(float), 1.0)]
        if len(g) < 3 or at_rule.empty:
            raise SystemExit(f"point {g.iloc[0]['run'] if len(g) else '?'}: needs >= 3 finite runs including the rule's (x1)")
        x = np.log(g["lr"].astype(float).to_numpy())
        curves.append({"coef": np.polyfit(x, g["loss"].astype(float).to_numpy(), 2), "x_lo": x.min(), "x_hi": x.max(),
                       "log_rule": float(np.log(float(at_rule["lr"].iloc[0]))), "row": at_rule.iloc[0]})
    return curves


def vertex(c: dict) -> float:
    """The curve's best log lr, inside the lrs the point tried (a curve with no minimum: its best tried lr's side)."""
    a, b, _ = c["coef"]
    x = -b / (2 * a) if a > 0 else (c["x_lo"] if np.polyval(c["coef"], c["x_lo"]) < np.polyval(c["coef"], c["x_hi"]) else c["x_hi"])
    return float(np.clip(x, c["x_lo"], c["x_hi"]))


def recentred_rule(curves: list[dict]) -> tuple[dict, np.ndarray]:
    """({c, gamma, delta} of lr = c N^-gamma D^-delta fitted by least squares in log lr to the curves'
    vertices, that rule's log lr at each point)."""
    X = np.array([[1.0, np.log(float(c["row"]["N"])), np.log(float(c["row"]["D"]))] for c in curves])
    coef, *_ = np.linalg.lstsq(X, np.array([vertex(c) for c in curves]), rcond=None)
    return {"c": float(np.exp(coef[0])), "gamma": float(-coef[1]), "delta": float(-coef[2])}, X @ coef


def fitted_a(ds, curves: list[dict], log_lr: np.ndarray) -> dict:
    """Each approach's a with every point's loss read off its curve at `log_lr` (one per point)."""
    rows = []
    for c, x in zip(curves, log_lr):
        row = c["row"].copy()
        row["loss"] = float(np.polyval(c["coef"], np.clip(x, c["x_lo"] - REACH, c["x_hi"] + REACH)))
        rows.append(row)
    points = pd.DataFrame(rows)[list(COLUMNS)].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fits = run_fits(dataclasses.replace(ds, points=points, lr_grid=None), FitOptions(bootstrap=0, figures=False))["fits"]
    return {name: float(e["a"]["value"]) for name, e in fits.items()}


def policies(ds, curves: list[dict], centre: np.ndarray) -> dict:
    """{approach: {"lr_x0.5": a, "lr_x1": a, "lr_x2": a, "spread": max - min}} around `centre` (log lr per point)."""
    out: dict = {}
    for f in FACTORS:
        for name, a in fitted_a(ds, curves, centre + np.log(f)).items():
            out.setdefault(name, {})[f"lr_x{f:g}"] = a
    for values in out.values():
        values["spread"] = max(values.values()) - min(values.values())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="a finished sweep's run root whose points trained at an lr grid (with its fit/fit.json)")
    p.add_argument("--out", default="lr_policy_spread.json")
    args = p.parse_args()
    ds = load_run_store(args.root)
    if ds.lr_grid is None:
        raise SystemExit(f"{args.root}: its runs trained at no lr grid (a sweep with lr_grid=...)")
    curves = lr_curves(pd.DataFrame(ds.lr_grid["runs"]))
    recentred, centre = recentred_rule(curves)
    record = {
        "root": os.path.abspath(args.root), "points": len(curves), "reach_log_lr": REACH,
        "recentred_rule": recentred,
        "tuned_rule_model": policies(ds, curves, np.array([c["log_rule"] for c in curves])),
        "recentred_rule_model": policies(ds, curves, centre),
    }
    fit_path = os.path.join(args.root, "fit", "fit.json")
    if os.path.exists(fit_path):
        with open(fit_path) as f:
            fit = json.load(f)
        record["measured"] = fit.get("lr_sensitivity")
        record["half_width"] = {name: (e["a"]["ci"][1] - e["a"]["ci"][0]) / 2 for name, e in fit["fits"].items() if e["a"].get("ci")}
    print(f"{len(curves)} points; re-centred rule: lr = {recentred['c']:.3g} N^-{recentred['gamma']:.3f} D^-{recentred['delta']:.3f}")
    print(f"{'approach':<10} {'policy':<18} {'x0.5':>7} {'x1':>7} {'x2':>7} {'best':>7} {'spread':>7} {'half-width':>10}")
    for name in record["tuned_rule_model"]:
        hw = record.get("half_width", {}).get(name)
        for label, key in (("measured", "measured"), ("tuned rule, model", "tuned_rule_model"), ("re-centred, model", "recentred_rule_model")):
            v = (record.get(key) or {}).get(name)
            if v is None:
                continue
            cells = " ".join(f"{v[k]:>7.3f}" if k in v else f"{'':>7}" for k in ("lr_x0.5", "lr_x1", "lr_x2", "lr_best"))
            spread = f"{'n/a':>7}" if v["spread"] is None else f"{v['spread']:>7.3f}"  # fit.json: None over fewer than 2 policies
            print(f"{name:<10} {label:<18} {cells} {spread} {'' if hw is None else f'{hw:.3f}':>10}")
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
