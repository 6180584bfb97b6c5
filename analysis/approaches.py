"""Chinchilla's three routes to the compute-optimal frontier N_opt(C), D_opt(C) (Hoffmann et al.
2022, section 3). Every approach converts between N, D and C with ONE cost model
(`analysis.costmodel.CostModel`: D = cost.tokens(N, C)).

Approach 1  envelope of end-of-run losses: per model size, the final losses of its runs trained
            to different horizons (token counts) form a curve loss(C), linear in log C between
            the horizons; at each C the size with the lowest curve gives N_opt(C) where it is
            interior among the sizes that reach C (bracketed), and D_opt(C) =
            cost.tokens(N_opt, C); power laws are fitted through them, each size weighted once.
Approach 2  IsoFLOP profiles: per FLOP budget a parabola in log10 N fitted LOCALLY (a window of
            sizes around the profile's lowest point, robust loss) gives N_opt at its vertex,
            with a standard error (plus the vertex bias of the rule at that window, measured on
            a reference law); D_opt = cost.tokens(N_opt, C); power laws through the minima,
            weighted by 1/se^2.
Approach 3  the parametric fit L(N, D) = E + A/N^alpha + B/D^beta; minimising it under
            C = 6ND gives N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
            G = (alpha A / (beta B))^(1/(alpha+beta)), a = beta/(alpha+beta), b = alpha/(alpha+beta).

Approaches 1 and 2 are cheap, so their bootstrap lives here (resample model sizes / points
within each budget and redo the approach; every resample is counted as used, failed or, for
Approach 2, lost a budget); Approach 3's bootstrap is `analysis.bootstrap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis.costmodel import CostModel
from analysis.errors import AnalysisError
from analysis.noise import BudgetNoise

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


def fit_power_law(C, y, weights=None) -> PowerLaw:
    """Least-squares line through (log10 C, log10 y), weighted by `weights` (e.g. 1/se^2) when
    given. Raises AnalysisError when any C or y is non-positive or non-finite (a logarithm of it
    would be garbage), when the lengths differ, or when fewer than two distinct C values remain."""
    C, y = np.asarray(C, float).ravel(), np.asarray(y, float).ravel()
    if C.size != y.size:
        raise AnalysisError(f"a power law in C needs as many C values as y values ({C.size} vs {y.size})")
    bad = ~(np.isfinite(C) & np.isfinite(y) & (C > 0) & (y > 0))
    if bad.any():
        raise AnalysisError(
            f"a power law in C needs positive, finite C and y; {int(bad.sum())} of {C.size} pairs are not "
            f"(first: C={C[bad][0]:.3g}, y={y[bad][0]:.3g})"
        )
    x, ly = np.log10(C), np.log10(y)
    if np.unique(x).size < 2:
        raise AnalysisError("a power law in C needs points at two or more compute values")
    if weights is None:
        slope, intercept = np.polyfit(x, ly, 1)
    else:  # np.polyfit's w multiplies the residuals: sqrt of the weights of the squares
        slope, intercept = np.polyfit(x, ly, 1, w=np.sqrt(np.asarray(weights, float).ravel()))
    return PowerLaw(coef=float(10.0**intercept), exponent=float(slope))


# ---------------------------------------------------------------- Approach 2 (IsoFLOP) ----------
WINDOW_MIN_SIZES = 5  # a local parabola (3 parameters) through at least 5 sizes: 2 spare for noise/outliers
# soft_l1: quadratic near 0, linear far out. "cauchy" resists outliers more, but measured rmse of
# log10 N_opt 0.055 vs 0.045 decades (and +-2 se coverage 80% vs 90%) at 0.01 nats of noise
ROBUST_LOSS = "soft_l1"
F_SCALE_FLOOR = 1e-4  # nats; residuals below this count as Gaussian (exact synthetic data leave ~0 after trimming)
SIZE_DIGITS = 9  # log10 N rounded to this many digits names a distinct model size
RULE = (
    "local robust parabola in log10 N: centre = lowest point of a 3-point running median of the loss "
    f"(Tukey end rule; ties to interior sizes); window = the >= {WINDOW_MIN_SIZES} sizes nearest the centre in log10 N, widened until "
    "convex; soft_l1 fit, f_scale = residual SD of the best (n-1)-point least-squares fit; "
    "minimum = vertex; se by the delta method with the least-squares covariance, and in quadrature the vertex's shift "
    "that the same rule makes at the window's offsets on a reference law (alpha 0.34, beta 0.28); the power laws "
    "through the minima weighted by 1/se^2"
)


@dataclass(frozen=True)
class Budget:
    """One IsoFLOP budget's minimum (see `fit_budget` for the rule). Refused budgets keep
    `reason` and whatever was computed before the refusal; the rest stay NaN / empty."""

    C: float
    n_points: int
    N_range: tuple[float, float]
    accepted: bool
    reason: str = ""  # why a budget was refused
    coeffs: tuple[float, float, float] | None = None  # loss = c2 x^2 + c1 x + c0, x = log10 N (window fit)
    N_opt: float = float("nan")
    D_opt: float = float("nan")  # cost.tokens(N_opt, C)
    loss_opt: float = float("nan")
    window: tuple[float, ...] = ()  # the distinct N values whose points the parabola was fitted to
    log10_N_opt_se: float = float("nan")  # standard error of log10 N_opt (delta method)
    loss_opt_se: float = float("nan")  # standard error of the vertex loss (delta method)
    rule: str = RULE
    sigma: float = float("nan")  # noise (nats) behind the se: this window's residuals, or approach2's (pooled, or seed replicates')
    sigma_dof: int = 0  # degrees of freedom of `sigma` (points - 3 in the window[s]; runs - points for seed replicates)
    sigma_source: str = "this window's residuals"
    one_sided: bool = False  # the window runs into the ladder's end: 2+ more sizes on one side of the vertex
    vertex_bias: float = 0.0  # the vertex's shift (decades of N) a parabola makes at this window's offsets, measured on REFERENCE_EXPONENTS; in the se


@dataclass(frozen=True)
class IsoFlopResult:
    budgets: tuple[Budget, ...]
    N_fit: PowerLaw
    D_fit: PowerLaw
    grouping: str
    warnings: tuple[str, ...] = ()
    weights: np.ndarray | None = None  # the power laws' weights over the accepted budgets (1/se^2), None: equal
    pooled: tuple[float, int] | None = None  # (sigma, dof) of the windows' residuals pooled over the accepted budgets

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


def running_median3(y: np.ndarray) -> np.ndarray:
    """3-point running median of a profile ordered by N. Interior: median of each point and its
    two neighbours. Ends (Tukey's end rule): median(y_end, s_next, 3 s_next - 2 s_nextnext), i.e.
    the end value unless it disagrees with the straight-line extrapolation of its smoothed
    neighbours, so a spuriously low end point cannot pass for the minimum. With fewer than 4
    values there is nothing to smooth against: returned unchanged."""
    y = np.asarray(y, float)
    n = y.size
    if n < 4:
        return y.copy()
    s = y.copy()
    s[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    s[0] = np.median([y[0], s[1], 3 * s[1] - 2 * s[2]])
    s[-1] = np.median([y[-1], s[-2], 3 * s[-2] - 2 * s[-3]])
    return s


def _robust_parabola(t: np.ndarray, y: np.ndarray):
    """Parabola y = b2 t^2 + b1 t + b0 through a window's points, robust to one outlier.

    f_scale = the residual SD of the best (n-1)-point least-squares parabola (the window minus
    the point whose removal lowers the residual sum of squares most; a trimmed, LTS-style scale,
    floor F_SCALE_FLOOR). Why not the MAD of the ordinary least-squares residuals: with 5 points
    an outlier leaks into every OLS residual (at the centre of 5 evenly spaced points the MAD is
    0.43 x the outlier), so f_scale ~ 0.6 x the outlier and soft_l1 barely down-weights it.
    Then scipy least_squares(loss="soft_l1", f_scale) from that trimmed fit's coefficients.
    Windows of 3 or 4 points (budgets with that few sizes) get plain least squares.

    Returns (b, unit covariance, rss, dof) for the standard errors: the ORDINARY least-squares
    covariance (X'X)^-1 with rss / dof = sigma^2 from the OLS residuals of all n points
    (dof = n - 3). Under Gaussian noise the robust vertex is as precise as the OLS one (measured:
    rmse of log10 N_opt 0.045 vs 0.048 decades at 0.01 nats noise), so this se is calibrated there;
    an outlier inflates sigma, so the se then errs on the large side."""
    X = np.stack([t * t, t, np.ones_like(t)], axis=1)
    n = len(y)
    b_ols = np.linalg.lstsq(X, y, rcond=None)[0]
    rss = float(np.sum((y - X @ b_ols) ** 2))
    b = b_ols  # 3 or 4 points: too few to tell an outlier from the curve, so plain least squares
    if n >= 5:  # the trimmed fit keeps 4+ points, so its residuals have 1+ degree of freedom
        best = None
        for k in range(n):
            keep = np.arange(n) != k
            bk = np.linalg.lstsq(X[keep], y[keep], rcond=None)[0]
            rk = float(np.sum((y[keep] - X[keep] @ bk) ** 2))
            if best is None or rk < best[0]:
                best = (rk, bk)
        f = max(float(np.sqrt(best[0] / (n - 4))), F_SCALE_FLOOR)
        b = least_squares(lambda p: X @ p - y, best[1], jac=lambda p: X, loss=ROBUST_LOSS, f_scale=f, method="trf", x_scale="jac").x
    try:
        cov = np.linalg.inv(X.T @ X)
    except np.linalg.LinAlgError:
        cov = np.full((3, 3), np.nan)
    return b, cov, rss, int(n - 3)


# The known law the one-sided windows' bias is measured on: Hoffmann et al. 2022's exponents.
REFERENCE_EXPONENTS = (0.34, 0.28)


def vertex_bias(t, curvature: float = 1.0, alpha: float = REFERENCE_EXPONENTS[0], beta: float = REFERENCE_EXPONENTS[1]) -> float:
    """Where (decades of N from the true optimum) the budget's own parabola rule
    (`_robust_parabola`) puts the vertex of the IsoFLOP profile of L = E + A/N^alpha + B/D^beta,
    C = 6ND, sampled at offsets t (decades of N from the optimum). At fixed C that profile is, up
    to scale and offset, K (beta 10^(-alpha t) + alpha 10^(beta t)) (the two terms stand in the
    ratio beta : alpha at the optimum): not symmetric in log N, so a parabola's vertex lands off
    the optimum by an amount that depends on where the sizes sit around it. K matches the
    profile's curvature at the optimum to `curvature` (the fitted c2, nats per decade^2), as the
    robust fit's outlier scale is in nats."""
    t = np.asarray(t, float)
    ln10 = np.log(10.0)
    K = 2.0 * curvature / (ln10**2 * alpha * beta * (alpha + beta))
    f = K * (beta * 10.0 ** (-alpha * t) + alpha * 10.0 ** (beta * t))
    b = _robust_parabola(t, f)[0]
    return float(-b[1] / (2 * b[0]))


def _fit_budget(C, N, loss, cost: CostModel, C_spread: float, vertex_shift: bool = True):
    """fit_budget's work; also returns (se of log10 N_opt, se of loss_opt) per unit sigma and the
    one-sided vertex bias, so approach2 can rescale them with a pooled sigma. vertex_shift=False
    leaves the vertex bias out of the se (0): a bootstrap refit, which uses only N_opt and D_opt,
    then costs half as much."""
    N, loss = np.asarray(N, float), np.asarray(loss, float)
    x = np.log10(N)
    rng = (float(N.min()), float(N.max()))
    base = dict(C=float(C), n_points=int(len(N)), N_range=rng)
    nan2 = (float("nan"), float("nan"), 0.0)
    if C_spread > MAX_SPREAD:
        why = f"C varies by a factor {10 ** C_spread:.2g} within this group: not one IsoFLOP budget"
        return Budget(**base, accepted=False, reason=why), nan2
    xs, inv = np.unique(np.round(x, SIZE_DIGITS), return_inverse=True)  # distinct sizes, ascending
    if xs.size < 3:
        why = f"{xs.size} distinct model size(s) ({len(N)} points); a parabola needs 3 or more"
        return Budget(**base, accepted=False, reason=why), nan2
    profile = np.bincount(inv, weights=loss) / np.bincount(inv)  # mean loss per size (repeats, resamples)
    smooth = running_median3(profile)
    is_end = np.zeros(xs.size, bool)
    is_end[[0, -1]] = True
    # lowest smoothed value; ties go to an interior size (the end rule copies a neighbour's value,
    # which must not make a spuriously low end point the centre), then to the lower raw loss
    centre = int(np.lexsort((profile, is_end, smooth))[0])
    if centre in (0, xs.size - 1):
        small = centre == 0
        return Budget(
            **base,
            accepted=False,
            reason=(
                f"the lowest loss (3-point running median) is at the {'smallest' if small else 'largest'} model trained "
                f"(N={10 ** xs[centre]:.3g}; sizes {rng[0]:.3g}..{rng[1]:.3g}): the minimum is not bracketed, it lies "
                f"{'below the smallest' if small else 'above the largest'} model trained; "
                f"add {'smaller' if small else 'larger'} models to this budget"
            ),
        ), nan2
    xc = xs[centre]
    dist = np.abs(xs - xc)
    ranked = np.sort(dist)
    for k in range(min(WINDOW_MIN_SIZES, xs.size), xs.size + 1):  # widen until the parabola is convex
        in_sizes = dist <= ranked[k - 1] + 1e-12
        sel = in_sizes[inv]
        b, cov, rss, dof = _robust_parabola(x[sel] - xc, loss[sel])
        if b[0] > 0:
            break
    window = tuple(float(10**v) for v in xs[in_sizes])
    b2, b1, b0 = (float(v) for v in b)
    xc = float(xc)
    coeffs = (b2, b1 - 2 * b2 * xc, b2 * xc * xc - b1 * xc + b0)  # the same parabola in x = log10 N
    if not b2 > 0:
        why = "loss vs log N is not convex here (no minimum), even fitted to every size of the budget"
        return Budget(**base, accepted=False, coeffs=coeffs, window=window, reason=why), nan2
    t_opt = -b1 / (2 * b2)
    x_opt = float(xc + t_opt)
    loss_opt = b0 - b1 * b1 / (4 * b2)
    if not (xs[0] < x_opt < xs[-1]):
        low = x_opt <= xs[0]
        with np.errstate(over="ignore"):  # a nearly flat parabola's vertex can lie past 1e308 (inf, not an OverflowError)
            n_vertex = float(np.power(10.0, x_opt))
        return Budget(
            **base,
            accepted=False,
            coeffs=coeffs,
            window=window,
            N_opt=n_vertex,
            reason=f"the parabola's minimum N={n_vertex:.3g} lies {'below the smallest' if low else 'above the largest'} model trained "
            f"({rng[0]:.3g}..{rng[1]:.3g}); add {'smaller' if low else 'larger'} models to this budget",
        ), nan2
    # delta method: gradients of the vertex position and value w.r.t. (b2, b1, b0)
    g_x = np.array([b1 / (2 * b2 * b2), -1 / (2 * b2), 0.0])
    g_l = np.array([b1 * b1 / (4 * b2 * b2), -b1 / (2 * b2), 1.0])
    # a parabola on the asymmetric profile puts its vertex off the optimum by an amount that
    # depends on where the window's sizes sit around it (one-sided windows, which run into the
    # ladder's end, differently from centred ones); that shift, measured on the reference law at
    # this window's offsets, joins the se in quadrature (`approach2` keeps it when it pools sigma)
    wx = xs[in_sizes]
    one_sided = bool((in_sizes[0] or in_sizes[-1]) and abs(int(np.sum(wx < x_opt)) - int(np.sum(wx > x_opt))) >= 2)
    bias = vertex_bias(x[sel] - x_opt, b2) if vertex_shift else 0.0
    unit = (float(np.sqrt(g_x @ cov @ g_x)), float(np.sqrt(g_l @ cov @ g_l)), bias)
    sigma = float(np.sqrt(rss / dof)) if dof > 0 else float("nan")
    N_opt = float(10**x_opt)
    return Budget(
        **base,
        accepted=True,
        coeffs=coeffs,
        N_opt=N_opt,
        D_opt=float(cost.tokens(N_opt, C)),
        loss_opt=float(loss_opt),
        window=window,
        log10_N_opt_se=float(np.hypot(sigma * unit[0], bias)),
        loss_opt_se=sigma * unit[1],
        sigma=sigma,
        sigma_dof=dof,
        one_sided=one_sided,
        vertex_bias=bias,
    ), unit


def fit_budget(C: float, N: np.ndarray, D: np.ndarray, loss: np.ndarray, cost: CostModel, C_spread: float = 0.0) -> Budget:
    """The minimum of one IsoFLOP budget's loss vs log10 N, by a LOCAL robust parabola.

    Rule (x = log10 N; points at the same N are one size):
      1. refuse if `C_spread` (decades between the group's smallest and largest C) > MAX_SPREAD
         (not one IsoFLOP slice), or if fewer than 3 distinct sizes;
      2. profile = mean loss per size, ordered by N; smoothed by a 3-point running median
         (`running_median3`, Tukey end rule) so one spuriously low point cannot itself become
         the centre (the median replaces it by the lower of its neighbours);
         centre = the size with the lowest smoothed loss (ties: an interior size, then the
         lower raw loss);
         refuse if the centre is the smallest or largest size (the minimum is not bracketed;
         the reason names the side and says to add smaller/larger models);
      3. window = the sizes within +-w decades of the centre, w the distance of the
         WINDOW_MIN_SIZES-th nearest size (all sizes if the budget has fewer); every point at
         those sizes is fitted;
      4. parabola in x by scipy least_squares, loss="soft_l1", f_scale = the residual SD of the
         best (n-1)-point least-squares parabola of the window (floor F_SCALE_FLOOR nats), so one
         outlier inside the window barely moves it (`_robust_parabola` says why not the MAD of
         the OLS residuals); if not convex, the window gains the next-nearest size until it is,
         refused if still not convex with every size;
      5. minimum = the vertex; refused if it lies outside the sampled N range (a vertex outside
         the window but inside the range is kept: the se then shows the extrapolation);
         D_opt = cost.tokens(N_opt, C) (`D` is not used: no separate regression of log D);
      6. uncertainty by the delta method (for log10 N_opt plus, in quadrature, `vertex_bias` at
         the window's offsets): var = g' sigma^2 (X'X)^-1 g, g the gradient of the
         vertex position (log10 N_opt) or value (loss_opt) w.r.t. the parabola's coefficients,
         sigma^2 = the window's ordinary least-squares residual sum of squares / (points - 3)
         (`sigma_dof`: with 5 points only 2, so +-2 se covers ~80%, not 95%: use a t quantile,
         or `approach2`, which pools sigma over budgets). NaN se when the window has 3 points.
    """
    return _fit_budget(C, N, loss, cost, C_spread)[0]


def _check_inputs(points: pd.DataFrame, positive: tuple[str, ...], who: str) -> None:
    """Raise AnalysisError (naming the rows) unless the `positive` columns are finite and > 0
    and `loss` is finite: a logarithm or a fit through such a row would be garbage."""
    bad = ~np.isfinite(points["loss"].to_numpy(float))
    for c in positive:
        v = points[c].to_numpy(float)
        bad |= ~(np.isfinite(v) & (v > 0))
    if bad.any():
        rows = points.index[bad][:5].tolist()
        raise AnalysisError(
            f"{who} needs finite loss and positive, finite {', '.join(positive)}; {int(bad.sum())} row(s) are not "
            f"(first: {rows}); drop or fix them"
        )


def _budget_spread(points: pd.DataFrame, labels: np.ndarray, how: str) -> Callable[[np.ndarray], float]:
    logc = np.log10(points["C"].to_numpy(float))
    nominal = how.startswith("the runs")  # a sweep's own budget label is trusted as is
    return lambda sel: 0.0 if nominal else float(logc[sel].max() - logc[sel].min())


def approach2(points: pd.DataFrame, cost: CostModel, gap_decades: float = 0.05, groups=None,
              noise: Mapping[float, BudgetNoise] | None = None) -> IsoFlopResult:
    """IsoFLOP minima per budget (`fit_budget`) and power laws N_opt = N_coef C^a,
    D_opt = D_coef C^b through the accepted ones (least squares in log-log, weighted by 1/se^2 of
    each minimum's log10 N_opt where every one has an se). `groups`: a `group_budgets` result to
    reuse (default: group `points` now).

    The minima's standard errors use a noise level pooled over the accepted budgets,
    sigma^2 = sum of the windows' least-squares residual sums of squares / sum of their
    (points - 3) (4 budgets of 5-point windows: 8 dof, so +-2 se covers ~92% under Gaussian noise;
    measured 90%). That takes the noise to be the same at every budget. `noise` ({budget C:
    BudgetNoise}, analysis/noise.py: measured by seed replicates) says where it is not: a budget it
    covers with >= MIN_NOISE_DOF degrees of freedom uses its own measured scale instead (also where
    every window has 3 sizes and there is no pooled scale), and so its minimum's se and weight
    follow that budget's noise; budgets the noise misses are warned about. The scale is pooled over
    the sizes of the budget's window, the points its parabola sees (the seed's effect is heavy-tailed
    and sits mostly in the smallest models, often outside the window), and over all the budget's
    sizes where the window's give too few dof. (Not the larger of the two: the pooled scale is an
    average over budgets, no statement about one of them; on the ladder's design with its measured
    noise, falling 7x over the budgets, each budget's own scale (over all its sizes, 134a92c; 0.092
    over its window's) gives a an rmse of 0.093 against 0.143 pooled and 0.130 for the larger of the
    two, with 95% intervals covering 99%, 91% and 99%: benchmarks/noise_coverage.py, the last at
    commit c8a315f.)
    Each accepted Budget's `sigma`, `sigma_dof` and `sigma_source` say which it used."""
    labels, values, how = groups if groups is not None else group_budgets(points, gap_decades)
    if len(values) < 2:
        raise AnalysisError(
            f"Approach 2 needs two or more FLOP budgets; all {len(points)} points share one "
            f"(C ~ {values[0]:.3g}). Train an IsoFLOP sweep at several budgets, or use approach 3"
        )
    _check_inputs(points, ("N", "C"), "Approach 2")
    N, loss = points["N"].to_numpy(float), points["loss"].to_numpy(float)
    spread = _budget_spread(points, labels, how)
    fits = [_fit_budget(values[k], N[labels == k], loss[labels == k], cost, spread(labels == k)) for k in range(len(values))]
    ok = [b for b, _ in fits if b.accepted]
    refused = [f"C={b.C:.3g}: {b.reason}" for b, _ in fits if not b.accepted]
    if len(ok) < 2:
        raise AnalysisError(
            f"Approach 2 needs two or more budgets with an interior minimum; {len(ok)} of {len(fits)} "
            f"qualify. Refused: {'; '.join(refused)}"
        )
    dof = sum(b.sigma_dof for b in ok)
    pooled = (float(np.sqrt(sum(b.sigma**2 * b.sigma_dof for b in ok if b.sigma_dof > 0) / dof)), dof) if dof > 0 else None
    measured = _measured_noise(points, labels, len(values), noise)
    fits = [(_with_sigma(b, u, *chosen), u) if b.accepted and (chosen := _budget_sigma(measured[k], pooled, b.window)) else (b, u)
            for k, (b, u) in enumerate(fits)]
    budgets = tuple(b for b, _ in fits)
    ok = [b for b in budgets if b.accepted]
    msgs = [f"approach 2 refused budget {r}" for r in refused]
    if noise:
        unmeasured = [b.C for b in ok if not b.sigma_source.startswith(SEED_SOURCE)]
        if unmeasured:
            msgs.append(f"approach 2: seed replicates measured the noise at {len(ok) - len(unmeasured)} of {len(ok)} budgets (>= {MIN_NOISE_DOF} dof); "
                        f"{', '.join(f'{c:.3g}' for c in unmeasured)} use the windows' pooled residual scale, which on the ladder read 2-5x "
                        "below the measured scale: their minima weigh more than their noise warrants")
    msgs += [f"approach 2: budget C={b.C:.3g}'s window is one-sided (its minimum next to the ladder's end); a parabola there puts "
             f"the vertex {b.vertex_bias:+.3f} decades off the optimum of a reference law, counted in its se" for b in ok if b.one_sided]
    weights = minima_weights(ok)
    return IsoFlopResult(
        budgets=budgets,
        N_fit=fit_power_law([b.C for b in ok], [b.N_opt for b in ok], weights),
        D_fit=fit_power_law([b.C for b in ok], [b.D_opt for b in ok], weights),
        grouping=how,
        warnings=tuple(msgs),
        weights=weights,
        pooled=pooled,
    )


POOLED_SOURCE = "the windows' residuals, pooled over the budgets"
MIN_NOISE_DOF = 8  # a budget's measured noise replaces the pooled scale from this many dof (E[sigma^2 / s^2] = dof / (dof - 2): 1.33x)
SEED_SOURCE = "seed replicates"
WINDOW_SCOPE = "in this budget's window"  # the sizes the parabola is fitted to
BUDGET_SCOPE = "at this budget, all its sizes"  # where the window's own points give too few dof


def _measured_noise(points: pd.DataFrame, labels: np.ndarray, n_groups: int, noise: Mapping[float, BudgetNoise] | None) -> list:
    """Per budget group, the BudgetNoise measured at its points' nominal budget (their `budget`
    column, which the noise is keyed by, whether the groups are those budgets or clusters of C);
    None where its points name no single measured budget."""
    nominal = points["budget"].to_numpy(float) if "budget" in points else np.full(len(points), np.nan)
    out = []
    for k in range(n_groups):
        named = np.unique(nominal[(labels == k) & np.isfinite(nominal)])
        hit = [v for c, v in (noise or {}).items() if named.size == 1 and np.isclose(c, named[0], rtol=1e-9)]
        out.append(hit[0] if hit else None)
    return out


def _budget_sigma(measured: BudgetNoise | None, pooled: tuple[float, int] | None, window: tuple[float, ...]) -> tuple[float, int, str] | None:
    """(sigma, dof, source) behind a budget's se: the seed replicates' scale over the sizes of its
    window, the points its parabola is fitted to, where they give >= MIN_NOISE_DOF; else over all the
    budget's points; else the windows' pooled residual scale; None with none of them."""
    if measured is not None:
        other = f"; the pooled residuals' scale: {pooled[0]:.3g}" if pooled else ""
        for cand, where in ((measured.within(window), WINDOW_SCOPE), (measured, BUDGET_SCOPE)):
            if cand is not None and cand.dof >= MIN_NOISE_DOF and np.isfinite(cand.sigma) and cand.sigma > 0:
                return cand.sigma, cand.dof, f"{SEED_SOURCE} {where} ({cand.n_runs} runs of {cand.n_points} points, {cand.dof} dof{other})"
    return (pooled[0], pooled[1], POOLED_SOURCE) if pooled else None


def _with_sigma(b: Budget, unit: tuple[float, float, float], sigma: float, dof: int, source: str) -> Budget:
    """`b` with its se rescaled to noise `sigma` (`unit`: its se per unit sigma and its vertex bias)."""
    return replace(b, log10_N_opt_se=float(np.hypot(sigma * unit[0], unit[2])), loss_opt_se=sigma * unit[1], sigma=sigma,
                   sigma_dof=dof, sigma_source=source)


def minima_weights(budgets) -> np.ndarray | None:
    """1 / se^2 of each accepted budget's log10 N_opt, the power laws' weights; None (equal
    weights) unless every se is finite and positive (3-size windows have none)."""
    se = np.array([b.log10_N_opt_se for b in budgets], float)
    return 1.0 / se**2 if se.size and np.all(np.isfinite(se) & (se > 0)) else None


# ---------------------------------------------------------------- Approach 1 (envelope) ---------
MIN_SIZES = 3  # an envelope of two sizes is one switch-over: no power law can be read from it
MIN_HORIZONS = 3  # end-of-run points per model size for a curve (two would be a single straight segment)


@dataclass(frozen=True)
class EnvelopeResult:
    """The envelope on the grid points where >= 3 sizes' curves overlap and the winner is interior."""

    C: np.ndarray  # FLOP grid points (log-spaced between the smallest and largest end-of-run C)
    N_opt: np.ndarray  # the size with the lowest interpolated final loss at each C
    D_opt: np.ndarray  # cost.tokens(N_opt, C)
    loss: np.ndarray  # that size's interpolated final loss
    run: np.ndarray  # per grid point: the winning size's run whose horizon is nearest in log C
    N_fit: PowerLaw
    D_fit: PowerLaw
    n_sizes: int  # model sizes with >= MIN_HORIZONS horizons (the curves used)
    n_runs: int  # end-of-run points (rows) of those sizes
    sizes: tuple[float, ...] = ()  # the N of each size used
    left_out: tuple[str, ...] = ()  # "N=...: reason" per size left out
    warnings: tuple[str, ...] = field(default=())
    n_clamped: int = 0  # grid points left out: their winner was the smallest or largest size reaching that C
    weights: np.ndarray | None = None  # per kept point: 1 / (points its size wins), the power laws' weights


@dataclass(frozen=True)
class _Curves:
    sizes: np.ndarray  # [S]
    grid: np.ndarray  # [G]
    loss: np.ndarray  # [S, G], NaN outside a size's horizons
    nearest_run: np.ndarray  # [S, G] run name of the nearest horizon
    n_rows: np.ndarray  # [S] end-of-run points per size
    left_out: tuple[str, ...]


def _size_curves(points: pd.DataFrame, n_grid: int) -> _Curves:
    """Per model size (distinct N), its end-of-run losses vs log C; sizes with fewer than
    MIN_HORIZONS distinct horizons are left out (named). Repeats at one horizon (same N and D,
    e.g. seeds) are averaged: one horizon, one loss, at the mean log C."""
    if points is None or len(points) == 0:
        raise AnalysisError("Approach 1 needs end-of-run points (N, D, C, loss, run per finished run); there are none")
    missing = {"N", "D", "C", "loss", "run"} - set(points.columns)
    if missing:
        raise AnalysisError(f"Approach 1 needs columns N, D, C, loss, run; missing {', '.join(sorted(missing))}")
    _check_inputs(points, ("N", "D", "C"), "Approach 1")
    df = pd.DataFrame(
        {
            "N": points["N"].to_numpy(float),
            "size": np.round(np.log10(points["N"].to_numpy(float)), SIZE_DIGITS),
            "horizon": np.round(np.log10(points["D"].to_numpy(float)), SIZE_DIGITS),
            "logc": np.log10(points["C"].to_numpy(float)),
            "loss": points["loss"].to_numpy(float),
            "run": points["run"].astype(str).to_numpy(),
        }
    )
    kept, left_out = [], []
    for size, g in df.groupby("size", sort=True):
        h = g.groupby("horizon", sort=True).agg(logc=("logc", "mean"), loss=("loss", "mean"), run=("run", "first")).sort_values("logc")
        if len(h) < MIN_HORIZONS:
            left_out.append(f"N={10**size:.3g}: {len(h)} horizon(s)")
        else:
            kept.append((float(g["N"].iloc[0]), h, len(g)))
    if len(kept) < MIN_SIZES:
        enough = ", ".join(f"N={n:.3g}" for n, _, _ in kept) or "none"
        raise AnalysisError(
            f"Approach 1 needs >= {MIN_HORIZONS} horizons per model size for {MIN_SIZES} or more sizes (end-of-run points of "
            f"runs trained to different token counts, or cooldown branches); sizes with enough: {enough}"
            + (f"; left out (fewer than {MIN_HORIZONS} token counts): {', '.join(left_out)}" if left_out else "")
        )
    lo = min(h["logc"].iloc[0] for _, h, _ in kept)
    hi = max(h["logc"].iloc[-1] for _, h, _ in kept)
    lg = np.linspace(lo, hi, n_grid)
    loss = np.full((len(kept), n_grid), np.nan)
    nearest = np.empty((len(kept), n_grid), dtype=object)
    for i, (_, h, _) in enumerate(kept):
        lc, ll, runs = h["logc"].to_numpy(), h["loss"].to_numpy(), h["run"].to_numpy()
        inside = (lg >= lc[0] - 1e-12) & (lg <= lc[-1] + 1e-12)  # no extrapolation past a size's own horizons
        loss[i, inside] = np.interp(lg[inside], lc, ll)
        nearest[i] = runs[np.argmin(np.abs(lg[:, None] - lc[None, :]), axis=1)]
    return _Curves(
        sizes=np.array([n for n, _, _ in kept]),
        grid=10**lg,
        loss=loss,
        nearest_run=nearest,
        n_rows=np.array([n for _, _, n in kept]),
        left_out=tuple(left_out),
    )


def _envelope(cv: _Curves, rows: np.ndarray, cost: CostModel) -> EnvelopeResult:
    """Envelope of the curves `rows` (indices into cv) on cv's grid, from bracketed winners only.

    At a grid C the winner is kept only when it is INTERIOR among the sizes whose horizons reach
    C (neither the smallest nor the largest of them): where an end size wins, the optimum lies at
    or beyond the edge of the grid, and the envelope would record the edge, not the optimum (on a
    truth with a = 0.80 and a grid that clamps, the clamped points pulled a to 0.59). The power laws
    are weighted least squares in log-log that weight each winning size once, not once per grid
    point it wins (a size winning a long stretch of C would otherwise dominate)."""
    loss = cv.loss[rows]
    sizes = cv.sizes[rows]
    finite = np.isfinite(loss)
    covered = np.sum(finite, axis=0) >= 3  # a winner can be interior only among 3 or more sizes
    if covered.sum() < 2:
        raise AnalysisError("Approach 1: three or more model sizes' end-of-run curves overlap at fewer than two FLOP counts")
    filled = np.where(finite, loss, np.inf)
    cols = np.flatnonzero(covered)
    best = np.argmin(filled[:, cols], axis=0)
    n_best = sizes[best]
    reach = np.where(finite[:, cols], sizes[:, None], np.nan)
    interior = (n_best > np.nanmin(reach, axis=0)) & (n_best < np.nanmax(reach, axis=0))
    if interior.sum() < 2:
        raise AnalysisError(
            f"Approach 1: the best size is interior among the sizes that reach that compute at {int(interior.sum())} of "
            f"{cols.size} FLOP counts; everywhere else the smallest or largest size wins (the optimum is not bracketed): "
            "train smaller and larger sizes to the same horizons"
        )
    cols, best = cols[interior], best[interior]
    C = cv.grid[cols]
    N_opt = sizes[best]
    if np.unique(N_opt).size < 2:
        raise AnalysisError(
            f"Approach 1: one model size (N={N_opt[0]:.3g}) is best at every FLOP count where the best is bracketed; "
            "the envelope needs a range of sizes that take turns being best"
        )
    msgs = [f"approach 1 left out {s} (needs >= {MIN_HORIZONS} end-of-run points at different token counts)" for s in cv.left_out]
    n_clamped = int(interior.size - interior.sum())
    if n_clamped:
        msgs.append(f"approach 1: {n_clamped} of {interior.size} envelope points left out: their best size is the smallest or largest that reaches that compute")
    if np.unique(N_opt).size < 3:
        msgs.append("approach 1: only two model sizes appear on the envelope; its exponents are rough")
    D_opt = np.asarray(cost.tokens(N_opt, C), float)
    _, which, wins = np.unique(N_opt, return_inverse=True, return_counts=True)
    w = 1.0 / wins[which]  # each winning size weighs 1 in total
    return EnvelopeResult(
        C=C,
        N_opt=N_opt,
        D_opt=D_opt,
        loss=filled[best, cols],
        run=cv.nearest_run[rows][best, cols],
        N_fit=fit_power_law(C, N_opt, w),
        D_fit=fit_power_law(C, D_opt, w),
        n_sizes=int(np.unique(rows).size),
        n_runs=int(cv.n_rows[np.unique(rows)].sum()),
        sizes=tuple(float(v) for v in cv.sizes[np.unique(rows)]),
        left_out=cv.left_out,
        warnings=tuple(msgs),
        n_clamped=n_clamped,
        weights=w,
    )


def approach1(points: pd.DataFrame, cost: CostModel, n_grid: int = 200) -> EnvelopeResult:
    """Hoffmann et al.'s Approach 1 from END-OF-RUN points only (one row per finished run: N, D,
    C, loss = its final eval loss, run).

    Rule: group by model size N; a size needs >= MIN_HORIZONS (3) distinct horizons (token
    counts), else it is left out and named in `left_out`; fewer than 2 sizes left raises
    AnalysisError naming the sizes with enough. Each size's curve is its final losses vs log C,
    linear in log C between its horizons (no smoothing, no extrapolation past its own smallest and
    largest C). On `n_grid` log-spaced C from the smallest to the largest end-of-run C, wherever
    >= 3 curves cover C, the size with the lowest interpolated loss gives N_opt(C) -- kept only
    where it is neither the smallest nor the largest size covering C (bracketed) -- and
    D_opt(C) = cost.tokens(N_opt, C). Power laws N_opt = N_coef C^a, D_opt = D_coef C^b by least
    squares in log-log through those grid points, each winning size weighted once in total.
    Raises when fewer than 2 grid points are bracketed or one size wins everywhere."""
    cv = _size_curves(points, n_grid)
    return _envelope(cv, np.arange(len(cv.sizes)), cost)


# ---------------------------------------------------------------- bootstrap of approaches 1, 2 --
@dataclass(frozen=True)
class BootstrapSamples:
    """Power-law parameters over the USABLE resamples, and what happened to every resample:
    n_used + n_failed + n_lost_budget == n_resamples. `samples["a"]` works as well as `.a`."""

    N_coef: np.ndarray
    a: np.ndarray
    D_coef: np.ndarray
    b: np.ndarray
    n_resamples: int
    n_used: int
    n_failed: int  # the approach refused the resample (AnalysisError) or its exponents were not finite
    n_lost_budget: int  # approach 2: a budget the full-data fit accepted was refused in the resample
    unit: str  # what is resampled

    def __getitem__(self, key: str):
        return getattr(self, key)


def _collect(refit: Callable[[], tuple[PowerLaw, PowerLaw] | None], n_resamples: int, unit: str) -> BootstrapSamples:
    """Call refit() n_resamples times: (N_fit, D_fit) for a usable resample, None for one that lost
    a budget, AnalysisError for one the approach refused. Nothing is retried or dropped uncounted."""
    out = {"N_coef": [], "a": [], "D_coef": [], "b": []}
    failed = lost = 0
    for _ in range(n_resamples):
        try:
            fits = refit()
        except AnalysisError:
            failed += 1
            continue
        if fits is None:
            lost += 1
            continue
        nf, df = fits
        vals = (nf.coef, nf.exponent, df.coef, df.exponent)
        if not np.all(np.isfinite(vals)):
            failed += 1
            continue
        for key, v in zip(out, vals):
            out[key].append(v)
    used = len(out["a"])
    arrays = {k: np.asarray(v, float) for k, v in out.items()}
    return BootstrapSamples(**arrays, n_resamples=int(n_resamples), n_used=used, n_failed=failed, n_lost_budget=lost, unit=unit)


def bootstrap_approach2(points: pd.DataFrame, labels, cost: CostModel, n_resamples: int, seed: int,
                        noise: Mapping[float, BudgetNoise] | None = None) -> BootstrapSamples:
    """Parametric bootstrap with the design held fixed: every point's loss gets fresh Gaussian
    noise of its budget's scale (the sigma behind that budget's se in `approach2`: the pooled
    residual scale of the local fits, or the seed replicates' where `noise` measured one: over the
    window's sizes, so a size outside the window, measured noisier, is redrawn at the window's scale),
    and the minima of the budgets the full-data fit accepted are refitted (`labels`: a
    `group_budgets` result).

    Why not resample points: an IsoFLOP budget is a designed experiment of a few sizes (5 in the
    quickstart); drawing its points with replacement drops sizes, so most resamples lose a budget
    (76% on the quickstart) and the intervals describe a different design. Perturbing the losses
    keeps the sizes and measures what the noise does to each minimum, window choice included.
    A resample in which an accepted budget is refused is counted in n_lost_budget and excluded.
    Raises the full-data fit's AnalysisError if Approach 2 refuses the data themselves."""
    lab, values, how = labels
    full = approach2(points, cost, groups=labels, noise=noise)
    keep = [k for k, b in enumerate(full.budgets) if b.accepted]
    sigma = {k: full.budgets[k].sigma for k in keep}
    if not all(np.isfinite(s) and s > 0 for s in sigma.values()):
        raise AnalysisError("Approach 2's bootstrap needs the local fits' residual scale; every window has exactly 3 sizes")
    N, loss = points["N"].to_numpy(float), points["loss"].to_numpy(float)
    spread = _budget_spread(points, lab, how)
    idx = {k: np.flatnonzero(lab == k) for k in keep}
    spreads = {k: spread(lab == k) for k in keep}
    rng = np.random.default_rng(seed)
    w = full.weights  # the full fit's weights: the resamples ask how the minima move, not the se

    def refit():
        minima = []
        for k in keep:
            noisy = loss[idx[k]] + sigma[k] * rng.standard_normal(idx[k].size)
            b, _ = _fit_budget(values[k], N[idx[k]], noisy, cost, spreads[k], vertex_shift=False)  # only N_opt, D_opt are used
            minima.append(b)
        if not all(b.accepted for b in minima):
            return None
        cs = [b.C for b in minima]
        return fit_power_law(cs, [b.N_opt for b in minima], w), fit_power_law(cs, [b.D_opt for b in minima], w)

    if len(set(sigma.values())) == 1:
        what = f"Gaussian noise of the pooled residual scale ({next(iter(sigma.values())):.3g} nats)"
    else:
        what = ("Gaussian noise of each budget's scale (" + ", ".join(f"{values[k]:.3g}: {sigma[k]:.3g}" for k in keep)
                + " nats: seed replicates' where measured, else the pooled residuals')")
    return _collect(refit, n_resamples, f"losses re-drawn with {what}; sizes and budgets fixed")


def bootstrap_approach1(points: pd.DataFrame, cost: CostModel, n_resamples: int, seed: int, n_grid: int = 200) -> BootstrapSamples:
    """Resample the model sizes used by the full-data envelope (whole end-of-run curves) with
    replacement and redo the envelope on the same C grid; a size drawn twice leaves the envelope
    as if drawn once. Resamples the envelope refuses (fewer than 2 distinct sizes, no overlap, one
    size best everywhere) count as n_failed; n_lost_budget is always 0."""
    cv = _size_curves(points, n_grid)
    _envelope(cv, np.arange(len(cv.sizes)), cost)  # the full data must give an envelope
    rng = np.random.default_rng(seed)
    S = len(cv.sizes)

    def refit():
        res = _envelope(cv, np.unique(rng.integers(0, S, S)), cost)
        return res.N_fit, res.D_fit

    return _collect(refit, n_resamples, "model sizes (whole end-of-run curves) with replacement")
