"""Hyperparameters as rules of the run config: a learning rate that follows the model's size, and
what happens to it when a sweep changes the batch.

    PowerLawLR(c=0.3, gamma=0.25)     lr = c * N^-gamma, N = total parameters (lib.flops)
    read_lr_rule(root)                the rule `scaling tune` fitted, from <root>/tune/lr_rule.json
    "tuned"                           in a sweep (lr_rule="tuned"): read_lr_rule(the sweep's root), at plan time
    any callable RunConfig -> float   e.g. lambda cfg: 1e-2 * (cfg.model.d_model / 64) ** -1

Batch: an lr is set for one batch (a tuned rule's tuning batch, else the sweep base's). When a run's
batch B differs from it, the planner multiplies the lr by sqrt(B / B_ref) (`lr_batch_scaling="sqrt"`,
the square-root rule for Adam, Malladi et al. 2022) or leaves it ("none"); the plan notes say which.

lr_rule.json is read here as plain JSON: lib never imports analysis (analysis/lr_rule.py fits and
writes it). Fields used: "c", "gamma", "batch", "seq_len", "N_range", "steps".
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

from lib import flops as flops_lib
from lib.config import ConfigError, RunConfig
from lib.store.runstore import read_json

TUNE_DIR = "tune"  # <root>/tune/: the tuning runs, lr_rule.json and its figure
LR_RULE_FILE = "lr_rule.json"
GRID_EXTENSIONS_FILE = "grid_extensions.json"  # <root>/tune/: size tag -> lrs added past an edge
BATCH_SCALINGS = ("sqrt", "none")

LRRule = Callable[[RunConfig], float]


def tune_root(root) -> str:
    return os.path.join(os.fspath(root), TUNE_DIR)


def lr_rule_path(root) -> str:
    return os.path.join(tune_root(root), LR_RULE_FILE)


def n_params(cfg: RunConfig) -> int:
    """N as every fit here counts it: total parameters, embeddings included."""
    return flops_lib.param_counts(cfg.model)["total"]


@dataclasses.dataclass(frozen=True)
class PowerLawLR:
    """lr*(N) = c * N^-gamma; `batch` and `n_range` say where it was measured (0 / () = unknown)."""

    c: float
    gamma: float
    batch: int = 0
    n_range: tuple[float, float] | tuple = ()
    source: str = ""  # where it came from, for the plan notes

    def __call__(self, cfg: RunConfig) -> float:
        return self.c * n_params(cfg) ** -self.gamma

    def describe(self) -> str:
        where = f" from {self.source}" if self.source else ""
        measured = f", tuned on N {self.n_range[0]:.3g}..{self.n_range[1]:.3g}" if self.n_range else ""
        at = f" at batch {self.batch}" if self.batch else ""
        return f"lr = {self.c:.4g} * N^-{self.gamma:.3f}{measured}{at}{where}"


def read_lr_rule(root) -> PowerLawLR:
    """The rule `scaling tune` fitted into <root>/tune/lr_rule.json; a clear error when there is none."""
    path = lr_rule_path(root)
    record = read_json(path)
    if record is None:
        raise ConfigError(
            f"lr_rule='tuned' but {path} does not exist: run `scaling tune EXP --root {os.fspath(root)}` first "
            "(`scaling run` tunes before it sweeps)"
        )
    try:
        return PowerLawLR(float(record["c"]), float(record["gamma"]), int(record.get("batch") or 0),
                          tuple(record.get("N_range") or ()), source=path)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path} is not a learning-rate rule ({type(e).__name__}: {e}); delete it and rerun `scaling tune`") from None


def resolve_lr_rule(rule: Any, root=None) -> LRRule | None:
    """None, a callable, or "tuned" (needs the sweep's root) -> a callable or None."""
    if rule is None or callable(rule):
        return rule
    if rule == "tuned":
        if root is None:
            raise ConfigError("lr_rule='tuned' reads <root>/tune/lr_rule.json: plan the sweep with its root, sweep.plan(root=...)")
        return read_lr_rule(root)
    raise ConfigError(f"lr_rule: expected None, 'tuned' or a callable of the run config, got {rule!r}")


def rule_batch(rule: LRRule | None, base: RunConfig) -> int:
    """The batch an lr was set for: the tuned rule's, else the sweep base's."""
    return getattr(rule, "batch", 0) or base.data.global_batch


def describe(rule: LRRule | None) -> str:
    if rule is None:
        return "one learning rate for every run (optimizer.lr)"
    return rule.describe() if hasattr(rule, "describe") else f"lr = {getattr(rule, '__name__', type(rule).__name__)}(run config)"


def batch_scaled(lr: float, batch: int, ref_batch: int, scaling: str) -> float:
    """lr for `batch` when it was set for `ref_batch`: x sqrt(batch / ref_batch) under "sqrt"."""
    if scaling not in BATCH_SCALINGS:
        raise ConfigError(f"lr_batch_scaling: unknown value {scaling!r}; choose one of {', '.join(BATCH_SCALINGS)}")
    if scaling == "none" or batch == ref_batch:
        return lr
    return lr * math.sqrt(batch / ref_batch)


def check_lr(lr: float, where: str) -> float:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{where}: the learning-rate rule gave {lr!r}; a rule must return a positive finite number")
    return float(lr)


def read_grid_extensions(tune_dir) -> dict[str, list[float]]:
    """The learning rates the tune stage added to some sizes' grids (size tag -> lrs); {} if none."""
    return {str(k): [float(x) for x in v] for k, v in (read_json(os.path.join(os.fspath(tune_dir), GRID_EXTENSIONS_FILE)) or {}).items()}
