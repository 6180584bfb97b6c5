"""The training loop around the pure steps of `lib.train.step`.

`train(cfg, workdir)` trains one run; `train_pack(cfgs, workdirs)` trains K runs of one shape as
one vmapped program (`lib.train.step.Pack`), each into its own folder exactly as it would be alone.
A single run is a pack of one: the same loop, and for K = 1 the compiled step is a lone run's
program, bit for bit.

Read top to bottom: setup (validate, data, each run's folder) -> state (init or resume each run
from its own checkpoint, then stack them) -> the loop (each tick advances every run of the pack by
one step; per run: log, eval, checkpoint; a run that diverges or finishes leaves the pack, which
goes on with the others) -> each run's summary as it finishes. The loop dispatches tick n and only
then reads tick n-1's metrics, so the host never stalls the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from lib import flops as flops_lib
from lib.config import ConfigError, RunConfig, eval_chunk_rows, eval_rows, resolve_axis_sizes, resolve_model_input, task_kind, unit_name, units_per_row
from lib.config_rules import validate
from lib.data import make_source, resolve_vocab
from lib.parallel import pipeline, sharding
from lib.store.checkpoint import Checkpointer
from lib.store.claims import Claims, RunClaimed
from lib.store.runstore import RunDir
from lib.store.storage import default_data_root, is_url
from lib.store.tracking import Tracker
from lib.train.step import batch_spec, build_pack, build_steps, pack_key


class RunDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is marked failed with the step."""


class Preempted(RuntimeError):
    """SIGTERM arrived; every run of the pack checkpointed and can be relaunched to resume."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}  # run id -> where that run stopped


@dataclasses.dataclass(eq=False)
class _Run:
    """One run of a pack as the host sees it: its folder, data, tracker and where it stands."""

    cfg: RunConfig
    run: RunDir
    run_id: str
    source: Any
    tracker: Tracker | None = None
    ckpt: Checkpointer | None = None
    step: int = 0  # updates applied
    last: dict = dataclasses.field(default_factory=dict)  # the latest logged metrics (and eval loss)
    log_step: int = 0  # the step, wall time and non-training time of the last metrics row
    log_time: float = 0.0
    log_spent: float = 0.0
    result: Any = None  # once it left the pack: its summary, or the RunDiverged it failed with
    restored_from_trunk: bool | None = None  # a branch: started from its trunk's checkpoint (False: from step 0)


def train(cfg: RunConfig, workdir, devices: Sequence[jax.Device] | None = None) -> dict:
    """Train (or resume, or skip if finished) the run `cfg` in `workdir`; returns its summary."""
    [result] = train_pack([cfg], [workdir], devices)
    if isinstance(result, (RunDiverged, RunClaimed)):
        raise result
    return result


def train_pack(
    cfgs: Sequence[RunConfig],
    workdirs: Sequence,
    devices: Sequence[jax.Device] | None = None,
    spread: bool | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    chunk: int | None | str = "auto",
) -> list:
    """Train the runs `cfgs` (one `lib.train.step.pack_key`) together, run i into `workdirs[i]`.

    Returns each run's summary, or the RunDiverged it failed with (marked failed with its step;
    the others go on). A finished run is not retrained (its summary comes back as it is); the
    others resume from their own checkpoints. SIGTERM: every run checkpoints, is marked
    interrupted, and Preempted is raised. Any other error marks every unfinished run failed and
    propagates. `on_done(i, result)` is called as run i leaves the pack. `spread`: put the run
    axis on the mesh's data axis (True), replicate it (False), or choose (None; see `_placement`).
    `chunk`: runs computed at once (lib.train.step.build_pack; "auto": all, or one by one on CPU).
    """
    # ---- setup --------------------------------------------------------------------------------
    devices = list(jax.devices() if devices is None else devices)
    sources: dict = {}  # runs with the same data config share one source (a batch is read once)
    runs = [_open(cfg, workdir, devices, sources) for cfg, workdir in zip(cfgs, workdirs, strict=True)]
    todo = [r for r in runs if r.result is None]
    if len({pack_key(r.cfg) for r in todo}) > 1:
        raise ConfigError("train_pack: these runs differ in what a pack shares (model, data shape, optimizer kind, mesh); "
                          "group them with lib.train.step.pack_key")
    claims = Claims()

    def done(r: _Run, result) -> None:
        r.result = result
        claims.release(r.run.path)  # the run left the pack: another launcher may look at it now
        if on_done is not None:
            on_done(runs.index(r), result)

    try:
        todo = _claim(todo, claims, done)  # a run another process holds is not trained here
        for r in todo:
            r.run.write_config(r.cfg.to_dict())
            r.run.set_state("running", host=socket.gethostname(), pid=os.getpid(), pack=len(todo))  # who trains it, for ops
            r.tracker = Tracker(r.run, r.cfg, r.run_id, jax.process_index() == 0)
    except BaseException:
        claims.release_all()
        raise

    try:
        if todo:
            _train_loop(todo, devices, spread, chunk, done)
    except Preempted as e:
        for r in todo:
            if r.result is None:
                r.run.set_state("interrupted", reason=e.reasons.get(r.run_id, str(e)))
                r.tracker.finish()
        raise
    except BaseException as e:
        for r in todo:
            if r.result is None:
                r.run.set_state("failed", reason=f"{type(e).__name__}: {e}")
                r.tracker.finish(failed=True)
        raise
    finally:
        claims.release_all()
    return [r.result for r in runs]


def _claim(todo: list[_Run], claims: Claims, done: Callable[[_Run, Any], None]) -> list[_Run]:
    """Claim each run (lib/store/claims.py); the runs this process now holds and must train. A run
    held by a live process leaves with RunClaimed, as does one another process finished since _open
    (with its summary).
    Several processes: process 0 claims and tells the others."""
    held = [claims.acquire(r.run.path) if r.run.writer else None for r in todo]
    mine = np.array([h is None for h in held])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        mine = np.asarray(multihost_utils.broadcast_one_to_all(mine))
    for message in claims.messages:
        print(message, file=sys.stderr, flush=True)
    claims.messages.clear()
    out = []
    for r, h, ok in zip(todo, held, mine):
        if not ok:
            done(r, RunClaimed(r.run.path, h))
        elif r.run.finished():  # by another process, since _open
            done(r, RunClaimed(r.run.path, None, summary=r.run.summary()))
        else:
            out.append(r)
    return out


def _open(cfg: RunConfig, workdir, devices, sources: dict) -> _Run:
    """Validate `cfg`, find its data, check its folder belongs to it; a finished run comes back done."""
    validate(cfg, len(devices))
    workdir = os.fspath(workdir)
    if not is_url(workdir):
        workdir = os.path.abspath(workdir)  # orbax needs absolute paths
    data_root = cfg.data.data_root or default_data_root(workdir)  # local even for gs://
    key = (json.dumps(dataclasses.asdict(cfg.data), sort_keys=True), data_root)
    if key not in sources:
        sources[key] = make_source(cfg.data, data_root=data_root)
    source = sources[key]
    cfg = validate(resolve_model_input(resolve_vocab(cfg, source)), len(devices))
    run = RunDir(workdir, writer=jax.process_index() == 0)
    r = _Run(cfg, run, os.path.basename(os.path.normpath(workdir)), source)
    _check_same_run(run, cfg)
    _check_same_data(run, source)
    if run.finished():  # a run whose record is missing or corrupt is completed from its checkpoint instead
        if cfg.tracking.console and run.writer:
            print(f"[{r.run_id}] already finished; nothing to do", flush=True)
        r.result = run.summary()
    return r


def _train_loop(runs: list[_Run], devices, spread: bool | None, chunk, done: Callable[[_Run, Any], None]) -> None:
    """Train `runs` (none finished yet) to their ends; `done(run, result)` as each one leaves."""
    cfg = runs[0].cfg
    mesh = sharding.make_mesh(cfg.mesh, devices)
    pi, pc = jax.process_index(), jax.process_count()
    device_kind = devices[0].device_kind
    spent = {"compile": 0.0, "eval": 0.0, "checkpoint": 0.0}  # time inside the loop that is not training

    def timed(kind: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        spent[kind] += time.perf_counter() - t0
        return out

    with sharding.activate(mesh), contextlib.ExitStack() as exits:
        # ---- state: init or resume each run from its own checkpoint -----------------------------
        t0 = time.perf_counter()
        lone = build_steps(cfg, mesh)  # one run's init and layout: every run of the pack has them
        states = {}
        for r in runs:
            r.ckpt = exits.enter_context(Checkpointer(r.run.checkpoint_dir, r.cfg.train.keep_checkpoints, keep_steps=r.cfg.train.keep_steps))
            latest = r.ckpt.latest_step()
            if latest is None and r.cfg.train.trunk:  # a branch's first launch: its trunk's state at branch_start
                states[r] = _restore_trunk(r, lone)
            elif latest is None:
                states[r] = lone.init(jax.random.key(r.cfg.train.seed))
                r.run.truncate_metrics(0)  # rows a run killed before its first checkpoint logged
            else:
                states[r] = r.ckpt.restore(latest, lone.abstract_state)
                r.run.truncate_metrics(latest)
                r.tracker.say(f"resumed from checkpoint at step {latest}")
            r.step = r.log_step = int(jax.device_get(states[r].step))
        init_s = time.perf_counter() - t0
        loop_start = time.perf_counter()
        for r in runs:
            r.log_time = loop_start

        def finish(r: _Run) -> None:
            """A run that reached its last step: wait for its checkpoint, write its summary, mark it done."""
            if not r.last:  # resumed at the very end (killed before its summary): its last logged row, no training
                last = next((m for m in reversed(r.run.metrics()) if m.get("step") == r.step), {})
                r.last.update({k: v for k, v in last.items() if k.startswith(("train_", "eval_")) and v is not None})
            if "eval_loss" not in r.last:  # no eval logged at the end: evaluate the restored state
                evaluate, _ = make_evaluate(r.cfg, lone, r.source, mesh)
                r.last.update(timed("eval", evaluate, states[r]))
            timed("checkpoint", r.ckpt.wait)
            train_s = time.perf_counter() - loop_start - sum(spent.values())
            summary = _summary(r, device_kind, len(devices), init_s, train_s, spent)
            r.run.write_summary(summary)
            r.run.set_state("done")
            r.tracker.finish(summary)
            done(r, summary)

        for r in runs:
            if r.step >= r.cfg.train.steps:
                finish(r)
        if all(r.result is not None for r in runs):  # every run was already at its end: nothing to train
            return

        # ---- the loop: each tick advances every run of the pack by one step ---------------------
        stop = _PreemptionFlag()
        pack, slots, state, pending = None, [], None, None
        with stop.installed():
            while True:
                active = [r for r in runs if r.result is None]
                if [s for s in slots if s is not None] != active:  # first tick, or a run left: (re)form the pack
                    if pending is not None:  # the last tick's losses first: a run that diverged there leaves too
                        _read(pending, done)
                        pending = None
                        continue
                    if not active:
                        break
                    if pack is not None:
                        states = {r: pack.take(state, slots.index(r)) for r in active}
                    t0 = time.perf_counter()
                    placed, n_slots = _placement(len(active), mesh, spread)
                    slots = active + [None] * (n_slots - len(active))  # padding: computed, never applied
                    pack = build_pack([(r or active[0]).cfg for r in slots], mesh, placed, chunk)
                    state = pack.stack(*(states[r or active[0]] for r in slots))
                    states.clear()
                    step_fn = pack.train_step.lower(*_abstract_args(pack, state, cfg, mesh)).compile()
                    evaluate = _pack_evaluate(cfg, pack, slots, mesh)
                    advance = (None, None)
                    spent["compile"] += time.perf_counter() - t0
                    tracker_line = f"compiled a pack of {len(active)} in {time.perf_counter() - t0:.1f}s" if n_slots > 1 else \
                        f"compiled train step in {time.perf_counter() - t0:.1f}s"
                    for r in active:
                        r.tracker.say(f"{tracker_line}; training steps {r.step}..{r.cfg.train.steps} on {len(devices)} x {device_kind}")

                # Runs step in lockstep: one resumed from a later checkpoint waits for the others.
                low = min(r.step for r in active)
                moving = [r for r in active if r.step == low]
                mask = np.array([r in moving for r in slots])
                if advance[0] is None or not np.array_equal(mask, advance[0]):
                    advance = (mask, sharding.replicated_array(mask, mesh))
                batch = pack.batch(_rows(slots, lambda r: r.source.batch(r.step, pi, pc), lambda r: (id(r.source), r.step)), mesh)
                state, metrics = step_fn(state, advance[1], batch, pack.hparams)
                if pending is not None:  # the tick before: a non-finite loss fails its run
                    _read(pending, done)
                for r in moving:
                    r.step += 1
                pending = (slots, {r: r.step for r in moving}, metrics)
                moving = [r for r in moving if r.result is None]
                preempt = stop.requested(low + 1)

                logs = [r for r in moving if _due(r, "log") or _due(r, "eval")]
                saves = [r for r in moving if _due(r, "checkpoint") or preempt]
                if logs or saves:  # read this tick's metrics now: nothing is logged or saved unchecked
                    values = _read(pending, done)
                    pending = None
                    logs, saves = [r for r in logs if r.result is None], [r for r in saves if r.result is None]
                    scores = timed("eval", evaluate, state) if any(_due(r, "eval") for r in logs) else None
                    for r in logs:
                        row = _row(r, values[r], spent, device_kind, len(devices))
                        if _due(r, "eval"):  # eval_loss (and eval_error for classify)
                            mine = {k: float(v[slots.index(r)]) for k, v in scores.items()}
                            row.update(mine)
                            r.last.update(mine)
                        r.tracker.log(row)
                    for r in saves:
                        timed("checkpoint", r.ckpt.save, r.step, pack.take(state, slots.index(r)), force=True)
                for r in moving:
                    if r.result is None and r.step == r.cfg.train.steps:
                        finish(r)
                if preempt:
                    stopping = [r for r in active if r.result is None]
                    for r in stopping:
                        if r not in saves:  # held back this tick: checkpoint where it stands
                            timed("checkpoint", r.ckpt.save, r.step, pack.take(state, slots.index(r)), force=True)
                        r.ckpt.wait()
                    reasons = {r.run_id: f"SIGTERM: checkpointed at step {r.step} of {r.cfg.train.steps}; relaunch to resume" for r in stopping}
                    message = next(iter(reasons.values())) if len(reasons) == 1 else f"SIGTERM: checkpointed {len(reasons)} runs; relaunch to resume"
                    raise Preempted(message, reasons)


def _restore_trunk(r: _Run, lone):
    """A branch with no checkpoint of its own: its trunk's state at branch_start (the trunk's
    folder is a sibling of the branch's), and the trunk's metrics rows up to there, so its curve
    starts at step 0. The branch's schedule equals the trunk's constant rate before branch_start,
    so where that checkpoint is missing (deleted, or the trunk not there yet) the branch trains
    the prefix itself from step 0: the same numbers, bit for bit, at the prefix's cost again."""
    t = r.cfg.train
    trunk_dir = RunDir(os.path.join(os.path.dirname(str(r.run.path).rstrip("/")), t.trunk), writer=False)
    status = trunk_dir.status() or {}
    if status.get("state") == "failed" and status.get("diverged"):
        raise RunDiverged(f"trunk {t.trunk} diverged: {status.get('reason', '')}")
    steps = []
    if trunk_dir.checkpoint_dir.exists():
        with Checkpointer(trunk_dir.checkpoint_dir, 1, read_only=True) as trunk_ckpt:
            steps = trunk_ckpt.all_steps()
            if t.branch_start in steps:
                state = trunk_ckpt.restore(t.branch_start, lone.abstract_state)
                r.run.truncate_metrics(0)
                r.run.append_metrics([row for row in trunk_dir.metrics() if row.get("step", 0) <= t.branch_start])
                r.restored_from_trunk = True
                r.tracker.say(f"branch of {t.trunk}: restored its checkpoint at step {t.branch_start}")
                return state
    r.restored_from_trunk = False
    r.tracker.say(f"branch of {t.trunk}: no trunk checkpoint at step {t.branch_start} (it has {steps}); "
                  f"training the prefix from step 0 (the same numbers as the trunk's)")
    r.run.truncate_metrics(0)
    return lone.init(jax.random.key(t.seed))


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


def _due(r: _Run, what: str) -> bool:
    t, done = r.cfg.train, r.step
    every = {"log": t.log_every, "eval": t.eval_every, "checkpoint": t.checkpoint_every}[what]
    return done % every == 0 or done == t.steps or (what == "checkpoint" and done in t.keep_steps)


def _read(pending, done: Callable[[_Run, Any], None]) -> dict:
    """Fetch a tick's metrics: {run: its values}; a run whose loss is not finite leaves the pack, failed."""
    slots, moved, metrics = pending
    values = jax.device_get(metrics)
    out = {}
    for i, r in enumerate(slots):
        if r is None or r not in moved or r.result is not None:
            continue
        v = {k: float(x[i]) for k, x in values.items()}
        if math.isfinite(v["train_loss"]):
            out[r] = v
            continue
        message = f"diverged: non-finite loss ({v['train_loss']}) at step {moved[r]}"
        r.run.set_state("failed", reason=message, diverged=True, step=moved[r])
        r.tracker.say(message)
        r.tracker.finish(failed=True)
        done(r, RunDiverged(message))
    return out


def _row(r: _Run, values: dict, spent: dict, device_kind: str, n_devices: int) -> dict:
    """The metrics row of run r at its current step (step time: the pack's, per tick, less eval/ckpt/compile).
    D is counted in the task's units (lib.config.unit_name): "tokens", or "images" for classify."""
    cfg, now, done = r.cfg, time.perf_counter(), r.step
    unit = unit_name(cfg)
    units_per_step = cfg.data.global_batch * units_per_row(cfg)
    flops_per_unit = flops_lib.flops_per_token(cfg.model, units_per_row(cfg), cfg.train.flops_convention)
    training = now - r.log_time - (sum(spent.values()) - r.log_spent)
    step_time = training / max(done - r.log_step, 1)
    r.last = dict(values)
    row = {
        "step": done,
        unit: done * units_per_step,
        "flops": done * units_per_step * flops_per_unit,
        **values,
        "step_time_s": step_time,
        f"{unit}_per_s": units_per_step / step_time,
        "flops_per_s": units_per_step * flops_per_unit / step_time,
        "mfu": flops_lib.mfu(units_per_step * flops_per_unit / step_time, device_kind, n_devices),
    }
    if r.source.epoch(done) is not None:
        row["epoch"] = r.source.epoch(done)
    r.log_step, r.log_time, r.log_spent = done, now, sum(spent.values())
    return row


def _summary(r: _Run, device_kind: str, n_devices: int, init_s: float, train_s: float, spent: dict) -> dict:
    """The run's summary. D is stored under its unit's key -- "tokens" (lm), "images" (classify) --
    which "units" names; flops per unit under "flops_per_token" / "flops_per_image"."""
    cfg, t, source = r.cfg, r.cfg.train, r.source
    unit, per_row = unit_name(cfg), units_per_row(cfg)
    units_per_step = cfg.data.global_batch * per_row
    flops_per_unit = flops_lib.flops_per_token(cfg.model, per_row, t.flops_convention)
    units = t.steps * units_per_step
    classify = task_kind(cfg) == "classify"
    return {
        "run_id": r.run_id,
        "eval_loss": r.last.get("eval_loss"),
        "train_loss": r.last.get("train_loss"),
        **({"eval_error": r.last.get("eval_error"), "train_error": r.last.get("train_error")} if classify else {}),
        "params": flops_lib.param_counts(cfg.model),
        **({"units": unit} if classify else {}),  # absent: tokens (every run recorded before images)
        unit: units,
        "flops": {"value": units * flops_per_unit, "convention": t.flops_convention},
        f"flops_per_{unit[:-1]}": flops_per_unit,
        # classify: chinchilla only (6N and Kaplan count a weight once per image, not once per position)
        "flops_all_conventions": {c: units * flops_lib.flops_per_token(cfg.model, per_row, c) for c in flops_lib.CONVENTIONS
                                  if not classify or c == "chinchilla"},
        # lm: best mean loss over a row of seq_len tokens; classify: the Bayes cross-entropy (nats/image)
        "entropy_floor": getattr(source, "entropy_floor", None),
        "entropy_rate": getattr(source, "entropy_rate", None),  # the source's rate (long windows), when known
        # the exponents the data's own theory predicts, and the floor's lower margin at this run's D
        # (lib/data/synthetic.py's docstring); None where the source has no theory
        "theory": {**source.theory(), "never_seen_bound": source.never_seen_bound(units)} if hasattr(source, "theory") else None,
        **({"bayes_error": getattr(source, "bayes_error", None)} if classify else {}),  # the best top-1 error
        f"eval_{unit}": eval_rows(t.eval_tokens, per_row) * per_row,  # held-out units behind eval_loss
        "sweep": cfg.sweep or None,
        "budget": cfg.budget or None,
        "steps": t.steps,
        **({"image_shape": list(source.image_shape)} if classify else {"seq_len": cfg.data.seq_len}),
        "global_batch": cfg.data.global_batch,
        # Timings are the pack's (shared by its runs) up to the moment this run finished.
        "init_time_s": init_s,  # state init (with its compile) or checkpoint restore
        "compile_time_s": spent["compile"],  # the train step
        "train_time_s": train_s,  # the loop, less compile, eval and checkpoint time
        "eval_time_s": spent["eval"],
        "checkpoint_time_s": spent["checkpoint"],
        "device_kind": device_kind,
        "n_devices": n_devices,
        "pipeline": _pipeline_summary(cfg, n_devices),
        "data": source.describe(),
        "epochs": source.epoch(t.steps),
        # Trunks and branches (lib/sweeps/cooldowns.py): a branch's flops above are its point's whole
        # compute (trunk prefix + branch), as a from-scratch run's; a trunk is no point to fit.
        **({"trunk": t.trunk, "branch_start": t.branch_start, "branch_restored": r.restored_from_trunk} if t.trunk else {}),
        **({"role": "trunk", "branch_points": list(t.keep_steps)} if t.keep_steps and cfg.optimizer.schedule == "constant" else {}),
    }


def _pipeline_summary(cfg: RunConfig, n_devices: int) -> dict:
    """The layer stack's schedule: stages S, microbatches M, and its bubble (S-1)/(M+S-1) -- the
    share of each stage's time idle (0 without a pipeline)."""
    stages, micro = resolve_axis_sizes(cfg.mesh, n_devices)[0], cfg.train.microbatches
    return {"schedule": pipeline.SCHEDULE if micro else None, "stages": stages, "microbatches": micro,
            "bubble_fraction": pipeline.bubble_fraction(stages, micro)}


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


def _check_same_run(run: RunDir, cfg: RunConfig) -> None:
    """A workdir belongs to one run: resuming it with different numbers would mix two runs."""
    existing = run.config()
    if existing is None:
        return
    old = RunConfig.from_dict(existing)
    if old.content_hash() != cfg.content_hash():
        changed = _diff(old.to_dict(), cfg.to_dict())
        raise ConfigError(
            f"workdir {run.path} holds a run with a different config ({', '.join(changed[:5])}); "
            "use a new --workdir, or delete the old one to start over"
        )


def _check_same_data(run: RunDir, source) -> None:
    """Same config but a rebuilt token store (the corpus files changed) means different token ids."""
    described = source.describe()
    recorded = (run.summary() or {}).get("data") or run.read_extra("data.json")
    if recorded and recorded.get("store_key") != described.get("store_key"):
        raise ConfigError(
            f"data: the token store changed since this run started ({recorded.get('store_key')} -> "
            f"{described.get('store_key')}: the corpus files differ); use a new --workdir for the new data"
        )
    if not recorded:
        run.write_extra("data.json", described)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in a:
        if isinstance(a[k], dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a[k] != b[k]:
            out.append(f"{prefix}{k}: {a[k]!r} -> {b[k]!r}")
    return out


class _PreemptionFlag:
    """SIGTERM -> checkpoint at the end of the current step, then stop cleanly.

    One process: a Python SIGTERM handler sets a flag. Several processes: all must stop at the
    same step (checkpoints are collective), so JAX's preemption service (which catches SIGTERM
    itself) decides through `reached_preemption_sync_point`.
    """

    def __init__(self):
        self._event = threading.Event()
        self._multi = jax.process_count() > 1

    def requested(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()

    @contextlib.contextmanager
    def installed(self):
        if self._multi or threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, old)
