"""Figures from a fit record (fit.json) and the points it was fitted on; PNG + SVG each.

Matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so plotting
is safe inside a training process or a thread. Every axis is labelled with its unit, quantities
spanning decades are on log axes, and every figure has a legend, placed outside the axes so it
never covers a point. A --at compute outside the data is marked with its extrapolation factor.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis import approaches as ap
from analysis.costmodel import CostModel
from analysis.laws import get_law
from analysis.predict import extrapolation_factor, extrapolation_text

COLORS = {"approach1": "#1b9e77", "approach2": "#d95f02", "approach3": "#7570b3"}
LABELS = {"approach1": "Approach 1 (envelope)", "approach2": "Approach 2 (IsoFLOP)", "approach3": "Approach 3 (parametric)"}
LOSS_LABEL = "Final loss (nats/token)"


def _units(record) -> str:
    """D's units: "tokens", or "images" for an image classifier's runs (record source "units")."""
    return record.get("source", {}).get("units", "tokens")


def _loss_label(record) -> str:
    """What the y axis holds: loss per unit of D, or the top-1 error (`scaling fit --metric error`)."""
    if record.get("source", {}).get("metric") == "error":
        return "Final top-1 error"
    return f"Final loss (nats/{_units(record)[:-1]})"
C_LABEL = "Training compute C (FLOPs)"


def new_figure(ncols=1, width=7.0, height=5.0):
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def legend_outside(fig, axes, **kw) -> None:
    """One legend for the figure, below its axes (constrained layout makes room), so it covers no
    data; entries repeated across panels are shown once."""
    entries = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, h)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=kw.pop("ncols", 2), fontsize=kw.pop("fontsize", 8), **kw)


def _mark_at(ax, record) -> None:
    """A dotted line at each --at compute outside the data, labelled with its extrapolation."""
    c_range = record["data_range"]["C"]
    for c in record["options"].get("at") or ():
        factor = extrapolation_factor(c, c_range)
        if factor:
            ax.axvline(c, color="black", ls=":", lw=1, label=f"--at C = {c:.3g}: {extrapolation_text(factor)}")


def save_figure(fig, out_dir, name) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        tmp = path + ".tmp"
        fig.savefig(tmp, dpi=150, format=ext)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _params(entry) -> dict:
    return {k: v["value"] for k, v in entry["params"].items()}


def _check(ax, record, key) -> None:
    """The prediction check (record["check"], from check.json): each approach's prediction at
    its C with its interval as a bar (diamonds), and what the trained run achieved (a cross).
    key: "loss" (prediction interval; achieved loss), "N_opt" or "D_opt" (ci; the trained N or D)."""
    check = record.get("check")
    if not check or not check.get("checks"):
        return
    runs = {r["run_id"]: r for r in check.get("runs", [])}
    entries = check["checks"]
    for i, e in enumerate(entries):
        x = e["C"] * 10 ** (0.025 * (i - (len(entries) - 1) / 2))  # side by side on the log axis
        if key == "loss":
            v, band = e["predicted"]["value"], e["predicted"]["pi"]
        else:
            p = (check.get("predictions") or {}).get(e["approach"], {}).get(key)
            if not p:
                continue
            v, band = p["value"], p.get("ci")
        yerr = [[v - band[0]], [band[1] - v]] if band else None
        what = "prediction interval" if key == "loss" else "ci"
        ax.errorbar([x], [v], yerr=yerr, fmt="D", ms=8, color=COLORS.get(e["approach"], "black"), mec="black", capsize=4, zorder=5,
                    label=f"{e['approach']} predicted at C = {e['C']:.3g}" + (f" ({what})" if band else ""))
    shown = set()
    for r in check.get("runs", []):
        y = r.get("achieved") if key == "loss" else r.get("N" if key == "N_opt" else "D")
        if y is None or (key == "loss" and r.get("state") != "done"):
            continue
        role = r.get("role", "check")
        what = {"loss": "achieved loss", "N_opt": "N trained", "D_opt": "D trained"}[key]
        label = (f"check run: {what}" if role == "check" else f"neighbour runs: {what}") if role not in shown else None
        shown.add(role)
        ax.scatter([check["C"]], [y], marker="X" if role == "check" else "x", s=140 if role == "check" else 70,
                   color="crimson" if role == "check" else "dimgrey", edgecolor="black" if role == "check" else None, zorder=6, label=label)
    failed = [r for r in runs.values() if r.get("role", "check") == "check" and r.get("state") != "done"]
    if failed and key == "loss":
        ax.annotate(f"check run {failed[0].get('state', 'failed')}", (check["C"], entries[0]["predicted"]["value"]), xytext=(8, -14),
                    textcoords="offset points", fontsize=8, color="crimson")


# ------------------------------------------------------------------------------------------------
def _budgets(record, points) -> tuple[np.ndarray, np.ndarray, list[dict], str]:
    """(labels, budget values, each budget's minimum as approach 2 found it, a title). Where
    approach 2 was skipped (or not asked for) the budgets' minima are computed here by the same
    rule (approaches.fit_budget), so the figure shows which budgets it refuses and why."""
    entry = record["fits"].get("approach2")
    if entry:
        labels, values, _ = ap.group_budgets(points, entry["budget_gap_decades"])
        return labels, values, entry["budgets"], "IsoFLOP profiles (Approach 2)"
    labels, values, how = ap.group_budgets(points, record["options"].get("budget_gap", 0.05))
    cost = CostModel.from_dict(record["cost_model"])
    spread = ap._budget_spread(points, labels, how)  # as approach2 measures a budget's C spread
    cols = {k: points[k].to_numpy(float) for k in ("N", "D", "loss")}
    budgets = [dataclasses.asdict(ap.fit_budget(values[k], *(cols[c][labels == k] for c in ("N", "D", "loss")), cost, spread(labels == k)))
               for k in range(len(values))]
    why = record.get("skipped", {}).get("approach2") or "not run (--approach)"
    return labels, values, budgets, "IsoFLOP profiles; Approach 2 " + ("skipped: " + why if "approach2" in record.get("skipped", {}) else why)


def has_profiles(record, points) -> bool:
    """Whether some FLOP budget has 3+ model sizes: a profile an IsoFLOP figure can show."""
    labels, _, _ = ap.group_budgets(points, record["options"].get("budget_gap", 0.05))
    n = points["N"].to_numpy(float)
    return any(np.unique(n[labels == k]).size >= 3 for k in np.unique(labels))


def isoflop(record, points, out_dir) -> list[str]:
    """Loss vs N per FLOP budget, the fitted parabolas and their minima; refused budgets hollow,
    with the reason in the legend. Drawn whether or not approach 2 could use the budgets."""
    labels, values, budgets, title = _budgets(record, points)
    fig, (ax,) = new_figure(height=5.5)
    cmap = matplotlib.colormaps["viridis"]
    norm = LogNorm(vmin=min(values), vmax=max(values) * 1.0001)
    for k, b in enumerate(budgets):
        color = cmap(norm(b["C"])) if len(values) > 1 else cmap(0.5)
        sel = labels == k
        n, loss = points["N"].to_numpy()[sel], points["loss"].to_numpy()[sel]
        tag = f"C = {b['C']:.2g}" + ("" if b["accepted"] else " refused: " + textwrap.shorten(b["reason"], 90, placeholder="..."))
        ax.scatter(n, loss, color=color, s=22, facecolors=color if b["accepted"] else "none", label=tag, zorder=3)
        if b["coeffs"] is not None:
            w = np.asarray(b.get("window") or n)  # the local parabola holds only over its window
            x = np.linspace(np.log10(w.min()) - 0.05, np.log10(w.max()) + 0.05, 100)
            c2, c1, c0 = b["coeffs"]
            ax.plot(10**x, c2 * x**2 + c1 * x + c0, color=color, lw=1.5, ls="-" if b["accepted"] else ":")
        if b["accepted"]:
            ax.scatter([b["N_opt"]], [b["loss_opt"]], marker="*", s=160, color=color, edgecolor="black", zorder=4)
    ax.scatter([], [], marker="*", s=160, color="white", edgecolor="black", label="local parabola's minimum")
    ax.set_xscale("log")
    ax.set_xlabel("Parameters N")
    ax.set_ylabel(_loss_label(record))
    ax.set_title(textwrap.fill(title, 90), fontsize=10 if len(title) > 60 else None)
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(fig, [ax], title="budget (FLOPs)", title_fontsize=8, ncols=1 if any(not b["accepted"] for b in budgets) else 3)
    return save_figure(fig, out_dir, "isoflop")


def loss_vs_compute(record, points, out_dir) -> list[str]:
    """Every point's loss vs its compute (colour: N) with each approach's compute-optimal loss."""
    fig, (ax,) = new_figure()
    sc = ax.scatter(points["C"], points["loss"], c=points["N"], norm=LogNorm(), cmap="viridis", s=18, label="runs", zorder=3)
    fig.colorbar(sc, ax=ax, label="Parameters N")
    fits = record["fits"]
    level = record["options"]["ci_level"]
    for name in ("approach3", "approach2"):  # the approaches with a loss model: L*(C) and its bands
        g = fits.get(name, {}).get("grid")
        if not g or not g.get("loss"):
            continue
        c = np.asarray(g["C"])
        v, lo, hi = (np.asarray(x, float) for x in g["loss"])
        what = "L(N_opt, D_opt)" if name == "approach3" else "A·C^-γ through the minima"
        ax.plot(c, v, color=COLORS[name], lw=2, label=f"{LABELS[name]}: L*(C) = {what}")
        if np.isfinite(lo).any():
            ax.fill_between(c, lo, hi, color=COLORS[name], alpha=0.15, lw=0, label=f"{level:.0%} interval")
    if "approach1" in fits:
        env = fits["approach1"]["envelope"]
        ax.plot(env["C"], env["loss"], color=COLORS["approach1"], lw=2, ls="--", label="Approach 1 envelope")
    if "approach2" in fits:
        ok = [b for b in fits["approach2"]["budgets"] if b["accepted"]]
        ax.scatter([b["C"] for b in ok], [b["loss_opt"] for b in ok], marker="*", s=140, color=COLORS["approach2"], edgecolor="black", zorder=4, label="Approach 2 minima")
    _check(ax, record, "loss")
    ax.axvspan(points["C"].min(), points["C"].max(), color="grey", alpha=0.08, label="range of the data")
    _mark_at(ax, record)
    ax.set_xscale("log")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(_loss_label(record))
    ax.set_title("Loss vs compute")
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(fig, [ax])
    return save_figure(fig, out_dir, "loss_vs_compute")


def frontier(record, points, out_dir) -> list[str]:
    """N_opt(C) and D_opt(C) for each approach with bootstrap bands."""
    fits = {k: v for k, v in record["fits"].items() if "grid" in v}
    fig, axes = new_figure(ncols=2, width=6.0)
    level = record["options"]["ci_level"]
    for ax, key, ylabel in zip(axes, ("N_opt", "D_opt"), ("Compute-optimal parameters N_opt", f"Compute-optimal {_units(record)} D_opt")):
        for name, e in fits.items():
            g = e["grid"]
            c, (v, lo, hi) = np.asarray(g["C"]), (np.asarray(x, float) for x in g[key])
            exp = e["a" if key == "N_opt" else "b"]["value"]
            ax.plot(c, v, color=COLORS[name], lw=2, label=f"{LABELS[name]}: ∝ C^{exp:.3f}")
            if np.isfinite(lo).any():
                ax.fill_between(c, lo, hi, color=COLORS[name], alpha=0.2, lw=0, label=f"{level:.0%} bootstrap band")
        if "approach2" in fits:
            ok = [b for b in fits["approach2"]["budgets"] if b["accepted"]]
            ax.scatter([b["C"] for b in ok], [b[key] for b in ok], marker="*", s=120, color=COLORS["approach2"], edgecolor="black", zorder=4, label="IsoFLOP minima")
        if "approach1" in fits:
            env = fits["approach1"]["envelope"]
            ax.scatter(env["C"], env[key], s=6, color=COLORS["approach1"], alpha=0.5, label="envelope points")
        _check(ax, record, key)
        ax.axvspan(points["C"].min(), points["C"].max(), color="grey", alpha=0.08, label="range of the data")
        _mark_at(ax, record)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(C_LABEL)
        ax.set_ylabel(ylabel + (" (params)" if key == "N_opt" else f" ({_units(record)})"))
        ax.grid(True, which="both", alpha=0.3)
    legend_outside(fig, axes, ncols=3)
    fig.suptitle("Compute-optimal frontier")
    return save_figure(fig, out_dir, "frontier")


def fitted_vs_observed(record, points, out_dir) -> list[str]:
    """Predicted vs observed loss, and log residuals vs compute, for the parametric fit."""
    name = "approach3" if "approach3" in record["fits"] else record["options"]["law"]
    entry = record["fits"][name]
    law = get_law(entry["law"])
    pred = law.predict(_params(entry), **{c: points[c].to_numpy() for c in law.inputs})
    obs = points["loss"].to_numpy()
    fig, (ax, ax2) = new_figure(ncols=2, width=6.0)
    sc1 = ax.scatter(obs, pred, s=16, c=points["C"], norm=LogNorm(), cmap="plasma", label="fitted points")
    fig.colorbar(sc1, ax=ax, label=C_LABEL)
    lim = [min(obs.min(), pred.min()) * 0.98, max(obs.max(), pred.max()) * 1.02]
    ax.plot(lim, lim, color="black", lw=1, ls="--", label="y = x")
    sc = ax2.scatter(points["C"], np.log(obs) - np.log(pred), s=16, c=points["N"], norm=LogNorm(), cmap="viridis", label="fitted points")
    fig.colorbar(sc, ax=ax2, label="Parameters N")
    ho = record.get("holdout")
    if ho:
        hc, hobs, hpred = (np.array([p[k] for p in ho["points"]]) for k in ("C", "observed", "predicted"))
        ax.scatter(hobs, hpred, marker="x", s=50, color="red", label=f"held out (fit without the {ho['k']} largest C)")
        ax2.scatter(hc, np.log(hobs) - np.log(hpred), marker="x", s=50, color="red", label="held out")
    ax.set_xlabel("Observed " + _loss_label(record).lower())
    ax.set_ylabel("Fitted " + _loss_label(record).lower())
    ax.set_title(f"Fitted vs observed: {law.formula}", fontsize=10)
    ax2.axhline(0, color="black", lw=1)
    ax2.set_xscale("log")
    ax2.set_xlabel(C_LABEL)
    ax2.set_ylabel("log(observed) - log(fitted)")
    ax2.set_title("Residuals")
    for a in (ax, ax2):
        a.grid(True, alpha=0.3)
    legend_outside(fig, [ax, ax2], ncols=3)
    return save_figure(fig, out_dir, "fitted_vs_observed")


def one_variable_law(record, points, out_dir) -> list[str]:
    """Loss vs the law's variable with the fitted curve (power-N, power-D, power-C)."""
    entry = record["fits"][record["options"]["law"]]
    law = get_law(entry["law"])
    (x,) = law.inputs
    fig, (ax,) = new_figure()
    ax.scatter(points[x], points["loss"], s=16, color="#444444", label="points")
    grid = np.geomspace(points[x].min(), points[x].max(), 200)
    p = _params(entry)
    ax.plot(grid, law.predict(p, **{x: grid}), color=COLORS["approach3"], lw=2, label=f"E + A·{x}^-α, α = {p['alpha']:.3f}, E = {p['E']:.3f}")
    ax.axhline(p["E"], color="grey", ls=":", label="E (irreducible loss)")
    ax.set_xscale("log")
    ax.set_xlabel({"N": "Parameters N", "D": f"Training {_units(record)} D", "C": C_LABEL}[x])
    ax.set_ylabel(_loss_label(record))
    ax.set_title(f"Power law in {x}")
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(fig, [ax])
    return save_figure(fig, out_dir, f"power_{x}")


def draw_all(record, points: pd.DataFrame, out_dir) -> list[str]:
    """Every figure the record supports; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    fits = record["fits"]
    paths = []
    if "approach2" in fits or (record["options"]["law"] == "chinchilla" and has_profiles(record, points)):
        paths += isoflop(record, points, out_dir)  # also where approach 2 refused budgets: that is when it is needed
    if any("grid" in e for e in fits.values()):
        paths += loss_vs_compute(record, points, out_dir)
        paths += frontier(record, points, out_dir)
    if "approach3" in fits or record["options"]["law"] in fits:
        paths += fitted_vs_observed(record, points, out_dir)
    if record["options"]["law"].startswith("power-"):
        paths += one_variable_law(record, points, out_dir)
    return paths
