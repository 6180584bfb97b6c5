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


def resample_weights(groups, n_resamples: int, seed: int) -> np.ndarray:
    """[R, n] weights: each resample draws len(unique(groups)) groups with replacement; a point's
    weight is how often its group was drawn."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = inverse.max() + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
    return counts[:, inverse].astype(np.float64)


def distinct_starts(fit: FitResult, k: int, min_dist: float = 1e-2) -> np.ndarray:
    """The best end point and up to k-1 others at least `min_dist` away (raw space), best first."""
    chosen = [fit.ends[0]]
    for x in fit.ends[1:]:
        if len(chosen) >= k:
            break
        if np.isfinite(x).all() and min(np.max(np.abs(x - c)) for c in chosen) > min_dist:
            chosen.append(x)
    return np.stack(chosen)


def bootstrap_law(
    law: Law,
    data,
    fit: FitResult,
    n_resamples: int = 200,
    seed: int = 0,
    groups=None,
    n_starts: int = 3,
    config: SolverConfig | None = None,
) -> LawBootstrap:
    """Refit `law` on `n_resamples` resamples of `data` (points, or whole groups such as runs)."""
    log_x, log_y = inputs_matrix(law, data)
    n = log_y.shape[0]
    unit = "points" if groups is None else "runs"
    groups = np.arange(n) if groups is None else np.asarray(groups)
    w = resample_weights(groups, n_resamples, seed)
    starts = distinct_starts(fit, n_starts)
    s = starts.shape[0]
    theta0 = np.tile(starts, (n_resamples, 1))  # resample r uses rows r*s .. r*s+s-1
    weights = np.repeat(w, s, axis=0)
    # float64 throughout: each resample has only a few starts, and a float32 presolve can stall
    # in a flat valley (the float64 polish only revisits starts near the best)
    config = config or SolverConfig(delta=fit.delta, float32_first=False)
    theta, value, _, status = solve(law, theta0, log_x, log_y, weights, config, problems=np.repeat(np.arange(n_resamples), s))
    theta, value, status = theta.reshape(n_resamples, s, -1), value.reshape(n_resamples, s), status.reshape(n_resamples, s)
    pick = np.argmin(value, axis=1)
    rows = np.arange(n_resamples)
    raw = theta[rows, pick]
    return LawBootstrap(
        raw=raw,
        natural=law.to_natural(raw),
        converged=np.isin(status[rows, pick], CONVERGED),
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
