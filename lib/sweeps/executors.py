"""Executors: train a plan's runs into a root, in this process pack after pack, in worker processes, or on Ray.

Runs that can share one compiled step (same model, data shape, batch, optimizer kind and mesh:
`lib.train.step.pack_key`) train together as a pack -- one vmapped program -- up to a size that fits
the device memory (`auto_pack_size`); `--pack 1` trains every run alone. Each run of a pack still
has its own folder, status, metrics and summary, and all that follows is decided per run.

What a run needs is read from its folder in the root, once, before anything trains (so every host
of a multi-controller program takes the same decisions):
    done                          -> skipped
    failed, diverged              -> reported, not retried (the same data and seed diverge again)
    failed, attempts > retries    -> reported
    anything else                 -> trained (in a pack): starts, or resumes from its last checkpoint
                                     (a "running" left by a killed process is such a run)
A failing run never stops the sweep: a diverging run leaves its pack, the others finish; a pack
that fails otherwise is retried with its unfinished runs. A preemption (SIGTERM) stops the sweep,
after every run of the pack checkpointed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from lib.config_rules import validate
from lib.store import claims as claims_lib
from lib.store.claims import RunClaimed
from lib.store.runstore import RunDir
from lib.sweeps.plans import Plan, PlannedRun

DONE, SKIPPED, FAILED, NOT_RUN = "done", "skipped", "failed", "not run"


@dataclasses.dataclass
class Outcome:
    run_id: str
    result: str  # done (trained now) | skipped (was done) | failed | not run (the sweep stopped first)
    reason: str = ""
    seconds: float = 0.0
    eval_loss: float | None = None


@dataclasses.dataclass
class SweepReport:
    name: str
    outcomes: list[Outcome]
    wall_s: float = 0.0
    stopped: str = ""  # why the sweep stopped before the end (preemption), if it did
    worker_errors: list[str] = dataclasses.field(default_factory=list)

    def of(self, result: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == result]

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return 143
        return 1 if self.of(FAILED) or self.of(NOT_RUN) or self.worker_errors else 0

    def lines(self) -> list[str]:
        n = len(self.outcomes)
        done, skipped, failed = self.of(DONE), self.of(SKIPPED), self.of(FAILED)
        if n and len(skipped) == n:
            head = f"sweep {self.name}: all {n} runs were already done; nothing trained"
        else:
            head = (
                f"sweep {self.name}: {len(done)} trained, {len(skipped)} already done, {len(failed)} failed, "
                f"{len(self.of(NOT_RUN))} not run, of {n} ({self.wall_s:.0f}s)"
            )
        out = [head]
        out += [f"  failed  {o.run_id}: {o.reason}" for o in failed]
        out += [f"  worker  {e}" for e in self.worker_errors]
        if self.stopped:
            out.append(f"  stopped: {self.stopped} -- relaunch the same command to resume")
        return out


class SweepStopped(BaseException):
    """SIGTERM outside a run's training loop (the loop handles it itself by checkpointing)."""


# ================================================================================================
# In-process, one pack after another
# ================================================================================================
def run_local(plan: Plan, root, retries: int = 2, devices=None, progress: "Progress | None" = None, pack="auto") -> SweepReport:
    """Train `plan`'s runs in this process, pack by pack (see `make_packs`; pack=1: one run at a time).

    A run another live process holds (lib/store/claims.py) is left to it; once every pack of ours
    is through, the sweep waits for those claims to be released and takes up what their holders
    left unfinished (a holder that died releases its claim when its heartbeat goes stale)."""
    import jax

    devices = list(jax.devices() if devices is None else devices)
    for r in plan.runs:  # every config error before the first step of the first run
        validate(r.cfg, len(devices))
    writer = jax.process_index() == 0
    runs, snapshot, outcomes = triage(plan, root, retries, writer=writer)
    progress = progress or Progress(plan, enabled=False)
    t_start, stopped = time.perf_counter(), ""
    progress.skipped([outcomes[r.run_id] for r in plan.runs if r.run_id in outcomes], plan)
    todo = [r for r in plan.runs if r.run_id not in outcomes]
    for _ in range(MAX_ROUNDS):  # a round: train what is ours, then wait for what others hold
        if not todo or stopped:
            break
        claimed: dict[str, str] = {}  # run id -> who holds it
        stopped = _train_packs([p for p, _ in dependency_order(make_packs(todo, pack, devices))], root, retries, devices, runs, snapshot, outcomes, claimed, progress)
        if stopped or not claimed:
            break
        todo = after_claims([r for r in plan.runs if r.run_id in claimed], claimed, root, retries, outcomes, snapshot, runs, progress)

    for r in plan.runs:
        outcomes.setdefault(r.run_id, Outcome(r.run_id, NOT_RUN, "the sweep stopped first"))
    progress.close()
    return SweepReport(plan.name, [outcomes[r.run_id] for r in plan.runs], time.perf_counter() - t_start, stopped)


MAX_ROUNDS = 100  # of claims taken up after others released them: beyond it, the rest is "not run"


def _train_packs(packs, root, retries: int, devices, runs: dict, snapshot: dict, outcomes: dict, claimed: dict, progress) -> str:
    """Train each pack (retrying failures); fills `outcomes`, and `claimed` (run id -> who) with the
    runs another process holds or finished meanwhile. Returns why the sweep stopped ("" if it did not)."""
    from lib.train.loop import Preempted, RunDiverged, train, train_pack

    stopped = ""
    with _sigterm_raises():
        for members in packs:
            members = _without_failed_sources(members, root, outcomes, runs, progress)  # packs come in dependency_order
            if not members:
                continue
            attempts = {r.run_id: snapshot[r.run_id].get("attempts", 0) for r in members}  # counted in memory from here
            progress.started(members[0], len(members), [os.path.join(root, r.run_id) for r in members])
            left, t0 = list(members), time.perf_counter()
            while left:
                def on_done(i, result, left=tuple(left)):
                    r = left[i]
                    if isinstance(result, RunClaimed) or (not isinstance(result, RunDiverged) and _trained_elsewhere(runs[r.run_id])):
                        holder = getattr(result, "holder", None)
                        claimed[r.run_id] = holder.describe() if holder else "another process"
                        progress.say(f"  {r.run_id} {result if isinstance(result, RunClaimed) else 'finished by another process'}: left to it")
                        return
                    if isinstance(result, RunDiverged):
                        outcomes[r.run_id] = Outcome(r.run_id, FAILED, str(result), time.perf_counter() - t0)
                    else:
                        outcomes[r.run_id] = Outcome(r.run_id, DONE, "", time.perf_counter() - t0, result.get("eval_loss"))
                    progress.finished(r, outcomes[r.run_id], trained=True)

                try:
                    if len(left) == 1:  # a pack of one is a run: train() (what tests and tools patch)
                        try:
                            dependency = {"init_from": left[0].init_from} if left[0].init_from else {}
                            on_done(0, train(left[0].cfg, os.path.join(root, left[0].run_id), devices, **dependency))
                        except (RunDiverged, RunClaimed) as e:
                            on_done(0, e)
                    else:
                        train_pack([r.cfg for r in left], [os.path.join(root, r.run_id) for r in left], devices, on_done=on_done,
                                   init_from=[r.init_from for r in left])
                    for r in left:  # found finished when opened: another process trained it since our triage
                        if r.run_id not in outcomes and r.run_id not in claimed:
                            claimed[r.run_id] = "another process"
                except Preempted as e:
                    stopped = str(e)
                    for r in left:
                        if r.run_id not in outcomes:
                            outcomes[r.run_id] = Outcome(r.run_id, NOT_RUN, "interrupted: checkpointed", time.perf_counter() - t0)
                except SweepStopped:
                    for r in left:
                        if r.run_id not in outcomes and r.run_id not in claimed:
                            runs[r.run_id].set_state("interrupted", reason="SIGTERM before the training loop; relaunch to resume")
                    stopped = "SIGTERM"
                except KeyboardInterrupt:
                    for r in left:
                        if r.run_id not in outcomes and r.run_id not in claimed:
                            runs[r.run_id].set_state("interrupted", reason="KeyboardInterrupt; relaunch to resume")
                    raise
                except Exception as e:  # noqa: BLE001  (any other failure: retry what did not finish, then report)
                    reason = f"{type(e).__name__}: {e}"
                    retry = []
                    for r in left:
                        if r.run_id in outcomes or r.run_id in claimed:
                            continue
                        attempts[r.run_id] += 1
                        if attempts[r.run_id] < retries + 1:
                            retry.append(r)
                        else:
                            outcomes[r.run_id] = Outcome(r.run_id, FAILED, f"{reason} (after {attempts[r.run_id]} attempts)", time.perf_counter() - t0)
                            progress.finished(r, outcomes[r.run_id], trained=True)
                    if retry:
                        progress.say(f"{', '.join(r.run_id for r in retry)}: attempt failed ({reason}); retrying")
                        left = retry
                        continue
                break
            if stopped:
                break
    return stopped


def after_claims(waiting: list[PlannedRun], claimed: dict, root, retries: int, outcomes: dict, snapshot: dict,
                  runs: dict, progress, poll_s: float | None = None) -> list[PlannedRun]:
    """Wait until no live process holds these runs, then decide them again from their folders:
    done (by the holder) -> skipped; otherwise -> returned, to train here (resume its checkpoint)."""
    timeout = claims_lib.stale_after_s()
    poll_s = poll_s or min(5.0, max(timeout / 20, 0.2))
    holders = sorted(set(claimed.values()))
    progress.say(f"waiting for {len(waiting)} runs held by other processes ({', '.join(holders[:3])}"
                 f"{' ...' if len(holders) > 3 else ''}); a holder that died releases them after {timeout:.0f}s without a heartbeat")
    pending = list(waiting)
    while pending:
        pending = [r for r in pending if _held_elsewhere(os.path.join(root, r.run_id), timeout)]
        if pending:
            time.sleep(poll_s)
    todo = []
    for r in waiting:
        status = runs[r.run_id].status() or {}
        snapshot[r.run_id] = status
        skip = _skip_reason(status, retries, runs[r.run_id])
        if skip is None:
            todo.append(r)
            continue
        result, reason = skip
        outcomes[r.run_id] = Outcome(r.run_id, result, reason or f"trained by {claimed[r.run_id]}")
        progress.finished(r, outcomes[r.run_id], trained=False)
    return todo


def _trained_elsewhere(run: RunDir) -> bool:
    """Whether the status of this finished run names another process as its trainer (one process:
    under several, process 0 writes it for all)."""
    import jax

    if jax.process_count() > 1:
        return False
    status = run.status() or {}
    if "pid" not in status:  # not recorded: nothing says another process trained it
        return False
    return (status.get("host"), status.get("pid")) != (socket.gethostname(), os.getpid())


def _held_elsewhere(run_path: str, timeout: float) -> bool:
    h = claims_lib.holder(run_path)
    return h is not None and h.stale_reason(timeout) is None


# ================================================================================================
# Run dependencies (PlannedRun.after / init_from): the one place executors honour them
# ================================================================================================
def dependency_order(packs: Sequence[Sequence[PlannedRun]]) -> list[tuple[list[PlannedRun], list[int]]]:
    """`packs` ordered so that each comes after the packs holding the runs its runs follow
    (`after`), otherwise in the order given, each with the positions (in the returned list) of the
    packs it waits for. Where only some runs of a pack are ready, they go first and the others
    become a pack of their own later (a run never waits inside its own pack). The in-process
    executor trains in this order; Ray makes each pack's task wait for those packs' tasks;
    `--worker i/n` keeps a run with the runs it follows (Plan.partition). A run that follows a run
    not in `packs` (done, or another worker's) does not wait; a cycle is broken in the order given."""
    remaining = [list(p) for p in packs if p]
    planned = {r.run_id for p in remaining for r in p}
    where: dict[str, int] = {}  # run id -> position of its pack in the output
    out: list[tuple[list[PlannedRun], list[int]]] = []
    while remaining:
        ready = []
        for k, members in enumerate(remaining):
            ready = [r for r in members if all(a in where or a not in planned for a in r.after)]
            if ready:
                break
        else:  # a cycle: the first pack as it is
            k, ready = 0, remaining[0]
        rest = [r for r in remaining[k] if r not in ready]
        remaining = remaining[:k] + ([rest] if rest else []) + remaining[k + 1:]
        waits = sorted({where[a] for r in ready for a in r.after if a in where})
        where.update({r.run_id: len(out) for r in ready})
        out.append((ready, waits))
    return out


def _without_failed_sources(members: list[PlannedRun], root, outcomes: dict, runs: dict, progress) -> list[PlannedRun]:
    """`members` less the runs whose init_from run (a cooldown branch's trunk) diverged: each is
    failed with that run's reason (not retried: its prefix would diverge again)."""
    keep = []
    for r in members:
        source = r.init_from.run_id if r.init_from else ""
        status = (RunDir(os.path.join(root, source), writer=False).status() or {}) if source else {}
        if status.get("state") == "failed" and status.get("diverged"):
            reason = f"trunk {source} diverged: {status.get('reason', '')}"
            runs[r.run_id].set_state("failed", reason=reason, diverged=True)
            outcomes[r.run_id] = Outcome(r.run_id, FAILED, reason)
            progress.finished(r, outcomes[r.run_id], trained=False)
        else:
            keep.append(r)
    return keep


# ================================================================================================
# Packs: runs that can share one compiled step train together (lib.train.step.pack_key)
# ================================================================================================
MAX_PACK = 32  # --pack auto never packs more runs than this
DEVICE_MEMORY_FRACTION = 0.8  # of an accelerator's memory (memory_stats()["bytes_limit"])
HOST_MEMORY_FRACTION = 0.25  # of the host's physical memory (CPU), shared by its devices
MIN_OVERLAP = 0.5  # a pack's shortest run is at least this fraction of its longest


def make_packs(runs: Sequence[PlannedRun], pack="auto", devices=None) -> list[list[PlannedRun]]:
    """Cut `runs` into packs: runs with one `lib.train.step.pack_key` (model, data shape, batch,
    optimizer kind, mesh -- everything but what a run may trace or keep for itself), at most
    `pack_size` of them per pack, longest first, and none shorter than MIN_OVERLAP (half) of its
    pack's longest run: a pack is rebuilt (one compile) each time a run leaves it, which pays only
    while its runs overlap for most of their lengths. Pipelined runs (train.microbatches > 0) train
    one at a time. pack: "auto", an int K, 1 (every run alone),
    or a function (cfg, devices) -> K. Packs come in the order of their first run in `runs`."""
    from lib.train.step import pack_key

    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault(pack_key(r.cfg), []).append(r)
    order = {r.run_id: i for i, r in enumerate(runs)}
    packs = []
    for members in groups.values():
        alone = len(members) == 1 or members[0].cfg.train.microbatches > 0  # a pipelined run trains alone (build_pack)
        k = 1 if alone else pack_size(pack, members[0].cfg, devices)
        current: list[PlannedRun] = []
        for r in sorted(members, key=lambda r: (-r.cfg.train.steps, order[r.run_id])):
            if current and (len(current) == k or r.cfg.train.steps < MIN_OVERLAP * current[0].cfg.train.steps):
                packs.append(current)
                current = []
            current.append(r)
        packs.append(current)
    return sorted(packs, key=lambda p: min(order[r.run_id] for r in p))


def pack_size(pack, cfg, devices=None) -> int:
    """--pack: "auto" -> auto_pack_size(cfg, devices); an integer K >= 1 -> K; a function -> pack(cfg, devices)."""
    if callable(pack):
        return pack(cfg, devices)
    if str(pack) == "auto":
        return auto_pack_size(cfg, devices)
    try:
        k = int(pack)
    except ValueError:
        k = 0
    if k < 1:
        raise ValueError(f"--pack expects auto or a number of runs >= 1 (1: every run alone), got {pack!r}")
    return k


def auto_pack_size(cfg, devices=None, cap: int = MAX_PACK) -> int:
    """How many runs like `cfg` one pack holds on `devices`:

        K = min(cap, floor(budget / per_run)), at least 1, where
        per_run = the bytes per device of one run's compiled train step (XLA's memory analysis:
                  arguments + outputs - the donated state they alias + temporaries; a pack of K
                  holds K states and K runs' activations, so it needs about K times that);
        budget  = DEVICE_MEMORY_FRACTION (80%) of the device's memory limit on an accelerator,
                  HOST_MEMORY_FRACTION (25%) of the host's physical memory (os.sysconf), split
                  between this process's devices, on CPU.
    """
    import jax

    from lib.config import resolve_model_input
    from lib.data import make_source, resolve_vocab
    from lib.parallel import sharding
    from lib.train.step import step_memory_bytes

    devices = list(jax.devices() if devices is None else devices)
    if not cfg.model.vocab_size:
        cfg = resolve_vocab(cfg, make_source(cfg.data))
    cfg = resolve_model_input(cfg)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    with sharding.activate(mesh):
        per_run = step_memory_bytes(cfg, mesh)
    return max(1, min(cap, int(device_memory_budget(devices[0]) // max(per_run, 1))))


def device_memory_budget(device) -> float:
    """Bytes a pack may use on `device` (the rule in auto_pack_size)."""
    import jax

    if device.platform != "cpu":
        limit = (device.memory_stats() or {}).get("bytes_limit")
        if limit:
            return DEVICE_MEMORY_FRACTION * limit
    return HOST_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(jax.local_device_count(), 1)


def enable_compile_cache(path: str | None) -> None:
    """JAX's persistent compilation cache at `path` (None: off), for every compile from now on.

    Runs of one shape then compile once (run length and warmup are traced inputs of the train
    step); a relaunch compiles nothing.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # default 1 s skips small steps
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # re-read the dir: an earlier sweep in this process may have used another


def triage(plan: Plan, root, retries: int, writer: bool) -> tuple[dict[str, RunDir], dict[str, dict], dict[str, Outcome]]:
    """Each run's folder, its status snapshot, and an outcome for the runs not to train now.

    Decided from one snapshot taken before anything trains, so every process decides alike.
    """
    runs = {r.run_id: RunDir(os.path.join(root, r.run_id), writer=writer) for r in plan.runs}
    snapshot = {run_id: run.status() or {} for run_id, run in runs.items()}
    outcomes = {}
    for run_id, run in runs.items():
        skip = _skip_reason(snapshot[run_id], retries, run)
        if skip is not None:
            outcomes[run_id] = Outcome(run_id, *skip)
    return runs, snapshot, outcomes


def _skip_reason(status: dict, retries: int, run: RunDir) -> tuple[str, str] | None:
    state = status.get("state")
    if state == "done" and run.finished():  # not if a record is missing or corrupt: the run is completed from its checkpoint
        return SKIPPED, ""
    if state == "failed" and status.get("diverged"):
        return FAILED, f"{status.get('reason', 'diverged')} (not retried: it would diverge again)"
    if state == "failed" and status.get("attempts", 0) >= retries + 1:
        return FAILED, f"{status.get('reason', '')} (gave up after {status.get('attempts')} attempts; raise --retries to try again)"
    return None


class _sigterm_raises:
    """SIGTERM raises SweepStopped, except inside train()'s loop, which installs its own handler."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(*_):
        raise SweepStopped()

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


# ================================================================================================
# Worker processes, one per device group
# ================================================================================================
def device_group_envs(devices_per_worker: int, n_workers: int | None = None) -> list[dict[str, str]]:
    """Environment of each worker: its GPUs (CUDA_VISIBLE_DEVICES), or k forced CPU devices.

    Found without initialising JAX here, so this process holds no accelerator memory.
    """
    k = devices_per_worker
    if k < 1:
        raise ValueError(f"--devices-per-worker must be >= 1, got {k}")
    gpus = _visible_gpus()
    if gpus:
        n = n_workers or len(gpus) // k
        if n < 1 or n * k > len(gpus):
            raise ValueError(f"{n or 0} workers x {k} GPUs do not fit the {len(gpus)} visible GPUs ({','.join(gpus)}); lower --workers or --devices-per-worker")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * k : (i + 1) * k])} for i in range(n)]
    if not n_workers:
        raise ValueError("no GPUs visible: on CPU say how many worker processes to start with --workers N")
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={k}".strip()}
    return [dict(env) for _ in range(n_workers)]


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() not in ("", "-1")]
    if os.environ.get("JAX_PLATFORMS", "").lower() == "cpu" or not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def run_processes(
    plan: Plan,
    root,
    commands: Sequence[tuple[list[str], dict[str, str]]],
    log_paths: Sequence[str],
    progress: "Progress | None" = None,
    poll_s: float = 1.0,
) -> SweepReport:
    """Start one process per (argv, env) -- each trains its share i/n of the plan (experiments/workflow/worker.py) -- and follow the root."""
    progress = progress or Progress(plan, enabled=False)
    before = {r.run_id: RunDir(os.path.join(root, r.run_id), writer=False).state() for r in plan.runs}
    t_start = time.perf_counter()
    procs = []
    for (argv, env), log_path in zip(commands, log_paths):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "ab") as log:
            procs.append(subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT))
    progress.say(f"started {len(procs)} workers; logs: {os.path.dirname(log_paths[0])}")

    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if threading.current_thread() is threading.main_thread() else {}
    try:
        seen = {r.run_id for r in plan.runs if before[r.run_id] == "done"}
        progress.skipped([Outcome(r.run_id, SKIPPED) for r in plan.runs if r.run_id in seen], plan)
        t_epoch = time.time()
        progress.start_clock()  # the workers train in parallel: ETA from wall time since now
        progress.watch([os.path.join(root, r.run_id) for r in plan.runs if r.run_id not in seen])
        while True:
            alive = any(p.poll() is None for p in procs)
            for r in plan.runs:
                status = RunDir(os.path.join(root, r.run_id), writer=False).status() or {}
                fresh = status.get("updated_at", 0) >= t_epoch  # a failure left from before may still be retried
                if r.run_id not in seen and status.get("state") in ("done", "failed") and (fresh or not alive):
                    seen.add(r.run_id)
                    if status["state"] == "done":
                        outcome = Outcome(r.run_id, DONE, eval_loss=(RunDir(os.path.join(root, r.run_id), writer=False).summary() or {}).get("eval_loss"))
                    else:
                        outcome = Outcome(r.run_id, FAILED, status.get("reason", ""))
                    progress.finished(r, outcome, trained=True)
            if not alive:
                break
            time.sleep(poll_s)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        progress.close()

    outcomes = []
    for r in plan.runs:
        status = RunDir(os.path.join(root, r.run_id), writer=False).status() or {}
        state = status.get("state")
        if state == "done":
            outcomes.append(Outcome(r.run_id, SKIPPED if before[r.run_id] == "done" else DONE))
        elif state == "failed":
            outcomes.append(Outcome(r.run_id, FAILED, status.get("reason", "")))
        else:
            outcomes.append(Outcome(r.run_id, NOT_RUN, f"state {state or 'absent'} when the workers exited"))
    errors = [f"worker {i} exited with {p.returncode}; see {log}" for i, (p, log) in enumerate(zip(procs, log_paths)) if p.returncode not in (0, 1)]
    stopped = "SIGTERM forwarded to the workers" if forwarded else ""
    return SweepReport(plan.name, outcomes, time.perf_counter() - t_start, stopped, errors)


# ================================================================================================
# Progress: a tqdm bar over the steps of every run (tqdm's ETA), one line per finished run
# ================================================================================================
class Progress:
    """tqdm over the steps of all runs on stderr -- a live run's steps read from its metrics log
    every `poll_s` -- with tqdm's ETA; one plain line per finished run on `stream` either way (its
    ETA from the FLOPs still to train)."""

    def __init__(self, plan: Plan, enabled: bool, stream=None, quiet: bool = False, poll_s: float = 2.0):
        self.total_flops = sum(r.own_flops for r in plan.runs) or 1.0
        self.n = len(plan.runs)
        self.flops_left = self.total_flops
        self.trained_flops = 0.0
        self.count = 0
        self._begin = None  # when the first run to train started
        self.stream = stream or sys.stdout
        self.quiet = quiet  # other processes of a multi-controller program: process 0 reports
        self.bar = None
        self.poll_s = poll_s
        self._steps = {r.run_id: 0 for r in plan.runs}  # steps counted on the bar, per run
        self._of = {r.run_id: r for r in plan.runs}
        self._live: dict[str, str] = {}  # run id -> folder, of the runs training now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if enabled and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=sum(r.own_steps for r in plan.runs), unit="step", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}, {rate_fmt}{postfix}]")

    def skipped(self, outcomes: list[Outcome], plan: Plan) -> None:
        """Runs decided before training: one line for those already done, one per failure not retried."""
        flops = {r.run_id: r.own_flops for r in plan.runs}
        done = [o for o in outcomes if o.result == SKIPPED]
        self.count += len(outcomes)
        self.flops_left -= sum(flops[o.run_id] for o in outcomes)
        if done:
            self.say(f"[{self.count}/{self.n}] {len(done)} already done: skipped")
        for o in outcomes:
            if o.result != SKIPPED:
                self.say(f"  {o.run_id} {o.result}: {o.reason}")
        if self.bar is not None and outcomes:
            for o in outcomes:
                self._advance(o.run_id, self._of[o.run_id].own_steps)
            with self._lock:  # steps done before: on the bar, not in its rate (tqdm's `initial`)
                self.bar.n = self.bar.last_print_n = self.bar.initial = sum(self._steps.values())
            self.bar.refresh()

    def start_clock(self) -> None:
        self._begin = self._begin or time.perf_counter()

    def started(self, r: PlannedRun, pack: int = 1, paths: Sequence[str] = ()) -> None:
        """Run r starts training (the first of a pack of `pack` runs, whose folders are `paths`)."""
        self.start_clock()
        if self.bar is not None:
            self.bar.set_description_str(r.run_id + (f" +{pack - 1} packed" if pack > 1 else ""), refresh=False)
            self.watch(paths)

    def watch(self, paths: Sequence[str]) -> None:
        """Count the steps these runs log (their metrics) on the bar, until each finishes."""
        if self.bar is None:
            return
        with self._lock:
            self._live.update({os.path.basename(os.fspath(p).rstrip("/")): os.fspath(p) for p in paths})
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="sweep-progress", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                live = dict(self._live)
            for run_id, path in live.items():
                try:
                    rows = RunDir(path, writer=False).metrics()
                except Exception:  # noqa: BLE001  (a read racing a write: the next poll sees it)
                    continue
                if rows and run_id in self._of:
                    r = self._of[run_id]
                    start = r.init_from.step if r.init_from else 0  # a branch's rows up to its start are its trunk's
                    self._advance(run_id, min(max(rows[-1].get("step", 0) - start, 0), r.own_steps))

    def _advance(self, run_id: str, steps: int) -> None:
        with self._lock:
            delta = steps - self._steps.get(run_id, 0)
            if delta > 0:
                self._steps[run_id] = steps
                if self.bar is not None:
                    self.bar.update(delta)

    def finished(self, r: PlannedRun, outcome: Outcome, trained: bool) -> None:
        self.count += 1
        self.flops_left -= r.own_flops
        if trained and outcome.result == DONE:
            self.trained_flops += r.own_flops
        with self._lock:
            self._live.pop(r.run_id, None)
        self._advance(r.run_id, r.own_steps)  # a failed run's steps will not be trained: off the ETA too
        loss = f" eval {outcome.eval_loss:.4f}" if outcome.eval_loss is not None else ""
        took = f" in {outcome.seconds:.1f}s" if outcome.seconds else ""
        reason = f": {outcome.reason}" if outcome.reason else ""
        self.say(f"[{self.count}/{self.n}] {r.run_id} {outcome.result}{loss}{took}{reason} | ETA {self.eta()}")

    def eta(self) -> str:
        if self.trained_flops <= 0 or self._begin is None:
            return "?"
        s = (time.perf_counter() - self._begin) / self.trained_flops * max(self.flops_left, 0.0)
        return f"{int(s // 60)}m{int(s % 60):02d}s"

    def say(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
