"""How noisy one run's final loss is at each FLOP budget, measured by seed replicates.

A sweep with `seeds` (lib/sweeps/plans.py `Sweep.seeds`) trains every point again at its rule's lr
with other inits. A point's runs at that lr then differ only by the seed, so their scatter is the
noise of one run's loss there: per budget, the within-point variance pooled over the points,

    sigma_C^2 = sum over points of sum over seeds (L - mean of the point)^2 / sum over points (seeds - 1)

with sum (seeds - 1) degrees of freedom. Approach 2 uses it for the budget's se, weight and
bootstrap (analysis/approaches.py `approach2`): on the ladder it falls 7x from the smallest budget
to the largest (0.076 to 0.011 nats), which the windows' pooled residual scale (one value, 0.016,
from best-lr points: the best of a point's 3-4 chaotic runs is a lucky draw) does not see.

The seed's effect is heavy-tailed: on the ladder one point carries 52-89% of a budget's squared
deviations, the smallest model, often outside the window of sizes approach 2's parabola is fitted
to. So each BudgetNoise keeps its points' parts, and `within(sizes)` pools them over a window only.

    budget_noise(at_rule, replicates)   {budget: BudgetNoise}
    BudgetNoise.within(sizes)           the same pooled over the points of those model sizes
    BudgetNoise.pooled(parts)           the one pooling both use
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BudgetNoise:
    sigma: float  # sd of one run's final loss (nats), within a point, pooled over the budget's points
    dof: int  # sum over points of (runs - 1)
    n_points: int  # points with two or more runs
    n_runs: int
    # per point: (N, sum of its runs' squared deviations from their mean, runs - 1); empty: not kept
    by_size: tuple[tuple[float, float, int], ...] = ()

    @classmethod
    def pooled(cls, parts) -> "BudgetNoise | None":
        """The within-point variance pooled over `parts` (by_size entries); None without a dof."""
        parts = tuple(parts)
        dof = sum(p[2] for p in parts)
        if not dof:
            return None
        return cls(sigma=float(np.sqrt(sum(p[1] for p in parts) / dof)), dof=int(dof), n_points=len(parts),
                   n_runs=int(dof + len(parts)), by_size=parts)

    def within(self, sizes) -> "BudgetNoise | None":
        """This budget's noise pooled over the points whose N is one of `sizes` (rtol 1e-6); None
        where no per-point parts were kept or none of the sizes was measured."""
        return self.pooled(p for p in self.by_size if np.any(np.isclose(p[0], np.asarray(sizes, float), rtol=1e-6)))

    def describe(self) -> str:
        return f"{self.sigma:.3g} nats ({self.n_runs} runs of {self.n_points} points, {self.dof} dof)"


def point_keys(frame: pd.DataFrame) -> list[pd.Series]:
    """Which point each row is, whatever run measured it (an lr-grid run, a seed replicate): its budget,
    N and D, rounded so that runs of one point agree though their floats were computed apart."""
    return [frame["budget"].round(6), frame["N"].round(3), frame["D"].round(3)]


def budget_noise(at_rule: pd.DataFrame, replicates: Mapping[int, pd.DataFrame]) -> dict[float, BudgetNoise]:
    """{budget: BudgetNoise} from the points at their rule's lr (`at_rule`: columns budget, N, D, loss)
    and each seed's replicates of them (same columns). A point counts where two or more runs have a
    finite loss; a budget without such a point is left out."""
    frames = [at_rule, *replicates.values()]
    runs = pd.concat([f[["budget", "N", "D", "loss"]] for f in frames], ignore_index=True)
    runs = runs[np.isfinite(runs["loss"].astype(float)) & np.isfinite(runs["budget"].astype(float))]
    point = runs.groupby(point_keys(runs))["loss"]
    runs = runs.assign(dev=runs["loss"] - point.transform("mean"), n=point.transform("size"))
    runs = runs[runs["n"] >= 2]
    out = {}
    for budget, g in runs.groupby("budget"):
        by_point = g.groupby(point_keys(g))  # every point here has >= 2 runs: pooled() is never None
        out[float(budget)] = BudgetNoise.pooled((float(p["N"].iloc[0]), float((p["dev"] ** 2).sum()), int(len(p) - 1))
                                                for _, p in by_point)
    return out
