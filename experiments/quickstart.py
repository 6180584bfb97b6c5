"""The quickstart: the ladder's protocol (experiments/ladder.py) at the size of a laptop CPU, on the
embedded synthetic language.

    scaling run quickstart --root runs/quickstart

3 budgets, 1e10..1e11 FLOPs (half a decade apart) x 5 model sizes each (1.3k..27k parameters),
picked from every other rung of the ladder's shapes (neighbours ~1.5-2.1x apart, so 5 sizes span
10-12x in N) around a centre N_c(C) = 3.2e3 (C/1e10)^0.56 (the ladder's: between the theory's
optimum, N_opt ~ C^0.43, and the first quickstart's measured one, ~ C^0.69).
Learning rate, as the ladder: every point trains at its rule's lr x (0.5, 1, 2) (one pack per
point); the fit takes each point's best (a best on the grid's edge extends it once) and reports the
exponents at x0.5, x1, x2 and the best (the lr-policy spread, fit.json's `lr_sensitivity`, which
replaces the first quickstart's single-lr sensitivity sweep). The rule lr*(N, D) = c N^-gamma
D^-delta is tuned at two horizons, the lengths that spend 1e10 and 3e10 FLOPs: 3 sizes (1.3k, 4.1k,
15k) x 5 lrs at each. Approach 3 holds E at the language's floor (0.8047 nats/token), the free-E
fit beside it. The rule is tuned on N 1.3k..15k and D 8.3e4..2.1e6 tokens; at 1e11 the largest
size (27k, 1.7x above in N) and the smallest (2.5k, 1.9x longer in D) get extrapolated lrs (the plan
warns; the lr grid's x0.5..x2 spans that, and a best on its edge extends it).
Prediction check: the one-run check at the next budget (3.33e11), the fitted optimum trained and its
loss compared with the prediction. No allocation check (`verify_allocation = False`): at any design
that fits the time its power is nil (below). FLOPs: Chinchilla appendix-F convention (lib/flops.py),
N = total parameters. Batch 32 in every run.

Why this design (docs/results.md, "Design power": `scaling plan --power`, K = 100 simulations under
the language's theory, alpha 0.30, beta 0.23, E at the floor, A 4.27, B 8.51, noise 0.0175 nats):
of the candidates that fit the time, 5 sizes from every other rung (span 10-12x) give approach 3's
a the smallest sd, 0.116 (alpha 0.086, beta 0.059; the first quickstart's design: 0.177, 0.134,
0.122), and bracket 80% of budgets' minima (5 neighbouring rungs, span 5x: 64%, sd 0.152; the first
quickstart: 66%). 7 neighbouring rungs bracket 90% at the same sd (0.123) but need 537 s with the lr
grid (455 s with a 2-point grid): over the budget. The allocation check at 3.33e11 flags a 0.1
error in a in 0% of simulations (5 check sizes), and with 7-9 sizes or a check at 1e12-1e13 hardly
more often than it flags a correct fit (4-13% against false alarms of 2-11%, simulated on the
7-size design): the fit's own interval on N_opt there is wider than the shift, so the check cannot
fail usefully and is not run.
Its planned time stays within 7.5 minutes on 2 idle CPU cores with 25% headroom for lr-edge
extensions (tests/test_quickstart.py: a per-step time model measured on the first quickstart's
idle runs), so a fresh clone's install (~2 min) plus `scaling run quickstart` stays within 10.
"""

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Schedule, Tune

# (d_model, n_layers, n_heads): every other rung of the ladder's shapes, neighbours ~1.5-2.1x apart
# in parameters (vocab 64: 1.3k..310k), so 5 sizes span 10-12x in N at each budget.
SHAPES = [(8, 1, 2), (12, 1, 2), (16, 1, 2), (16, 2, 2), (24, 2, 2), (32, 2, 2), (40, 2, 2), (48, 3, 3), (64, 3, 4), (80, 4, 4)]
SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in SHAPES]
BUDGETS = [1e10, 3e10, 1e11]
PER_BUDGET = 5
LR_GRID = (0.5, 1.0, 2.0)
TUNE_SIZES = (0, 2, 4)  # d8-L1, d16-L1, d24-L2: 1.3k, 4.1k, 15k parameters (15k: 81 steps at 1e10)
TUNE_BUDGETS = (1e10, 3e10)
TUNE_LRS = [1e-2, 2e-2, 4e-2, 8e-2, 1.6e-1]  # the small sizes' best lrs sit high (d8-L1: >= 8e-2 in the ladder's tune)
MIN_STEPS = 80

# The window's centre, as the ladder's: N_c = 3.2e3 at 1e10, growing as C^0.56; D/N = C / (6 N_c^2).
CENTER_N_1E10, CENTER_EXPONENT = 3.2e3, 0.56

verify_allocation = False  # the allocation check has no power at this design (docs/results.md, "Design power")

BASE = RunConfig(
    model=ModelConfig(),
    data=DataConfig(source="synthetic", seq_len=32, global_batch=32),
    optimizer=OptimizerConfig(name="adamw", lr=2e-2, schedule="cosine", final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=16 * 32 * 32, keep_checkpoints=1, flops_convention="chinchilla"),
)


def center_n(budget: float) -> float:
    return CENTER_N_1E10 * (budget / 1e10) ** CENTER_EXPONENT


def center_tpp(budget: float) -> float:
    return budget / (6.0 * center_n(budget) ** 2)


def sweep() -> IsoFlop:
    return IsoFlop(
        BUDGETS, SIZES, base=BASE, name="quickstart", tpp_range=(1, 10000), per_budget=PER_BUDGET, center_tpp=center_tpp,
        min_steps=MIN_STEPS, min_batch=8, schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=1),
        lr_rule="tuned", lr_grid=LR_GRID,
    )


def tune() -> Tune:
    return Tune([SIZES[i] for i in TUNE_SIZES], TUNE_LRS, base=BASE, steps=0, budgets=TUNE_BUDGETS)

