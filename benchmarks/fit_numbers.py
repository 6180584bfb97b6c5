"""The numbers `scaling fit` reports on fixed data, to compare two versions of the fitter.

    cd <checkout> && PYTHONPATH=. python <this file> [--bootstrap 100] [--out fit_numbers.json]

Run it from each checkout's root (e.g. main and a branch; the code and fixtures are the working
directory's) and compare the tables. Data (no training):
  quickstart-like  the quickstart's design (3 budgets 1e11, 3e11, 1e12 FLOPs x 5 sizes around the
                   optimum, sizes 1.5-2x apart) drawn from Hoffmann et al.'s law, 0.3% noise, seed 0;
                   with a floor E = 1.69 given as the data's entropy floor (as the synthetic
                   language's runs record one)
  cli-store        tests/test_analysis_cli.py's design: 3 budgets 1e15..1e17, sizes within 8x of
                   the optimum on a 15-size ladder, 0.3% noise, seed 0 (no floor recorded)
  epoch-chinchilla tests/fixtures/epoch_chinchilla (Hoffmann et al. 2022 Fig. 4 as reconstructed by
                   Besiroglu et al. 2024), the 5 highest-loss points dropped
Prints, per data set and approach: a, approach 2's L*(C) at 1, 10, 100x the largest budget,
approach 3's loss and prediction interval at 3x, the leave-one-budget-out errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path.cwd()  # the checkout whose fitter and fixtures are compared
LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
G_TRUE = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))


def law(N, D):
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def quickstart_like():
    rng = np.random.default_rng(0)
    rows = []
    for C in (1e11, 3e11, 1e12):
        n_star = G_TRUE * (C / 6) ** A_TRUE
        for N in n_star * np.geomspace(1 / 4, 4, 5):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "budget": C, "loss": law(N, D) * np.exp(0.003 * rng.standard_normal()), "run": f"c{C:.0e}-n{N:.3g}"})
    return pd.DataFrame(rows)


def cli_store():
    ladder = np.geomspace(G_TRUE * (1e15 / 6) ** A_TRUE / 8, G_TRUE * (1e17 / 6) ** A_TRUE * 8, 15)
    rng = np.random.default_rng(0)
    rows = []
    for C in (1e15, 1e16, 1e17):
        n_star = G_TRUE * (C / 6) ** A_TRUE
        for N in ladder[(ladder > n_star / 8) & (ladder < n_star * 8)]:
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "budget": C, "loss": law(N, D) * np.exp(0.003 * rng.standard_normal()), "run": f"c{C:.0e}-n{N:.3g}"})
    return pd.DataFrame(rows)


def epoch_chinchilla():
    raw = pd.read_csv(ROOT / "tests" / "fixtures" / "epoch_chinchilla" / "svg_extracted_data.csv")
    return raw.rename(columns={"Model Size": "N", "Training FLOP": "C"})[["N", "C", "loss"]]


def summarise(rec: dict) -> dict:
    out = {}
    c_max = rec["data_range"]["C"][1]
    for name, e in rec["fits"].items():
        row = {"a": e["a"]["value"], "a_ci": e["a"]["ci"]}
        tab = {round(r["C"] / c_max): r for r in e.get("table", [])}
        if e.get("loss_law"):
            row["L*(C) at 1, 10, 100x"] = [tab[k]["loss"]["value"] for k in (1, 10, 100)]
            row["L*(C) law"] = {k: e["loss_law"].get(k) for k in ("E", "A", "gamma", "dof")}
        if name == "approach3":
            r = tab[3]["loss"]
            row["loss at 3x [pi]"] = [r["value"], r["pi"]]
        lobo = e["goodness"].get("lobo") or {}
        row["lobo"] = {k: lobo.get(k) for k in ("n", "mean_abs_log10_N_ratio", "mean_abs_loss_error_nats")}
        out[name] = row
    out["skipped"] = rec.get("skipped", {})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--out", default=None, help="also write the numbers as JSON (benchmarks/results/<name> for a bare name)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from analysis.data import apply_filters, from_frame
    from analysis.report import fit_and_report

    sets = {
        "quickstart-like": replace(from_frame(quickstart_like()), entropy_floor=LAW["E"]),
        "cli-store": from_frame(cli_store()),
        "epoch-chinchilla": apply_filters(from_frame(epoch_chinchilla()), exclude_top_loss=5),
    }
    results = {}
    for name, ds in sets.items():
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = fit_and_report(ds, tmp, {"bootstrap": args.bootstrap, "figures": False})
        results[name] = summarise(rec)
        print(f"== {name}")
        print(json.dumps(results[name], indent=1, default=float))
    if args.out:
        from benchmarks.results_io import write_json

        print(f"wrote {write_json(args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
