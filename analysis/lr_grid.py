"""Learning rate per point: a point's loss at its best learning rate, from the runs of its lr grid.

A sweep with an lr grid (lib/sweeps/plans.py `Sweep.lr_grid`) trains each point -- one size for one
D at one budget -- at its rule's lr x a few factors. Near its minimum a run's final loss is close to
a parabola in log lr, so a point's loss at its best lr is the vertex of the parabola through its
best run and that run's two neighbours on the grid (a parabola through three points whose middle one
is lowest has its vertex between the outer two: the best lr is never extrapolated past the grid).
A best run on the grid's edge brackets nothing: its loss is taken as measured
and the point is flagged ("low" or "high"), so a sweep can extend the grid once past that edge and
a report can name the points that stay there. Diverged runs (no finite loss) count as worse than
any finite one.

    best_lr(lrs, losses)            one point -> {"lr", "loss", "edge", "runs"}
    select_best(frame)              one row per point at its best lr (+ what was chosen, per point)
    at_factor(frame, factor)        one row per point: its run at lr x factor of the rule (x1 = the rule's)
    edge_extensions(frame)          point -> the factor one grid step past its edge, for points on an edge

A point is the runs that share (sweep, budget, N, D): the columns `POINT_KEYS` of the frame; they
differ only in lr (and the columns `lr`, `lr_factor`, `loss`, `run` hold each run's).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

POINT_KEYS = ("sweep", "budget", "N", "D")


def best_lr(lrs: Sequence[float], losses: Sequence[float]) -> dict | None:
    """The best lr of one point and its loss there; None when no run has a finite loss."""
    lr = np.asarray(lrs, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if lr.size == 0 or len(set(lr.tolist())) != lr.size:
        raise ValueError(f"a point's lr grid needs distinct learning rates, got {sorted(lr.tolist())}")
    order = np.argsort(lr)
    lr, loss = lr[order], loss[order]
    finite = np.isfinite(loss)
    if not finite.any():
        return None
    i = int(np.argmin(np.where(finite, loss, np.inf)))
    if lr.size < 3 or i == 0 or i == lr.size - 1 or not (finite[i - 1] and finite[i + 1]):
        edge = "low" if i == 0 else "high" if i == lr.size - 1 else None
        return {"lr": float(lr[i]), "loss": float(loss[i]), "edge": edge if lr.size > 1 else None, "runs": int(lr.size)}
    x = np.log(lr[i - 1 : i + 2])
    y = loss[i - 1 : i + 2]
    x_star, y_star = _parabola_vertex(x, y)
    return {"lr": float(math.exp(x_star)), "loss": float(y_star), "edge": None, "runs": int(lr.size)}


def _parabola_vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Vertex of the parabola through three points (x ascending, the middle y lowest), by divided
    differences: y = y1 + d1 (x - x1) + d2 (x - x1)(x - x2)."""
    d1 = (y[1] - y[0]) / (x[1] - x[0])
    d12 = (y[2] - y[1]) / (x[2] - x[1])
    d2 = (d12 - d1) / (x[2] - x[0])
    if d2 <= 0:  # flat: three equal losses (the middle one is then as good as any)
        return float(x[1]), float(y[1])
    x_star = (x[0] + x[1]) / 2 - d1 / (2 * d2)
    y_star = y[0] + d1 * (x_star - x[0]) + d2 * (x_star - x[0]) * (x_star - x[1])
    return float(x_star), float(y_star)


def _points(frame: pd.DataFrame):
    missing = [c for c in (*POINT_KEYS, "lr", "loss") if c not in frame]
    if missing:
        raise ValueError(f"an lr-grid frame needs the columns {', '.join(missing)}")
    return frame.groupby(list(POINT_KEYS), dropna=False, sort=True)


def select_best(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per point: the row of its best run with `loss` replaced by the loss at the best lr and
    `lr` by the best lr, the choices: {run_ids, lr, loss, edge, runs (count)} per point with more than one lr).
    Points whose runs all diverged are left out (they are in the choices, with lr None)."""
    rows, choices = [], []
    for _, runs in _points(frame):
        if runs["lr"].nunique() != len(runs):
            raise ValueError(f"runs {', '.join(runs['run'].astype(str))} share (sweep, budget, N, D) and an lr: one point "
                             "trained twice at one learning rate; remove the duplicate from the root")
        best = best_lr(runs["lr"], runs["loss"])
        if len(runs) > 1:
            choices.append({"run_ids": sorted(runs["run"].astype(str)), **(best or {"lr": None, "loss": None, "edge": None, "runs": len(runs)})})
        if best is None:
            continue
        row = runs.loc[runs["loss"].astype(float).fillna(np.inf).idxmin()].copy()
        row["loss"], row["lr"] = best["loss"], best["lr"]
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True), choices


def at_factor(frame: pd.DataFrame, factor: float) -> pd.DataFrame:
    """One row per point: its run at lr_factor == `factor` with a finite loss (points without one are left out)."""
    if "lr_factor" not in frame:
        raise ValueError("an lr-grid frame needs the column lr_factor")
    hit = np.isclose(frame["lr_factor"].astype(float), factor, rtol=1e-9) & np.isfinite(frame["loss"].astype(float))
    return frame[hit].reset_index(drop=True)


def edge_extensions(frame: pd.DataFrame, key: str = "point") -> dict[str, float]:
    """{point (the `key` column): the lr factor one grid step past its edge} for every point whose best
    run sits on an edge of its grid: the lowest factor / (the grid's lowest step), or the highest x it."""
    out = {}
    for _, runs in _points(frame):
        best = best_lr(runs["lr"], runs["loss"])
        if best is None or best["edge"] is None:
            continue
        factors = np.sort(runs["lr_factor"].astype(float).unique())
        if best["edge"] == "low":
            out[str(runs[key].iloc[0])] = float(factors[0] ** 2 / factors[1])
        else:
            out[str(runs[key].iloc[0])] = float(factors[-1] ** 2 / factors[-2])
    return out
