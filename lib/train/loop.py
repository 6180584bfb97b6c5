"""The training loop around the pure steps of `lib.train.step`.

`train(cfg, workdir)` trains one run; `train_pack(cfgs, workdirs)` trains K runs of one shape as
one vmapped program (`lib.train.step.Pack`), each into its own folder exactly as it would be alone.
A single run is a pack of one: the same loop, and for K = 1 the compiled step is a lone run's
program, bit for bit.

Read top to bottom: setup (validate, data, each run's folder, claims) -> `_train_loop`: the pack
runtime (lib/train/runtime.py: init, resume or start from another run's checkpoint; the lockstep
tick; re-forming the pack when a run leaves) and, after each tick, the hooks of the runs that are
due, each with its cadence (eval, log, checkpoint, finish -> lib/train/summary.py), and SIGTERM
(every run checkpoints, then Preempted). A run that diverges or finishes leaves the pack, which goes
on with the others. The runtime dispatches tick n and only then reads tick n-1's metrics, so the
host never stalls the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
from lib.config import ConfigError, RunConfig, resolve_model_input, unit_name, units_per_row
from lib.config_rules import validate
from lib.data import make_source, resolve_vocab
from lib.store.claims import Claims, RunClaimed
from lib.store.runstore import RunDir
from lib.store.storage import default_data_root, is_url
from lib.store.tracking import Tracker
from lib.train.environment import numerics_environment
from lib.train.runtime import InitFrom, PackRun, PackRuntime, Preempted, RunDiverged, make_evaluate
from lib.train.step import pack_key
from lib.train.summary import run_summary

__all__ = ["Hook", "InitFrom", "Preempted", "RunDiverged", "make_evaluate", "train", "train_pack"]


def train(cfg: RunConfig, workdir, devices: Sequence[jax.Device] | None = None, init_from: InitFrom | None = None) -> dict:
    """Train (or resume, or skip if finished) the run `cfg` in `workdir`; returns its summary.
    `init_from`: on its first launch, start from another run's checkpoint (lib.train.runtime.InitFrom)."""
    [result] = train_pack([cfg], [workdir], devices, init_from=[init_from])
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
    init_from: Sequence[InitFrom | None] | None = None,
) -> list:
    """Train the runs `cfgs` (one `lib.train.step.pack_key`) together, run i into `workdirs[i]`.

    Returns each run's summary, or the RunDiverged it failed with (marked failed with its step;
    the others go on). A finished run is not retrained (its summary comes back as it is); the
    others resume from their own checkpoints. SIGTERM: every run checkpoints, is marked
    interrupted, and Preempted is raised. Any other error marks every unfinished run failed and
    propagates. `on_done(i, result)` is called as run i leaves the pack. `spread`: put the run
    axis on the mesh's data axis (True), replicate it (False), or choose (None; see `_placement`).
    `chunk`: runs computed at once (lib.train.step.build_pack; "auto": all, or one by one on CPU).
    `init_from[i]`: run i's dependency, if any -- on its first launch it starts from that run's
    checkpoint (lib.train.runtime.InitFrom; a cooldown branch from its trunk's).
    """
    # ---- setup --------------------------------------------------------------------------------
    devices = list(jax.devices() if devices is None else devices)
    sources: dict = {}  # runs with the same data config share one source (a batch is read once)
    init_from = list(init_from or [None] * len(cfgs))
    runs = [_open(cfg, workdir, devices, sources, init) for cfg, workdir, init in zip(cfgs, workdirs, init_from, strict=True)]
    todo = [r for r in runs if r.result is None]
    if len({pack_key(r.cfg) for r in todo}) > 1:
        raise ConfigError("train_pack: these runs differ in what a pack shares (model, data shape, optimizer kind, mesh); "
                          "group them with lib.train.step.pack_key")
    claims = Claims()

    def done(r: PackRun, result) -> None:
        r.result = result
        claims.release(r.run.path)  # the run left the pack: another launcher may look at it now
        if on_done is not None:
            on_done(runs.index(r), result)

    try:
        todo = _claim(todo, claims, done)  # a run another process holds is not trained here
        where = numerics_environment(devices[0])["key"]  # a resume elsewhere rounds otherwise: each attempt's is kept
        for r in todo:
            r.run.write_config(r.cfg.to_dict())
            r.run.set_state("running", host=socket.gethostname(), pid=os.getpid(), pack=len(todo), environment=where)  # who trains it, where
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


def _claim(todo: list[PackRun], claims: Claims, done: Callable[[PackRun, Any], None]) -> list[PackRun]:
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


def _open(cfg: RunConfig, workdir, devices, sources: dict, init_from: InitFrom | None = None) -> PackRun:
    """Validate `cfg`, find its data, check its folder belongs to it; a finished run comes back done."""
    validate(cfg, len(devices))
    workdir = os.fspath(workdir)
    if not is_url(workdir):
        workdir = os.path.abspath(workdir)  # one folder whatever the cwd later (Checkpointer absolutises its own path for orbax)
    data_root = cfg.data.data_root or default_data_root(workdir)  # local even for gs://
    key = (json.dumps(dataclasses.asdict(cfg.data), sort_keys=True), data_root)
    if key not in sources:
        sources[key] = make_source(cfg.data, data_root=data_root)
    source = sources[key]
    cfg = validate(resolve_model_input(resolve_vocab(cfg, source)), len(devices))
    run = RunDir(workdir, writer=jax.process_index() == 0)
    if cfg.train.trunk and init_from is None:  # the hashed field alone would silently train the prefix from scratch
        raise ConfigError(f"train.trunk: run {os.path.basename(os.path.normpath(workdir))} is a cooldown branch of {cfg.train.trunk}; "
                          "train it through its sweep (scaling sweep), whose plan makes it start from its trunk, or pass "
                          "init_from=InitFrom(trunk run id, train.branch_start)")
    r = PackRun(cfg, run, os.path.basename(os.path.normpath(workdir)), source, init_from)
    _check_same_run(run, cfg)
    _check_same_data(run, source)
    if run.finished():  # a run whose record is missing or corrupt is completed from its checkpoint instead
        if cfg.tracking.console and run.writer:
            print(f"[{r.run_id}] already finished; nothing to do", flush=True)
        r.result = run.summary()
    return r


# ================================================================================================
# The loop: one lockstep tick of the pack, then the hooks of the runs that are due
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class Hook:
    """What is done for runs of the pack after a tick, for those due: a run is due at each multiple
    of one of `every(its train config)`, at the steps `at(its train config)`, and at its last step."""

    name: str
    fn: Callable[[list[PackRun]], None]
    every: Callable[[Any], tuple] = lambda t: ()
    at: Callable[[Any], tuple] = lambda t: ()

    def due(self, r: PackRun) -> bool:
        t = r.cfg.train
        return r.step == t.steps or any(r.step % e == 0 for e in self.every(t)) or r.step in self.at(t)


def _train_loop(runs: list[PackRun], devices, spread: bool | None, chunk, done: Callable[[PackRun, Any], None]) -> None:
    """Train `runs` (none finished yet) to their ends; `done(run, result)` as each one leaves."""
    with PackRuntime(runs, devices, spread, chunk, done) as rt:
        hooks = _hooks(rt)
        _finish(rt, [r for r in runs if r.step >= r.cfg.train.steps])  # resumed at the very end
        stop = _PreemptionFlag()
        with stop.installed():
            while rt.reform():  # the pack of the runs still training (re-formed when one left)
                step, moved = rt.tick()
                preempt = stop.requested(step)
                due = {h: [r for r in moved if h.due(r)] for h in hooks}
                if preempt or any(due.values()):
                    rt.read()  # this tick's metrics first: nothing is logged or saved unchecked
                for h in hooks:
                    h.fn([r for r in due[h] if r.result is None])
                if preempt:
                    _preempt(rt)


def _hooks(rt: PackRuntime) -> list[Hook]:
    """In order: eval (the pack's scores, once), log (a metrics row, with the scores when due),
    checkpoint (also kept at train.keep_steps), finish (the run's summary)."""
    return [
        Hook("eval", lambda due: _eval(rt, due), every=lambda t: (t.eval_every,)),
        Hook("log", lambda due: _log(rt, due), every=lambda t: (t.log_every, t.eval_every)),
        Hook("checkpoint", lambda due: [rt.save(r) for r in due], every=lambda t: (t.checkpoint_every,), at=lambda t: t.keep_steps),
        Hook("finish", lambda due: _finish(rt, due)),
    ]


def _eval(rt: PackRuntime, due: list[PackRun]) -> None:
    rt.scores = {}
    if due:
        scores = rt.timed("eval", rt.evaluate, rt.state)
        rt.scores = {r: {k: float(v[rt.slots.index(r)]) for k, v in scores.items()} for r in due}


def _log(rt: PackRuntime, due: list[PackRun]) -> None:
    for r in due:
        row = _row(r, rt.values[r], rt.spent, rt.device_kind, len(rt.devices))
        mine = rt.scores.get(r, {})  # eval_loss (and eval_error for classify), when evaluated now
        row.update(mine)
        r.last.update(mine)
        r.tracker.log(row)


def _finish(rt: PackRuntime, due: list[PackRun]) -> None:
    """Runs that reached their last step: wait for the checkpoint, write the summary, mark done."""
    for r in due:
        if not r.last:  # resumed at the very end (killed before its summary): its last logged row, no training
            last = next((m for m in reversed(r.run.metrics()) if m.get("step") == r.step), {})
            r.last.update({k: v for k, v in last.items() if k.startswith(("train_", "eval_")) and v is not None})
        if "eval_loss" not in r.last:  # no eval logged at the end: evaluate the restored state
            evaluate, _ = make_evaluate(r.cfg, rt.lone, r.source, rt.mesh)
            r.last.update(rt.timed("eval", evaluate, rt.take(r)))
        rt.timed("checkpoint", r.ckpt.wait)
        summary = run_summary(r, rt).to_dict()
        r.run.write_summary(summary)
        r.run.set_state("done")
        r.tracker.finish(summary)
        rt.done(r, summary)


def _preempt(rt: PackRuntime) -> None:
    """SIGTERM: every run still in the pack checkpoints where it stands (unless it just did), then Preempted."""
    stopping = rt.active()
    for r in stopping:
        if r not in rt.saved:  # held back this tick (lockstep), or not due
            rt.save(r)
        r.ckpt.wait()
    reasons = {r.run_id: f"SIGTERM: checkpointed at step {r.step} of {r.cfg.train.steps}; relaunch to resume" for r in stopping}
    message = next(iter(reasons.values())) if len(reasons) == 1 else f"SIGTERM: checkpointed {len(reasons)} runs; relaunch to resume"
    raise Preempted(message, reasons)


def _row(r: PackRun, values: dict, spent: dict, device_kind: str, n_devices: int) -> dict:
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
        "flops": flops_lib.run_flops(cfg, done),
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
