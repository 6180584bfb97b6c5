"""Sweeps on a Ray cluster: each pack of runs is one Ray task with its resource request.

Runs are grouped into packs as the local executor does (lib.sweeps.executors.make_packs; `--pack
auto` sizes them from the memory of a device the tasks would get, found by one probe task with
the same resources). Ray does the scheduling, placement and retries (a task whose worker died -- a
preempted node, an OOM kill -- or that raised is retried up to `retries` times); every task trains
with the same `lib.train.loop.train_pack` into the shared run root (a shared filesystem or gs://),
so a retried task skips its finished runs, resumes the others from their last checkpoints, and the
root ends up exactly as with the local executor.
"""

from __future__ import annotations

import os
import time

from lib.sweeps.executors import DONE, FAILED, MAX_ROUNDS, NOT_RUN, Outcome, Progress, SweepReport, after_claims, dependency_order, make_packs, triage
from lib.store.storage import is_url
from lib.sweeps.plans import Plan


def train_pack_task(cfg_jsons: list[str], paths: list[str], compile_cache: str | None, init_from: list, *after) -> list[dict]:
    """The body of one Ray task: a pack of runs (or one). A diverged run comes back "failed" (it is
    marked so; retrying would diverge again); any other failure raises, so that Ray retries the pack.
    `init_from`: each run's (run id, step) to start from, or None (PlannedRun.init_from).
    `after`: the results of the tasks holding the runs these runs follow (PlannedRun.after;
    lib.sweeps.executors.dependency_order), passed only so that Ray starts this task once they are done."""
    from lib.config import RunConfig
    from lib.sweeps.executors import enable_compile_cache
    from lib.store.claims import RunClaimed
    from lib.train.loop import InitFrom, RunDiverged, train_pack

    enable_compile_cache(compile_cache)
    results = train_pack([RunConfig.from_json(c) for c in cfg_jsons], paths, init_from=[InitFrom(*x) if x else None for x in init_from])
    return [{"result": FAILED, "reason": str(x)} if isinstance(x, RunDiverged) else
            {"result": CLAIMED, "reason": str(x), "who": x.holder.describe() if x.holder else "another process"} if isinstance(x, RunClaimed) else {"result": DONE, "eval_loss": x.get("eval_loss")}
            for x in results]


CLAIMED = "claimed"  # a task's run that another live process held (lib/store/claims.py): waited for, then decided again


def pack_sizes_task(cfg_jsons: list[str]) -> list[int]:
    """--pack auto, on a worker with a task's resources: auto_pack_size of each config."""
    from lib.config import RunConfig
    from lib.sweeps.executors import auto_pack_size

    return [auto_pack_size(RunConfig.from_json(c)) for c in cfg_jsons]


def run_ray(
    plan: Plan,
    root,
    address: str | None = None,
    retries: int = 2,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    compile_cache: str | None = None,
    progress: Progress | None = None,
    pack="auto",
) -> SweepReport:
    """Submit every pack of runs still to do as a task; collect outcomes as tasks finish.

    address: None or "local" starts a local Ray instance; "auto" or "host:port" / "ray://..." joins a
    cluster. resources: per task (a pack), e.g. {"CPU": 1, "GPU": 1} or {"TPU": 4}. env: variables
    for the tasks. pack: "auto", K or 1, as for the local executor.
    """
    import ray

    root = os.fspath(root)
    if not is_url(root):
        root = os.path.abspath(root)  # tasks may run in another working directory
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address, include_dashboard=False, log_to_driver=False)
    runs, snapshot, outcomes = triage(plan, root, retries, writer=True)
    progress = progress or Progress(plan, enabled=False)
    progress.skipped([outcomes[r.run_id] for r in plan.runs if r.run_id in outcomes], plan)
    progress.start_clock()
    t_start = time.perf_counter()

    resources = dict(resources or {"CPU": 1})
    options = dict(
        num_cpus=resources.pop("CPU", 1),
        num_gpus=resources.pop("GPU", 0),
        resources=resources or None,  # custom ones, e.g. TPU chips
        runtime_env={"env_vars": dict(env)} if env else None,
    )
    task = ray.remote(train_pack_task).options(
        **options,
        max_retries=retries,  # the worker died (node preempted, killed)
        retry_exceptions=True,  # train_pack() raised: it marked its runs failed; a retry resumes them
    )
    todo = [r for r in plan.runs if r.run_id not in outcomes]
    sizes = _probe_sizes(ray, options, todo) if str(pack) == "auto" else pack
    for _ in range(MAX_ROUNDS):  # as run_local: then wait for what other processes hold, and take up what they left
        if not todo:
            break
        claimed = _run_tasks(task, make_packs(todo, sizes), root, compile_cache, retries, outcomes, progress)
        if not claimed:
            break
        todo = after_claims([r for r in plan.runs if r.run_id in claimed], claimed, root, retries, outcomes, snapshot, runs, progress)
    progress.close()
    ordered = [outcomes.get(r.run_id, Outcome(r.run_id, NOT_RUN)) for r in plan.runs]
    return SweepReport(plan.name, ordered, time.perf_counter() - t_start)


def _run_tasks(task, packs, root: str, compile_cache, retries: int, outcomes: dict, progress) -> dict[str, str]:
    """Submit each pack as a task, collect outcomes as they finish; returns the runs another process held."""
    import ray

    pending, refs, claimed = {}, [], {}
    for members, waits_for in dependency_order(packs):  # a task starts once the tasks of the runs it follows are done
        init_from = [(r.init_from.run_id, r.init_from.step) if r.init_from else None for r in members]
        ref = task.remote([r.cfg.to_json() for r in members], [os.path.join(root, r.run_id) for r in members], compile_cache, init_from,
                          *[refs[i] for i in waits_for])
        refs.append(ref)
        pending[ref] = members
        progress.started(members[0], len(members), [os.path.join(root, r.run_id) for r in members])
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        members = pending.pop(ref)
        try:
            results = ray.get(ref)
            claimed.update({r.run_id: x["who"] for r, x in zip(members, results) if x["result"] == CLAIMED})
            done = [Outcome(r.run_id, x["result"], x.get("reason", ""), eval_loss=x.get("eval_loss")) for r, x in zip(members, results)]
        except ray.exceptions.RayError as e:  # retries used up
            done = [Outcome(r.run_id, FAILED, f"{type(e).__name__}: {str(e).splitlines()[0]} (after {retries + 1} attempts)") for r in members]
        for r, outcome in zip(members, done):
            if outcome.result == CLAIMED:
                progress.say(f"  {r.run_id} {outcome.reason}: left to it")
                continue
            outcomes[r.run_id] = outcome
            progress.finished(r, outcome, trained=True)
    return claimed


def _probe_sizes(ray, options: dict, runs) -> "callable":
    """--pack auto for Ray: one probe task (with a pack task's resources) sizes every distinct pack."""
    from lib.train.step import pack_key

    firsts = {}
    for r in runs:
        firsts.setdefault(pack_key(r.cfg), r.cfg)
    if not firsts:
        return lambda cfg, devices=None: 1
    sizes = ray.get(ray.remote(pack_sizes_task).options(**options).remote([c.to_json() for c in firsts.values()]))
    by_key = dict(zip(firsts, sizes))
    return lambda cfg, devices=None: by_key[pack_key(cfg)]
