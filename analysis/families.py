"""Loss against parameters per model family, one power law each: Kaplan et al. 2020's figure 7
(LSTMs vs transformers) on our data, for whatever families a run store holds.

    record = fit_families("runs/families", "runs/families/fit")   # families.json, report.md, families.png/svg

Per family, the finished runs' final eval loss against N (non-embedding parameters by default, as
Kaplan's figure; `params` picks total or active instead) is fitted by least squares in log-log
space to Kaplan's form L(N) = (N_c / N)^alpha_N (eq. 1.1: no irreducible term, so a straight line
on the figure); the record gives alpha_N with a 95% interval (Student t on the slope's standard
error), N_c, the residual RMSE in log L and the data range. Runs trained on different token counts
are named in a note: the comparison is at fixed D. Reads only the run store (lib.store.runstore).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter
from scipy import stats

from analysis.data import PARAMS_CHOICES
from analysis.errors import AnalysisError
from analysis.plots import LOSS_LABEL, new_figure, save_figure

FAMILIES_JSON, REPORT_MD, FIGURE = "families.json", "report.md", "families"
COLORS = {"transformer": "#1f77b4", "lstm": "#d62728", "gru": "#ff7f0e", "mlp": "#2ca02c", "cnn": "#9467bd", "moe": "#8c564b"}


def _runstore():
    from lib.store import runstore

    return runstore


def family_points(root, params: str = "non_embedding") -> tuple[pd.DataFrame, list[str]]:
    """(one row per finished run: run, family, N, D, loss; notes on what was left out)."""
    if params not in PARAMS_CHOICES:
        raise AnalysisError(f"params must be one of {', '.join(PARAMS_CHOICES)}, not {params!r}")
    if not os.path.isdir(root):
        raise AnalysisError(f"run root {root} is not a directory")
    runs = _runstore().load_runs(root)
    notes = []
    done = runs["state"] == "done"
    if (~done).any():
        notes.append(f"left out {int((~done).sum())} unfinished runs: {', '.join(runs.run_id[~done][:10])}")
    runs = runs[done]
    loss = runs["eval_loss"].where(runs["eval_loss"].notna(), runs["train_loss"])
    pts = pd.DataFrame({"run": runs["run_id"], "family": runs["family"], "N": runs[f"N_{params}"].astype(float),
                        "D": runs["D"].astype(float), "loss": loss.astype(float)}).dropna()
    pts = pts[(pts.N > 0) & (pts.loss > 0)].sort_values(["family", "N"]).reset_index(drop=True)
    if pts.empty:
        raise AnalysisError(f"no finished runs with a loss under {root}; nothing to fit")
    if pts.D.nunique() > 1:
        notes.append(f"runs trained on different token counts ({', '.join(f'{d:.3g}' for d in sorted(pts.D.unique()))}): "
                     "the families are not compared at one D")
    return pts, notes


def fit_power(N, loss, level: float = 0.95) -> dict:
    """L = (N_c / N)^alpha by least squares on log L = alpha log N_c - alpha log N."""
    x, y = np.log(np.asarray(N, float)), np.log(np.asarray(loss, float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise AnalysisError(f"a power law needs at least two distinct N, got {len(x)} point(s)")
    fit = stats.linregress(x, y)
    alpha = -fit.slope
    resid = y - (fit.intercept + fit.slope * x)
    dof = len(x) - 2
    ci = None
    if dof > 0:
        half = stats.t.ppf(0.5 + level / 2, dof) * fit.stderr
        ci = [alpha - half, alpha + half]
    return {
        "alpha_N": alpha,
        "alpha_N_ci": ci,
        "N_c": math.exp(fit.intercept / alpha) if alpha != 0 else None,
        "log_intercept": fit.intercept,
        "rmse_log_loss": float(np.sqrt(np.mean(resid**2))),
        "n_points": int(len(x)),
        "N_range": [float(np.exp(x.min())), float(np.exp(x.max()))],
    }


def fit_families(root, out_dir, params: str = "non_embedding", figures: bool = True) -> dict:
    """Fit every family under `root`; write families.json, report.md and the figure into `out_dir`."""
    pts, notes = family_points(os.fspath(root), params)
    fits, skipped = {}, {}
    for fam, group in pts.groupby("family", sort=True):
        try:
            fits[fam] = fit_power(group.N, group.loss)
        except AnalysisError as e:
            skipped[fam] = str(e)
    if not fits:
        raise AnalysisError("no family has two or more sizes to fit: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    record = {
        "law": "L(N) = (N_c / N)^alpha_N, per family (Kaplan et al. 2020, eq. 1.1 and figure 7)",
        "N": f"{params.replace('_', '-')} parameters (summary.json params.{params})",
        "D": sorted(float(d) for d in pts.D.unique()),
        "fits": fits,
        "skipped": skipped,
        "notes": notes,
        "points": pts.to_dict(orient="records"),
        "source": os.path.abspath(os.fspath(root)),
    }
    os.makedirs(out_dir, exist_ok=True)
    record["figures"] = [os.path.basename(p) for p in draw(record, pts, out_dir)] if figures else []
    _write(os.path.join(out_dir, FAMILIES_JSON), json.dumps(record, indent=2) + "\n")
    _write(os.path.join(out_dir, REPORT_MD), markdown(record))
    return record


def draw(record: dict, pts: pd.DataFrame, out_dir) -> list[str]:
    fig, (ax,) = new_figure()
    for fam, group in pts.groupby("family", sort=True):
        color = COLORS.get(fam, None)
        ax.scatter(group.N, group.loss, color=color, edgecolor="black", zorder=3, label=f"{fam} runs")
        fit = record["fits"].get(fam)
        if fit:
            grid = np.geomspace(fit["N_range"][0] / 1.3, fit["N_range"][1] * 1.3, 50)
            ax.plot(grid, np.exp(fit["log_intercept"]) * grid ** -fit["alpha_N"], color=color,
                    label=f"{fam}: L = (N_c/N)^{fit['alpha_N']:.3f}, N_c = {fit['N_c']:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # a loss range of a few tenths: plain numbers, not 1.2 x 10^0
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"Parameters N ({record['N'].split(' (')[0]})")
    ax.set_ylabel(LOSS_LABEL)
    d = record["D"]
    ax.set_title(f"Loss vs N per model family, D = {d[0]:.3g} tokens per run" if len(d) == 1 else "Loss vs N per model family")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, FIGURE)


def markdown(record: dict) -> str:
    lines = ["# Loss vs parameters per model family", "", f"Law: {record['law']}.", f"N: {record['N']}.",
             f"D: {', '.join(f'{d:.3g}' for d in record['D'])} tokens per run.", "",
             "| family | runs | N range | alpha_N (95% CI) | N_c | RMSE log L |", "|---|---|---|---|---|---|"]
    for fam, f in record["fits"].items():
        ci = f"[{f['alpha_N_ci'][0]:.3f}, {f['alpha_N_ci'][1]:.3f}]" if f["alpha_N_ci"] else "(no interval: 2 points)"
        lines.append(f"| {fam} | {f['n_points']} | {f['N_range'][0]:.3g} .. {f['N_range'][1]:.3g} | {f['alpha_N']:.3f} {ci} | "
                     f"{f['N_c']:.3g} | {f['rmse_log_loss']:.3g} |")
    lines += [""] + [f"- skipped {k}: {v}" for k, v in record["skipped"].items()] + [f"- note: {n}" for n in record["notes"]]
    if record.get("figures"):
        lines += ["", f"![loss vs N per family]({FIGURE}.png)"]
    return "\n".join(lines) + "\n"


def summary(record: dict) -> str:
    return "\n".join(
        f"  {fam:12s} alpha_N = {f['alpha_N']:.3f}" + (f" [{f['alpha_N_ci'][0]:.3f}, {f['alpha_N_ci'][1]:.3f}]" if f["alpha_N_ci"] else "")
        + f", N_c = {f['N_c']:.3g} ({f['n_points']} sizes, N {f['N_range'][0]:.3g}..{f['N_range'][1]:.3g})"
        for fam, f in record["fits"].items()
    )


def _write(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
