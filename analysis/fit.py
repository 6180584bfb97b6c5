"""The one fitting machine: Huber loss on log residuals, L-BFGS from a grid of starts, vectorised.

    objective(theta) = sum_i w_i * huber_delta(log L_i - log_predict(theta, X_i))

Summed, not averaged: averaging divides the objective (and its gradient) by n, and L-BFGS's
"no more progress" tests then fire before the optimum (Besiroglu et al. 2024, section 3).
All starts run at once in the batched L-BFGS of `analysis.lbfgs`, so 4,500 starts cost about
what a few hundred batched iterations cost. The same compiled solver runs bootstrap resamples: a
resample is a vector of integer weights w.

Precision: every start first runs in float32 (several times cheaper on CPU) until float32 stops
improving it; the starts that ended within 1% of the best objective are then polished in float64
(Huber objectives near the optimum differ in the 10th digit). The other starts keep their float32
end points, which in a flat valley can stop short of where float64 would go: they are not the
answer, and `SolverConfig(float32_first=False)` (float64 throughout; the bootstrap's setting, as
a resample has only a few starts) reaches the same best fit (tested, and against scipy).
float64 is enabled with `jax.enable_x64` as a context, so training code in the same process
keeps its float32 default.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from analysis import lbfgs
from analysis.errors import AnalysisError, FitWarning
from analysis.laws import Law
from analysis.lbfgs import CONVERGED, STATUS, LbfgsConfig

DEFAULT_DELTA = 1e-3
BLOCK = 512  # rows per block of the batched objective (see _value_and_grad)


@dataclass(frozen=True)
class SolverConfig:
    delta: float = DEFAULT_DELTA
    lbfgs: LbfgsConfig = LbfgsConfig()
    # Run every start to convergence in float32 first (several times cheaper on CPU), then
    # polish in float64 the starts that ended within `polish_rtol` of the best objective.
    float32_first: bool = True
    polish_rtol: float = 1e-2
    lbfgs32: LbfgsConfig = LbfgsConfig(gtol=1e-6, ftol=1e-7)
    polish: LbfgsConfig = LbfgsConfig(shrink=False)  # near their optimum: no batch shrinking


@dataclass(frozen=True)
class FitResult:
    law: str
    params: dict[str, float]  # natural parameters, e.g. {"E": .., "A": .., ...}
    raw: np.ndarray  # best raw (fitting) parameters
    objective: float  # summed Huber loss at the best start
    converged: bool
    status: str
    n_iter: int
    n_points: int
    n_starts: int
    start: np.ndarray  # the start the best fit came from
    delta: float
    warnings: tuple[str, ...] = ()
    # every start's end point and objective, best first (bootstrap reuses the best few)
    ends: np.ndarray = field(default=None, repr=False)
    end_objectives: np.ndarray = field(default=None, repr=False)


def huber(r, delta, xp=jnp):
    """Huber's loss: quadratic within delta of zero, linear beyond (continuous slope)."""
    abs_r = xp.abs(r)
    return xp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def objective(law: Law, theta, log_x, log_y, w, delta, xp=jnp):
    """Summed (weighted) Huber loss of log residuals; theta may carry leading batch axes."""
    r = log_y - law.log_predict(theta, log_x, xp)
    return xp.sum(w * huber(r, delta, xp), axis=-1)


# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _value_and_grad(law: Law, delta: float, per_row_y: bool = False):
    """vg(theta[S,k], w[S,n], shared=(log_x, log_y)) -> (objective[S], gradient[S,k]).
    per_row_y: each row has its own losses (simulated datasets on one design, analysis.power):
    aux = (w[S,n], log_y[S,n]), shared = (log_x,)."""

    def one(theta, w, log_x, log_y):
        return objective(law, theta, log_x, log_y, w, delta)

    if per_row_y:
        rows = jax.vmap(jax.value_and_grad(one), in_axes=(0, 0, None, 0))
        batched = lambda theta, wy, log_x: rows(theta, wy[0], log_x, wy[1])  # noqa: E731
    else:
        batched = jax.vmap(jax.value_and_grad(one), in_axes=(0, 0, None, None))

    def vg(theta, w, shared):
        S, k = theta.shape
        if S <= BLOCK or S % BLOCK:
            return batched(theta, w, *shared)
        # blocks of rows, one after the other: the [S, n] temporaries of a big batch overflow the
        # CPU caches and every pass of the gradient then goes to memory (3.5x slower for 4,608 x 256)
        blocks = jax.tree.map(lambda a: a.reshape(-1, BLOCK, *a.shape[1:]), w)
        f, g = jax.lax.map(lambda tw: batched(tw[0], tw[1], *shared), (theta.reshape(-1, BLOCK, k), blocks))
        return f.reshape(S), g.reshape(S, k)

    return vg


def solve(
    law: Law,
    starts: np.ndarray,
    log_x: np.ndarray,
    log_y: np.ndarray,
    weights: np.ndarray,
    config: SolverConfig = SolverConfig(),
    problems: np.ndarray | None = None,
):
    """L-BFGS from every row of `starts`, each with the matching row of `weights` [S, n].
    `log_y`: [n], the same losses for every row, or [S, n], each row's own (K simulated
    datasets of one design fitted in one batch, analysis.power).

    `problems` [S] says which rows are starts of the same problem (same weights): the float64
    polish keeps, per problem, the rows within `polish_rtol` of that problem's best. None: all
    rows are one problem. Returns numpy arrays (theta [S,k], objective [S], iterations [S],
    status [S]); status indexes `lbfgs.STATUS` (0 and 1 mean converged).
    """
    # pad the points with zero-weight copies to a power of two (multiple of 256 past 256) so that
    # nearby sizes share one compilation
    per_row = np.ndim(log_y) == 2
    n = log_y.shape[-1]
    n_pad = (max(32, 1 << int(np.ceil(np.log2(n)))) if n <= 256 else int(np.ceil(n / 256) * 256)) - n
    if n_pad:
        log_x = np.concatenate([log_x, np.repeat(log_x[:, :1], n_pad, axis=1)], axis=1)
        log_y = np.concatenate([log_y, np.repeat(log_y[..., :1], n_pad, axis=-1)], axis=-1)
        weights = np.concatenate([weights, np.zeros((weights.shape[0], n_pad))], axis=1)

    def run(x0, w, dtype, cfg, rows=slice(None)):
        with jax.enable_x64(True):
            data = (jnp.asarray(log_x, dtype), jnp.asarray(log_y, dtype))
            aux, shared = ((jnp.asarray(w, dtype), jnp.asarray(log_y[rows], dtype)), data[:1]) if per_row else (jnp.asarray(w, dtype), data)
            return lbfgs.minimize(_value_and_grad(law, float(config.delta), per_row), jnp.asarray(x0, dtype), aux, shared, cfg)

    if not config.float32_first:
        theta, value, it, status = run(starts, weights, jnp.float64, config.lbfgs)
        return theta, np.where(np.isfinite(value), value, np.inf), it, status
    theta, value, it, status = run(starts, weights, jnp.float32, config.lbfgs32)
    theta = theta.astype(np.float64)
    value = np.where(np.isfinite(value), value.astype(np.float64), np.inf)
    problems = np.zeros(len(value), int) if problems is None else np.unique(problems, return_inverse=True)[1]
    best = np.full(problems.max() + 1, np.inf)
    np.minimum.at(best, problems, value)
    polish = np.isfinite(value) & (value <= best[problems] * (1 + config.polish_rtol) + 1e-12)
    theta[polish], value[polish], it2, status[polish] = run(theta[polish], weights[polish], jnp.float64, config.polish, polish)
    it[polish] += it2
    # the others keep their float32 end point; their objective is recomputed in float64
    rest = ~polish & np.all(np.isfinite(theta), axis=1)
    value[rest] = objective(law, theta[rest], log_x, log_y[rest] if per_row else log_y, weights[rest], config.delta, xp=np)
    return theta, np.where(np.isfinite(value), value, np.inf), it, status


# ------------------------------------------------------------------------------------------------
def inputs_matrix(law: Law, data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(log X [n_inputs, n], log L [n]) from a mapping/DataFrame with the law's columns + loss."""
    missing = [c for c in (*law.inputs, "loss") if c not in data]
    if missing:
        raise AnalysisError(
            f"law {law.name!r} needs columns {', '.join(law.inputs)} and loss; missing {', '.join(missing)}"
        )
    cols = [np.asarray(data[c], dtype=np.float64) for c in (*law.inputs, "loss")]
    for name, col in zip((*law.inputs, "loss"), cols):
        bad = ~(np.isfinite(col) & (col > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AnalysisError(
                f"column {name} has {int(bad.sum())} non-positive or non-finite values (first at "
                f"position {i}: {col[i]!r}); clean the data first (analysis.data drops such rows)"
            )
    return np.log(np.stack(cols[:-1])), np.log(cols[-1])


def fit_law(
    law: Law,
    data: Mapping[str, np.ndarray],
    *,
    delta: float = DEFAULT_DELTA,
    starts: np.ndarray | None = None,
    config: SolverConfig | None = None,
    warn: bool = True,
    weights: np.ndarray | None = None,
) -> FitResult:
    """Fit `law` to data (columns: the law's inputs and `loss`) from a grid of starts.

    `starts` defaults to the law's full grid (4,500 starts for Chinchilla); only then is the
    "best start on the grid's edge" rule applied (a small subset has too few interior starts).
    Warnings, returned in the result and emitted as `FitWarning` unless `warn=False`: the fit
    outside the grid, the best start on its edge, no convergence, a parameter that never moved
    from its start, as many points as parameters. Raises `AnalysisError` for fewer points than
    parameters or non-positive values. `weights` [n] (e.g. 0/1 to leave points out): the same
    problem shape as the unweighted fit, so a leave-one-out refit reuses its compilation.
    """
    config = dataclasses.replace(config or SolverConfig(), delta=delta)
    log_x, log_y = inputs_matrix(law, data)
    w = np.ones(log_y.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    n, k = int(np.count_nonzero(w)), law.n_params
    if n < k:
        raise AnalysisError(
            f"{n} data points cannot determine the {k} parameters of {law.name} "
            f"({law.formula}); provide at least {k + 1} points or a law with fewer parameters"
        )
    grid = law.grid_points() if starts is None else np.atleast_2d(np.asarray(starts, dtype=np.float64))
    theta, value, it, status = solve(law, grid, log_x, log_y, np.tile(w, (grid.shape[0], 1)), config)

    order = np.argsort(value, kind="stable")
    best = int(order[0])
    if not np.isfinite(value[best]):
        raise AnalysisError(f"every one of the {grid.shape[0]} starts gave a non-finite objective for {law.name}")
    msgs = []
    if n == k:
        msgs.append(f"{n} points for {k} parameters: the fit interpolates and says nothing about its error")
    if status[best] not in CONVERGED:
        msgs.append(
            f"{law.name}: the best start did not converge ({STATUS[status[best]]} after {it[best]} iterations)"
        )
    msgs += _grid_warnings(law, grid, theta, value, best, is_grid=starts is None)
    msgs += _unmoved_warnings(law, grid[best], theta[best])
    if warn:
        for m in msgs:
            warnings.warn(m, FitWarning, stacklevel=2)
    return FitResult(
        law=law.name,
        params={k_: float(v) for k_, v in law.to_natural(theta[best]).items()},
        raw=theta[best],
        objective=float(value[best]),
        converged=bool(status[best] in CONVERGED),
        status=STATUS[int(status[best])],
        n_iter=int(it[best]),
        n_points=n,
        n_starts=int(grid.shape[0]),
        start=grid[best],
        delta=delta,
        warnings=tuple(msgs),
        ends=theta[order],
        end_objectives=value[order],
    )


def _grid_warnings(law, grid, theta, value, best, is_grid, rtol=1e-6, atol=1e-14) -> list[str]:
    """The best optimum reached only from the grid's edge, or lying outside the grid: widen it."""
    msgs = []
    lo, hi = grid.min(axis=0), grid.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    outside = [
        f"{name}={theta[best, j]:.4g} (grid {lo[j]:g}..{hi[j]:g})"
        for j, name in enumerate(law.raw_names)
        if hi[j] > lo[j] and (theta[best, j] < lo[j] - 0.05 * span[j] or theta[best, j] > hi[j] + 0.05 * span[j])
    ]
    if outside:
        msgs.append(f"{law.name}: the fit lies outside the starting grid in {', '.join(outside)}; widen the grid")
    if is_grid and grid.shape[0] > 1:
        # atol: a perfect fit ends near 0, where "relative to the best" means nothing
        near_best = value <= value[best] + rtol * abs(value[best]) + atol
        varied = hi > lo
        on_edge = np.any(varied & ((grid == lo) | (grid == hi)), axis=1)
        if np.all(on_edge[near_best]):
            msgs.append(
                f"{law.name}: the best fit was reached only from starts on the grid's edge "
                f"(best start {dict(zip(law.raw_names, np.round(grid[best], 4).tolist()))}); "
                "the optimum may lie beyond the grid: widen it"
            )
    return msgs


def _unmoved_warnings(law, start, end, atol=1e-7) -> list[str]:
    unmoved = [name for name, s, e in zip(law.raw_names, start, end) if abs(e - s) <= atol]
    if not unmoved:
        return []
    return [
        f"{law.name}: parameter(s) {', '.join(unmoved)} did not move from the start "
        f"({', '.join(f'{n}={s:g}' for n, s in zip(law.raw_names, start) if n in unmoved)}); "
        "the data do not constrain them (e.g. too narrow a range of N or D, or a term swamped by the others)"
    ]
