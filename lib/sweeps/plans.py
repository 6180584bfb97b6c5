"""Sweep definitions: each expands into planned runs (a RunConfig and its run id), the same on every host.

    Grid(base, {"optimizer.lr": [1e-3, 3e-3]})        every combination of the axes' values
    IsoFlop(budgets, sizes, base=...)                 each size trained for budget C: D = C / flops_per_token
    TokensPerParam(sizes, ratios, base=...)           each size trained for D = ratio * N tokens
    Tune(sizes, lrs, base=..., steps=100)             each size at each learning rate, a short horizon

`sweep.plan(overrides, root)` returns a `Plan`: runs sorted by (budget, N, run id) -- the order every
host agrees on, which `--worker i/n` partitions -- and notes on what was dropped and why.
Run id = readable name + content hash (`iso-3e11-d32-L2-3f2a9c`), so a relaunch finds its runs.
Each run gets its own `train.steps`, so its learning-rate schedule ends at its own last step.

Learning rates follow `lr_rule` (lib/sweeps/rules.py): None (base's optimizer.lr for all), a
callable of the run config, or "tuned" (the rule `scaling tune` wrote under `root`). A run whose
batch differs from the one its lr was set for gets lr x sqrt(B / B_ref) (`lr_batch_scaling`).
The notes state both rules and `Plan.lr_lines()` lists each run's batch and lr.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from lib import flops as flops_lib
from lib.config import IMAGE_SOURCES, SYNTH_IMG_DEFAULT_CLASSES, ConfigError, ModelConfig, RunConfig, resolve_model_input, units_per_row
from lib.config_rules import validate
from lib.store.runstore import SEED_TAG, replicate_sweep
from lib.sweeps import rules
from lib.train.runtime import InitFrom

Size = Mapping[str, Any] | ModelConfig  # model fields, e.g. {"d_model": 64, "n_layers": 2, "n_heads": 4}
_SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "d_ff")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    run_id: str
    cfg: RunConfig
    params: int  # N, total parameters (embeddings included)
    tokens: int  # D = steps * global_batch * seq_len
    flops: float  # C in the run's flops convention
    point: str = ""  # the point an lr-grid run belongs to (its x1 run's name); "" = the run's own name
    # Run dependencies, as data: the runs of this plan that must finish first (executors order and
    # wait on them: lib/sweeps/executors.py dependency_order), and the run and step whose checkpoint
    # this run starts from on its first launch (the loop: lib.train.runtime.InitFrom). Not hashed:
    # what makes a run what it is stays in its config (a cooldown branch's train.trunk, branch_start).
    after: tuple[str, ...] = ()
    init_from: InitFrom | None = None

    @property
    def own_steps(self) -> int:
        """The steps this run trains itself: after its init_from step, if it has one."""
        return self.cfg.train.steps - (self.init_from.step if self.init_from else 0)

    @property
    def own_flops(self) -> float:
        """The compute this run trains itself: a run initialised from another's checkpoint at step S (a
        cooldown branch) only its steps after S (the prefix is the other run's); any other run all of it."""
        return flops_lib.run_flops(self.cfg, start=self.init_from.step) if self.init_from else self.flops


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    runs: tuple[PlannedRun, ...]
    notes: tuple[str, ...] = ()
    lr_rule: str = ""  # the learning-rate rule the runs follow, described; "" when none

    def partition(self, worker: int, n_workers: int) -> "Plan":
        """Static share of worker i of n: runs i, i+n, i+2n, ... of the agreed order, where a run and
        the runs it follows (`after`; a cooldown branch and its trunk) count as one: they go to the same worker."""
        if not 0 <= worker < n_workers:
            raise ConfigError(f"--worker {worker}/{n_workers}: need 0 <= i < n, e.g. --worker 0/{max(n_workers, 1)}")
        mine = dependency_groups(self.runs)[worker::n_workers]
        return dataclasses.replace(self, runs=tuple(r for g in mine for r in g))

    def lr_lines(self) -> list[str]:
        """One line per run with its N, batch and learning rate; none when there is no rule and every
        run shares them."""
        if not self.lr_rule and len({(r.cfg.optimizer.lr, r.cfg.data.global_batch) for r in self.runs}) <= 1:
            return []
        width = max(len(r.run_id) for r in self.runs)
        return [f"{r.run_id:<{width}}  N {r.params:>9.3g}  batch {r.cfg.data.global_batch:>4}  lr {r.cfg.optimizer.lr:.3g}" for r in self.runs]


def dependency_groups(runs: Sequence[PlannedRun]) -> list[list[PlannedRun]]:
    """`runs` grouped with the runs they follow (`after`, transitively; a run with none alone), in
    the order given; a group is named by its first run."""
    group_of: dict[str, str] = {}
    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        key = next((group_of[a] for a in r.after if a in group_of), r.run_id)
        group_of[r.run_id] = key
        groups.setdefault(key, []).append(r)
    return list(groups.values())


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
    lr_rule: Any = None  # None | "tuned" | callable(RunConfig) -> lr (lib/sweeps/rules.py)
    lr_batch_scaling: str = "sqrt"  # lr x sqrt(B / B_ref) when a run's batch differs from the lr's | "none"
    sets_batch: bool = False  # the expansion picks each run's batch (then its lr follows the batch rule)

    def plan(self, overrides: Mapping[str, Any] | None = None, root=None) -> Plan:
        """Expand with `overrides` (from --set) applied to the base, then again to every run, so a
        value the sweep derives per run (e.g. train.steps) is forced when the user sets it.
        `root`: where the sweep trains; an lr_rule of "tuned" reads <root>/tune/lr_rule.json."""
        overrides = dict(overrides or {})
        base = _with_planning_vocab(self.base.with_overrides(overrides))
        rule = rules.resolve_lr_rule(self.lr_rule, root)
        ref_batch = rules.rule_batch(rule, base)
        runs: dict[str, PlannedRun] = {}
        derived = self.derived + (("optimizer.lr",) if rule is not None else ())
        notes: list[str] = [f"--set {k} overrides the planned value in every run" for k in overrides if k in derived]
        notes += self._hyperparameter_notes(rule, ref_batch)
        head = len(notes)  # the rule's warnings go here, above the per-run notes (the CLI prints the first few)
        _check_lr_grid(self.lr_grid, self.name)
        _check_seeds(self.seeds, base.train.seed, self.name)
        extensions = rules.read_lr_grid_extensions(root, self.name) if root is not None and tuple(self.lr_grid) != (1.0,) else {}
        ruled: list[RunConfig] = []  # each point, with the lr its rule gave (the grid's centre)
        for point, note in self._expand(base, overrides):
            if point is None:
                notes.append(note)
                continue
            point = self._with_lr(point, rule, ref_batch)
            point = point.with_overrides({**overrides, "sweep": self.name})
            ruled.append(point)
            for factor in sorted({*self.lr_grid, *extensions.get(point.name, ())}):
                cfg = lr_grid_run(point, factor)
                try:
                    validate(cfg)
                except ConfigError as e:
                    raise ConfigError(f"sweep '{self.name}', run '{cfg.name}': {e}") from None
                planned = dataclasses.replace(_planned(cfg), point=point.name)
                if planned.run_id in runs:
                    notes.append(f"{cfg.name}: same config as an earlier run; kept once")
                    continue
                runs[planned.run_id] = planned
            for seed in self.seeds:  # replicates at the rule's lr, with another init (docs/design.md)
                cfg = seed_replicate_run(point, seed, self.name)
                runs.setdefault(run_id(cfg), _planned(cfg))
        if not runs:
            raise ConfigError(f"sweep '{self.name}' expands to no runs: " + ("; ".join(notes) or "no sizes/axes given"))
        if tuple(self.lr_grid) != (1.0,):
            notes.insert(head, f"learning rate per point: each point at its lr x {', '.join(_fmt(f) for f in sorted(self.lr_grid))}"
                         + (f" (+ edge extensions of {len(extensions)} points)" if extensions else "") + "; the fit takes each point's best")
        if self.seeds:
            notes.insert(head, f"seed replicates: each point again at its rule's lr with train.seed {', '.join(str(s) for s in self.seeds)} "
                         f"(sweeps {', '.join(replicate_sweep(self.name, s) for s in self.seeds)}); fitted apart, as seed_sensitivity")
        notes[head:head] = rules.extrapolation_notes(rule, ruled)
        ordered = sorted(runs.values(), key=lambda r: (r.cfg.budget, r.params, r.run_id))
        return Plan(self.name, tuple(ordered), tuple(notes), rules.describe(rule) if rule is not None else "")

    derived: tuple[str, ...] = ()  # config keys the expansion sets per run
    # Learning rate per point: each point trains at its planned lr x every factor (x1 keeps the
    # point's own name and run id); the fit takes each point's best (analysis/lr_grid.py). A
    # point's runs share shape and length, so they train as one pack.
    lr_grid: Sequence[float] = (1.0,)
    # Seed replicates: each point once more per seed here, at its rule's lr, with another train.seed
    # (another init, the same data), in its point's pack and in its own sweep "<name>-seed<k>"
    # (lib.store.runstore.replicate_sweep), so the fit sets it aside and refits per seed
    # (fit.json seed_sensitivity: the seed's spread of a beside the lr policy's).
    seeds: Sequence[int] = ()

    def _expand(self, base: RunConfig, overrides: Mapping[str, Any]) -> Iterable[tuple[RunConfig | None, str]]:
        raise NotImplementedError

    def _with_lr(self, cfg: RunConfig, rule, ref_batch: int) -> RunConfig:
        """The run's lr: the rule's at its size (else its own), scaled when its batch is not ref_batch."""
        if rule is None and not self.sets_batch:
            return cfg
        lr = rules.check_lr(rule(cfg), f"sweep '{self.name}', run '{cfg.name}'") if rule is not None else cfg.optimizer.lr
        lr = rules.batch_scaled(lr, cfg.data.global_batch, ref_batch, self.lr_batch_scaling)
        return cfg if lr == cfg.optimizer.lr else cfg.with_overrides({"optimizer.lr": lr})

    def _hyperparameter_notes(self, rule, ref_batch: int) -> list[str]:
        if rule is None and not self.sets_batch:
            return []
        notes = [f"learning rate: {rules.describe(rule)}"]
        if self.lr_batch_scaling == "sqrt":
            notes.append(f"learning rate x sqrt(B / {ref_batch}) for a run whose batch B is not the {ref_batch} its lr was set for")
        else:
            notes.append(f"learning rate not rescaled when a run's batch differs from the {ref_batch} it was set for (lr_batch_scaling='none')")
        return notes


# ================================================================================================
@dataclasses.dataclass
class Grid(Sweep):
    """Every combination of `axes` (config key -> values) applied to `base`; steps come from base."""

    base: RunConfig
    axes: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    name: str = ""
    lr_rule: Any = None
    lr_batch_scaling: str = "sqrt"
    lr_grid: Sequence[float] = (1.0,)  # lr factors per point (Sweep.lr_grid)
    seeds: Sequence[int] = ()  # seed replicates per point (Sweep.seeds)

    def __post_init__(self):
        self.name = self.name or self.base.name
        if self.lr_rule is not None and "optimizer.lr" in self.axes:
            raise ConfigError("Grid: an lr_rule and an optimizer.lr axis both set the learning rate; drop one")
        if tuple(self.lr_grid) != (1.0,) and "optimizer.lr" in self.axes:
            raise ConfigError("Grid: an lr_grid and an optimizer.lr axis both vary the learning rate; drop one")

    def _expand(self, base, overrides):
        keys = list(self.axes)
        for values in itertools.product(*(self.axes[k] for k in keys)):
            combo = dict(zip(keys, values))
            tag = "-".join(f"{k.split('.')[-1]}{_fmt(v)}" for k, v in combo.items())
            yield base.with_overrides({**combo, "name": f"{base.name}-{tag}" if tag else base.name}), ""


@dataclasses.dataclass
class IsoFlop(Sweep):
    """For each budget C and size: D = C / flops_per_token(size), steps = round(D / (batch * seq_len)).

    Batch rule (`batch_rule`), never applied when --set fixes data.global_batch:
      "budget" (default): one batch per budget, so batch is not confounded with N within it:
          `base.data.global_batch`, halved (not below `min_batch`) while any of the budget's sizes
          would have fewer than `min_steps` steps;
      "run": the same halving per run (the largest sizes of a budget then train at a smaller batch);
      a callable budget -> batch: B(C), one batch per budget.
    Wherever a run's batch is not the one its lr was set for, its lr is x sqrt(B / B_ref) (see
    `Sweep.lr_batch_scaling`); the plan notes state it. Dropped with a note:
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
    lr_rule: Any = None
    lr_batch_scaling: str = "sqrt"
    lr_grid: Sequence[float] = (1.0,)  # lr factors per point (Sweep.lr_grid)
    seeds: Sequence[int] = ()  # seed replicates per point (Sweep.seeds)
    batch_rule: str | Callable[[float], int] = "budget"

    derived = ("train.steps", "optimizer.warmup_steps", *(f"model.{k}" for k in _SHAPE_FIELDS))
    sets_batch = True

    def _hyperparameter_notes(self, rule, ref_batch):
        if callable(self.batch_rule):
            how = "batch: B(C) from the sweep's batch_rule, one per budget"
        elif self.batch_rule == "budget":
            how = f"batch: one per budget, the largest (<= {self.base.data.global_batch}) giving each of its sizes >= {self.min_steps} steps"
        elif self.batch_rule == "run":
            how = f"batch: per run, halved from {self.base.data.global_batch} while it has < {self.min_steps} steps (varies with N)"
        else:
            raise ConfigError(f"IsoFlop.batch_rule: unknown value {self.batch_rule!r}; use 'budget', 'run' or a callable budget -> batch")
        return [how] + super()._hyperparameter_notes(rule, ref_batch)

    def _expand(self, base, overrides):
        convention, T = base.train.flops_convention, units_per_row(base)  # T: units (tokens, or 1 image) per row
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
            batch = None  # per run
            if candidates and not fixed_batch and self.batch_rule == "budget":
                batch = min(self._halved(base.data.global_batch, tokens, T) for _, _, tokens, _ in candidates)
            elif candidates and not fixed_batch and callable(self.batch_rule):
                batch = int(self.batch_rule(budget))
                if batch < 1:
                    raise ConfigError(f"IsoFlop.batch_rule gave batch {batch} at budget {budget:g}; it must be a positive integer")
            for label, cfg, tokens, _ in candidates:
                if batch is None and not fixed_batch:
                    run_batch = self._halved(cfg.data.global_batch, tokens, T)
                else:
                    run_batch = batch or cfg.data.global_batch
                yield self._sized(label, cfg, budget, tokens, convention, T, run_batch)

    def _halved(self, batch: int, tokens: float, T: int) -> int:
        """`batch`, halved (not below min_batch) while `tokens` would take fewer than min_steps steps."""
        while tokens / (batch * T) < self.min_steps and batch // 2 >= self.min_batch:
            batch //= 2
        return batch

    def _sized(self, label: str, cfg: RunConfig, budget: float, tokens: float, convention: str, T: int, batch: int):
        steps = int(round(tokens / (batch * T)))
        realised = flops_lib.run_flops(cfg, steps, convention=convention, global_batch=batch)
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
    lr_rule: Any = None
    lr_batch_scaling: str = "sqrt"
    lr_grid: Sequence[float] = (1.0,)  # lr factors per point (Sweep.lr_grid)
    seeds: Sequence[int] = ()  # seed replicates per point (Sweep.seeds)

    derived = IsoFlop.derived

    def _expand(self, base, overrides):
        T, B = units_per_row(base), base.data.global_batch
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


@dataclasses.dataclass
class Tune(Sweep):
    """The tuning stage: each size trained at each learning rate of a grid, for `steps` steps.

    `scaling tune` fits lr*(N) = c * N^-gamma to each size's best lr (analysis/lr_rule.py) and
    writes <root>/tune/lr_rule.json, which a sweep with lr_rule="tuned" reads. All runs of one size
    have the same shape and length, so they pack into one program where packing is on.
    `extra_lrs` (size tag -> lrs) extends one size's grid, e.g. past an edge where its best lr sat.
    Horizon: `steps` for every size; or (steps=0) `tokens_per_param` > 0: D = tokens_per_param * N;
    or (steps=0) `budget` > 0: the length that spends C FLOPs, each size's run in an IsoFLOP budget
    C -- the optimum lr falls as runs get longer, so a rule tuned at a horizon far shorter than the
    sweep's runs overshoots for them. Several horizons: `budgets=(C1, C2, ...)`, each size trained
    at the length that spends each C; each (size, horizon) is then its own group (`size_tag` ends in
    "@D<tokens>") and the stage fits lr*(N, D) = c N^-gamma D^-delta (analysis/lr_rule.py).
    """

    sizes: Sequence[Size]
    lrs: Sequence[float]
    base: RunConfig = RunConfig()
    name: str = "tune"
    steps: int = 100
    tokens_per_param: float = 0.0
    budget: float = 0.0
    extra_lrs: Mapping[str, Sequence[float]] = dataclasses.field(default_factory=dict)
    schedule: Schedule = Schedule(log_points=10, eval_points=1, checkpoints=1)
    budgets: Sequence[float] = ()  # several horizons (FLOPs per run); a rule in N and D is fitted

    derived = ("optimizer.lr", *IsoFlop.derived)

    def __post_init__(self):
        lrs = list(self.lrs)
        if len(set(lrs)) < 3:
            raise ConfigError(f"Tune.lrs: a learning-rate grid needs at least 3 distinct values to locate a minimum, got {lrs}; e.g. [3e-3, 1e-2, 3e-2]")
        for lr in [*lrs, *(x for v in self.extra_lrs.values() for x in v)]:
            if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
                raise ConfigError(f"Tune.lrs: learning rates must be positive and finite, got {lr!r}")
        if not self.sizes:
            raise ConfigError("Tune.sizes: give at least one model size (two or more to fit lr*(N))")
        horizons = {"steps": self.steps, "tokens_per_param": self.tokens_per_param, "budget": self.budget,
                    "budgets": len(self.budgets)}
        if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in self.budgets):
            raise ConfigError(f"Tune.budgets: FLOP budgets must be positive and finite, got {list(self.budgets)}")
        if self.budgets and len(set(self.budgets)) < 2:
            raise ConfigError(f"Tune.budgets: give two or more distinct horizons (one horizon: budget=C), got {list(self.budgets)}")
        if sum(v > 0 for v in horizons.values()) != 1:
            raise ConfigError(f"Tune: set exactly one of {', '.join(f'{k} ({v:g})' for k, v in horizons.items())} above 0: the tuning runs' horizon")

    @classmethod
    def from_sweep(cls, sweep: Sweep, lrs: Sequence[float] | None = None, steps: int = 100, every: int = 1, **kwargs) -> "Tune":
        """Tune the sizes of `sweep`'s ladder (every `every`-th one) on its base; default grid: the
        base lr x 2^-2 .. 2^2."""
        base = sweep.base
        sizes = list(getattr(sweep, "sizes", None) or [base.model])[::every]
        lrs = lrs or [base.optimizer.lr * 2.0**k for k in range(-2, 3)]
        return cls(sizes, lrs, base=base, steps=steps, **kwargs)

    def plan(self, overrides: Mapping[str, Any] | None = None, root=None) -> Plan:
        """As Sweep.plan, with the grid extensions the tune stage recorded under `root` (the tune
        folder), so every process and every relaunch plans the same runs."""
        extra = rules.read_grid_extensions(root) if root is not None else {}
        if extra:
            merged = {tag: [*self.extra_lrs.get(tag, ()), *extra.get(tag, ())] for tag in {*self.extra_lrs, *extra}}
            return Sweep.plan(dataclasses.replace(self, extra_lrs=merged), overrides, root)
        return Sweep.plan(self, overrides, root)

    def grid(self, tag: str) -> list[float]:
        """The learning rates of the size tagged `tag`, ascending."""
        return sorted(set(self.lrs) | set(self.extra_lrs.get(tag, ())))

    def _expand(self, base, overrides):
        T, B = units_per_row(base), base.data.global_batch
        for budget in self.budgets or (self.budget,):
            for size in self.sizes:
                cfg = _with_size(base, size)
                tag = _size_tag(cfg.model)
                if budget:
                    tokens = budget / flops_lib.flops_per_token(cfg.model, T, base.train.flops_convention)
                else:
                    tokens = self.tokens_per_param * flops_lib.param_counts(cfg.model)["total"]
                steps = self.steps or max(int(round(tokens / (B * T))), 1)
                if self.budgets:  # one group per (size, horizon): the horizon is in the tag, so in the name
                    tag = f"{tag}{HORIZON_TAG}{steps * B * T}"
                for lr in self.grid(tag):
                    label = f"{self.name}-{tag}-lr{_fmt(float(lr))}"
                    yield self.schedule.apply(cfg.with_overrides({"name": label, "optimizer.lr": float(lr)}), steps), ""


HORIZON_TAG = "@D"  # a multi-horizon tune run's group: <size>@D<tokens>, e.g. d32-L2@D409600


def size_tag(cfg: RunConfig) -> str:
    """The readable size part of run names (`d32-L2`), as the tune stage groups runs by it; a run of a
    multi-horizon Tune (Tune(budgets=...)) is grouped by size and horizon: `d32-L2@D409600`."""
    tag = _size_tag(cfg.model)
    marker = f"-{tag}{HORIZON_TAG}"
    if marker in cfg.name:  # Tune(budgets=...) names its runs <tune>-<size>@D<tokens>-lr<lr>
        return tag + HORIZON_TAG + cfg.name.split(marker, 1)[1].split("-", 1)[0]
    return tag


def tag_tokens(tag: str) -> float | None:
    """The horizon (tokens per run) a size tag names (`d32-L2@D409600` -> 409600.0), None without one."""
    _, sep, tokens = tag.partition(HORIZON_TAG)
    return float(tokens) if sep else None


# ================================================================================================
LR_FACTOR_TAG = "-lrx"  # a grid run's name: <point name>-lrx<factor>


def lr_grid_run(point: RunConfig, factor: float) -> RunConfig:
    """The run of an lr-grid point at its lr x `factor`; x1 is the point itself (its name and run id)."""
    if factor == 1.0:
        return point
    return point.with_overrides({"optimizer.lr": point.optimizer.lr * factor, "optimizer.lr_factor": float(factor),
                                 "name": f"{point.name}{LR_FACTOR_TAG}{_fmt(float(factor))}"})


def seed_replicate_run(point: RunConfig, seed: int, sweep: str) -> RunConfig:
    """The replicate of an lr-grid point at train.seed `seed`: its x1 run with another init, in its own sweep."""
    return point.with_overrides({"train.seed": int(seed), "name": f"{point.name}{SEED_TAG}{int(seed)}",
                                 "sweep": replicate_sweep(sweep, seed)})


def _check_seeds(seeds: Sequence[int], base_seed: int, sweep: str) -> None:
    values = list(seeds)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
        raise ConfigError(f"sweep '{sweep}': seeds must be non-negative integers (train.seed values), got {values}; e.g. (1, 2)")
    if len(set(values)) != len(values) or base_seed in values:
        raise ConfigError(f"sweep '{sweep}': seeds {values} must be distinct and differ from the points' own train.seed "
                          f"{base_seed}; e.g. (1, 2)")


def _check_lr_grid(grid: Sequence[float], sweep: str) -> None:
    factors = list(grid)
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0 for f in factors):
        raise ConfigError(f"sweep '{sweep}': lr_grid factors must be positive finite numbers, got {factors}; e.g. (0.5, 1, 2)")
    if 1.0 not in factors:
        raise ConfigError(f"sweep '{sweep}': lr_grid {factors} must contain 1 (the rule's own lr, the grid's centre); e.g. (0.5, 1, 2)")


def _planned(cfg: RunConfig) -> PlannedRun:
    T = units_per_row(cfg)
    tokens = cfg.train.steps * cfg.data.global_batch * T
    return PlannedRun(run_id(cfg), cfg, flops_lib.param_counts(cfg.model)["total"], tokens, flops_lib.run_flops(cfg))


def _with_planning_vocab(cfg: RunConfig) -> RunConfig:
    """FLOPs depend on the vocabulary (classes) and an image model's input size, so planning needs
    them before any data is loaded."""
    cfg = resolve_model_input(cfg)
    if cfg.model.vocab_size:
        return cfg
    if cfg.data.source == "synthetic":
        return cfg.with_overrides({"model.vocab_size": cfg.data.synth_vocab})
    if cfg.data.source in IMAGE_SOURCES and (cfg.data.num_classes or cfg.data.source == "synthetic_images"):
        return cfg.with_overrides({"model.vocab_size": cfg.data.num_classes or SYNTH_IMG_DEFAULT_CLASSES})
    if cfg.data.source in IMAGE_SOURCES:
        raise ConfigError("data.num_classes: a sweep counts FLOPs before loading data, so it needs the number of classes; "
                          "set it, e.g. --set data.num_classes=10 for cifar10")
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
