"""Sweep definitions: each expands into planned runs (a RunConfig and its run id), the same on every host.

    Grid(base, {"optimizer.lr": [1e-3, 3e-3]})        every combination of the axes' values
    IsoFlop(budgets, sizes, base=...)                 each size trained for budget C: D = C / flops_per_token
    TokensPerParam(sizes, ratios, base=...)           each size trained for D = ratio * N tokens

`sweep.plan(overrides)` returns a `Plan`: runs sorted by (budget, N, run id) -- the order every
host agrees on, which `--worker i/n` partitions -- and notes on what was dropped and why.
Run id = readable name + content hash (`iso-3e11-d32-L2-3f2a9c`), so a relaunch finds its runs.
Each run gets its own `train.steps`, so its learning-rate schedule ends at its own last step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from lib import flops as flops_lib
from lib.config import ConfigError, ModelConfig, RunConfig

Size = Mapping[str, Any] | ModelConfig  # model fields, e.g. {"d_model": 64, "n_layers": 2, "n_heads": 4}
_SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "d_ff")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    run_id: str
    cfg: RunConfig
    params: int  # N, total parameters (embeddings included)
    tokens: int  # D = steps * global_batch * seq_len
    flops: float  # C in the run's flops convention


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    runs: tuple[PlannedRun, ...]
    notes: tuple[str, ...] = ()

    def partition(self, worker: int, n_workers: int) -> "Plan":
        """Static share of worker i of n: runs i, i+n, i+2n, ... of the agreed order."""
        if not 0 <= worker < n_workers:
            raise ConfigError(f"--worker {worker}/{n_workers}: need 0 <= i < n, e.g. --worker 0/{max(n_workers, 1)}")
        return dataclasses.replace(self, runs=self.runs[worker::n_workers])


def run_id(cfg: RunConfig) -> str:
    """`<readable name>-<content hash>`: the run's folder under the sweep root (train() names a run by its folder)."""
    return f"{cfg.name}-{cfg.content_hash()}"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How each run's bookkeeping scales with its length (none of it changes the run id's hash)."""

    warmup_frac: float = 0.05  # warmup steps = round(warmup_frac * steps)
    log_points: int = 20  # metrics rows per run
    eval_points: int = 4  # evaluations per run (the last step is always evaluated)
    checkpoints: int = 2  # checkpoints per run (the last step is always saved)

    def apply(self, cfg: RunConfig, steps: int) -> RunConfig:
        warmup = min(int(round(self.warmup_frac * steps)), steps - 1)
        return cfg.with_overrides(
            {
                "train.steps": steps,
                "optimizer.warmup_steps": max(warmup, 0),
                "train.log_every": max(steps // self.log_points, 1),
                "train.eval_every": max(steps // self.eval_points, 1),
                "train.checkpoint_every": max(steps // self.checkpoints, 1),
            }
        )


class Sweep:
    """A base config plus a rule that expands it; subclasses implement `_expand(base, overrides)`."""

    name: str
    base: RunConfig

    def plan(self, overrides: Mapping[str, Any] | None = None) -> Plan:
        """Expand with `overrides` (from --set) applied to the base, then again to every run, so a
        value the sweep derives per run (e.g. train.steps) is forced when the user sets it."""
        overrides = dict(overrides or {})
        base = _with_planning_vocab(self.base.with_overrides(overrides))
        runs: dict[str, PlannedRun] = {}
        notes: list[str] = [f"--set {k} overrides the planned value in every run" for k in overrides if k in self.derived]
        for cfg, note in self._expand(base, overrides):
            if cfg is None:
                notes.append(note)
                continue
            cfg = cfg.with_overrides({**overrides, "sweep": self.name})
            try:
                cfg.validate()
            except ConfigError as e:
                raise ConfigError(f"sweep '{self.name}', run '{cfg.name}': {e}") from None
            planned = _planned(cfg)
            if planned.run_id in runs:
                notes.append(f"{cfg.name}: same config as an earlier run; kept once")
                continue
            runs[planned.run_id] = planned
        if not runs:
            raise ConfigError(f"sweep '{self.name}' expands to no runs: " + ("; ".join(notes) or "no sizes/axes given"))
        ordered = sorted(runs.values(), key=lambda r: (r.cfg.budget, r.params, r.run_id))
        return Plan(self.name, tuple(ordered), tuple(notes))

    derived: tuple[str, ...] = ()  # config keys the expansion sets per run

    def _expand(self, base: RunConfig, overrides: Mapping[str, Any]) -> Iterable[tuple[RunConfig | None, str]]:
        raise NotImplementedError


# ================================================================================================
@dataclasses.dataclass
class Grid(Sweep):
    """Every combination of `axes` (config key -> values) applied to `base`; steps come from base."""

    base: RunConfig
    axes: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.base.name

    def _expand(self, base, overrides):
        keys = list(self.axes)
        for values in itertools.product(*(self.axes[k] for k in keys)):
            combo = dict(zip(keys, values))
            tag = "-".join(f"{k.split('.')[-1]}{_fmt(v)}" for k, v in combo.items())
            yield base.with_overrides({**combo, "name": f"{base.name}-{tag}" if tag else base.name}), ""


@dataclasses.dataclass
class IsoFlop(Sweep):
    """For each budget C and size: D = C / flops_per_token(size), steps = round(D / (batch * seq_len)).

    Batch rule: `base.data.global_batch`, halved (not below `min_batch`) while the run would have
    fewer than `min_steps` steps (never when --set fixes data.global_batch). Dropped with a note:
      - tokens-per-parameter D/N outside `tpp_range`;
      - with `per_budget` set, all but the `per_budget` sizes whose D/N is nearest `center_tpp` (a
        number, or a function of the budget): a ladder of sizes then gives each budget a window
        around its expected optimum;
      - realised FLOPs more than `tolerance` away from C.
    FLOPs use `base.train.flops_convention`; N is total parameters.
    """

    budgets: Sequence[float]
    sizes: Sequence[Size]
    base: RunConfig = RunConfig()
    name: str = "iso"
    tpp_range: tuple[float, float] = (1.0, 1000.0)
    per_budget: int = 0  # 0: every size in tpp_range
    center_tpp: float | Callable[[float], float] = 20.0  # or budget -> D/N (the optimum's D/N drifts with C)
    min_steps: int = 100
    min_batch: int = 8
    tolerance: float = 0.02
    schedule: Schedule = Schedule()

    derived = ("train.steps", "optimizer.warmup_steps", *(f"model.{k}" for k in _SHAPE_FIELDS))

    def _expand(self, base, overrides):
        convention, T = base.train.flops_convention, base.data.seq_len
        fixed_batch = "data.global_batch" in overrides  # the user's batch: no halving
        lo, hi = self.tpp_range
        for budget in self.budgets:
            candidates = []  # (label, cfg, tokens, D/N)
            for size in self.sizes:
                cfg = _with_size(base, size)
                label = f"{self.name}-{_fmt(budget)}-{_size_tag(cfg.model)}"
                tokens = budget / flops_lib.flops_per_token(cfg.model, T, convention)
                tpp = tokens / flops_lib.param_counts(cfg.model)["total"]
                if lo <= tpp <= hi:
                    candidates.append((label, cfg, tokens, tpp))
                else:
                    yield None, f"{label}: dropped, D/N = {tpp:.3g} tokens per parameter is outside [{lo:g}, {hi:g}]"
            if self.per_budget:
                center = self.center_tpp(budget) if callable(self.center_tpp) else self.center_tpp
                nearest = sorted(candidates, key=lambda c: abs(math.log(c[3] / center)))[: self.per_budget]
                for label, *_ in candidates:
                    if all(label != n[0] for n in nearest):
                        yield None, f"{label}: dropped, not among the {self.per_budget} sizes with D/N nearest {center:.3g}"
                candidates = [c for c in candidates if c in nearest]
            for label, cfg, tokens, _ in candidates:
                yield self._sized(label, cfg, budget, tokens, convention, T, fixed_batch)

    def _sized(self, label: str, cfg: RunConfig, budget: float, tokens: float, convention: str, T: int, fixed_batch: bool):
        batch = cfg.data.global_batch
        while not fixed_batch and tokens / (batch * T) < self.min_steps and batch // 2 >= self.min_batch:
            batch //= 2
        steps = int(round(tokens / (batch * T)))
        realised = steps * batch * T * flops_lib.flops_per_token(cfg.model, T, convention)
        if steps < 1 or abs(realised / budget - 1) > self.tolerance:
            return None, (
                f"{label}: dropped, {steps} steps x {batch} x {T} tokens spend {realised:.3g} FLOPs, "
                f"more than {self.tolerance:.0%} away from {budget:.3g}"
            )
        cfg = cfg.with_overrides({"name": label, "budget": float(budget), "data.global_batch": batch})
        return self.schedule.apply(cfg, steps), ""


@dataclasses.dataclass
class TokensPerParam(Sweep):
    """Each size trained for D = ratio * N tokens (N total parameters) at base's batch and seq_len."""

    sizes: Sequence[Size]
    ratios: Sequence[float]
    base: RunConfig = RunConfig()
    name: str = "tpp"
    schedule: Schedule = Schedule()

    derived = IsoFlop.derived

    def _expand(self, base, overrides):
        T, B = base.data.seq_len, base.data.global_batch
        for ratio in self.ratios:
            for size in self.sizes:
                cfg = _with_size(base, size)
                n = flops_lib.param_counts(cfg.model)["total"]
                label = f"{self.name}{_fmt(ratio)}-{_size_tag(cfg.model)}"
                steps = int(round(ratio * n / (B * T)))
                if steps < 1:
                    yield None, f"{label}: dropped, {ratio:g} x {n} tokens is less than one batch of {B * T}"
                    continue
                yield self.schedule.apply(cfg.with_overrides({"name": label}), steps), ""


# ================================================================================================
def _planned(cfg: RunConfig) -> PlannedRun:
    T = cfg.data.seq_len
    tokens = cfg.train.steps * cfg.data.global_batch * T
    fpt = flops_lib.flops_per_token(cfg.model, T, cfg.train.flops_convention)
    return PlannedRun(run_id(cfg), cfg, flops_lib.param_counts(cfg.model)["total"], tokens, tokens * fpt)


def _with_planning_vocab(cfg: RunConfig) -> RunConfig:
    """FLOPs depend on the vocabulary, so planning needs it before any data is loaded."""
    if cfg.model.vocab_size:
        return cfg
    if cfg.data.source == "synthetic":
        return cfg.with_overrides({"model.vocab_size": cfg.data.synth_vocab})
    raise ConfigError(
        "model.vocab_size: a sweep counts FLOPs before loading data, so it needs the vocabulary size; "
        "set it to the tokenizer's size, e.g. --set model.vocab_size=256 for bytes"
    )


def _with_size(base: RunConfig, size: Size) -> RunConfig:
    if isinstance(size, ModelConfig):
        size = {k: getattr(size, k) for k in _SHAPE_FIELDS}
    return base.with_overrides({f"model.{k}": v for k, v in size.items()})


def _size_tag(m: ModelConfig) -> str:
    return f"d{m.d_model}-L{m.n_layers}"


def _fmt(v: Any) -> str:
    """Readable and filename-safe: 3e11 -> '3e11', 1.5e12 -> '1.5e12', 0.003 -> '0.003', 64 -> '64'."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v).replace("/", "_").replace(" ", "")
    if isinstance(v, int) and abs(v) < 1e6:
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{v:.3g}")
    return f"{v:g}"
