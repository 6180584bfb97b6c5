"""One cost model per dataset: the training FLOPs per token c(N) that every approach, table and
figure uses, so that "compute C" means the same thing everywhere in a report.

    run store   c_i = recorded FLOPs / tokens of each run (its own convention, e.g. Chinchilla
                appendix F, which counts attention and the output head on top of 6N)
    CSV with C  c_i = C / D of each row
    otherwise   c(N) = 6N (said so)

Between model sizes c(N) is smooth: log(c / 6N) is fitted as a polynomial of degree <= 2 in
log10 N through the rows (degree 0 where the rows have one size, or a constant ratio); outside
the sampled N range the ratio c/6N is held at its value at the nearest end, so extrapolated
costs stay within the ladder's own overhead instead of following a parabola off the data.

`constrained_optimum` minimises any L(N, D) under C = c(N) D numerically (golden-section search
in log N, vectorised over parameter samples and budgets); with c = 6N it equals Chinchilla's
closed form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MAX_DEGREE = 2
GOLDEN_STEPS = 80  # shrinks a bracket of 12 in ln N by 0.618^80 ~ 2e-17: float64 exact
BRACKET_LN = 6.0  # search ln N within +-6 (a factor 400) of the 6N closed form's answer


@dataclass(frozen=True)
class CostModel:
    kind: str  # "recorded" (run store) | "given" (CSV column C) | "6N"
    coeffs: tuple[float, ...]  # log(c / 6N) = polyval(coeffs, log10 N), highest power first
    log10_N_range: tuple[float, float]  # where the polynomial was fitted
    max_rel_error: float  # largest |c_fit / c_i - 1| over the rows
    n_sizes: int

    # -- evaluation -------------------------------------------------------------------------------
    def ratio(self, N) -> np.ndarray:
        """c(N) / 6N; held constant outside the fitted N range."""
        x = np.clip(np.log10(np.asarray(N, float)), *self.log10_N_range)
        return np.exp(np.polyval(self.coeffs, x))

    def per_token(self, N) -> np.ndarray:
        return 6.0 * np.asarray(N, float) * self.ratio(N)

    def flops(self, N, D) -> np.ndarray:
        return self.per_token(N) * np.asarray(D, float)

    def tokens(self, N, C) -> np.ndarray:
        """D such that c(N) D = C."""
        return np.asarray(C, float) / self.per_token(N)

    @property
    def is_6N(self) -> bool:
        return self.kind == "6N" or all(abs(c) < 1e-12 for c in self.coeffs)

    def describe(self) -> str:
        if self.kind == "6N":
            return "C = 6*N*D (the data give no FLOP counts)"
        src = "the FLOPs each run recorded" if self.kind == "recorded" else "the C column"
        return (
            f"C = c(N)*D with c(N) fitted through {src} / D over {self.n_sizes} model sizes "
            f"(log(c/6N) a degree-{len(self.coeffs) - 1} polynomial in log10 N; max error {self.max_rel_error:.2%}); "
            f"c/6N runs from {self.ratio(10 ** self.log10_N_range[0]):.3g} to {self.ratio(10 ** self.log10_N_range[1]):.3g} "
            "over the data and is held constant beyond them"
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "coeffs": list(self.coeffs),
            "log10_N_range": list(self.log10_N_range),
            "max_rel_error": self.max_rel_error,
            "n_sizes": self.n_sizes,
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        return cls(d["kind"], tuple(d["coeffs"]), tuple(d["log10_N_range"]), d["max_rel_error"], d["n_sizes"])


SIX_N = CostModel("6N", (0.0,), (0.0, 30.0), 0.0, 0)


def fit_cost_model(N, D, C, kind: str) -> CostModel:
    """The smooth c(N) through per-row costs C/D (kind "recorded" or "given")."""
    N, D, C = (np.asarray(v, float) for v in (N, D, C))
    x = np.log10(N)
    y = np.log(C / D / (6.0 * N))
    sizes = np.unique(np.round(x, 9))
    degree = min(MAX_DEGREE, sizes.size - 1)
    if np.ptp(y) < 1e-9:  # every row pays the same multiple of 6N (e.g. the data are 6ND)
        degree = 0
    coeffs = np.polyfit(x, y, degree) if degree > 0 else np.array([float(np.mean(y))])
    model = CostModel(kind, tuple(float(c) for c in coeffs), (float(x.min()), float(x.max())), 0.0, int(sizes.size))
    err = float(np.max(np.abs(model.per_token(N) * D / C - 1.0)))
    return CostModel(kind, model.coeffs, model.log10_N_range, err, model.n_sizes)


# ------------------------------------------------------------------------------------------------
def constrained_optimum(loss_fn: Callable, cost: CostModel, C, N_guess) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """argmin over N of loss_fn(N, cost.tokens(N, C)), elementwise over broadcast shapes.

    `loss_fn(N, D)` must broadcast; `N_guess` centres the search bracket (ln N +- BRACKET_LN).
    L(N, C/c(N)) is convex in ln N for the Chinchilla law (a falling and a rising exponential)
    so golden-section search finds the minimum. Returns (N_opt, D_opt, loss_opt); NaN where the
    guess is not finite or the minimum sits on the bracket's edge (no interior optimum).
    """
    C = np.asarray(C, float)
    centre = np.log(np.asarray(N_guess, float))
    lo, hi = centre - BRACKET_LN, centre + BRACKET_LN
    f = lambda ln_n: loss_fn(np.exp(ln_n), cost.tokens(np.exp(ln_n), C))  # noqa: E731
    r = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    for _ in range(GOLDEN_STEPS):  # both probes re-evaluated each step: simple, and cheap in numpy
        x1, x2 = b - r * (b - a), a + r * (b - a)
        left = f(x1) < f(x2)  # the minimum lies in [a, x2]
        a, b = np.where(left, a, x1), np.where(left, x2, b)
    ln_n = (a + b) / 2.0
    edge = (ln_n - lo < 1e-3) | (hi - ln_n < 1e-3) | ~np.isfinite(ln_n)
    N = np.where(edge, np.nan, np.exp(ln_n))
    D = cost.tokens(N, C)
    return N, D, loss_fn(N, D)
