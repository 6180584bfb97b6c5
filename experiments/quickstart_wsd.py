"""The quickstart's grid of (N, D) points from WSD trunks and cooldown branches (lib/sweeps/cooldowns.py).

    scaling run quickstart_wsd --root runs/quickstart_wsd

The same 15 points as `experiments/quickstart.py` (3 budgets x 5 sizes from its ladder: each
size's token counts are the D its IsoFLOP runs train for, to the step), the same batch, data, lr
rule (tuned, by the quickstart's tune grid) and FLOP convention; instead of one cosine run per
point, one constant-rate trunk per size and a branch per point that cools down over its last 20%
with the 1-sqrt shape (Hägele et al. 2024). Each branch is recorded like a from-scratch run (its
flops are its point's whole compute), so `scaling fit` treats the points alike; fit.json's
`branches` names them. `benchmarks/cooldowns.py` compares compute, wall time and the fitted
exponents with the cosine quickstart.
"""

import dataclasses

from experiments import quickstart
from lib.sweeps.cooldowns import Cooldowns
from lib.sweeps.plans import Schedule, Tune, size_tag

DECAY_FRAC = 0.2
DECAY_SHAPE = "1-sqrt"


def quickstart_points(lr_rule=None) -> dict[str, list[int]]:
    """Size tag -> the token counts the quickstart trains that size for, increasing."""
    plan = dataclasses.replace(quickstart.sweep(), lr_rule=lr_rule).plan()
    points: dict[str, list[int]] = {}
    for r in plan.runs:
        points.setdefault(size_tag(r.cfg), []).append(r.tokens)
    return {tag: sorted(ds) for tag, ds in points.items()}


def sweep(lr_rule="tuned", name="quickstart_wsd") -> Cooldowns:
    points = quickstart_points()
    sizes = [s for s in quickstart.SIZES if f"d{s['d_model']}-L{s['n_layers']}" in points]
    return Cooldowns(
        sizes, tokens=lambda model: points[f"d{model.d_model}-L{model.n_layers}"], decay_frac=DECAY_FRAC, decay_shape=DECAY_SHAPE,
        base=quickstart.BASE, name=name, lr_rule=lr_rule,
        schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=2),
    )


def tune() -> Tune:
    return quickstart.tune()
