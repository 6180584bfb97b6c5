"""How noisy one run's final loss is at each FLOP budget, measured by seed replicates.

A sweep with `seeds` (lib/sweeps/plans.py `Sweep.seeds`) trains every point again at its rule's lr
with other inits. A point's runs at that lr then differ only by the seed, so their scatter is the
noise of one run's loss there: per budget, the within-point variance pooled over the points,

    sigma_C^2 = sum over points of sum over seeds (L - mean of the point)^2 / sum over points (seeds - 1)

with sum (seeds - 1) degrees of freedom. Approach 2 uses it for the budget's se, weight and
bootstrap (analysis/approaches.py `approach2`): on the ladder it falls 7x from the smallest budget
to the largest (0.076 to 0.011 nats), which the windows' pooled residual scale (one value, 0.016,
from best-lr points: the best of a point's 3-4 chaotic runs is a lucky draw) does not see.

    budget_noise(at_rule, replicates)   {budget: BudgetNoise}
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

    def describe(self) -> str:
        return f"{self.sigma:.3g} nats ({self.n_runs} runs of {self.n_points} points, {self.dof} dof)"


def budget_noise(at_rule: pd.DataFrame, replicates: Mapping[int, pd.DataFrame]) -> dict[float, BudgetNoise]:
    """{budget: BudgetNoise} from the points at their rule's lr (`at_rule`: columns budget, N, D, loss)
    and each seed's replicates of them (same columns). A point counts where two or more runs have a
    finite loss; a budget without such a point is left out."""
    frames = [at_rule, *replicates.values()]
    runs = pd.concat([f[["budget", "N", "D", "loss"]] for f in frames], ignore_index=True)
    runs = runs[np.isfinite(runs["loss"].astype(float)) & np.isfinite(runs["budget"].astype(float))]
    keys = [runs["budget"].round(6), runs["N"].round(3), runs["D"].round(3)]
    point = runs.groupby(keys)["loss"]
    runs = runs.assign(dev=runs["loss"] - point.transform("mean"), n=point.transform("size"))
    runs = runs[runs["n"] >= 2]
    out = {}
    for budget, g in runs.groupby("budget"):
        n_points = g.groupby([g["N"].round(3), g["D"].round(3)]).ngroups
        dof = len(g) - n_points
        out[float(budget)] = BudgetNoise(sigma=float(np.sqrt((g["dev"] ** 2).sum() / dof)), dof=int(dof),
                                         n_points=int(n_points), n_runs=int(len(g)))
    return out
