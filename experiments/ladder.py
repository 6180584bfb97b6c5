"""The ladder: the quickstart's protocol over two decades of compute, to compare the fit with the
synthetic language's theory (alpha ~ 0.30, beta ~ 0.23, a ~ 0.43; issue 22 item 5).

    scaling run ladder --root runs/ladder

5 budgets, 1e10..1e12 FLOPs (half a decade apart) x 9 model sizes each (8 at 1e10, whose ladder
ends at 1.3k parameters), picked from a ladder of shapes (1.3k..310k parameters, neighbours
~1.2-1.8x apart) around a centre N_c(C) between the theory's optimum (N_opt ~ C^0.43) and the
quickstart's measured one (~ C^0.69): a 9-size window spans ~20x in N (1.3k..27k at 1e10, 7k..152k
at 1e12), so each budget's minimum is bracketed under either exponent.
Every point trains at its rule's lr x (0.5, 1, 2) (one pack per point); the fit takes each point's
best (a best on the grid's edge extends it once).
Seeds: every point trains twice more at its rule's lr (x1), with train.seed 1 and 2 (another init, the
same data; in the point's pack), so fit.json's `seed_sensitivity` gives the spread of a from the seed
alone at a fixed lr policy, beside the lr-policy spread (`lr_sensitivity`): the lr policy's effect
is what the first exceeds the second by.
Learning rate: a rule lr*(N, D) = c N^-gamma D^-delta, tuned at two horizons (the lengths that spend
3e10 and 3e11 FLOPs, inside the sweep's range of run lengths): 4 sizes x 5 lrs at each horizon.
Prediction check: at the next budget (3.33e12) the allocation check trains 5 sizes around each
approach's predicted N_opt (with the lr grid) and compares the measured N_opt with the predicted one
(`verify_allocation` below: `scaling run` passes --allocation for this experiment).
The design was chosen by `scaling plan ladder --power` (docs/results.md, "Design power"), and its
compute is kept within 90 minutes on 2 CPU cores (tests/test_ladder.py).
FLOPs: Chinchilla appendix-F convention (lib/flops.py), N = total parameters. One batch per budget:
32, and 16 at 1e10 (where 27k parameters would get fewer than 80 steps at 32; its lr x sqrt(16/32)).
Why 9 sizes and not 7, and why 5 budgets and not 6 (docs/results.md, "Design power", K = 100
simulations under the theory's law at the quickstart's noise): 9 sizes bracket 99% of budgets'
minima (7: 90%) and give approach 3 the smallest sd of a (0.052; 7 sizes: 0.059; 6 budgets: 0.057).
"""

import math

from experiments.quickstart import BASE
from lib.sweeps.plans import IsoFlop, Schedule, Tune

# (d_model, n_layers, n_heads): the quickstart's shapes, extended below (for 1e10) and above (for 1e12 and the
# allocation check at 3.33e12, whose predicted N_opt can reach ~2e5).
SHAPES = [(8, 1, 2), (8, 2, 2), (12, 1, 2), (16, 1, 2), (16, 2, 2), (20, 2, 2), (24, 2, 2), (32, 2, 2), (40, 2, 2), (40, 3, 2),
          (48, 3, 3), (56, 3, 4), (64, 3, 4), (64, 4, 4), (72, 4, 4), (80, 4, 4)]
SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in SHAPES]
BUDGETS = [1e10, 3e10, 1e11, 3e11, 1e12]
PER_BUDGET = 9
LR_GRID = (0.5, 1.0, 2.0)
SEEDS = (1, 2)  # seed replicates at the rule's lr: the seed's own spread of a, beside the lr policy's
TUNE_BUDGETS = (3e10, 3e11)
MIN_STEPS = 80  # batch 32 at 3e10..1e12 (3e10's 41k parameters: 100 steps); 16 at 1e10 (27k: 99 steps)

# The window's centre: N_c = 3.2e3 at 1e10, growing as C^0.56 (between the theory's 0.43 and the
# quickstart's 0.69); D/N = C / (6 N_c^2).
CENTER_N_1E10, CENTER_EXPONENT = 3.2e3, 0.56

verify_allocation = True  # `scaling run ladder` runs the allocation check (verify --allocation)

def center_n(budget: float) -> float:
    return CENTER_N_1E10 * (budget / 1e10) ** CENTER_EXPONENT

def center_tpp(budget: float) -> float:
    return budget / (6.0 * center_n(budget) ** 2)

def sweep() -> IsoFlop:
    return IsoFlop(
        BUDGETS, SIZES, base=BASE, name="ladder", tpp_range=(1, 10000), per_budget=PER_BUDGET, center_tpp=center_tpp,
        min_steps=MIN_STEPS, min_batch=8, schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=1),
        lr_rule="tuned", lr_grid=LR_GRID, seeds=SEEDS,
    )

def tune() -> Tune:
    # 1.3k..60k parameters (d8-L1, d16-L1, d24-L2, d40-L3): the largest gets 74 steps at 3e10
    return Tune([SIZES[i] for i in (0, 3, 6, 9)], [5e-3, 1e-2, 2e-2, 4e-2, 8e-2], base=BASE, steps=0, budgets=TUNE_BUDGETS)

assert math.isclose(center_n(1e10), CENTER_N_1E10)
