"""The allocation check: train several sizes around the predicted N_opt at the check budget, find
that budget's measured minimum with approach 2's local robust parabola, and compare it with each
approach's predicted N_opt interval. Pure functions; experiments/verify_cmd.py trains the sizes.

    sizes = plan_sizes(N_opt_predicted, ladder_N)               # >= 5 sizes ~1.7x apart
    m = measure(C, N, D, loss, cost, pooled=(sigma, dof))       # {"value", "ci", ...}
    allocation(predicted_row["N_opt"], m)                       # check.json's "allocation"
    detectable_shift_a(m, C, data_budgets)                      # smallest shift in a it resolves

Verdict: the log10 error between the measured and predicted N_opt is compared with the two
intervals' half-widths in quadrature (independent errors), so a wide prediction and a sharp
measurement both count; without an interval (fewer than MIN_DOF residual degrees of freedom
behind the measured minimum) there is no verdict (None), said so.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from analysis import approaches as ap

N_SIZES = 5  # sizes trained at the check budget (the issue: at least 5)
SPACING = 1.7  # neighbours' ratio in N (the issue: about 1.5-2x)
MIN_DOF = 3  # residual degrees of freedom behind an interval, else no verdict


def target_sizes(N_opt: float, n: int = N_SIZES, ratio: float = SPACING) -> np.ndarray:
    """n sizes spaced `ratio` apart in N, centred in log N on N_opt."""
    return float(N_opt) * ratio ** (np.arange(n) - (n - 1) / 2)


def plan_sizes(N_opt: float, ladder_N=None, n: int = N_SIZES, ratio: float = SPACING) -> tuple[list[int], list[str]]:
    """(indices into `ladder_N` of the distinct shapes nearest each target size, notes). Without a
    ladder: (range(n), []) for `target_sizes`. Notes say when the ladder cannot give n distinct
    sizes or does not bracket N_opt."""
    if ladder_N is None:
        return list(range(n)), []
    logs = np.log(np.asarray(ladder_N, float))
    picked: list[int] = []
    for t in np.log(target_sizes(N_opt, n, ratio)):
        order = np.argsort(np.abs(logs - t), kind="stable")
        i = next((int(j) for j in order if int(j) not in picked), None)
        if i is not None and abs(logs[i] - t) <= math.log(ratio):  # a shape within one spacing of its target
            picked.append(i)
    picked = sorted(set(picked), key=lambda i: logs[i])
    notes = []
    if len(picked) < n:
        notes.append(f"the ladder has {len(picked)} shapes within {ratio}x of the {n} target sizes around N_opt = {N_opt:.3g}; "
                     "the allocation check wants more sizes there (extend the ladder)")
    N = np.exp(logs[picked]) if picked else np.array([])
    if N.size and not (N.min() < N_opt < N.max()):
        notes.append(f"the sizes trained ({N.min():.3g}..{N.max():.3g}) do not bracket the predicted N_opt = {N_opt:.3g}")
    return picked, notes


def measure(C: float, N, D, loss, cost, pooled: tuple[float, int] | None = None, level: float = 0.95) -> dict:
    """The check budget's minimum by approach 2's rule (`approaches.fit_budget`) with its interval:
    log10 N_opt +- t(dof) se. `pooled`: the sweep's (sigma, dof) of approach 2's local fits, pooled
    with this window's residuals (eval noise is taken to be the same at every budget, as approach 2
    does); without it only the window's own dof (5 sizes: 2, too few for a verdict).
    {"value", "ci", "dof", "sigma", "accepted", "reason", "window"}."""
    N = np.asarray(N, float)
    if np.unique(N).size < 3:  # e.g. the ladder has no shapes near the predicted N_opt
        return {"value": None, "ci": None, "dof": 0, "sigma": None, "accepted": False, "window": [],
                "reason": f"{np.unique(N).size} distinct size(s) trained; a minimum needs 3 or more"}
    b = ap.fit_budget(C, N, np.asarray(D, float), np.asarray(loss, float), cost)
    out = {"value": None, "ci": None, "dof": 0, "sigma": None, "accepted": bool(b.accepted), "reason": b.reason,
           "window": list(b.window)}
    if not b.accepted:
        return out
    out["value"] = float(b.N_opt)
    dof, sigma = int(b.sigma_dof), float(b.sigma)
    unit = math.sqrt(max(b.log10_N_opt_se**2 - b.vertex_bias**2, 0.0)) / sigma if dof > 0 and sigma > 0 else float("nan")
    if pooled is not None and pooled[1] > 0 and np.isfinite(pooled[0]):
        s0, d0 = float(pooled[0]), int(pooled[1])
        sigma = math.sqrt((sigma**2 * dof + s0**2 * d0) / (dof + d0)) if dof > 0 else s0
        dof += d0
    out.update(dof=dof, sigma=sigma if dof > 0 else None)
    if dof >= MIN_DOF and np.isfinite(unit):
        se = math.hypot(sigma * unit, b.vertex_bias)
        h = stats.t.ppf(0.5 + level / 2, dof) * se
        x = math.log10(b.N_opt)
        out["ci"] = [10 ** (x - h), 10 ** (x + h)]
    else:
        out["no_interval"] = f"{dof} residual degree(s) of freedom behind the measured minimum; an interval needs >= {MIN_DOF}"
    return out


def _half(v: dict | None) -> float | None:
    """Half-width of an N_opt interval in decades (None without one)."""
    ci = (v or {}).get("ci")
    if not ci or not all(c and c > 0 and np.isfinite(c) for c in ci):
        return None
    return (math.log10(ci[1]) - math.log10(ci[0])) / 2


def allocation(predicted: dict, measured: dict) -> dict:
    """check.json's per-approach "allocation": {"predicted_N_opt": {"value", "ci"}, "measured_N_opt":
    {"value", "ci"}, "log10_error", "inside"}; inside: |log10 error| within the two half-widths in
    quadrature; None (no verdict) without a measured minimum or interval."""
    pv, mv = predicted.get("value"), measured.get("value")
    err = math.log10(mv / pv) if pv and mv else None
    hp, hm = _half(predicted), _half(measured)
    inside = None
    if err is not None and hm is not None:
        inside = bool(abs(err) <= math.hypot(hp or 0.0, hm))
    out = {"predicted_N_opt": {"value": pv, "ci": predicted.get("ci")},
           "measured_N_opt": {"value": mv, "ci": measured.get("ci")},
           "log10_error": err, "inside": inside}
    if inside is None:
        out["no_verdict"] = measured.get("no_interval") or measured.get("reason") or "no measured minimum"
    return out


def detectable_shift_a(measured: dict, C: float, budgets) -> float | None:
    """The smallest shift in the exponent a the check could have detected: a fit pinned at the data's
    centre (the geometric mean of its budgets) and off by da in a misplaces N_opt at C by
    da * log10(C / C_centre) decades, seen once that exceeds the measured interval's half-width."""
    hm = _half(measured)
    reach = math.log10(C) - float(np.mean(np.log10(np.asarray(budgets, float))))
    if hm is None or reach <= 0:
        return None
    return hm / reach


# ---------------------------------------------------------------- from trained runs ---------------
def best_per_size(runs) -> list[dict]:
    """One point per trained size: its run's loss, or with several learning rates (the sweep's lr
    grid) the loss at its best lr (`lr_grid.best_lr`, as `scaling fit` takes it; "lr_edge": "low" or
    "high" where that is the grid's edge, else None). `runs`: dicts with
    "N", "D", "lr", "achieved" (None: not finished). Sizes without a finished run are left out."""
    from analysis.lr_grid import best_lr

    by_n: dict[float, list[dict]] = {}
    for r in runs:
        by_n.setdefault(float(r["N"]), []).append(r)
    out = []
    for n, rs in sorted(by_n.items()):
        done = [r for r in rs if r.get("achieved") is not None and math.isfinite(r["achieved"])]
        if not done:
            continue
        edge = None
        if len(rs) > 1 and len({r.get("lr") for r in rs}) == len(rs):
            best = best_lr([r["lr"] for r in rs], [r["achieved"] if r.get("achieved") is not None else math.inf for r in rs])
            loss, lr, edge = best["loss"], best["lr"], best["edge"]
        else:
            r = min(done, key=lambda r: r["achieved"])
            loss, lr = r["achieved"], r.get("lr")
        out.append({"N": n, "D": float(done[0]["D"]), "loss": float(loss), "lr": lr, "lr_edge": edge})
    return out


def pooled_sigma(record: dict) -> tuple[float, int] | None:
    """Approach 2's noise, its windows' residuals pooled over the sweep's budgets (sigma, dof), from
    fit.json; None without. (Not a budget's own sigma: where seed replicates measured a larger one at
    a budget, that budget's se uses it, and the check budget is none of the sweep's.)"""
    e2 = record.get("fits", {}).get("approach2") or {}
    pooled = (e2.get("noise") or {}).get("pooled_residuals")
    if pooled:
        return float(pooled["sigma"]), int(pooled["dof"])
    for b in e2.get("budgets", []):  # a fit.json written before "noise" was recorded
        if b.get("accepted") and b.get("sigma_dof") and b.get("sigma") is not None and math.isfinite(b["sigma"]):
            return float(b["sigma"]), int(b["sigma_dof"])
    return None


def check(record: dict, rows: dict, runs, C: float) -> dict:
    """The allocation check's record: the measured minimum at C from the trained sizes, per approach
    its "allocation" (predicted vs measured N_opt) and loss comparisons, and the smallest detectable
    shift in a. `rows`: {approach: predict() row at C}."""
    from analysis.costmodel import CostModel

    level = record["options"]["ci_level"]
    cost = CostModel.from_dict(record["cost_model"])
    pts = best_per_size(runs)
    N, D, L = (np.array([p[k] for p in pts], float) for k in ("N", "D", "loss"))
    out = {"C": float(C), "rule": f"{N_SIZES} sizes ~{SPACING}x apart around the predicted N_opt (nearest ladder shapes), "
           "each at its best lr; minimum by approach 2's local robust parabola, its interval pooled with the sweep's approach-2 noise",
           "points": pts, "by_approach": {}}
    if N.size < 3:
        out["measured"] = {"value": None, "ci": None, "reason": f"{N.size} finished size(s); a minimum needs 3 or more"}
        return out
    m = measure(C, N, D, L, cost, pooled_sigma(record), level)
    out["measured"] = m
    b = ap.fit_budget(C, N, D, L, cost)
    loss_opt = float(b.loss_opt) if b.accepted else None
    out["detectable_shift_a"] = detectable_shift_a(m, C, record.get("budgets") or record["data_range"]["C"])
    for name, row in rows.items():
        a = allocation(row["N_opt"], m)
        pred_loss = (row.get("loss") or {}).get("value")
        a["loss_at_measured_optimum"] = {"predicted_compute_optimal": pred_loss, "measured": loss_opt,
                                         "error": (loss_opt - pred_loss) if loss_opt is not None and pred_loss is not None else None}
        law = _law_at(record.get("fits", {}).get(name), N, D)
        if law is not None:
            a["law_at_trained"] = [{"N": float(n), "D": float(d), "law": float(v), "achieved": float(y), "error": float(y - v)}
                                   for n, d, v, y in zip(N, D, law, L)]
            if m["value"] is not None:
                (at_opt,) = _law_at(record["fits"][name], [m["value"]], [float(cost.tokens(m["value"], C))])
                a["loss_at_measured_optimum"]["law"] = float(at_opt)
        out["by_approach"][name] = a
    return out


def _law_at(entry: dict | None, N, D):
    """Approach 3's (or any N, D law's) loss at each (N, D); None for the power-law approaches."""
    if not entry or "law" not in entry or entry.get("frontier_model") != "chinchilla":
        return None
    from analysis.laws import get_law

    with np.errstate(all="ignore"):
        return get_law(entry["law"]).predict({k: v["value"] for k, v in entry["params"].items()},
                                            N=np.asarray(N, float), D=np.asarray(D, float))
