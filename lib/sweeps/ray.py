"""Sweeps on a Ray cluster: each run is one Ray task with its resource request.

Ray does the scheduling, placement and retries (a task whose worker died -- a preempted node,
an OOM kill -- or that raised is retried up to `retries` times); every task trains with the same
`lib.train.loop.train` into the shared run root (a shared filesystem or gs://), so a resumed task picks
up its run's last checkpoint and the root ends up exactly as with the local executor.
"""

from __future__ import annotations

import os
import time

from lib.sweeps.executors import DONE, FAILED, NOT_RUN, Outcome, Progress, SweepReport, diverged_step, triage
from lib.store.runstore import RunDir
from lib.store.storage import is_url
from lib.sweeps.plans import Plan


def train_one(cfg_json: str, path: str, compile_cache: str | None) -> dict:
    """The body of one Ray task. A diverged run returns "failed" (retrying would diverge again);
    any other failure raises, so that Ray retries it."""
    from lib.config import RunConfig
    from lib.sweeps.executors import enable_compile_cache
    from lib.train.loop import RunDiverged, train

    enable_compile_cache(compile_cache)
    try:
        summary = train(RunConfig.from_json(cfg_json), path)
    except RunDiverged as e:
        RunDir(path).set_state("failed", reason=str(e), diverged=True, step=diverged_step(str(e)))
        return {"result": FAILED, "reason": str(e)}
    return {"result": DONE, "eval_loss": summary.get("eval_loss")}


def run_ray(
    plan: Plan,
    root,
    address: str | None = None,
    retries: int = 2,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    compile_cache: str | None = None,
    progress: Progress | None = None,
) -> SweepReport:
    """Submit every run still to do as a task; collect outcomes as tasks finish.

    address: None or "local" starts a local Ray instance; "auto" or "host:port" / "ray://..." joins a
    cluster. resources: per run, e.g. {"CPU": 1, "GPU": 1} or {"TPU": 4}. env: variables for the tasks.
    """
    import ray

    root = os.fspath(root)
    if not is_url(root):
        root = os.path.abspath(root)  # tasks may run in another working directory
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address, include_dashboard=False, log_to_driver=False)
    _, _, outcomes = triage(plan, root, retries, writer=True)
    progress = progress or Progress(plan, enabled=False)
    progress.skipped([outcomes[r.run_id] for r in plan.runs if r.run_id in outcomes], plan)
    progress.start_clock()
    t_start = time.perf_counter()

    resources = dict(resources or {"CPU": 1})
    task = ray.remote(train_one).options(
        num_cpus=resources.pop("CPU", 1),
        num_gpus=resources.pop("GPU", 0),
        resources=resources or None,  # custom ones, e.g. TPU chips
        max_retries=retries,  # the worker died (node preempted, killed)
        retry_exceptions=True,  # train() raised: it marked the run failed; a retry resumes it
        runtime_env={"env_vars": dict(env)} if env else None,
    )
    pending = {}
    for r in plan.runs:
        if r.run_id not in outcomes:
            pending[task.remote(r.cfg.to_json(), os.path.join(root, r.run_id), compile_cache)] = r
            progress.started(r)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        r = pending.pop(ref)
        try:
            result = ray.get(ref)
            outcome = Outcome(r.run_id, result["result"], result.get("reason", ""), eval_loss=result.get("eval_loss"))
        except ray.exceptions.RayError as e:  # retries used up
            outcome = Outcome(r.run_id, FAILED, f"{type(e).__name__}: {str(e).splitlines()[0]} (after {retries + 1} attempts)")
        outcomes[r.run_id] = outcome
        progress.finished(r, outcome, trained=True)
    progress.close()
    ordered = [outcomes.get(r.run_id, Outcome(r.run_id, NOT_RUN)) for r in plan.runs]
    return SweepReport(plan.name, ordered, time.perf_counter() - t_start)
