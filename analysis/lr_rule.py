"""The learning-rate rule from a tuning grid: each size's best lr, then lr*(N) = c * N^-gamma.

    record = fit_lr_rule(points)              # points: rows of (tag, N, lr, loss); loss None = diverged
    write_lr_rule(record, "runs/qs/tune")     # lr_rule.json + lr_rule.png/.svg

Per size (all its runs share a shape, a batch and a horizon):
  - the best grid point by final eval loss (a diverged run counts as +inf);
  - on an edge of the grid (the lowest or the highest lr that did not diverge, with no worse point
    beyond it) the size is flagged "low" / "high" and left out of the fit: its optimum is not
    bracketed. `scaling tune` extends such a grid and retrains; what is still on an edge after that
    is reported in the record's "warnings", never silently used;
  - otherwise a parabola in log lr through the best point and its two neighbours (a local fit of
    loss vs log lr around the minimum); its vertex, which lies between the neighbours, is lr*.
    When a neighbour diverged the grid point itself is lr* ("method": "grid").
Across sizes: least squares of log lr* on log N (N = total parameters); a 95% interval for c and
gamma from a bootstrap over sizes (resample sizes with replacement, refit; resamples with fewer
than two distinct sizes are redrawn), seeded: the same points give the same record.

lr_rule.json holds "c", "gamma", "ci", "batch", "seq_len", "steps", "N_range", "sizes" (each with
its grid, losses, best lr, lr*, method, edge) and "warnings"; lib/sweeps/rules.py reads it.

Several horizons (Tune(budgets=...): each group's tag names its tokens, `d32-L2@D409600`): the
rule is lr*(N, D) = c * N^-gamma * D^-delta, least squares of log lr* on log N and log D; the record
adds "delta", "D_range" and delta's interval (the same bootstrap, over (size, horizon) groups).
It needs at least 2 sizes and 2 horizons among the bracketed optima.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Mapping

import numpy as np

from analysis.errors import AnalysisError
from lib.store.runstore import write_json_atomic

SCHEMA = 1
# A multi-horizon Tune's group tag, `d32-L2@D409600`, as lib/sweeps/plans.py (HORIZON_TAG) names it
# (analysis sits beside lib.sweeps in the layering, so the suffix is parsed here).
HORIZON_TAG = "@D"
LR_RULE_JSON = "lr_rule.json"
FIGURE = "lr_rule"


def size_optimum(lrs: Iterable[float], losses: Iterable[float | None]) -> dict:
    """Best lr of one size's grid: {"best_lr", "lr_opt", "method", "edge", "lrs", "losses"}.

    `losses[i]` None/NaN/inf: the run at lrs[i] diverged (or its loss is unusable)."""
    order = np.argsort(np.asarray(list(lrs), float))
    lrs = np.asarray(list(lrs), float)[order]
    raw = list(losses)
    loss = np.array([np.inf if v is None or not math.isfinite(v) else float(v) for v in raw], float)[order]
    if len(lrs) < 3:
        raise AnalysisError(f"a learning-rate grid needs at least 3 points to locate a minimum, got {len(lrs)}")
    if (lrs <= 0).any():
        raise AnalysisError(f"learning rates must be positive, got {lrs.tolist()}")
    out = {"lrs": lrs.tolist(), "losses": [None if not math.isfinite(v) else v for v in loss]}
    finite = np.isfinite(loss)
    if not finite.any():
        return {**out, "best_lr": None, "lr_opt": None, "method": "none", "edge": "all diverged"}
    i = int(np.argmin(np.where(finite, loss, np.inf)))
    out["best_lr"] = float(lrs[i])
    # An edge: no grid point beyond the best one on that side (a diverged one beyond brackets it).
    if i == 0:
        return {**out, "lr_opt": float(lrs[i]), "method": "grid", "edge": "low"}
    if i == len(lrs) - 1:
        return {**out, "lr_opt": float(lrs[i]), "method": "grid", "edge": "high"}
    if not (finite[i - 1] and finite[i + 1]):
        return {**out, "lr_opt": float(lrs[i]), "method": "grid", "edge": None}
    x, y = np.log(lrs[i - 1 : i + 2]), loss[i - 1 : i + 2]
    a, b, _ = np.polyfit(x, y, 2)  # exact through three points; a > 0 since the middle is lowest
    vertex = -b / (2 * a) if a > 0 else x[1]
    vertex = float(np.clip(vertex, x[0], x[2]))
    return {**out, "lr_opt": float(np.exp(vertex)), "method": "parabola", "edge": None}


def tag_tokens(tag: str) -> float | None:
    """The horizon (tokens per run) a group tag names, None without one."""
    _, sep, tokens = str(tag).partition(HORIZON_TAG)
    return float(tokens) if sep else None


def fit_power_law(n: np.ndarray, lr: np.ndarray) -> tuple[float, float]:
    """log lr = log c - gamma log N by least squares -> (c, gamma)."""
    slope, intercept = np.polyfit(np.log(n), np.log(lr), 1)
    return float(math.exp(intercept)), float(-slope)


def fit_power_law_nd(n: np.ndarray, d: np.ndarray, lr: np.ndarray) -> tuple[float, float, float]:
    """log lr = log c - gamma log N - delta log D by least squares -> (c, gamma, delta)."""
    X = np.column_stack([np.ones(len(n)), -np.log(n), -np.log(d)])
    (log_c, gamma, delta), *_ = np.linalg.lstsq(X, np.log(lr), rcond=None)
    return float(math.exp(log_c)), float(gamma), float(delta)


def bootstrap(n: np.ndarray, lr: np.ndarray, n_resamples: int = 2000, seed: int = 0, d: np.ndarray | None = None) -> dict:
    """95% percentile intervals for c and gamma (and delta when `d` is given), resampling the
    optima (sizes, or (size, horizon) groups) with replacement."""
    rng = np.random.default_rng(seed)
    k = len(n)
    draws = []
    tries = 0
    while len(draws) < n_resamples and tries < 20 * n_resamples:
        tries += 1
        idx = rng.integers(0, k, size=k)
        if len(set(n[idx])) < 2 or (d is not None and (len(set(d[idx])) < 2 or len(set(zip(n[idx], d[idx]))) < 3)):
            continue
        draws.append(fit_power_law(n[idx], lr[idx]) if d is None else fit_power_law_nd(n[idx], d[idx], lr[idx]))
    draws = np.asarray(draws).reshape(-1, 2 if d is None else 3)
    names = ("c", "gamma") if d is None else ("c", "gamma", "delta")
    out = {name: [float(np.percentile(draws[:, j], 2.5)), float(np.percentile(draws[:, j], 97.5))] for j, name in enumerate(names)}
    return {**out, "samples": len(draws), "seed": seed, "unit": "sizes" if d is None else "(size, horizon) groups",
            "_draws": tuple(draws.T)}


def fit_lr_rule(points: Iterable[Mapping], n_resamples: int = 2000, seed: int = 0, meta: Mapping | None = None) -> dict:
    """The lr_rule.json record from tuning points: dicts with "tag", "N", "lr", "loss" (None: diverged)."""
    by_tag: dict[str, list[Mapping]] = {}
    for p in points:
        by_tag.setdefault(str(p["tag"]), []).append(p)
    if not by_tag:
        raise AnalysisError("no tuning runs to fit: train the tune grid first (`scaling tune EXP --root R`)")
    sizes, warnings = [], []
    for tag, rows in by_tag.items():
        ns = {int(r["N"]) for r in rows}
        if len(ns) != 1:
            raise AnalysisError(f"size {tag}: its runs have different parameter counts {sorted(ns)}; a size is one shape")
        opt = size_optimum([r["lr"] for r in rows], [r["loss"] for r in rows])
        sizes.append({"tag": tag, "N": ns.pop(), **opt})
        if opt["edge"]:
            side = {"low": "the lowest", "high": "the highest"}.get(opt["edge"])
            what = f"its best lr {opt['best_lr']:.3g} is {side} of its grid" if side else "every run diverged"
            warnings.append(f"size {tag}: {what}, so its optimum is not bracketed; left out of the fit (extend its grid)")
    horizons = [tag_tokens(s["tag"]) for s in sizes]
    if any(h is None for h in horizons) and any(h is not None for h in horizons):
        raise AnalysisError("tuning groups mix one horizon and several (some size tags name their tokens, some do not); tune one way")
    in_d = horizons and horizons[0] is not None  # tuned at several horizons: a rule in N and D
    for s, h in zip(sizes, horizons):
        if in_d:
            s["D"] = h
    sizes.sort(key=lambda s: (s["N"], s.get("D", 0)))
    used = [s for s in sizes if not s["edge"]]
    if in_d:
        return _fit_in_n_and_d(sizes, used, warnings, n_resamples, seed, meta)
    record = {"schema": SCHEMA, "rule": "lr = c * N^-gamma", "N": "total parameters", **dict(meta or {})}
    record["sizes"] = sizes
    record["warnings"] = warnings
    distinct = sorted({s["N"] for s in used})
    if len(distinct) < 2:
        raise AnalysisError(
            f"lr*(N) needs the optimum of at least 2 sizes inside their grids, got {len(distinct)} "
            f"({'; '.join(warnings) or 'too few sizes'}); add sizes or widen the grids"
        )
    n = np.array([s["N"] for s in used], float)
    lr = np.array([s["lr_opt"] for s in used], float)
    c, gamma = fit_power_law(n, lr)
    boot = bootstrap(n, lr, n_resamples, seed)
    draws = boot.pop("_draws")
    residual = np.log(lr) - (math.log(c) - gamma * np.log(n))
    grid_n = np.geomspace(n.min(), n.max(), 25)
    band = np.array([cs * grid_n**-g for cs, g in zip(*draws)]) if len(draws[0]) else np.empty((0, len(grid_n)))
    record.update({
        "c": c,
        "gamma": gamma,
        "ci": {"c": boot["c"], "gamma": boot["gamma"]},
        "bootstrap": {k: boot[k] for k in ("samples", "seed", "unit")},
        "N_range": [float(n.min()), float(n.max())],
        "rmse_log_lr": float(np.sqrt(np.mean(residual**2))),
        "sizes_used": len(used),
        "grid": {
            "N": grid_n.tolist(),
            "lr": (c * grid_n**-gamma).tolist(),
            "lo": np.percentile(band, 2.5, axis=0).tolist() if len(band) else [],
            "hi": np.percentile(band, 97.5, axis=0).tolist() if len(band) else [],
        },
    })
    return record


def _fit_in_n_and_d(sizes: list[dict], used: list[dict], warnings: list[str], n_resamples: int, seed: int, meta) -> dict:
    """fit_lr_rule's record for optima at several horizons: lr*(N, D) = c N^-gamma D^-delta."""
    record = {"schema": SCHEMA, "rule": "lr = c * N^-gamma * D^-delta", "N": "total parameters", "D": "tokens per run",
              **dict(meta or {}), "sizes": sizes, "warnings": warnings}
    n = np.array([s["N"] for s in used], float)
    d = np.array([s["D"] for s in used], float)
    lr = np.array([s["lr_opt"] for s in used], float)
    if len(set(n)) < 2 or len(set(d)) < 2 or len(set(zip(n, d))) < 3:
        raise AnalysisError(
            f"lr*(N, D) needs bracketed optima at 2 or more sizes and 2 or more horizons (3 or more groups), got {len(used)} "
            f"({len(set(n))} sizes, {len(set(d))} horizons; {'; '.join(warnings) or 'too few groups'}); add sizes or widen the grids"
        )
    c, gamma, delta = fit_power_law_nd(n, d, lr)
    boot = bootstrap(n, lr, n_resamples, seed, d=d)
    draws = boot.pop("_draws")
    residual = np.log(lr) - (math.log(c) - gamma * np.log(n) - delta * np.log(d))
    # the figure's line: the rule at the geometric-mean horizon
    grid_n, d_mid = np.geomspace(n.min(), n.max(), 25), float(np.exp(np.mean(np.log(d))))
    band = np.array([cs * grid_n**-g * d_mid**-dl for cs, g, dl in zip(*draws)]) if len(draws) and len(draws[0]) else np.empty((0, 25))
    record.update({
        "c": c, "gamma": gamma, "delta": delta,
        "ci": {"c": boot["c"], "gamma": boot["gamma"], "delta": boot["delta"]},
        "bootstrap": {k: boot[k] for k in ("samples", "seed", "unit")},
        "N_range": [float(n.min()), float(n.max())],
        "D_range": [float(d.min()), float(d.max())],
        "rmse_log_lr": float(np.sqrt(np.mean(residual**2))),
        "sizes_used": len(used),
        "grid": {"N": grid_n.tolist(), "D": d_mid, "lr": (c * grid_n**-gamma * d_mid**-delta).tolist(),
                 "lo": np.percentile(band, 2.5, axis=0).tolist() if len(band) else [],
                 "hi": np.percentile(band, 97.5, axis=0).tolist() if len(band) else []},
    })
    return record


def edges(record: Mapping) -> dict[str, str]:
    """size tag -> "low" / "high" for the sizes whose best lr sat on an edge of their grid."""
    return {s["tag"]: s["edge"] for s in record["sizes"] if s["edge"] in ("low", "high")}


def write_lr_rule(record: Mapping, out_dir) -> list[str]:
    """Write out_dir/lr_rule.json and the figure (loss vs lr per size | the fitted rule); returns the paths."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    figures = plot_lr_rule(record, out_dir)
    # Figure names relative to the json's folder: a copied or moved root keeps its links.
    write_json_atomic(os.path.join(out_dir, LR_RULE_JSON), {**record, "figures": [os.path.basename(f) for f in figures]})
    return [os.path.join(out_dir, LR_RULE_JSON), *figures]


def describe(record: Mapping) -> str:
    """One line: the rule with its interval and where it was measured."""
    lo, hi = record["ci"]["gamma"]
    n_lo, n_hi = record["N_range"]
    if record.get("D_range"):
        d_lo, d_hi = record["D_range"]
        dl, dh = record["ci"]["delta"]
        return (f"lr*(N, D) = {record['c']:.3g} * N^-{record['gamma']:.3f} * D^-{record['delta']:.3f} (gamma 95% CI [{lo:.3f}, {hi:.3f}], "
                f"delta [{dl:.3f}, {dh:.3f}]; {record['sizes_used']} (size, horizon) groups, N {n_lo:.3g}..{n_hi:.3g}, "
                f"D {d_lo:.3g}..{d_hi:.3g}" + (f", batch {record['batch']}" if record.get("batch") else "") + ")")
    return (f"lr*(N) = {record['c']:.3g} * N^-{record['gamma']:.3f} (gamma 95% CI [{lo:.3f}, {hi:.3f}]; "
            f"{record['sizes_used']} sizes, N {n_lo:.3g}..{n_hi:.3g}"
            + (f", batch {record['batch']}" if record.get("batch") else "")
            + (f", {record['steps']} steps" if record.get("steps") else "") + ")")


def report_lines(record: Mapping, sensitivity: Iterable[str] = (), rule_dir=None, relative_to=None) -> list[str]:
    """Markdown: the rule, each size's grid result, warnings, and any sensitivity lines. Figures
    (named relative to `rule_dir`, the json's folder) are linked relative to `relative_to`."""
    lines = ["## Learning-rate rule (tune stage)", "", describe(record), "",
             "| size | N | grid | best lr | lr* | method |", "|---|---|---|---|---|---|"]
    for s in record["sizes"]:
        grid = f"{min(s['lrs']):.3g}..{max(s['lrs']):.3g} ({len(s['lrs'])})"
        lr_opt = "-" if s["lr_opt"] is None else f"{s['lr_opt']:.3g}"
        best = "-" if s["best_lr"] is None else f"{s['best_lr']:.3g}"
        method = s["method"] + (f", edge {s['edge']} (not fitted)" if s["edge"] else "")
        lines.append(f"| {s['tag']} | {s['N']:.3g} | {grid} | {best} | {lr_opt} | {method} |")
    lines += [""] + [f"- warning: {w}" for w in record.get("warnings", [])]
    lines += [f"- {line}" for line in sensitivity]
    if record.get("figures"):
        figures = [os.path.join(rule_dir, f) if rule_dir else f for f in record["figures"] if f.endswith(".png")]
        figures = [os.path.relpath(f, relative_to) if relative_to else f for f in figures]
        lines.append(f"- figure: {', '.join(f'![lr rule]({f})' for f in figures)}")
    return lines + [""]


# ------------------------------------------------------------------------------------------------
def plot_lr_rule(record: Mapping, out_dir) -> list[str]:
    """Loss vs lr for each size (lr* marked, edges hollow) and lr* vs N with the fitted rule and its band."""
    import matplotlib

    from analysis.plots import new_figure, save_figure

    fig, (ax_loss, ax_rule) = new_figure(ncols=2, width=6.5)
    cmap = matplotlib.colormaps["viridis"]
    sizes = record["sizes"]
    for k, s in enumerate(sizes):
        color = cmap(k / max(len(sizes) - 1, 1))
        pts = [(lr, v) for lr, v in zip(s["lrs"], s["losses"]) if v is not None]
        if pts:
            ax_loss.plot(*zip(*pts), "o-", color=color, label=f"{s['tag']} (N={s['N']:.3g})")
        diverged = [lr for lr, v in zip(s["lrs"], s["losses"]) if v is None]
        if diverged and pts:
            ax_loss.plot(diverged, [max(v for _, v in pts)] * len(diverged), "x", color=color)
        if s["lr_opt"] is not None:
            ax_loss.axvline(s["lr_opt"], color=color, ls=":" if s["edge"] else "--", lw=1)
        face = "none" if s["edge"] else color
        if s["lr_opt"] is not None:
            ax_rule.plot([s["N"]], [s["lr_opt"]], "o", mfc=face, mec=color, ms=8)
    ax_loss.set(xscale="log", xlabel="Peak learning rate", ylabel="Final eval loss (nats/token)", title="Tuning grid (x: diverged)")
    ax_loss.legend(fontsize=8)
    grid = record.get("grid") or {}
    if grid.get("N"):
        ax_rule.plot(grid["N"], grid["lr"], "k-", label=f"lr* = {record['c']:.3g} N^-{record['gamma']:.3f}")
        if grid.get("lo"):
            ax_rule.fill_between(grid["N"], grid["lo"], grid["hi"], color="k", alpha=0.12, label="95% bootstrap band")
    ax_rule.plot([], [], "o", mfc="none", mec="gray", label="on a grid edge (not fitted)")
    ax_rule.set(xscale="log", yscale="log", xlabel="Parameters N (total)", ylabel="Best learning rate lr*", title="Learning-rate rule")
    ax_rule.legend(fontsize=8)
    return save_figure(fig, out_dir, FIGURE)
