"""The quickstart: an IsoFLOP sweep on the embedded synthetic language, small enough for a laptop CPU.

    scaling run quickstart --root runs/quickstart

3 budgets (1e11, 3e11, 1e12 FLOPs) x 5 model sizes each (4k..150k parameters), picked from a
ladder of shapes: each budget takes the 5 sizes whose D/N is nearest the optimum's D/N measured on
this data (N_opt ~ C^0.69, so the optimal D/N falls as C^-0.38: ~80 at 1e11, ~35 at 1e12), which
puts every budget's loss minimum inside its sizes.
FLOPs: Chinchilla appendix-F convention (lib/flops.py), N = total parameters.
Learning rate: a rule lr*(N) = c N^-gamma, fitted by the tune stage (`scaling run` runs it first,
into <root>/tune/): 4 sizes of the ladder (4k..86k parameters) x 5 learning rates (5e-3..8e-2,
factors of 2) x 200 steps at the sweep's batch. Every run's lr follows its N (Porian et al. 2024:
one lr for all sizes biases the exponents). The batch is 32 in every run. The old single lr, 2e-2
(the best of {3e-3, 1e-2, 2e-2, 4e-2} on 15k- and 86k-parameter models at 2e11 FLOPs), is the
`single_lr` sensitivity sweep: `scaling run` trains it into <root>/sensitivity/single_lr and the
report states the exponent a it gives on the same data.
"""

import dataclasses

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Schedule, Tune

# (d_model, n_layers, n_heads), neighbours ~1.5-2x apart in parameters (vocab 64: 4k..150k).
SHAPES = [(16, 1, 2), (16, 2, 2), (24, 2, 2), (32, 2, 2), (40, 2, 2), (40, 3, 2), (48, 3, 3), (64, 3, 4)]
SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in SHAPES]
BUDGETS = [1e11, 3e11, 1e12]

BASE = RunConfig(
    model=ModelConfig(),
    data=DataConfig(source="synthetic", seq_len=32, global_batch=32),
    optimizer=OptimizerConfig(name="adamw", lr=2e-2, schedule="cosine", final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=16 * 32 * 32, keep_checkpoints=1, flops_convention="chinchilla"),
)


def optimal_tpp(budget: float) -> float:
    return 80.0 * (budget / 1e11) ** -0.38


def sweep() -> IsoFlop:
    return IsoFlop(
        BUDGETS, SIZES, base=BASE, name="quickstart", tpp_range=(1, 1000), per_budget=5, center_tpp=optimal_tpp,
        min_steps=100, min_batch=8, schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=1),
        lr_rule="tuned",
    )


def tune() -> Tune:
    return Tune(SIZES[::2], [5e-3, 1e-2, 2e-2, 4e-2, 8e-2], base=BASE, steps=200)


def sensitivity() -> dict:
    """Sweeps `scaling run` also trains (into <root>/sensitivity/<name>) for the report's sensitivity lines."""
    return {"single_lr": dataclasses.replace(sweep(), lr_rule=None, name="quickstart")}
