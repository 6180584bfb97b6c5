"""Predictions from a fit record at any compute C: the compute-optimal N and D, the loss to
expect there, their intervals, and how far C lies beyond the data.

One function, `predict`, serves the report's table, the figures' frontier curves and
`scaling predict`, so they can never disagree. Per approach:

    approach3  N_opt, D_opt minimise the fitted L(N, D) under the record's cost model
               C = c(N) D (numerically; the closed form when c = 6N); the loss is the law at that
               optimum. Intervals: percentiles over the usable bootstrap refits. Prediction
               interval of the loss: the refits' frontier losses plus a draw of the fit's own
               residual scatter (a new run scatters around the law as the fitted runs did).
    approach2  N_opt = N_coef C^a through the IsoFLOP minima (weighted by their se); D_opt =
               C / c(N_opt); the loss from L*(C) = E + A C^-gamma through the per-budget minimum
               losses, E held at a floor (the runs' entropy floor, approach 3's E or --fix-E; 0
               without one), weighted least squares of log(L - E) on log C, with the t-based
               prediction interval of a new budget's minimum when >= 3 residual dof remain.
    approach1  N_opt = N_coef C^a through the envelope; D_opt = C / c(N_opt); no loss model (the
               envelope is a set of observed losses, not a law): loss is None.

Extrapolation: C / C_max when C is above the data's largest compute, C / C_min (a factor below 1)
when it is below their smallest, 0 within the data.

`predict_points` gives the loss at any (N, D) from the fits whose law has N and D as inputs
(approach 3 and the other N, D laws), with the factor by which N and D each lie outside the data.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from analysis.bootstrap import intervals
from analysis.costmodel import CostModel, constrained_optimum
from analysis.errors import AnalysisError

RESIDUAL_DRAWS_SEED = 12345  # fixed: the same record always gives the same prediction interval


# ---------------------------------------------------------------- Approach 3 ---------------------
def chinchilla_frontier(params: dict, cost: CostModel, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_opt, D_opt, loss_opt) of L(N, D) = E + A/N^alpha + B/D^beta under cost `cost`.

    Parameters may be arrays [R] and C [m]: results are then [R, m]. NaN where the law has no
    compute-optimal frontier (alpha or beta <= 0, or non-finite parameters)."""
    p = {k: np.asarray(params[k], float) for k in ("E", "A", "B", "alpha", "beta")}
    C = np.asarray(C, float)
    if np.ndim(p["A"]):
        p = {k: v[:, None] for k, v in p.items()}
    valid = (p["alpha"] > 0) & (p["beta"] > 0) & (p["A"] > 0) & (p["B"] > 0) & np.isfinite(p["E"])
    with np.errstate(all="ignore"):
        # the closed form (Hoffmann et al. eq. 4) at the cost's typical overhead centres the search
        G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
        a = p["beta"] / (p["alpha"] + p["beta"])
        mid = 10 ** np.mean(cost.log10_N_range)
        guess = G * (C / (6.0 * cost.ratio(mid))) ** a
        guess = np.where(valid & np.isfinite(guess) & (guess > 0), guess, np.nan)

        def law(N, D):
            return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]

        N, D, L = constrained_optimum(law, cost, C, guess)
    return N, D, L


def local_exponents(params: dict, cost: CostModel, c_lo: float, c_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): slopes of log N_opt and log D_opt between c_lo and c_hi (the data's C range).
    Under c = 6N they equal beta/(alpha+beta) and alpha/(alpha+beta) exactly."""
    N, D, _ = chinchilla_frontier(params, cost, np.array([c_lo, c_hi]))
    dlc = np.log(c_hi / c_lo)
    with np.errstate(invalid="ignore"):  # NaN where the law has no frontier, said by the NaN
        return np.log(N[..., 1] / N[..., 0]) / dlc, np.log(D[..., 1] / D[..., 0]) / dlc


SCATTER_DRAWS = 50  # residual draws per bootstrap refit: one each leaves the band's ends as noisy as R refits' percentiles


def prediction_band(ls: np.ndarray, scale: float, level: float):
    """Percentile band of a new run's loss: each refit's prediction ls [R, m] plus SCATTER_DRAWS
    draws of Gaussian scatter of the residual scale (seeded, the same draws for every column: a
    point's band does not depend on which other points are asked for)."""
    eps = np.random.default_rng(RESIDUAL_DRAWS_SEED).standard_normal((ls.shape[0], SCATTER_DRAWS, 1))
    return intervals((ls[:, None, :] + scale * eps).reshape(-1, ls.shape[-1]), level)


def residual_scale(entry: dict) -> float:
    """The scatter of a new run about the law: residual sum of squares / (n - k) (records from
    before it was stored: the in-sample RMSE, which is sqrt((n-k)/n) too small)."""
    g = entry["goodness"]
    s = g.get("residual_scale_nats")
    return float(s) if s is not None else float(g["rmse_nats"])


# ---------------------------------------------------------------- one record ----------------------
def _value(v, ci=None) -> dict:
    ok = ci is not None and np.all(np.isfinite(ci))
    return {"value": float(v), "ci": [float(ci[0]), float(ci[1])] if ok else None}


def _samples(entry: dict) -> dict | None:
    boot = entry.get("bootstrap") or {}
    s = boot.get("samples")
    return {k: np.asarray(v, float) for k, v in s.items()} if s else None


def predict(record: dict, fit: str, C, level: float | None = None) -> list[dict]:
    """One dict per C: {"C", "N_opt": {"value", "ci"}, "D_opt": {...}, "loss": {"value", "ci",
    "pi"} or None, "extrapolation": C / C_max above the data, C / C_min (< 1) below them, 0 within}."""
    if fit not in record["fits"]:
        raise AnalysisError(f"the record has no fit {fit!r}; it has {', '.join(record['fits']) or 'none'}")
    entry = record["fits"][fit]
    if "frontier_model" not in entry:
        raise AnalysisError(f"{fit} has no compute-optimal frontier (only approaches 1-3 do)")
    level = level or record["options"]["ci_level"]
    cost = CostModel.from_dict(record["cost_model"])
    cs = np.atleast_1d(np.asarray(C, float))
    if np.any(~np.isfinite(cs) | (cs <= 0)):
        raise AnalysisError(f"compute values must be positive and finite, not {cs.tolist()}")
    c_min, c_max = record["data_range"]["C"]
    samples = _samples(entry)
    kind = entry["frontier_model"]

    bands = {}  # name -> (lo[m], hi[m]); a missing name has no interval
    if kind == "chinchilla":
        values = {k: v["value"] for k, v in entry["params"].items()}
        n, d, loss = (x.ravel() for x in chinchilla_frontier(values, cost, cs))
        if samples:
            ns, ds, ls = chinchilla_frontier(samples, cost, cs)
            bands = {"N_opt": intervals(ns, level), "D_opt": intervals(ds, level), "loss": intervals(ls, level), "pi": prediction_band(ls, residual_scale(entry), level)}
    else:  # a power law N_opt = N_coef C^a through approach 1 or 2's optima
        law = entry["params"]
        n = law["N_coef"]["value"] * cs ** law["a"]["value"]
        d = cost.tokens(n, cs)
        if samples:
            ns = samples["N_coef"][:, None] * cs ** samples["a"][:, None]
            bands = {"N_opt": intervals(ns, level), "D_opt": intervals(cost.tokens(ns, cs), level)}
        loss = None
        if entry.get("loss_law"):
            loss, bands["loss"], bands["pi"] = _loglog_prediction(entry["loss_law"], cs, level)

    def band(key, i):
        return (bands[key][0][i], bands[key][1][i]) if key in bands else None

    out = []
    for i, c in enumerate(cs):
        row = {"C": float(c), "N_opt": _value(n[i], band("N_opt", i)), "D_opt": _value(d[i], band("D_opt", i)), "loss": None}
        if loss is not None and np.isfinite(loss[i]):
            pi = band("pi", i)
            row["loss"] = {**_value(loss[i], band("loss", i)), "pi": [float(pi[0]), float(pi[1])] if pi and np.all(np.isfinite(pi)) else None}
            if kind != "chinchilla" and (entry.get("loss_law") or {}).get("no_interval"):
                row["loss"]["no_interval"] = entry["loss_law"]["no_interval"]  # why L*(C) gives no interval
        row["extrapolation"] = extrapolation_factor(c, (c_min, c_max))
        out.append(row)
    return out


def extrapolation_factor(C: float, c_range) -> float:
    """C / C_max above the data's compute range, C / C_min (< 1) below it, 0 within."""
    c_min, c_max = c_range
    return float(C / c_max) if C > c_max * (1 + 1e-9) else float(C / c_min) if C < c_min * (1 - 1e-9) else 0.0


def extrapolation_text(factor: float) -> str:
    """How the report, `scaling predict` and the figures say where C lies (factor as above)."""
    if not factor:
        return "within the data"
    return f"extrapolation x{factor:.3g}" if factor > 1 else f"extrapolation: x{1 / factor:.3g} below the data"


# ---------------------------------------------------------------- any (N, D) ---------------------
def point_fits(record: dict) -> list[str]:
    """The fits whose law gives the loss at any (N, D): approach 3 and the other N, D laws."""
    from analysis.laws import LAWS

    return [k for k, e in record["fits"].items() if e.get("law") in LAWS and {"N", "D"} <= set(LAWS[e["law"]].inputs)]


def range_factor(x: float, lo: float, hi: float) -> tuple[float, str | None]:
    """(factor, side): x / hi above the data, lo / x below it (both >= 1), (0, None) inside."""
    if x > hi * (1 + 1e-9):
        return float(x / hi), "above"
    if x < lo * (1 - 1e-9):
        return float(lo / x), "below"
    return 0.0, None


def predict_points(record: dict, fit: str, N, D, U=None, level: float | None = None) -> list[dict]:
    """The loss the fit's law predicts at each (N[i], D[i]) (U: unique tokens, for a law of
    repeated data; default D, i.e. no repetition), with the bootstrap refits' interval (ci), the
    prediction interval of a new run (pi: the refits plus the residual scatter) and the factor by
    which N and D each lie outside the data's range (0 inside). One dict per point:
    {"N", "D", "approach", "loss": {"value", "ci", "pi"}, "extrapolation": {"N", "D"},
    "extrapolation_side": {"N", "D"}}."""
    from analysis.laws import get_law

    if fit not in point_fits(record):
        raise AnalysisError(f"{fit} has no loss model at a given (N, D); these fits do: {', '.join(point_fits(record)) or 'none'}")
    entry = record["fits"][fit]
    law = get_law(entry["law"])
    N, D = np.atleast_1d(np.asarray(N, float)), np.atleast_1d(np.asarray(D, float))
    U = D if U is None else np.broadcast_to(np.asarray(U, float), D.shape)
    if N.shape != D.shape:
        raise AnalysisError(f"give as many --tokens as --model values ({D.size} vs {N.size}): one (N, D) pair each")
    for name, v in (("--model", N), ("--tokens", D), ("--unique-tokens", U)):
        if np.any(~np.isfinite(v) | (v <= 0)):
            raise AnalysisError(f"{name} takes positive, finite values, not {v.tolist()}")
    level = level or record["options"]["ci_level"]
    cols = {"N": N, "D": D, "U": np.minimum(U, D)}
    log_x = np.log(np.stack([cols[c] for c in law.inputs]))
    values = {k: v["value"] for k, v in entry["params"].items()}
    loss = np.exp(law.log_predict(law.from_natural(values), log_x, np)).ravel()
    samples = _samples(entry)
    ci = pi = None
    if samples:
        raw = np.asarray(law.from_natural({k: samples[k] for k in law.names})).T  # [R, k]
        with np.errstate(all="ignore"):
            ls = np.exp(law.log_predict(raw, log_x, np))  # [R, m]
        ci, pi = intervals(ls, level), prediction_band(ls, residual_scale(entry), level)
    rng = record["data_range"]
    out = []
    for i in range(N.size):
        (fn, sn), (fd, sd) = range_factor(N[i], *rng["N"]), range_factor(D[i], *rng["D"])
        band = lambda b: [float(b[0][i]), float(b[1][i])] if b is not None and np.isfinite(b[0][i]) and np.isfinite(b[1][i]) else None  # noqa: E731
        row = {"N": float(N[i]), "D": float(D[i]), "approach": fit,
               "loss": {"value": float(loss[i]), "ci": band(ci), "pi": band(pi)},
               "extrapolation": {"N": fn, "D": fd}, "extrapolation_side": {"N": sn, "D": sd}}
        if "U" in law.inputs:
            row["U"] = float(cols["U"][i])
        out.append(row)
    return out


# ---------------------------------------------------------------- L*(C) through minima ----------
MIN_LOSS_LAW_DOF = 3  # L*(C)'s intervals need this many residual degrees of freedom (a t quantile on fewer is wild)


def fit_loglog(C, loss, se=None, E: float = 0.0, E_source: str | None = None) -> dict:
    """L*(C) = E + A C^-gamma through the per-budget minimum losses, E held fixed (0: the plain
    power law A C^-gamma): least squares of log(L - E) = log A - gamma log C, weighted by
    (L - E)^2 / se^2 (se: each minimum's standard error in nats, which the log turns into
    se / (L - E)) where every se is finite and positive, else unweighted. Returns what a
    prediction interval needs (the coefficients' covariance, residual variance, dof, the mean
    variance factor of one budget)."""
    x, L = np.log(np.asarray(C, float)), np.asarray(loss, float)
    n = x.size
    if n < 2 or np.ptp(x) == 0:
        raise AnalysisError("L*(C) needs minimum losses at two or more budgets")
    if not np.all(L > E):
        raise AnalysisError(f"L*(C) with the floor E = {E:.4g}: a budget's minimum loss ({L.min():.4g}) is not above it")
    y = np.log(L - E)
    se = None if se is None else np.asarray(se, float)
    weighted = se is not None and bool(np.all(np.isfinite(se) & (se > 0)))
    w = ((L - E) / se) ** 2 if weighted else np.ones(n)
    w = w / w.mean()  # only relative weights matter; the residual variance carries the scale
    X = np.stack([np.ones(n), x], axis=1)
    V = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = V @ X.T @ (w * y)
    resid = y - X @ beta
    dof = n - 2
    s2 = float(w * resid @ resid / dof) if dof > 0 else float("nan")
    out = {
        "formula": "L*(C) = E + A * C^(-gamma)" if E else "L*(C) = A * C^(-gamma)",
        "E": float(E),
        "E_source": E_source or ("none (no floor)" if not E else "given"),
        "A": float(np.exp(beta[0])),
        "gamma": float(-beta[1]),
        "log_coeffs": [float(beta[0]), float(beta[1])],
        "weighted": weighted,
        "xtx_inv": V.tolist(),
        "resid_var": s2,
        "new_var_factor": float(np.mean(1.0 / w)),  # a new budget's minimum: the variance of an average one
        "dof": int(dof),
        "rmse_nats": float(np.sqrt(np.mean((E + np.exp(X @ beta) - L) ** 2))),
    }
    if dof < MIN_LOSS_LAW_DOF:
        out["no_interval"] = f"{n} budgets leave {dof} residual degree(s) of freedom for its 2 free parameters; intervals need >= {MIN_LOSS_LAW_DOF}"
    return out


def _loglog_prediction(law: dict, cs: np.ndarray, level: float):
    """Point, confidence band of the mean, and prediction band of a new budget's minimum."""
    b0, b1 = law["log_coeffs"]
    E = law.get("E", 0.0)
    x = np.log(cs)
    mean = b0 + b1 * x
    if law["dof"] < MIN_LOSS_LAW_DOF or not np.isfinite(law["resid_var"]):
        nan = np.full_like(cs, np.nan)
        return E + np.exp(mean), (nan, nan), (nan, nan)
    V = np.asarray(law["xtx_inv"])
    lev = V[0, 0] + 2 * V[0, 1] * x + V[1, 1] * x * x
    t = stats.t.ppf(0.5 + level / 2, law["dof"])
    se_mean = np.sqrt(law["resid_var"] * lev)
    se_new = np.sqrt(law["resid_var"] * (law.get("new_var_factor", 1.0) + lev))
    return (E + np.exp(mean), (E + np.exp(mean - t * se_mean), E + np.exp(mean + t * se_mean)),
            (E + np.exp(mean - t * se_new), E + np.exp(mean + t * se_new)))


def anchors(c_max: float, extra=()) -> list[float]:
    """The report's compute-optimal table: the largest budget x 1, 3, 10, 100, plus any --at."""
    return sorted({float(c_max * k) for k in (1, 3, 10, 100)} | {float(c) for c in extra})
