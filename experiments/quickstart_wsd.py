"""The quickstart's grid of (N, D) points from WSD trunks and cooldown branches (lib/sweeps/cooldowns.py).

    scaling run quickstart_wsd --root runs/quickstart_wsd

The 15 points of the first quickstart design (3 budgets 1e11..1e12 x 5 sizes from its ladder,
kept below since `experiments/quickstart.py` moved to the lr-grid protocol: each size's token
counts are the D its IsoFLOP runs trained for, to the step), the quickstart's batch, data and
FLOP convention, an lr rule tuned by that design's tune grid (4 sizes x 5 lrs x 200 steps);
instead of one cosine run per point, one constant-rate trunk per size and a branch per point that cools down over its last 20%
with the 1-sqrt shape (Hägele et al. 2024). Each branch is recorded like a from-scratch run (its
flops are its point's whole compute), so `scaling fit` treats the points alike; fit.json's
`branches` names them. `benchmarks/cooldowns.py` compares compute, wall time and the fitted
exponents with the cosine quickstart.
"""

import dataclasses

from experiments import quickstart
from lib.sweeps.cooldowns import Cooldowns
from lib.sweeps.plans import IsoFlop, Schedule, Tune, size_tag

DECAY_FRAC = 0.2
DECAY_SHAPE = "1-sqrt"

# The first quickstart's design (experiments/quickstart.py until issue 22 item 6), unchanged so these
# points and run ids stay put: (d_model, n_layers, n_heads), 4k..150k parameters.
SHAPES = [(16, 1, 2), (16, 2, 2), (24, 2, 2), (32, 2, 2), (40, 2, 2), (40, 3, 2), (48, 3, 3), (64, 3, 4)]
SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in SHAPES]
BUDGETS = [1e11, 3e11, 1e12]


def optimal_tpp(budget: float) -> float:
    return 80.0 * (budget / 1e11) ** -0.38


def isoflop() -> IsoFlop:
    """The first quickstart's IsoFLOP sweep: each budget's 5 sizes with D/N nearest optimal_tpp."""
    return IsoFlop(
        BUDGETS, SIZES, base=quickstart.BASE, name="quickstart", tpp_range=(1, 1000), per_budget=5, center_tpp=optimal_tpp,
        min_steps=100, min_batch=8, schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=1),
        lr_rule="tuned",
    )


def quickstart_points(lr_rule=None) -> dict[str, list[int]]:
    """Size tag -> the token counts the first quickstart trained that size for, increasing."""
    plan = dataclasses.replace(isoflop(), lr_rule=lr_rule).plan()
    points: dict[str, list[int]] = {}
    for r in plan.runs:
        points.setdefault(size_tag(r.cfg), []).append(r.tokens)
    return {tag: sorted(ds) for tag, ds in points.items()}


def sweep(lr_rule="tuned", name="quickstart_wsd") -> Cooldowns:
    points = quickstart_points()
    sizes = [s for s in SIZES if f"d{s['d_model']}-L{s['n_layers']}" in points]
    return Cooldowns(
        sizes, tokens=lambda model: points[f"d{model.d_model}-L{model.n_layers}"], decay_frac=DECAY_FRAC, decay_shape=DECAY_SHAPE,
        base=quickstart.BASE, name=name, lr_rule=lr_rule,
        schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=2),
    )


def tune() -> Tune:
    return Tune(SIZES[::2], [5e-3, 1e-2, 2e-2, 4e-2, 8e-2], base=quickstart.BASE, steps=200)
