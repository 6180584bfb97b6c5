"""Hyperparameters as rules of the run config: a learning rate that follows the model's size, and
what happens to it when a sweep changes the batch.

    PowerLawLR(c=0.3, gamma=0.25)     lr = c * N^-gamma, N = total parameters (lib.flops)
    PowerLawLR(c, gamma, delta=0.1)   lr = c * N^-gamma * D^-delta, D = the run's tokens (a rule tuned
                                      at several horizons: Tune(budgets=...))
    read_lr_rule(root)                the rule `scaling tune` fitted, from <root>/tune/lr_rule.json
    "tuned"                           in a sweep (lr_rule="tuned"): read_lr_rule(the sweep's root), at plan time
    any callable RunConfig -> float   e.g. lambda cfg: 1e-2 * (cfg.model.d_model / 64) ** -1

Batch: an lr is set for one batch (a tuned rule's tuning batch, else the sweep base's). When a run's
batch B differs from it, the planner multiplies the lr by sqrt(B / B_ref) (`lr_batch_scaling="sqrt"`,
the square-root rule for Adam, Malladi et al. 2022) or leaves it ("none"); the plan notes say which.

lr_rule.json is read here as plain JSON: lib never imports analysis (analysis/lr_rule.py fits and
writes it). Fields used: "c", "gamma", "batch", "seq_len", "N_range", "steps" and, for a rule in N
and D, "delta" and "D_range" (a file without them is a rule in N alone).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable

from lib import flops as flops_lib
from lib.config import ConfigError, RunConfig, units_per_row
from lib.store.runstore import read_json

TUNE_DIR = "tune"  # <root>/tune/: the tuning runs, lr_rule.json and its figure
LR_RULE_FILE = "lr_rule.json"
GRID_EXTENSIONS_FILE = "grid_extensions.json"  # <root>/tune/: size tag -> lrs added past an edge
LR_GRID_DIR = ".lr_grid"  # <root>/.lr_grid/<sweep>.json: point name -> lr factors added past an edge
# A rule applied this far beyond where it was measured (in N, or in horizon) is named in the plan.
EXTRAPOLATION_FACTOR = 1.5
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
    """lr*(N, D) = c * N^-gamma * D^-delta (delta 0: a rule in N alone); `batch`, `n_range` and
    `d_range` say where it was measured (0 / () = unknown)."""

    c: float
    gamma: float
    batch: int = 0
    n_range: tuple[float, float] | tuple = ()
    source: str = ""  # where it came from, for the plan notes
    # the tuning runs' horizon (one of them set; 0 = unknown): what "tuned at the horizon you use" compares
    steps: int = 0
    tokens_per_param: float = 0.0
    budget: float = 0.0
    delta: float = 0.0
    d_range: tuple[float, float] | tuple = ()  # the tuning runs' tokens, for a rule in N and D

    def __call__(self, cfg: RunConfig) -> float:
        lr = self.c * n_params(cfg) ** -self.gamma
        return lr * run_tokens(cfg) ** -self.delta if self.delta else lr

    def describe(self) -> str:
        where = f" from {self.source}" if self.source else ""
        measured = f", tuned on N {self.n_range[0]:.3g}..{self.n_range[1]:.3g}" if self.n_range else ""
        measured += f", D {self.d_range[0]:.3g}..{self.d_range[1]:.3g}" if self.d_range else ""
        at = f" at batch {self.batch}" if self.batch else ""
        in_d = f" * D^-{self.delta:.3f}" if self.delta else ""
        return f"lr = {self.c:.4g} * N^-{self.gamma:.3f}{in_d}{measured}{at}{where}"


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
                          tuple(record.get("N_range") or ()), source=path, steps=int(record.get("steps") or 0),
                          tokens_per_param=float(record.get("tokens_per_param") or 0), budget=float(record.get("budget") or 0),
                          delta=float(record.get("delta") or 0), d_range=tuple(record.get("D_range") or ()))
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


def read_lr_grid_extensions(root, sweep: str) -> dict[str, list[float]]:
    """The lr factors a sweep added past a grid edge (point name -> factors); {} if none."""
    path = os.path.join(os.fspath(root), LR_GRID_DIR, f"{sweep}.json")
    return {str(k): [float(x) for x in v] for k, v in (read_json(path) or {}).items()}


def extrapolation_notes(rule: LRRule | None, points: list[RunConfig]) -> list[str]:
    """Where a tuned rule sets the lr of points outside what it was tuned on: sizes beyond its N range,
    and horizons (steps, D/N or budget) other than its tuning runs' -- the optimum lr falls as runs
    get longer, so a rule tuned at 200 steps overshoots at 5,000 (one note each, naming the worst)."""
    if rule is None or not points:
        return []
    notes = []
    n_range = getattr(rule, "n_range", ())
    if n_range:
        lo, hi = n_range
        outside = [(p.name, n_params(p)) for p in points if not lo / EXTRAPOLATION_FACTOR <= n_params(p) <= hi * EXTRAPOLATION_FACTOR]
        if outside:
            name, n = max(outside, key=lambda o: max(o[1] / hi, lo / o[1]))
            notes.append(f"warning: the lr rule was tuned on N {lo:.3g}..{hi:.3g} and sets the lr of {len(outside)} of {len(points)} "
                         f"points outside it (furthest: {name}, N {n:.3g}): extrapolated")
    horizon = _horizon(rule)
    if horizon is not None:
        what, tuned, of = horizon
        ratios = [(p.name, of(p) / tuned) for p in points if math.isfinite(of(p))]
        off = [(name, r) for name, r in ratios if not 1 / EXTRAPOLATION_FACTOR <= r <= EXTRAPOLATION_FACTOR]
        if off:
            name, r = max(off, key=lambda o: max(o[1], 1 / o[1]))
            at = what if what.startswith("D ") else f"{what} {tuned:g}"
            notes.append(f"warning: the lr rule was tuned at {at}; {len(off)} of {len(points)} points train at another "
                         f"horizon (furthest: {name}, {r:.3g}x): tune at the sweep's horizons (Tune(budget=C)) or use an lr_grid")
    return notes


def _horizon(rule) -> tuple[str, float, Callable[[RunConfig], float]] | None:
    """(what, the tuned value, the same quantity of a run) for the horizon a rule records, else None.
    A rule in N and D (tuned at several horizons) is compared in D with the middle of its range in
    log D, the factor widened by the range's half-width, so only a D outside the range is named."""
    d_range = getattr(rule, "d_range", ())
    if d_range:
        lo, hi = map(float, d_range)
        mid, half = math.sqrt(lo * hi), math.sqrt(hi / lo)
        return f"D {lo:.3g}..{hi:.3g} tokens", mid, lambda cfg: mid * _within(run_tokens(cfg) / mid, half)
    if getattr(rule, "steps", 0):
        return "steps", float(rule.steps), lambda cfg: float(cfg.train.steps)
    if getattr(rule, "tokens_per_param", 0):
        return "D/N", float(rule.tokens_per_param), lambda cfg: run_tokens(cfg) / n_params(cfg)
    if getattr(rule, "budget", 0):
        return "budget", float(rule.budget), lambda cfg: float(cfg.budget or 0) or math.nan
    return None


def _within(ratio: float, half: float) -> float:
    """A ratio to the range's middle, shrunk by the range's half-width towards 1 (1 inside it)."""
    return ratio / half if ratio > half else ratio * half if ratio < 1 / half else 1.0


def run_tokens(cfg: RunConfig) -> float:
    return float(cfg.train.steps * cfg.data.global_batch * units_per_row(cfg))
