"""Trunks and branches: many token counts per model size from one warmup-stable-decay run.

    Cooldowns(sizes, tokens=[D1, D2, ...], decay_frac=0.2, decay_shape="linear", base=...)
    Cooldowns(sizes, tokens_per_param=[r1, r2, ...], ...)         D = r * N per size
    Cooldowns(sizes, tokens=lambda model: [...], ...)              each size its own token counts

Per size one trunk: warmup, then the constant peak rate (schedule "constant"), for as many steps as
the last branch's start, keeping its checkpoint at every branch's start (`train.keep_steps`).
Per token count one branch: a run of the wsd schedule ending at D (`optimizer.wsd_decay_frac`,
`optimizer.wsd_decay_shape`) that names its trunk (`train.trunk`, the trunk's run id) and starts
from the trunk's checkpoint at `train.branch_start` = the step its decay begins
(`lib.train.optim.wsd_decay_start`: about D * (1 - decay_frac) tokens, the fraction taken of the
steps after warmup). Before that step the wsd rate is the constant rate exactly, and the data
order is a function of (seed, step), so a branch is bit for bit the fresh wsd run of its length
(tests/test_cooldowns.py) -- which is why it is recorded as one: its summary holds N, D = its end,
its eval loss and `flops` = its point's whole compute (trunk prefix + branch), plus `trunk` and
`branch_start`. Trunks are runs too (summary `role: "trunk"`); the fitter leaves them out.

This module only plans: each branch is a PlannedRun that runs `after` its trunk and starts from
its trunk's checkpoint (`init_from` = (trunk id, branch_start); lib/sweeps/plans.py). The
executors order and wait on `after` (lib.sweeps.executors.dependency_order), the loop restores
`init_from` (lib.train.runtime), so nothing downstream knows about trunks. `train.trunk` and
`train.branch_start` stay in the branch's config because they are hashed into its run id;
`train.keep_steps` (checkpoints kept whatever keep_checkpoints says) is the trunk's.

Warmup: `schedule.warmup_frac` of the size's shortest branch, the same for its trunk and every
branch (they must share it). Run order: each trunk, then its branches; `--worker i/n` gives a trunk
and its branches to the same worker (`Plan.partition`), so a worker's in-process executor trains a
trunk before its branches and no branch ever waits. Compute: `accounting(plan)` -- what the plan
spends (each trunk once, plus every branch's tail) against separate from-scratch runs of the same
points; the plan's notes state both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

from lib import flops as flops_lib
from lib.config import WSD_DECAY_SHAPES, ConfigError, ModelConfig, RunConfig, units_per_row
from lib.sweeps.plans import IsoFlop, Plan, Schedule, Size, Sweep, _fmt, _planned, _size_tag, _with_size
from lib.train.optim import wsd_decay_start
from lib.train.runtime import InitFrom


@dataclasses.dataclass
class Cooldowns(Sweep):
    sizes: Sequence[Size]
    tokens: Sequence[float] | Callable[[ModelConfig], Sequence[float]] = ()  # the branches' token counts, increasing (or per size)
    tokens_per_param: Sequence[float] = ()  # or per size: D = ratio * N (N total parameters), increasing
    decay_frac: float = 0.2
    decay_shape: str = "linear"
    base: RunConfig = RunConfig()
    name: str = "wsd"
    schedule: Schedule = Schedule()
    lr_rule: Any = None
    lr_batch_scaling: str = "sqrt"

    derived = (*IsoFlop.derived, "optimizer.schedule", "optimizer.wsd_decay_frac", "optimizer.wsd_decay_shape",
               "train.trunk", "train.branch_start", "train.keep_steps")

    def __post_init__(self):
        if (callable(self.tokens) or bool(self.tokens)) == bool(self.tokens_per_param):
            raise ConfigError("Cooldowns: give exactly one of tokens=[D1 < D2 < ...] and tokens_per_param=[r1 < r2 < ...]")
        if not callable(self.tokens):
            _check_counts(list(self.tokens) or list(self.tokens_per_param), "tokens" if self.tokens else "tokens_per_param")
        if not (isinstance(self.decay_frac, (int, float)) and 0.0 < self.decay_frac < 1.0):
            raise ConfigError(f"Cooldowns.decay_frac: the cooldown's share of each branch must be in (0, 1), got {self.decay_frac!r}; e.g. 0.2")
        if self.decay_shape not in WSD_DECAY_SHAPES:
            raise ConfigError(f"Cooldowns.decay_shape: unknown value {self.decay_shape!r}; choose one of {', '.join(WSD_DECAY_SHAPES)}")
        if not self.sizes:
            raise ConfigError("Cooldowns.sizes: give at least one model size")

    # ---- expansion ------------------------------------------------------------------------------
    def _expand(self, base, overrides):
        T, B = units_per_row(base), base.data.global_batch  # T: units (tokens, or 1 image) per row
        for size in self.sizes:
            cfg = _with_size(base, size)
            tag = _size_tag(cfg.model)
            n = flops_lib.param_counts(cfg.model)["total"]
            if self.tokens:
                counts = list(self.tokens(cfg.model)) if callable(self.tokens) else list(self.tokens)
                _check_counts(counts, f"tokens (size {tag})")
                points = [(f"{self.name}-D{_fmt(float(D))}-{tag}", float(D)) for D in counts]
            else:
                points = [(f"{self.name}-tpp{_fmt(r)}-{tag}", r * n) for r in self.tokens_per_param]
            steps = [int(round(D / (B * T))) for _, D in points]
            for (label, D), s, s_prev in zip(points, steps, [0, *steps]):
                if s <= s_prev:
                    raise ConfigError(f"sweep '{self.name}', {label}: {D:.4g} tokens are {s} steps of {B} x {T}, not more than the "
                                      f"branch before ({s_prev}); space the token counts further apart or use a smaller batch")
            warmup = max(min(int(round(self.schedule.warmup_frac * steps[0])), steps[0] - 1), 0)
            starts = [wsd_decay_start(s, warmup, self.decay_frac) for s in steps]
            for (label, D), s, start in zip(points, steps, starts):
                if start <= warmup:
                    raise ConfigError(f"sweep '{self.name}', {label}: the branch of {s} steps would start its cooldown at step {start}, "
                                      f"within its warmup ({warmup} steps): a branch shorter than warmup; use more tokens or a "
                                      f"smaller warmup_frac / decay_frac")
            shared = {"optimizer.warmup_steps": warmup, "optimizer.wsd_decay_frac": float(self.decay_frac),
                      "optimizer.wsd_decay_shape": self.decay_shape}
            trunk_name = f"{self.name}-trunk-{tag}"
            trunk = self.schedule.apply(cfg.with_overrides({"name": trunk_name}), starts[-1])
            yield trunk.with_overrides({**shared, "optimizer.schedule": "constant", "train.keep_steps": sorted(set(starts))}), ""
            for (label, D), s, start in zip(points, steps, starts):
                branch = self.schedule.apply(cfg.with_overrides({"name": label}), s)
                yield branch.with_overrides({**shared, "optimizer.schedule": "wsd", "train.trunk": trunk_name, "train.branch_start": start}), ""

    def plan(self, overrides: Mapping[str, Any] | None = None, root=None) -> Plan:
        """Sweep.plan, then each branch names its trunk by run id (known only once the lr rule has
        set the trunk's lr) and depends on it -- `after` the trunk, `init_from` its checkpoint at
        branch_start (lib/sweeps/plans.py; the executors and the loop do the rest) --, runs ordered
        trunk then its branches, and the compute notes."""
        plan = Sweep.plan(self, overrides, root)
        ids = {r.cfg.name: r.run_id for r in plan.runs if not r.cfg.train.trunk}
        trunks, branches = [], {}
        for r in plan.runs:
            if not r.cfg.train.trunk:
                trunks.append(r)
                continue
            if r.cfg.train.trunk not in ids:
                raise ConfigError(f"sweep '{self.name}', run '{r.cfg.name}': its trunk '{r.cfg.train.trunk}' is not in the plan")
            trunk_id = ids[r.cfg.train.trunk]
            # train.trunk and train.branch_start stay in the config (hashed: they make the run id);
            # what the machinery reads is the dependency.
            r = dataclasses.replace(_planned(r.cfg.with_overrides({"train.trunk": trunk_id})),
                                    after=(trunk_id,), init_from=InitFrom(trunk_id, r.cfg.train.branch_start))
            branches.setdefault(trunk_id, []).append(r)
        ordered = []
        for t in sorted(trunks, key=lambda r: (r.params, r.run_id)):
            ordered += [t, *sorted(branches.get(t.run_id, []), key=lambda r: r.cfg.train.steps)]
        plan = dataclasses.replace(plan, runs=tuple(ordered))
        acc = accounting(plan)
        note = (f"compute: {len(trunks)} trunks + {acc['branches']} branches spend {acc['spent']:.4g} FLOPs; separate from-scratch runs "
                f"of the same {acc['branches']} points would spend {acc['from_scratch']:.4g} ({acc['ratio']:.1%} of that; no trunk-and-branch "
                f"plan of these points spends under {acc['floor_ratio']:.1%}, its longest point per size)")
        return dataclasses.replace(plan, notes=(note, *plan.notes))


def _check_counts(counts: list, field: str) -> None:
    if not counts:
        raise ConfigError(f"Cooldowns.{field}: give at least one token count")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in counts):
        raise ConfigError(f"Cooldowns.{field}: token counts must be positive and finite, got {counts}")
    if any(b <= a for a, b in zip(counts, counts[1:])):
        raise ConfigError(f"Cooldowns.{field}: token counts must be strictly increasing (each branch ends after the one before), got {counts}")


# ---- compute accounting ---------------------------------------------------------------------------
def accounting(plan: Plan) -> dict:
    """{"spent": each trunk once + every branch's tail, "from_scratch": every branch point trained
    from step 0 (the sum of the branches' recorded flops), "ratio", "trunks", "branches"} in FLOPs.
    Branches are the runs initialised from another run's checkpoint (`init_from`), trunks the runs
    they start from. A branch whose trunk is not in the plan counts whole (it would train its prefix itself).

    "floor_ratio": the least any trunk-and-branch plan of these points could spend, as a share of
    from scratch -- each size trains at least to its longest point, so spent >= sum of each trunk's
    longest branch. With k token counts D_1 < ... < D_k per size and cooldown fraction f the ratio
    is f + (1 - f) D_k / sum(D_i) (warmup rounding aside), never below f + (1 - f) / k: with f = 0.2
    and 4 counts, 40% only as the counts become equal."""
    branches = [r for r in plan.runs if r.init_from]
    sources = {r.init_from.run_id for r in branches}
    trunks = {r.run_id: r for r in plan.runs if r.run_id in sources}
    others = [r for r in plan.runs if r.run_id not in trunks and not r.init_from]
    spent = sum(t.flops for t in trunks.values()) + sum(r.flops for r in others)
    spent += sum(r.own_flops if r.init_from.run_id in trunks else r.flops for r in branches)
    scratch = sum(r.flops for r in branches) + sum(r.flops for r in others)
    longest: dict[str, float] = {}
    for r in branches:
        key = r.init_from.run_id if r.init_from.run_id in trunks else r.run_id
        longest[key] = max(longest.get(key, 0.0), r.flops)
    floor = sum(longest.values()) + sum(r.flops for r in others)
    nan = float("nan")
    return {"spent": spent, "from_scratch": scratch, "ratio": spent / scratch if scratch else nan,
            "floor_ratio": floor / scratch if scratch else nan, "trunks": len(trunks), "branches": len(branches)}
