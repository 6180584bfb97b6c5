"""Bootstrap intervals for a fitted law: resample points (or whole runs), refit, take percentiles.

A resample is a vector of integer weights (how often each point was drawn), so all resamples run
in one batched L-BFGS call (`analysis.fit.solve`). Each resample starts from the full-data fit
and from the next best distinct optima the grid found, and keeps its best end point: refitting
from the whole grid per resample would cost 4,500x more and find the same basin.

Seeded with numpy's PCG64: the same seed gives the same intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.fit import FitResult, SolverConfig, inputs_matrix, solve
from analysis.lbfgs import CONVERGED
from analysis.laws import Law


@dataclass(frozen=True)
class LawBootstrap:
    raw: np.ndarray  # [R, k] refitted raw parameters, one row per resample
    natural: dict[str, np.ndarray]  # name -> [R]
    converged: np.ndarray  # [R] bool
    n_resamples: int
    seed: int
    unit: str  # "points" or "runs"


def resample_weights(groups, n_resamples: int, seed: int, strata=None) -> np.ndarray:
    """[R, n] weights: each resample draws len(unique(groups)) groups with replacement; a point's
    weight is how often its group was drawn. With `strata` (one label per point, e.g. the IsoFLOP
    budget), each stratum's groups are drawn from that stratum only, as many as it has, so no
    resample loses or gains a budget (a group lies in the stratum of its first point)."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = inverse.max() + 1
    rng = np.random.default_rng(seed)
    if strata is None:
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
        return counts[:, inverse].astype(np.float64)
    _, stratum = np.unique(np.asarray(strata), return_inverse=True)
    first = np.unique(inverse, return_index=True)[1]  # a point of each group, in group order
    group_stratum = stratum[first]
    counts = np.zeros((n_resamples, n_groups))
    for s in np.unique(group_stratum):
        members = np.flatnonzero(group_stratum == s)
        counts[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size=n_resamples)
    return counts[:, inverse]


def distinct_starts(fit: FitResult, k: int, min_dist: float = 1e-2) -> np.ndarray:
    """The best end point and up to k-1 others at least `min_dist` away (raw space), best first."""
    chosen = [fit.ends[0]]
    for x in fit.ends[1:]:
        if len(chosen) >= k:
            break
        if np.isfinite(x).all() and min(np.max(np.abs(x - c)) for c in chosen) > min_dist:
            chosen.append(x)
    return np.stack(chosen)


def refit_weighted(law: Law, data, fit: FitResult, weights: np.ndarray, n_starts: int = 3, config: SolverConfig | None = None):
    """Refit `law` once per row of `weights` [R, n] (a point's weight: how often it counts; 0
    leaves it out), each from the full-data fit's best few distinct optima, keeping the best end.
    Returns (raw [R, k], converged [R])."""
    log_x, log_y = inputs_matrix(law, data)
    R = weights.shape[0]
    starts = distinct_starts(fit, n_starts)
    s = starts.shape[0]
    theta0 = np.tile(starts, (R, 1))  # problem r uses rows r*s .. r*s+s-1
    # float64 throughout: each problem has only a few starts, and a float32 presolve can stall
    # in a flat valley (the float64 polish only revisits starts near the best)
    config = config or SolverConfig(delta=fit.delta, float32_first=False)
    theta, value, _, status = solve(law, theta0, log_x, log_y, np.repeat(weights, s, axis=0), config, problems=np.repeat(np.arange(R), s))
    theta, value, status = theta.reshape(R, s, -1), value.reshape(R, s), status.reshape(R, s)
    pick = np.argmin(value, axis=1)
    rows = np.arange(R)
    return theta[rows, pick], np.isin(status[rows, pick], CONVERGED)


def bootstrap_law(
    law: Law,
    data,
    fit: FitResult,
    n_resamples: int = 200,
    seed: int = 0,
    groups=None,
    n_starts: int = 3,
    config: SolverConfig | None = None,
    strata=None,
) -> LawBootstrap:
    """Refit `law` on `n_resamples` resamples of `data` (points, or whole groups such as runs),
    within each stratum (e.g. IsoFLOP budget) when `strata` labels the points."""
    n = len(np.asarray(data["loss"]))
    unit = "points" if groups is None else "runs"
    groups = np.arange(n) if groups is None else np.asarray(groups)
    w = resample_weights(groups, n_resamples, seed, strata)
    raw, converged = refit_weighted(law, data, fit, w, n_starts, config)
    return LawBootstrap(
        raw=raw,
        natural=law.to_natural(raw),
        converged=converged,
        n_resamples=n_resamples,
        seed=seed,
        unit=unit,
    )


def interval(samples, level: float = 0.95) -> list[float]:
    """Percentile interval [lo, hi] of the finite samples ([nan, nan] when there are none)."""
    x = np.asarray(samples, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return [float("nan"), float("nan")]
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(x, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def intervals(samples, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per-column percentile intervals of [R, m] samples (NaN-aware): (lo[m], hi[m])."""
    x = np.asarray(samples, float)
    x = np.where(np.isfinite(x), x, np.nan)
    tail = 50.0 * (1.0 - level)
    if x.ndim < 2 or x.shape[0] == 0 or np.all(np.isnan(x)):
        m = x.shape[-1] if x.ndim else 1
        return np.full(m, np.nan), np.full(m, np.nan)
    lo, hi = np.nanpercentile(x, [tail, 100.0 - tail], axis=0)
    return lo, hi
