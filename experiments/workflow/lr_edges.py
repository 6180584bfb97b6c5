"""Learning rate per point, closed: after a sweep with an lr grid (lib/sweeps/plans.py `Sweep.lr_grid`)
trains, each point whose best lr sits on an edge of its grid gets one more run, one grid step past
that edge -- once per point. The extensions are recorded in <root>/.lr_grid/<sweep>.json, which
`Sweep.plan` reads, so a relaunch (any host, any executor) plans the same runs; a point still on
its edge after that is named by the fit's report (analysis/lr_grid.py), not extended again.

A point is decided only when every run of it has finished or diverged (a diverged run counts as
worse than any finished one): a run still missing could be the best.
`scaling sweep` extends where one process sees the whole sweep (the local, processes and Ray
executors); with `--worker i/n` or several JAX processes no host sees every point, so it does not.
"""

from __future__ import annotations

import math
import os

from analysis import lr_grid
from lib.store.runstore import RunDir, write_json_atomic
from lib.sweeps import rules
from lib.sweeps.plans import Plan


def new_extensions(plan: Plan, root) -> dict[str, float]:
    """{point: the lr factor one grid step past its edge} for the decided points on an edge that have
    no extension yet."""
    import pandas as pd

    recorded = rules.read_lr_grid_extensions(root, plan.name)
    rows, undecided = [], set()
    for r in plan.runs:
        if not r.point:
            continue
        run = RunDir(os.path.join(os.fspath(root), r.run_id), writer=False)
        status, summary = run.status() or {}, run.summary() or {}
        if status.get("state") == "done" and summary.get("eval_loss") is not None:
            loss = float(summary["eval_loss"])
        elif status.get("state") == "failed" and status.get("diverged"):
            loss = math.nan
        else:
            undecided.add(r.point)
            continue
        rows.append({"sweep": plan.name, "budget": r.cfg.budget, "N": r.params, "D": r.tokens, "lr": r.cfg.optimizer.lr,
                     "lr_factor": r.cfg.optimizer.lr_factor, "loss": loss, "run": r.run_id, "point": r.point})
    if not rows:
        return {}
    frame = pd.DataFrame(rows)
    frame = frame[~frame["point"].isin(undecided)]
    return {p: f for p, f in lr_grid.edge_extensions(frame).items() if p not in recorded}


def record_extensions(root, sweep: str, extensions: dict[str, float]) -> str:
    """Add `extensions` to <root>/.lr_grid/<sweep>.json (atomically); returns its path."""
    recorded = rules.read_lr_grid_extensions(root, sweep)
    for point, factor in extensions.items():
        recorded.setdefault(point, []).append(float(factor))
    path = os.path.join(os.fspath(root), rules.LR_GRID_DIR, f"{sweep}.json")
    write_json_atomic(path, recorded)
    return path
