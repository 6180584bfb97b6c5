"""The pack runtime under `lib.train.loop`: the runs of a pack, their state, and one lockstep tick.

`PackRuntime` holds what the loop's hooks work on: each run's state (initialised, resumed from
its own checkpoint, or -- its first launch with an `InitFrom` -- another run's checkpoint), the
compiled step of the pack's active runs (re-formed, one compile, whenever a run leaves), and the
timings the summary reports. `tick()` advances the runs at the lowest step by one (a run resumed
from a later checkpoint waits for the others), dispatching tick n before reading tick n-1's
metrics, so the host never stalls the device. `read()` fetches a tick's metrics; a run whose loss
is not finite leaves the pack, failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from lib.config import ConfigError, RunConfig, eval_chunk_rows, eval_rows, units_per_row
from lib.parallel import sharding
from lib.store.checkpoint import Checkpointer
from lib.store.runstore import RunDir
from lib.store.tracking import Tracker
from lib.train.step import batch_spec, build_pack, build_steps


class RunDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is marked failed with the step."""


class Preempted(RuntimeError):
    """SIGTERM arrived; every run of the pack checkpointed and can be relaunched to resume."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}  # run id -> where that run stopped


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """Start a run (on its first launch) from run `run_id`'s checkpoint at `step`: a run dependency
    (lib/sweeps/plans.py PlannedRun.init_from). `run_id` names a folder beside the run's own."""

    run_id: str
    step: int


@dataclasses.dataclass(eq=False)
class PackRun:
    """One run of a pack as the host sees it: its folder, data, tracker and where it stands."""

    cfg: RunConfig
    run: RunDir
    run_id: str
    source: Any
    init_from: InitFrom | None = None
    tracker: Tracker | None = None
    ckpt: Checkpointer | None = None
    step: int = 0  # updates applied
    last: dict = dataclasses.field(default_factory=dict)  # the latest logged metrics (and eval loss)
    log_step: int = 0  # the step, wall time and non-training time of the last metrics row
    log_time: float = 0.0
    log_spent: float = 0.0
    result: Any = None  # once it left the pack: its summary, or the RunDiverged it failed with
    initialised_from: bool | None = None  # with init_from: started from that checkpoint (False: from step 0)


class PackRuntime:
    """The state of a pack's runs on one mesh, and the lockstep tick that advances them."""

    def __init__(self, runs: list[PackRun], devices, spread: bool | None, chunk, done: Callable[[PackRun, Any], None]):
        self.runs, self.devices, self.spread, self.chunk, self.done = runs, devices, spread, chunk, done
        self.cfg = runs[0].cfg
        self.mesh = sharding.make_mesh(self.cfg.mesh, devices)
        self.pi, self.pc = jax.process_index(), jax.process_count()
        self.device_kind = devices[0].device_kind
        self.spent = {"compile": 0.0, "eval": 0.0, "checkpoint": 0.0}  # time inside the loop that is not training
        self.pack, self.slots, self.state, self.pending = None, [], None, None
        self.values: dict = {}  # the last read tick's metrics, per run
        self.scores: dict = {}  # this tick's eval scores, per run evaluated (the eval hook)
        self.saved: set = set()  # runs checkpointed in this tick
        self._exits = contextlib.ExitStack()

    def __enter__(self):
        self._exits.enter_context(sharding.activate(self.mesh))
        try:
            self._start()
        except BaseException:
            self._exits.close()  # the checkpointers opened so far, then the mesh
            raise
        return self

    def __exit__(self, *exc):
        return self._exits.__exit__(*exc)

    def timed(self, kind: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.spent[kind] += time.perf_counter() - t0
        return out

    # ---- state: init or resume each run from its own checkpoint --------------------------------
    def _start(self) -> None:
        t0 = time.perf_counter()
        self.lone = build_steps(self.cfg, self.mesh)  # one run's init and layout: every run of the pack has them
        self.states = {}
        for r in self.runs:
            t = r.cfg.train
            r.ckpt = self._exits.enter_context(Checkpointer(r.run.checkpoint_dir, t.keep_checkpoints, keep_steps=t.keep_steps))
            latest = r.ckpt.latest_step()
            if latest is None and r.init_from is not None:  # a dependent run's first launch
                self.states[r] = _init_from(r, self.lone)
            elif latest is None:
                self.states[r] = self.lone.init(jax.random.key(t.seed))
                r.run.truncate_metrics(0)  # rows a run killed before its first checkpoint logged
            else:
                self.states[r] = r.ckpt.restore(latest, self.lone.abstract_state)
                r.run.truncate_metrics(latest)
                r.tracker.say(f"resumed from checkpoint at step {latest}")
            r.step = r.log_step = int(jax.device_get(self.states[r].step))
        self.init_s = time.perf_counter() - t0
        self.loop_start = time.perf_counter()
        for r in self.runs:
            r.log_time = self.loop_start

    def active(self) -> list[PackRun]:
        return [r for r in self.runs if r.result is None]

    def train_s(self) -> float:
        """The loop's time so far, less compile, eval and checkpoint time."""
        return time.perf_counter() - self.loop_start - sum(self.spent.values())

    # ---- the pack: (re)formed from the active runs ---------------------------------------------
    def reform(self) -> bool:
        """On the first tick, or when a run left: rebuild the pack of the active runs (one compile).
        False when no run is left to train."""
        active = self.active()
        if active and [s for s in self.slots if s is not None] == active:
            return True
        if self.pending is not None:  # the last tick's losses first: a run that diverged there leaves too
            self.read()
            return self.reform()
        if not active:
            return False
        if self.pack is not None:
            self.states = {r: self.pack.take(self.state, self.slots.index(r)) for r in active}
        t0 = time.perf_counter()
        placed, n_slots = _placement(len(active), self.mesh, self.spread)
        self.slots = active + [None] * (n_slots - len(active))  # padding: computed, never applied
        self.pack = build_pack([(r or active[0]).cfg for r in self.slots], self.mesh, placed, self.chunk)
        self.state = self.pack.stack(*(self.states[r or active[0]] for r in self.slots))
        self.states.clear()
        self.step_fn = self.pack.train_step.lower(*_abstract_args(self.pack, self.state, self.cfg, self.mesh)).compile()
        self.evaluate = _pack_evaluate(self.cfg, self.pack, self.slots, self.mesh)
        self._advance = (None, None)
        self.spent["compile"] += time.perf_counter() - t0
        line = (f"compiled a pack of {len(active)}" if n_slots > 1 else "compiled train step") + f" in {time.perf_counter() - t0:.1f}s"
        for r in active:
            r.tracker.say(f"{line}; training steps {r.step}..{r.cfg.train.steps} on {len(self.devices)} x {self.device_kind}")
        return True

    # ---- one tick: the runs at the lowest step advance by one ----------------------------------
    def tick(self) -> tuple[int, list[PackRun]]:
        """Dispatch one step of the runs at the lowest step, then read the tick before.
        Returns (that step + 1, the runs that advanced and are still in the pack)."""
        active = self.active()
        low = min(r.step for r in active)
        moving = [r for r in active if r.step == low]
        mask = np.array([r in moving for r in self.slots])
        if self._advance[0] is None or not np.array_equal(mask, self._advance[0]):
            self._advance = (mask, sharding.replicated_array(mask, self.mesh))
        pi, pc = self.pi, self.pc
        batch = self.pack.batch(_rows(self.slots, lambda r: r.source.batch(r.step, pi, pc), lambda r: (id(r.source), r.step)), self.mesh)
        self.state, metrics = self.step_fn(self.state, self._advance[1], batch, self.pack.hparams)
        if self.pending is not None:  # the tick before: a non-finite loss fails its run
            self.read()
        for r in moving:
            r.step += 1
        self.pending = (self.slots, {r: r.step for r in moving}, metrics)
        self.saved = set()
        return low + 1, [r for r in moving if r.result is None]

    def read(self) -> None:
        """Fetch the pending tick's metrics into `values`; a run whose loss is not finite leaves the pack, failed."""
        slots, moved, metrics = self.pending
        self.pending = None
        values = jax.device_get(metrics)
        self.values = {}
        for i, r in enumerate(slots):
            if r is None or r not in moved or r.result is not None:
                continue
            v = {k: float(x[i]) for k, x in values.items()}
            if math.isfinite(v["train_loss"]):
                self.values[r] = v
                continue
            message = f"diverged: non-finite loss ({v['train_loss']}) at step {moved[r]}"
            r.run.set_state("failed", reason=message, diverged=True, step=moved[r])
            r.tracker.say(message)
            r.tracker.finish(failed=True)
            self.done(r, RunDiverged(message))

    def take(self, r: PackRun):
        """Run r's state out of the pack (or, before the pack formed, its initial state)."""
        return self.pack.take(self.state, self.slots.index(r)) if r in self.slots else self.states[r]

    def save(self, r: PackRun) -> None:
        self.timed("checkpoint", r.ckpt.save, r.step, self.take(r), force=True)
        self.saved.add(r)


def _init_from(r: PackRun, lone):
    """The one place a run starts from another run's state: on its first launch, run
    `r.init_from.run_id`'s checkpoint at `r.init_from.step` (that run's folder is a sibling of r's),
    with its metrics rows up to there, so r's curve starts at step 0. Where that checkpoint is
    missing (deleted, or the run not there yet) r trains from step 0 itself -- for a cooldown
    branch the same numbers, bit for bit (its schedule equals the trunk's constant rate before the
    branch point), at the prefix's cost again. A source run that diverged fails r with its reason."""
    src = r.init_from
    trunk_dir = RunDir(os.path.join(os.path.dirname(str(r.run.path).rstrip("/")), src.run_id), writer=False)
    status = trunk_dir.status() or {}
    if status.get("state") == "failed" and status.get("diverged"):
        raise RunDiverged(f"trunk {src.run_id} diverged: {status.get('reason', '')}")
    steps = []
    if trunk_dir.checkpoint_dir.exists():
        with Checkpointer(trunk_dir.checkpoint_dir, 1, read_only=True) as trunk_ckpt:
            steps = trunk_ckpt.all_steps()
            if src.step in steps:
                state = trunk_ckpt.restore(src.step, lone.abstract_state)
                r.run.truncate_metrics(0)
                r.run.append_metrics([row for row in trunk_dir.metrics() if row.get("step", 0) <= src.step])
                r.initialised_from = True
                r.tracker.say(f"branch of {src.run_id}: restored its checkpoint at step {src.step}")
                return state
    r.initialised_from = False
    r.tracker.say(f"branch of {src.run_id}: no trunk checkpoint at step {src.step} (it has {steps}); "
                  f"training the prefix from step 0 (the same numbers as the trunk's)")
    r.run.truncate_metrics(0)
    return lone.init(jax.random.key(r.cfg.train.seed))


def _abstract_args(pack, state, cfg: RunConfig, mesh):
    """(state, advance, batch, hparams) as the compiler sees them, for compiling before the first tick."""
    advance = jax.ShapeDtypeStruct((pack.size,), np.bool_, sharding=sharding.replicated(mesh))
    return state, advance, batch_spec(cfg, mesh, pack), pack.hparams


def _placement(n_runs: int, mesh, spread: bool | None) -> tuple[bool, int]:
    """(spread, slots). Spread -- run i trains on data slice i, whole models per device, no
    collectives -- when asked, or by default when one process drives a mesh whose data axis is
    more than half filled by the runs; slots then round up to a multiple of the data size (the
    padding computes and is never applied). Otherwise the run axis is replicated and each run is
    sharded over the mesh as it would be alone."""
    data = mesh.shape[sharding.RUN_MESH_AXIS]
    if spread is None:
        spread = jax.process_count() == 1 and data > 1 and 2 * n_runs > data
    if spread and jax.process_count() > 1:
        raise ConfigError("a spread pack (run axis on data) is single-process only; use spread=False on several processes")
    return spread, (-(-n_runs // data) * data if spread else n_runs)


def _rows(slots: list, rows_of, key):
    """Stack each slot's rows [K, ...] (leaf by leaf for a task's pytree batch), read once per
    distinct key(run); padding copies slot 0's."""
    cache: dict = {}
    for r in slots:
        r = r or slots[0]
        if key(r) not in cache:
            cache[key(r)] = rows_of(r)
    return jax.tree.map(lambda *rows: np.stack(rows), *[cache[key(r or slots[0])] for r in slots])


# ---- evaluation: every run scores the same held-out rows ----------------------------------------
def make_evaluate(cfg: RunConfig, steps, source, mesh):
    """`(evaluate(state) -> {"eval_loss", ...} means over the run's eval set, number of held-out units in it)`.

    Every run of a sweep scores the same held-out rows whatever its batch: rows 0..n-1 of the eval
    stream, n = ceil(eval_tokens / units per row) (units: tokens, seq_len a row; or images, one a
    row -- for classify train.eval_tokens counts images), in equal chunks of gcd(n, global_batch)
    rows (one compiled shape; a multiple of the data-parallel size since validate() checks that
    both n and global_batch are), so the mean of the chunk means is the mean over all n rows.
    """
    pi, pc = jax.process_index(), jax.process_count()
    evaluate, units = _chunked_evaluate(cfg, steps.eval_step, lambda first, n: sharding.global_batch(source.eval_rows(first, n, pi, pc), mesh))
    return (lambda state: {k: float(v) for k, v in evaluate(state).items()}), units


def _pack_evaluate(cfg: RunConfig, pack, slots: list, mesh):
    """evaluate(pack state) -> {metric: [K]} each run's means over its own eval set (as make_evaluate)."""
    pi, pc = jax.process_index(), jax.process_count()
    def rows(first, n):
        return pack.batch(_rows(slots, lambda r: r.source.eval_rows(first, n, pi, pc), lambda r: id(r.source)), mesh)

    return _chunked_evaluate(cfg, pack.eval_step, rows)[0]


def _chunked_evaluate(cfg: RunConfig, eval_step, rows):
    per_row = units_per_row(cfg)
    n_rows = eval_rows(cfg.train.eval_tokens, per_row)
    chunk = eval_chunk_rows(n_rows, cfg.data.global_batch)
    batches = []  # the same rows at every evaluation: built once

    def evaluate(state):
        if not batches:
            batches.extend(rows(first, chunk) for first in range(0, n_rows, chunk))
        scores = jax.device_get([eval_step(state, batch) for batch in batches])
        return {k: np.mean([s[k] for s in scores], axis=0) for k in scores[0]}

    return evaluate, n_rows * per_row
