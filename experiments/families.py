"""Model families on one harness: loss vs non-embedding N for a transformer, an LSTM and a causal
CNN on the synthetic language, a power law fitted per family (Kaplan et al. 2020, figure 7).

    scaling run families --root runs/families      # sweep, then <root>/fit/families.png, families.json, report.md

The same ladder of widths for every family (d_model 16..64, 2 layers; the transformer with 2
heads), every run on the same 800 x 32 x 32 = 819k tokens, so the families are compared at fixed
D. Learning rate per family: the best of {5e-3, 1e-2, 2e-2, 4e-2} at d_model 32 over 600 steps
(transformer 2e-2, as the quickstart's; lstm and cnn 4e-2). The fit is L(N) = (N_c/N)^alpha_N per
family, N = non-embedding parameters (analysis/families.py). 15 runs: 5.5 minutes wall on 2 CPU
cores shared with other jobs (load ~8; 2m40s of CPU time).

Measured (N 4e3..1e5): alpha_N = 0.036 [0.025, 0.047] transformer, 0.060 [0.044, 0.075] lstm,
0.056 [0.035, 0.076] cnn, and the lstm and cnn below the transformer at every N (1.19-1.20 vs 1.32
nats at ~7e4). The reverse of Kaplan's figure 7, for a reason this language makes plain: phrases
are drawn independently and are a few to 18 tokens long, so nothing predicts across a phrase
boundary and a local model loses nothing by its short memory, while Kaplan's text rewards the
transformer's use of long context.
"""

import dataclasses  # (no `from __future__ import annotations`: dataclasses in a file loaded by path need real annotations)
import os
from typing import Any, Mapping, Sequence

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import Schedule, Sweep

FAMILIES = {
    "transformer": {"optimizer.lr": 2e-2, "model.n_heads": 2},
    "lstm": {"optimizer.lr": 4e-2},
    "cnn": {"optimizer.lr": 4e-2},
}
WIDTHS = [16, 24, 32, 48, 64]
STEPS = 800

BASE = RunConfig(
    model=ModelConfig(n_layers=2),
    data=DataConfig(source="synthetic", seq_len=32, global_batch=32),
    optimizer=OptimizerConfig(name="adamw", lr=2e-2, schedule="cosine", final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=16 * 32 * 32, keep_checkpoints=1, flops_convention="chinchilla"),
)


@dataclasses.dataclass
class FamilyLadder(Sweep):
    """Every family (name -> config overrides) at every width, each run `steps` long."""

    base: RunConfig
    families: Mapping[str, Mapping[str, Any]]
    widths: Sequence[int]
    steps: int
    name: str = "families"
    schedule: Schedule = Schedule(warmup_frac=0.05, log_points=10, eval_points=2, checkpoints=1)

    derived = ("train.steps", "optimizer.warmup_steps", "model.family", "model.d_model")

    def _expand(self, base, overrides):
        for family, extra in self.families.items():
            for width in self.widths:
                cfg = base.with_overrides({"model.family": family, "model.d_model": width, **extra, "name": f"{self.name}-{family}-d{width}"})
                yield self.schedule.apply(cfg, self.steps), ""


def sweep() -> FamilyLadder:
    return FamilyLadder(BASE, FAMILIES, WIDTHS, STEPS)


def analyse(root) -> int:
    """`scaling run families`' fit stage: one power law per family into <root>/fit (families.json,
    report.md, families.png/svg); prints the fitted exponents. Returns an exit code."""
    from analysis.errors import AnalysisError
    from analysis.families import fit_families, summary

    out = os.path.join(os.fspath(root), "fit")
    try:
        record = fit_families(root, out)
    except AnalysisError as e:
        print(f"fit: {e}")
        return 1
    print(f"\nfit -> {out}: {record['law']}; N = {record['N']}")
    print(summary(record))
    for note in record["notes"]:
        print(f"  note: {note}")
    print(f"figure and report: {out}/{record['figures'][0] if record['figures'] else '(none)'}, {out}/report.md")
    return 0
