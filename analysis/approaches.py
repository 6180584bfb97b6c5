"""Chinchilla's three routes to the compute-optimal frontier N_opt(C), D_opt(C) (Hoffmann et al.
2022, section 3).

Approach 1  envelope of the training curves (each smoothed by a rolling median over 5 logged
            steps): at each FLOP count the run with the lowest loss gives N_opt(C) and D_opt(C)
            (its tokens so far); power laws are fitted through them.
Approach 2  IsoFLOP profiles: per FLOP budget a parabola in log10 N fits the final losses; its
            minimum (refused unless it lies inside the sampled N range) gives N_opt, D_opt;
            power laws through the minima.
Approach 3  the parametric fit L(N, D) = E + A/N^alpha + B/D^beta; minimising it under
            C = 6ND gives N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
            G = (alpha A / (beta B))^(1/(alpha+beta)), a = beta/(alpha+beta), b = alpha/(alpha+beta).

Approaches 1 and 2 are cheap, so their bootstrap lives here (resample runs / points within each
budget and redo the whole approach); Approach 3's bootstrap is `analysis.bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

MAX_SPREAD = 0.1  # decades of C an inferred budget may span (a factor 1.26)


# ---------------------------------------------------------------- Approach 3 (closed forms) ------
def frontier_constants(params: Mapping[str, float]) -> dict[str, float]:
    """G, a, b of the Chinchilla law's compute-optimal frontier (arrays broadcast)."""
    A, B = np.asarray(params["A"], float), np.asarray(params["B"], float)
    alpha, beta = np.asarray(params["alpha"], float), np.asarray(params["beta"], float)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    return {"G": G, "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


def compute_optimal(params: Mapping[str, float], C) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) at compute C under C = 6 N D. Parameters may be arrays [R] and C [m]:
    the result is then [R, m]."""
    k = frontier_constants(params)
    G, a, b = (np.asarray(k[x])[..., None] if np.ndim(k[x]) else k[x] for x in ("G", "a", "b"))
    c6 = np.asarray(C, float) / 6.0
    return G * c6**a, c6**b / G


# ---------------------------------------------------------------- power laws in C ---------------
@dataclass(frozen=True)
class PowerLaw:
    """y = coef * C^exponent, fitted by least squares on log10 y vs log10 C."""

    coef: float
    exponent: float

    def __call__(self, C):
        return self.coef * np.asarray(C, float) ** self.exponent


def fit_power_law(C, y) -> PowerLaw:
    x, ly = np.log10(np.asarray(C, float)), np.log10(np.asarray(y, float))
    if np.unique(x).size < 2:
        raise AnalysisError("a power law in C needs points at two or more compute values")
    slope, intercept = np.polyfit(x, ly, 1)
    return PowerLaw(coef=float(10.0**intercept), exponent=float(slope))


# ---------------------------------------------------------------- Approach 2 (IsoFLOP) ----------
@dataclass(frozen=True)
class Budget:
    C: float
    n_points: int
    N_range: tuple[float, float]
    accepted: bool
    reason: str = ""  # why a budget was refused
    coeffs: tuple[float, float, float] | None = None  # loss = c2 x^2 + c1 x + c0, x = log10 N
    N_opt: float = float("nan")
    D_opt: float = float("nan")
    loss_opt: float = float("nan")


@dataclass(frozen=True)
class IsoFlopResult:
    budgets: tuple[Budget, ...]
    N_fit: PowerLaw
    D_fit: PowerLaw
    grouping: str
    warnings: tuple[str, ...] = ()

    @property
    def accepted(self) -> list[Budget]:
        return [b for b in self.budgets if b.accepted]


def group_budgets(points: pd.DataFrame, gap_decades: float = 0.05) -> tuple[np.ndarray, np.ndarray, str]:
    """Label each point with its FLOP budget: the `budget` column where every point has one,
    else clusters of log10 C (a gap wider than `gap_decades` starts a new budget, so C values a few
    percent apart, as step rounding leaves them, share a budget). Returns (labels, budget C per
    label, how)."""
    budget = points["budget"].to_numpy(float) if "budget" in points else np.full(len(points), np.nan)
    if np.all(np.isfinite(budget) & (budget > 0)):
        values, labels = np.unique(budget, return_inverse=True)
        return labels, values, "the runs' nominal budget"
    logc = np.log10(points["C"].to_numpy(float))
    order = np.argsort(logc)
    labels_sorted = np.concatenate([[0], np.cumsum(np.diff(logc[order]) > gap_decades)])
    labels = np.empty(len(logc), int)
    labels[order] = labels_sorted
    values = np.array([10 ** logc[labels == k].mean() for k in range(labels.max() + 1)])
    return labels, values, f"clusters of log10 C (a gap over {gap_decades} decades starts a new budget)"


def fit_budget(C: float, N: np.ndarray, D: np.ndarray, loss: np.ndarray, C_spread: float = 0.0) -> Budget:
    """Parabola in log10 N through one budget's losses; refused unless convex with an interior
    minimum. `C_spread` (decades between the group's smallest and largest C) refuses groups that
    are not one IsoFLOP slice."""
    x = np.log10(N)
    rng = (float(N.min()), float(N.max()))
    base = dict(C=float(C), n_points=int(len(N)), N_range=rng)
    if C_spread > MAX_SPREAD:
        return Budget(**base, accepted=False, reason=f"C varies by a factor {10 ** C_spread:.2g} within this group: not one IsoFLOP budget")
    if np.unique(x).size < 3:
        return Budget(**base, accepted=False, reason=f"{np.unique(x).size} distinct model sizes; a parabola needs 3 or more")
    c2, c1, c0 = np.polyfit(x, loss, 2)
    if not c2 > 0:
        return Budget(**base, accepted=False, coeffs=(c2, c1, c0), reason="loss vs log N is not convex here (no minimum)")
    x_opt = -c1 / (2 * c2)
    if not (x.min() < x_opt < x.max()):
        side = "below the smallest" if x_opt <= x.min() else "above the largest"
        return Budget(
            **base,
            accepted=False,
            coeffs=(c2, c1, c0),
            N_opt=float(10**x_opt),
            reason=f"the parabola's minimum N={10 ** x_opt:.3g} lies {side} model trained "
            f"({rng[0]:.3g}..{rng[1]:.3g}); add {'smaller' if x_opt <= x.min() else 'larger'} models to this budget",
        )
    # D at the optimum: log D is (close to) linear in log N along a budget (exactly, slope -1, when C = 6ND)
    s, i = np.polyfit(x, np.log10(D), 1)
    return Budget(
        **base,
        accepted=True,
        coeffs=(c2, c1, c0),
        N_opt=float(10**x_opt),
        D_opt=float(10 ** (s * x_opt + i)),
        loss_opt=float(c0 - c1 * c1 / (4 * c2)),
    )


def approach2(points: pd.DataFrame, gap_decades: float = 0.05, groups=None) -> IsoFlopResult:
    """IsoFLOP parabolas per budget and power laws through their minima. `groups`: a
    `group_budgets` result to reuse (default: group `points` now)."""
    labels, values, how = groups if groups is not None else group_budgets(points, gap_decades)
    if len(values) < 2:
        raise AnalysisError(
            f"Approach 2 needs two or more FLOP budgets; all {len(points)} points share one "
            f"(C ~ {values[0]:.3g}). Train an IsoFLOP sweep at several budgets, or use approach 3"
        )
    N, D, loss = (points[c].to_numpy(float) for c in ("N", "D", "loss"))
    logc = np.log10(points["C"].to_numpy(float))
    nominal = how.startswith("the runs")  # a sweep's own budget label is trusted as is

    def spread(sel):
        return 0.0 if nominal else float(logc[sel].max() - logc[sel].min())

    budgets = tuple(
        fit_budget(values[k], N[labels == k], D[labels == k], loss[labels == k], spread(labels == k)) for k in range(len(values))
    )
    ok = [b for b in budgets if b.accepted]
    refused = [f"C={b.C:.3g}: {b.reason}" for b in budgets if not b.accepted]
    if len(ok) < 2:
        raise AnalysisError(
            f"Approach 2 needs two or more budgets with an interior minimum; {len(ok)} of {len(budgets)} "
            f"qualify. Refused: {'; '.join(refused)}"
        )
    msgs = tuple(f"approach 2 refused budget {r}" for r in refused)
    return IsoFlopResult(
        budgets=budgets,
        N_fit=fit_power_law([b.C for b in ok], [b.N_opt for b in ok]),
        D_fit=fit_power_law([b.C for b in ok], [b.D_opt for b in ok]),
        grouping=how,
        warnings=msgs,
    )


# ---------------------------------------------------------------- Approach 1 (envelope) ---------
@dataclass(frozen=True)
class EnvelopeResult:
    C: np.ndarray  # FLOP grid where two or more runs overlap
    N_opt: np.ndarray
    D_opt: np.ndarray
    loss: np.ndarray
    run: np.ndarray
    N_fit: PowerLaw
    D_fit: PowerLaw
    n_runs: int
    warnings: tuple[str, ...] = field(default=())


SMOOTH = 5  # training losses are noisy: a centred rolling median over this many logged steps


def _interp_curves(curves: pd.DataFrame, grid: np.ndarray, smooth: int = SMOOTH):
    """loss (smoothed) and tokens of every run at every grid FLOP count (NaN outside a run's curve)."""
    runs = curves["run"].unique()
    loss = np.full((len(runs), len(grid)), np.nan)
    tokens = np.full_like(loss, np.nan)
    sizes = np.empty(len(runs))
    lg = np.log(grid)
    for i, (r, c) in enumerate(curves.groupby("run", sort=False)):
        c = c.sort_values("flops")
        lf = np.log(c["flops"].to_numpy())
        inside = (lg >= lf[0]) & (lg <= lf[-1])
        smoothed = c["loss"].rolling(smooth, center=True, min_periods=1).median().to_numpy() if smooth > 1 else c["loss"].to_numpy()
        loss[i, inside] = np.interp(lg[inside], lf, smoothed)
        tokens[i, inside] = np.exp(np.interp(lg[inside], lf, np.log(np.maximum(c["tokens"].to_numpy(), 1e-300))))
        sizes[i] = c["N"].iloc[0]
    return runs, sizes, loss, tokens


def approach1(curves: pd.DataFrame | None, n_grid: int = 200) -> EnvelopeResult:
    """Lower envelope of the loss-vs-FLOPs curves and power laws through it."""
    if curves is None or len(curves) == 0:
        raise AnalysisError("Approach 1 needs training curves (metrics.jsonl of each run); a CSV has none")
    n_runs = curves["run"].nunique()
    n_sizes = curves["N"].nunique()
    if n_sizes < 2:
        raise AnalysisError(f"Approach 1 needs curves of two or more model sizes; found {n_sizes}")
    grid = np.geomspace(curves["flops"].min(), curves["flops"].max(), n_grid)
    runs, sizes, loss, tokens = _interp_curves(curves, grid)
    return _envelope(grid, runs, sizes, loss, tokens, n_runs)


def _envelope(grid, runs, sizes, loss, tokens, n_runs) -> EnvelopeResult:
    covered = np.sum(np.isfinite(loss), axis=0) >= 2  # the envelope means something where runs overlap
    if covered.sum() < 2:
        raise AnalysisError("Approach 1: the training curves overlap at fewer than two FLOP counts")
    filled = np.where(np.isfinite(loss), loss, np.inf)
    best = np.argmin(filled, axis=0)
    cols = np.arange(len(grid))
    C, best = grid[covered], best[covered]
    N_opt, D_opt = sizes[best], tokens[best, cols[covered]]
    msgs = []
    if np.unique(N_opt).size < 2:
        raise AnalysisError(
            f"Approach 1: one model size (N={N_opt[0]:.3g}) is best at every FLOP count; "
            "the envelope needs a range of sizes that take turns being best"
        )
    if np.unique(N_opt).size < 3:
        msgs.append("approach 1: only two model sizes appear on the envelope; its exponents are rough")
    return EnvelopeResult(
        C=C,
        N_opt=N_opt,
        D_opt=D_opt,
        loss=filled[best, cols[covered]],
        run=np.asarray(runs)[best],
        N_fit=fit_power_law(C, N_opt),
        D_fit=fit_power_law(C, D_opt),
        n_runs=int(n_runs),
        warnings=tuple(msgs),
    )


# ---------------------------------------------------------------- bootstrap of approaches 1, 2 --
def bootstrap_approach2(points, labels, n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Resample points within each budget; redo parabolas and power laws. Resamples where fewer
    than two budgets qualify are dropped (counted in `n_failed`)."""
    rng = np.random.default_rng(seed)
    lab, values, how = labels
    groups = [np.flatnonzero(lab == k) for k in range(len(values))]

    def refit():
        take = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        return approach2(points.iloc[take].reset_index(drop=True), groups=(lab[take], values, how))

    return _frontier_samples(refit, n_resamples)


def bootstrap_approach1(curves, n_resamples: int, seed: int, n_grid: int = 200) -> dict[str, np.ndarray]:
    """Resample runs (whole curves) with replacement; redo the envelope and its power laws."""
    rng = np.random.default_rng(seed)
    grid = np.geomspace(curves["flops"].min(), curves["flops"].max(), n_grid)
    runs, sizes, loss, tokens = _interp_curves(curves, grid)

    def refit():
        take = np.unique(rng.integers(0, len(runs), len(runs)))  # duplicates leave a minimum unchanged
        return _envelope(grid, runs[take], sizes[take], loss[take], tokens[take], len(take))

    return _frontier_samples(refit, n_resamples)


def _frontier_samples(refit, n_resamples: int) -> dict[str, np.ndarray]:
    """Call `refit()` (one resample's fit) n times; collect the frontier power laws' parameters.
    A resample the approach refuses (AnalysisError) is counted in n_failed, not retried."""
    out = {"N_coef": [], "a": [], "D_coef": [], "b": []}
    failed = 0
    for _ in range(n_resamples):
        try:
            res = refit()
        except AnalysisError:
            failed += 1
            continue
        for key, v in (("N_coef", res.N_fit.coef), ("a", res.N_fit.exponent), ("D_coef", res.D_fit.coef), ("b", res.D_fit.exponent)):
            out[key].append(v)
    samples = {k: np.asarray(v) for k, v in out.items()}
    samples["n_failed"] = failed
    return samples
