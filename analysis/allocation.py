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
    b = ap.fit_budget(C, np.asarray(N, float), np.asarray(D, float), np.asarray(loss, float), cost)
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
