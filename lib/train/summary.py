"""A run's summary (summary.json): the typed record the loop writes as a run finishes.

The loop fills what every run has (losses, N, C, timings, the data); the task fills its own fields
through one method, `task.summary_fields(...)` (lib/tasks/lm.py: D as "tokens", flops per token,
seq_len; lib/tasks/classify.py: D as "images" with "units", top-1 errors, the Bayes error, the
image shape), so the loop never branches on the task. `lineage` holds what a run's dependencies
add (lib/sweeps/cooldowns.py: a branch names its trunk; a trunk says so). Readers
(lib/store/runstore.py, analysis/data.py) see the flat dict of `to_dict()`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lib import flops as flops_lib
from lib.config import RunConfig, resolve_axis_sizes, units_per_row
from lib.parallel import pipeline
from lib.tasks import task_of
from lib.train.environment import numerics_environment


@dataclasses.dataclass
class RunSummary:
    run_id: str
    eval_loss: float | None
    train_loss: float | None
    params: dict  # N in each count (lib.flops.param_counts)
    flops: dict  # {"value": C (lib.flops.run_flops), "convention"}
    entropy_floor: float | None  # lm: best mean loss over a row of seq_len tokens; classify: the Bayes cross-entropy
    entropy_rate: float | None  # the source's rate (long windows), when known
    theory: dict | None  # the exponents the data's own theory predicts, and the floor's margin at this D
    sweep: str | None
    budget: float | None
    steps: int
    global_batch: int
    # Timings are the pack's (shared by its runs) up to the moment this run finished.
    init_time_s: float  # state init (with its compile) or checkpoint restore
    compile_time_s: float  # the train step
    train_time_s: float  # the loop, less compile, eval and checkpoint time
    eval_time_s: float
    checkpoint_time_s: float
    device_kind: str
    n_devices: int
    environment: dict  # what besides the config decides its floats: versions, CPU, ISA, threads (lib.train.environment)
    pipeline: dict
    data: dict
    epochs: Any
    task: dict  # the task's fields (task.summary_fields): D under its unit's key, flops per unit, eval units, ...
    lineage: dict = dataclasses.field(default_factory=dict)  # a branch's trunk, or a trunk's branch points

    def to_dict(self) -> dict:
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("task", "lineage")}
        return {**flat, **self.task, **self.lineage}


def run_summary(r, rt) -> RunSummary:
    """The summary of run `r` (lib.train.runtime.PackRun) of the pack runtime `rt`, as it finishes."""
    cfg, t, source = r.cfg, r.cfg.train, r.source
    per_row = units_per_row(cfg)
    units = t.steps * cfg.data.global_batch * per_row
    flops_in = {c: (lambda c=c: flops_lib.run_flops(cfg, convention=c)) for c in flops_lib.CONVENTIONS}  # C per convention, on demand
    return RunSummary(
        run_id=r.run_id,
        eval_loss=r.last.get("eval_loss"),
        train_loss=r.last.get("train_loss"),
        params=flops_lib.param_counts(cfg.model),
        flops={"value": flops_lib.run_flops(cfg), "convention": t.flops_convention},
        entropy_floor=getattr(source, "entropy_floor", None),
        entropy_rate=getattr(source, "entropy_rate", None),
        theory={**source.theory(), "never_seen_bound": source.never_seen_bound(units)} if hasattr(source, "theory") else None,
        sweep=cfg.sweep or None,
        budget=cfg.budget or None,
        steps=t.steps,
        global_batch=cfg.data.global_batch,
        init_time_s=rt.init_s,
        compile_time_s=rt.spent["compile"],
        train_time_s=rt.train_s(),
        eval_time_s=rt.spent["eval"],
        checkpoint_time_s=rt.spent["checkpoint"],
        device_kind=rt.device_kind,
        n_devices=len(rt.devices),
        environment=_environment(r, rt),
        pipeline=_pipeline_summary(cfg, len(rt.devices)),
        data=source.describe(),
        epochs=source.epoch(t.steps),
        task=task_of(cfg).summary_fields(cfg, source, r.last, units, flops_lib.flops_per_token(cfg.model, per_row, t.flops_convention), flops_in),
        lineage=_lineage(r),
    )


def _environment(r, rt) -> dict:
    """Where the run trained (lib.train.environment), and, when its attempts trained in more than one
    environment (a resume on another machine), each of them in order: its key then names them all, so
    the fit counts it as an environment of its own and warns."""
    env = numerics_environment(rt.devices[0])
    attempts = (r.run.status() or {}).get("environments", [])
    if len(attempts) > 1:
        env = {**env, "attempts": attempts, "key": "resumed across: " + " -> ".join(attempts)}
    return env


def _lineage(r) -> dict:
    """Trunks and branches (lib/sweeps/cooldowns.py): a run started from another's state names it
    (its flops above are its point's whole compute, trunk prefix + branch, as a from-scratch
    run's); a constant-rate run that keeps checkpoints for others to start from is a trunk, no
    point to fit."""
    t = r.cfg.train
    if r.init_from is not None:
        return {"trunk": r.init_from.run_id, "branch_start": r.init_from.step, "branch_restored": r.initialised_from}
    if t.keep_steps and r.cfg.optimizer.schedule == "constant":
        return {"role": "trunk", "branch_points": list(t.keep_steps)}
    return {}


def _pipeline_summary(cfg: RunConfig, n_devices: int) -> dict:
    """The layer stack's schedule: stages S, microbatches M, and its bubble (S-1)/(M+S-1) -- the
    share of each stage's time idle (0 without a pipeline)."""
    stages, micro = resolve_axis_sizes(cfg.mesh, n_devices)[0], cfg.train.microbatches
    return {"schedule": pipeline.SCHEDULE if micro else None, "stages": stages, "microbatches": micro,
            "bubble_fraction": pipeline.bubble_fraction(stages, micro)}
