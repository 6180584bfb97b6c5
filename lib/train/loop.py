"""The `train(cfg, workdir)` loop around the pure steps of `lib.train.step`.

Read top to bottom: setup (validate, data, mesh, model) -> state (init or resume) -> compiled
steps -> the loop (log, eval, checkpoint, preemption) -> summary. The loop dispatches step n and
only then reads step n-1's metrics, so the host never stalls the device.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
from typing import Sequence

import jax
import numpy as np

from lib import flops as flops_lib
from lib.config import ConfigError, RunConfig, eval_rows
from lib.data import make_source, resolve_vocab
from lib.parallel import sharding
from lib.store.checkpoint import Checkpointer
from lib.store.runstore import RunDir
from lib.store.storage import default_data_root, is_url
from lib.store.tracking import Tracker
from lib.train.step import build_steps


class RunDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is marked failed with the step."""


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and the run can be relaunched to resume."""


def train(cfg: RunConfig, workdir, devices: Sequence[jax.Device] | None = None) -> dict:
    """Train (or resume, or skip if finished) the run `cfg` in `workdir`; returns its summary."""
    # ---- setup --------------------------------------------------------------------------------
    devices = list(jax.devices() if devices is None else devices)
    cfg.validate(len(devices))
    workdir = os.fspath(workdir)
    if not is_url(workdir):
        workdir = os.path.abspath(workdir)  # orbax needs absolute paths
    source = make_source(cfg.data, data_root=cfg.data.data_root or default_data_root(workdir))  # local even for gs://
    cfg = resolve_vocab(cfg, source).validate(len(devices))
    is_writer = jax.process_index() == 0
    run = RunDir(workdir, writer=is_writer)
    run_id = os.path.basename(os.path.normpath(workdir))
    _check_same_run(run, cfg)
    _check_same_data(run, source)
    if run.state() == "done" and run.summary() is not None:
        if cfg.tracking.console and is_writer:
            print(f"[{run_id}] already finished; nothing to do", flush=True)
        return run.summary()
    run.write_config(cfg.to_dict())
    run.set_state("running", host=socket.gethostname(), pid=os.getpid())  # who is training it, for ops
    tracker = Tracker(run, cfg, run_id, is_writer)
    try:
        summary = _train_loop(cfg, run, run_id, source, devices, tracker)
    except RunDiverged as e:
        run.set_state("failed", reason=str(e))
        tracker.finish(failed=True)
        raise
    except Preempted as e:
        run.set_state("interrupted", reason=str(e))
        tracker.finish()
        raise
    except BaseException as e:
        run.set_state("failed", reason=f"{type(e).__name__}: {e}")
        tracker.finish(failed=True)
        raise
    run.write_summary(summary)
    run.set_state("done")
    tracker.finish(summary)
    return summary


def _train_loop(cfg: RunConfig, run: RunDir, run_id: str, source, devices, tracker: Tracker) -> dict:
    t = cfg.train
    mesh = sharding.make_mesh(cfg.mesh, devices)
    pi, pc = jax.process_index(), jax.process_count()
    tokens_per_step = cfg.data.global_batch * cfg.data.seq_len
    flops_per_token = flops_lib.flops_per_token(cfg.model, cfg.data.seq_len, t.flops_convention)
    device_kind = devices[0].device_kind

    with sharding.activate(mesh), Checkpointer(run.checkpoint_dir, t.keep_checkpoints) as ckpt:
        # ---- state: init or resume ----------------------------------------------------------
        t0 = time.perf_counter()
        steps = build_steps(cfg, mesh)
        latest = ckpt.latest_step()
        if latest is None:
            state = steps.init(jax.random.key(t.seed))
            run.truncate_metrics(0)  # rows a run killed before its first checkpoint logged
        else:
            state = ckpt.restore(latest, steps.abstract_state)
            run.truncate_metrics(latest)
            tracker.say(f"resumed from checkpoint at step {latest}")
        start = int(jax.device_get(state.step))
        init_s = time.perf_counter() - t0

        # ---- compile ----------------------------------------------------------------------------
        first_batch = sharding.global_batch(source.batch(start, pi, pc), mesh)
        t0 = time.perf_counter()
        step_fn = steps.train_step.lower(state, first_batch, steps.horizon).compile()
        compile_s = time.perf_counter() - t0
        tracker.say(f"compiled train step in {compile_s:.1f}s; training steps {start}..{t.steps} on {len(devices)} x {device_kind}")

        spent = {"eval": 0.0, "checkpoint": 0.0}  # time inside the loop that is not training

        def timed(kind: str, fn, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[kind] += time.perf_counter() - t0
            return out

        evaluate, eval_tokens = make_evaluate(cfg, steps, source, mesh)
        held_out = getattr(source, "n_eval_windows", None)  # finite held-out sets (text)
        if held_out is not None and held_out * cfg.data.seq_len < eval_tokens:
            tracker.say(f"warning: train.eval_tokens asks for {eval_tokens // cfg.data.seq_len} eval rows but the held-out set "
                        f"has {held_out} windows, so rows repeat; raise data.holdout_fraction or lower train.eval_tokens")

        # ---- the loop ---------------------------------------------------------------------------
        stop = _PreemptionFlag()
        pending = None  # (completed_steps, metrics on device) of the step before
        loop_start = last_log_time = time.perf_counter()
        last_log_step, spent_at_log, last = start, 0.0, {}
        with stop.installed():
            for step in range(start, t.steps):
                batch = first_batch if step == start else sharding.global_batch(source.batch(step, pi, pc), mesh)
                state, metrics = step_fn(state, batch, steps.horizon)
                if pending is not None:
                    last = _check_finite(*pending)
                done = step + 1
                pending = (done, metrics)
                is_last = done == t.steps
                if done % t.log_every == 0 or is_last or done % t.eval_every == 0:
                    last = _check_finite(*pending)
                    training = time.perf_counter() - last_log_time - (sum(spent.values()) - spent_at_log)
                    step_time = training / max(done - last_log_step, 1)
                    row = {
                        "step": done,
                        "tokens": done * tokens_per_step,
                        "flops": done * tokens_per_step * flops_per_token,
                        **last,
                        "step_time_s": step_time,
                        "tokens_per_s": tokens_per_step / step_time,
                        "flops_per_s": tokens_per_step * flops_per_token / step_time,
                        "mfu": flops_lib.mfu(tokens_per_step * flops_per_token / step_time, device_kind, len(devices)),
                    }
                    if source.epoch(done) is not None:
                        row["epoch"] = source.epoch(done)
                    if done % t.eval_every == 0 or is_last:
                        row["eval_loss"] = last["eval_loss"] = timed("eval", evaluate, state.params)
                    tracker.log(row)
                    last_log_time, last_log_step, pending = time.perf_counter(), done, None
                    spent_at_log = sum(spent.values())
                if done % t.checkpoint_every == 0 or is_last or stop.requested(done):
                    timed("checkpoint", ckpt.save, done, state, force=True)
                if stop.requested(done) and not is_last:
                    ckpt.wait()
                    raise Preempted(f"SIGTERM: checkpointed at step {done} of {t.steps}; relaunch to resume")
            if pending is not None:
                last = _check_finite(*pending)
            timed("checkpoint", ckpt.wait)
            train_time = time.perf_counter() - loop_start - sum(spent.values())

        if "eval_loss" not in last:  # resumed at the very end: evaluate the restored state
            last["eval_loss"] = timed("eval", evaluate, state.params)

    counts = flops_lib.param_counts(cfg.model)
    tokens = t.steps * tokens_per_step
    return {
        "run_id": run_id,
        "eval_loss": last.get("eval_loss"),
        "train_loss": last.get("train_loss"),
        "params": counts,
        "tokens": tokens,
        "flops": {"value": tokens * flops_per_token, "convention": t.flops_convention},
        "flops_per_token": flops_per_token,
        "flops_all_conventions": {c: tokens * flops_lib.flops_per_token(cfg.model, cfg.data.seq_len, c) for c in flops_lib.CONVENTIONS},
        "entropy_floor": getattr(source, "entropy_floor", None),  # best mean loss over a row of seq_len tokens
        "entropy_rate": getattr(source, "entropy_rate", None),  # the source's rate (long windows), when known
        "eval_tokens": eval_tokens,  # held-out tokens behind eval_loss
        "sweep": cfg.sweep or None,
        "budget": cfg.budget or None,
        "steps": t.steps,
        "seq_len": cfg.data.seq_len,
        "global_batch": cfg.data.global_batch,
        "init_time_s": init_s,  # state init (with its compile) or checkpoint restore
        "compile_time_s": compile_s,  # the train step
        "train_time_s": train_time,  # the loop, less eval and checkpoint time
        "eval_time_s": spent["eval"],
        "checkpoint_time_s": spent["checkpoint"],
        "device_kind": device_kind,
        "n_devices": len(devices),
        "data": source.describe(),
        "epochs": source.epoch(t.steps),
    }


def make_evaluate(cfg: RunConfig, steps, source, mesh):
    """`(evaluate(params) -> mean loss over the run's eval set, number of held-out tokens in it)`.

    Every run of a sweep scores the same held-out rows whatever its batch: rows 0..n-1 of the eval
    stream, n = ceil(eval_tokens / seq_len), in equal chunks of gcd(n, global_batch) rows (one
    compiled shape; a multiple of the data-parallel size since validate() checks that both n and
    global_batch are), so the mean of the chunk means is the mean over all n * seq_len tokens.
    """
    pi, pc = jax.process_index(), jax.process_count()
    n_rows = eval_rows(cfg.train.eval_tokens, cfg.data.seq_len)
    chunk = math.gcd(n_rows, cfg.data.global_batch)

    def evaluate(params) -> float:
        losses = [
            steps.eval_step(params, sharding.global_batch(source.eval_rows(first, chunk, pi, pc), mesh))
            for first in range(0, n_rows, chunk)
        ]
        return float(np.mean(jax.device_get(losses)))

    return evaluate, n_rows * cfg.data.seq_len


def _check_finite(done: int, metrics) -> dict:
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(values["train_loss"]):
        raise RunDiverged(f"diverged: non-finite loss ({values['train_loss']}) at step {done}")
    return values


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
