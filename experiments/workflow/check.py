"""The check stage (`scaling verify`, and the last stage of `scaling run` unless --no-verify): train
the model a fit recommends at the next budget and compare its loss with the prediction.

From FIT_DIR/fit.json: each approach's compute-optimal N_opt and predicted loss (with its
prediction interval) at C (default: the sweep's next budget up, C_max^2 / C_previous, or 3x C_max
with one budget). The shape trained is the experiment's own size ladder's trainable shape nearest
N_opt in log N (no interpolation), planned at C by the experiment's IsoFlop with every per-budget
filter off, so it gets the sweep's hyperparameter, batch and schedule rules and its run-id scheme;
it trains into the same root (R, default: the run store the fit read) under the sweep name
"<sweep>-check", which `scaling fit` leaves out of the fit (with a note), so rerunning `scaling run`
neither refits on it nor retrains it. `neighbours` also trains the ladder shapes nearest N_opt/2 and
2 N_opt at the same C. Writes FIT_DIR/check.json (analysis/verify.py has the schema) and redraws
report.md and the figures. A failed or skipped check never replaces a check.json that ran: it is
written beside it (check.failed.json, check.skipped.json). Exit code 0 when the check ran or was
skipped with a reason (no usable frontier), 1 when its run failed (reported in check.json and
report.md).

The stage is `verify` (driven by `check_command` and `check_stage` from CheckOptions); a further
check of the allocation adds its step to `_check` and its entries to check.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import numpy as np

from analysis import allocation as A
from analysis import verify as V
from analysis.data import CHECK_SUFFIX, is_check_sweep
from analysis.errors import AnalysisError
from analysis.report import json_safe, read_record, render, write_atomic
from experiments.workflow.experiment import load_sweep
from experiments.workflow.options import CheckOptions, Distributed, SweepOptions
from experiments.workflow.sweep import MANIFESTS, TUNE_LABEL, run_sweep
from lib import flops as flops_lib
from lib.config import ConfigError, RunConfig
from lib.models import shape_tag
from lib.store.runstore import RunDir, read_json, summary_D
from lib.sweeps.executors import SweepStopped
from lib.sweeps.plans import IsoFlop, Plan, Sweep, TokensPerParam


class NoLadder(Exception):
    """The experiment gives no size ladder to pick the check's shape from."""


# ---------------------------------------------------------------- planning ----------------------
def check_sweep(sweep, C: float) -> IsoFlop:
    """The experiment's own planner at budget C over its whole size ladder, the per-budget size
    filters off (tpp_range, per_budget): its lr rule, batch rule (one batch for budget C that suits
    every ladder shape), schedule and run-id scheme, under the sweep name "<sweep>-check"; without
    the sweep's seed replicates (the check compares its sizes' losses, at their best lr, at one seed)."""
    name = sweep.name + CHECK_SUFFIX
    if isinstance(sweep, IsoFlop):
        return dataclasses.replace(sweep, budgets=[float(C)], name=name, tpp_range=(0.0, math.inf), per_budget=0, seeds=())
    if isinstance(sweep, TokensPerParam) and sweep.sizes:  # same base, schedule and lr rule; D from C instead of a ratio
        rules = {k: getattr(sweep, k) for k in ("lr_rule", "lr_batch_scaling") if hasattr(sweep, k)}
        return IsoFlop([float(C)], list(sweep.sizes), base=sweep.base, name=name, schedule=sweep.schedule, tpp_range=(0.0, math.inf), **rules)
    raise NoLadder(f"the experiment's sweep is a {type(sweep).__name__} without a size ladder (the check needs IsoFlop or TokensPerParam sizes)")


def ladder(sweep, C: float, overrides: dict, params: str, root=None) -> tuple[Plan, list[dict], list[str]]:
    """The check's plan at C and every ladder shape trainable there: {"run" (PlannedRun), "N"} with
    N counted as the fit counts it (`params`: total or non_embedding)."""
    try:
        plan = check_sweep(sweep, C).plan(overrides, root=root)
    except ConfigError as e:
        raise NoLadder(f"no shape of the ladder is trainable at C = {C:.3g}: {e}") from None
    shapes = [{"run": r, "N": float(flops_lib.param_counts(r.cfg.model)[params])} for r in plan.runs]
    return plan, shapes, [n for n in plan.notes if "dropped" in n]


class _Planned(Sweep):
    """Runs already planned (a subset of the check's plan): run_sweep trains them exactly as planned."""

    def __init__(self, plan: Plan):
        self.name, self._plan = plan.name, plan

    def plan(self, overrides=None, root=None) -> Plan:
        return self._plan


def experiment_of(root) -> str:
    """The experiment a root's sweep came from, as its manifest (<root>/.sweeps/) records it."""
    folder = os.path.join(os.fspath(root), MANIFESTS)
    specs = set()
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            m = read_json(os.path.join(folder, name)) or {}
            if m.get("experiment") and not is_check_sweep(m.get("name")):
                specs.add(m["experiment"].removesuffix(TUNE_LABEL))  # EXP:tune is EXP's tune grid
    if len(specs) != 1:
        found = f"several ({', '.join(sorted(specs))})" if specs else "none"
        raise ConfigError(f"cannot tell which experiment made {root} (its sweep manifests name {found}); give --experiment EXP")
    return specs.pop()


def _plan_matches_root(sweep, overrides: dict, root) -> str | None:
    """A note when the experiment, planned now, is not the sweep the root holds (other --set?)."""
    manifest = read_json(os.path.join(os.fspath(root), MANIFESTS, f"{sweep.name}.json"))
    if not manifest:
        return None
    planned = {r.run_id for r in sweep.plan(overrides, root=root).runs}
    if planned != set(manifest.get("runs", [])):
        return (f"the experiment planned now gives other run ids than the sweep in {root} holds (different --set?); "
                "the check run may not share the sweep's hyperparameters")
    return None


# ---------------------------------------------------------------- the check ---------------------
def _result(root, planned, params: str) -> dict:
    """What a trained (or failed) run left in its folder."""
    run = RunDir(os.path.join(os.fspath(root), planned.run_id), writer=False)
    status, summary = run.status() or {}, run.summary() or {}
    state = status.get("state", "missing")
    achieved = summary.get("eval_loss") if summary.get("eval_loss") is not None else summary.get("train_loss")
    done = state == "done" and achieved is not None and math.isfinite(achieved)
    return {
        "run_id": planned.run_id,
        "state": "done" if done else ("diverged" if status.get("diverged") else state),
        "reason": "" if done else (status.get("reason") or f"state {state}"),
        "N": float((summary.get("params") or {}).get(params) or flops_lib.param_counts(planned.cfg.model)[params]),
        "D": float(summary_D(summary) or planned.tokens),
        "achieved": float(achieved) if done else None,
        "shape": shape_tag(planned.cfg.model),
    }


def _law_at(record: dict, N: float, D: float) -> float | None:
    e = record["fits"].get("approach3")
    if not e:
        return None
    from analysis.laws import get_law

    with np.errstate(all="ignore"):  # a parameter at 0 (e.g. E) is fine here; its log is not needed
        return float(get_law(e["law"]).predict({k: v["value"] for k, v in e["params"].items()}, N=N, D=D)[0])


def _write(fit_dir, check: dict, sections=()) -> None:
    """check.json, unless that would replace a check that ran (status done) with a failed or
    skipped one: that one goes beside it, as check.failed.json / check.skipped.json."""
    path = os.path.join(os.fspath(fit_dir), V.CHECK_JSON)
    try:
        earlier = V.read_check(fit_dir)
    except AnalysisError:  # unreadable: no check that ran to keep
        earlier = None
    if check.get("status") != "done" and (earlier or {}).get("status") == "done":
        aside = os.path.join(os.fspath(fit_dir), f"check.{check.get('status', 'failed')}.json")
        write_atomic(aside, json.dumps(json_safe(check), indent=2, allow_nan=False) + "\n")
        print(f"verify: {path} keeps the earlier check that ran (C = {earlier.get('C', float('nan')):.3g}); "
              f"this {check.get('status')} one is in {aside}", file=sys.stderr)
        return
    write_atomic(path, json.dumps(json_safe(check), indent=2, allow_nan=False) + "\n")
    try:
        render(fit_dir, sections)
    except AnalysisError as e:  # report.md is rewritten first; only the figures could not be redrawn
        print(f"verify: figures not redrawn: {e}", file=sys.stderr)


def verify(fit_dir, root=None, C: float | None = None, experiment: str | None = None, neighbours: bool = False,
           options: SweepOptions | None = None, report_sections=(), allocation: bool = False) -> int:
    """Check the fit in `fit_dir` at C by training in `root`; write check.json, report.md (with
    `report_sections` after the fit's own), figures."""
    fit_dir = os.fspath(fit_dir)
    record = read_record(fit_dir)
    C = float(C or V.next_budget(record))
    options = dataclasses.replace(options or SweepOptions(), worker=None)
    if options.executor == "processes":  # its workers would plan the experiment's sweep, not the check
        options = dataclasses.replace(options, executor="local")
    rows, why = V.predictions(record, C)
    if why is None:
        try:
            return _check(fit_dir, record, C, rows, root, experiment, neighbours, options, report_sections, allocation)
        except NoLadder as e:
            why = str(e)
    check = V.skipped(C, why)
    _write(fit_dir, check, report_sections)
    print("\n".join(V.console_lines(check)))
    return 0


def _plan_check(sweep, C, overrides, params, root, rows, neighbours, allocation):
    """(plan, shapes, notes, chosen, neighbours' plan, allocation members) of the check at C: the ladder
    shape nearest each approach's N_opt ("check"), with --neighbours the shapes near N_opt/2 and
    2 N_opt, with --allocation the sizes around the primary N_opt (every run of their lr grids)."""
    plan, shapes, notes = ladder(sweep, C, overrides, params, root)
    note = _plan_matches_root(sweep, overrides, root)
    notes = ([note] if note else []) + notes
    Ns = [s["N"] for s in shapes]

    chosen: dict[int, dict] = {}  # index into shapes -> {"role", "approaches"}
    for name, row in rows.items():
        i = V.nearest(Ns, row["N_opt"]["value"])
        chosen.setdefault(i, {"role": "check", "approaches": []})["approaches"].append(name)
    nb_plan = None
    if neighbours:
        primary = "approach3" if "approach3" in rows else next(iter(rows))
        centre = next(i for i, c in chosen.items() if primary in c["approaches"])
        n_opt = rows[primary]["N_opt"]["value"]
        lo, hi = V.neighbour_indices(Ns, centre, n_opt)
        missing = [f"no ladder shape {side} the chosen one near {what} = {n_opt * f:.3g}"
                   for side, what, f, i in (("below", "N_opt/2", 0.5, lo), ("above", "2 N_opt", 2.0, hi)) if i is None]
        for i in (lo, hi):
            if i is not None:
                chosen.setdefault(i, {"role": "neighbour", "approaches": []})
        nb_plan = {"approach": primary, "centre": centre, "members": [i for i in (lo, centre, hi) if i is not None], "missing": missing}

    alloc = _allocation_members(rows, shapes) if allocation else None
    for i in (alloc or {}).get("members", []):
        chosen.setdefault(i, {"role": "allocation", "approaches": []})
    return plan, shapes, notes, chosen, nb_plan, alloc


def _extend_allocation(plan: Plan, shapes: list[dict], alloc: dict, root) -> bool:
    """Learning rate per point at the allocation check too (experiments/workflow/lr_edges.py): each
    size whose best lr sits on an edge of its grid gets one run past it, recorded under the check's
    sweep name so its plan includes it. True when there is something new to train."""
    from experiments.workflow.lr_edges import new_extensions, record_extensions
    from lib.parallel.distributed import process_count

    if process_count() > 1:  # no one host sees every run's result (as run_sweep's own extensions)
        return False
    members = {shapes[i]["run"].run_id for i in alloc["members"]}
    more = new_extensions(dataclasses.replace(plan, runs=tuple(r for r in plan.runs if r.run_id in members)), root)
    if more:
        path = record_extensions(root, plan.name, more)
        print(f"allocation check: best lr on a grid edge for {len(more)} size(s); adding one run each past it ({path})", flush=True)
    return bool(more)


def _check(fit_dir, record, C, rows, root, experiment, neighbours, options, report_sections=(), allocation=False) -> int:
    src = record.get("source") or {}
    if root is None:
        if src.get("kind") != "runs":
            raise ConfigError(f"{fit_dir}/fit.json was fitted on {src.get('kind')} data, not a run store: give --root (and --experiment) to train the check")
        root = src["path"]
    params = src.get("params", record["options"].get("params", "total"))
    spec = experiment or experiment_of(root)
    sweep = load_sweep(spec)
    overrides = dict(options.overrides)
    if not options.run_logs:
        overrides.setdefault("tracking.console", False)  # as run_sweep plans (not part of the run id)
    for attempt in range(2):  # the second pass: the allocation sizes' lr grids extended past an edge, once
        plan, shapes, notes, chosen, nb_plan, alloc = _plan_check(sweep, C, overrides, params, root, rows, neighbours, allocation)
        order = sorted(chosen)
        ids = {shapes[i]["run"].run_id for i in order}
        try:
            run_sweep(_Planned(dataclasses.replace(plan, runs=tuple(r for r in plan.runs if r.run_id in ids))), root, options)
        except SweepStopped:
            print("verify stopped by SIGTERM; relaunch the same command to resume", file=sys.stderr)
            return 143
        if attempt or not alloc or not _extend_allocation(plan, shapes, alloc, root):
            break

    results = {}
    for i in order:
        r = _result(root, shapes[i]["run"], params)
        r.update(role=chosen[i]["role"], approaches=chosen[i]["approaches"], law_at_run=_law_at(record, r["N"], r["D"]) if r["achieved"] is not None else None)
        results[i] = r
    by_approach = {a: results[i] for i in order for a in chosen[i]["approaches"]}
    entries = [V.entry(a, C, by_approach[a], rows[a]) for a in rows]
    failed = [r for r in results.values() if r["role"] == "check" and r["state"] != "done"]
    check = {
        "C": C,
        "status": "failed" if failed else "done",
        "reason": "; ".join(f"run {r['run_id']} {r['state']}: {r['reason']}" for r in failed),
        "shape_rule": V.SHAPE_RULE,
        "experiment": spec,
        "root": os.path.abspath(root) if "://" not in os.fspath(root) else os.fspath(root),
        "params": params,
        "checks": entries,
        "runs": [results[i] for i in order],
        "predictions": rows,
        "notes": notes,
    }
    for r in check["runs"]:
        n_opt = rows[r["approaches"][0]]["N_opt"]["value"] if r["approaches"] else None
        if n_opt and abs(math.log(r["N"] / n_opt)) > math.log(1.5):
            notes.append(f"{r['run_id']}: the ladder's nearest shape is {max(r['N'] / n_opt, n_opt / r['N']):.2f}x "
                         f"{'above' if r['N'] > n_opt else 'below'} {r['approaches'][0]}'s N_opt = {n_opt:.3g}; the check tests the law off its optimum")
    if nb_plan:
        members = [results[i] for i in nb_plan["members"]]
        check["neighbours"] = {"approach": nb_plan["approach"], **V.neighbours_verdict(members, results[nb_plan["centre"]]["run_id"]),
                               "missing": nb_plan["missing"]}
    if alloc:
        _allocation_result(check, record, rows, C, shapes, alloc, results)
    _write(fit_dir, check, report_sections)
    print("\n".join(V.console_lines(check)))
    for n in notes:
        print(f"  note: {n}")
    return 1 if failed else 0


# ---------------------------------------------------------------- the allocation check (issue 23) --
def _allocation_members(rows: dict, shapes: list[dict]) -> dict:
    """The ladder shapes (every lr of each: the sweep's lr grid) at the sizes analysis.allocation plans
    around the primary approach's (approach 3's, else the first) predicted N_opt."""
    primary = "approach3" if "approach3" in rows else next(iter(rows))
    sizes = sorted({s["N"] for s in shapes})
    picked, notes = A.plan_sizes(rows[primary]["N_opt"]["value"], sizes)
    keep = {sizes[i] for i in picked}
    return {"approach": primary, "members": [i for i, s in enumerate(shapes) if s["N"] in keep], "notes": notes}


def _allocation_result(check: dict, record: dict, rows: dict, C: float, shapes: list[dict], alloc: dict, results: dict) -> None:
    """check.json's "allocation" and each entry's "allocation" from the trained sizes (analysis.allocation.check)."""
    runs = [{**results[i], "lr": float(shapes[i]["run"].cfg.optimizer.lr)} for i in alloc["members"]]
    out = A.check(record, rows, runs, C)
    check["allocation"] = {"approach": alloc["approach"], "notes": alloc["notes"], **{k: v for k, v in out.items() if k != "by_approach"}}
    for e in check["checks"]:
        e["allocation"] = out["by_approach"].get(e["approach"])


def check_command(options: CheckOptions, distributed: Distributed = Distributed()) -> int:
    """`scaling verify FIT_DIR`: join the processes, then check (an unknown --set key is a config
    error, exit 2, not a skipped check)."""
    distributed.join()
    RunConfig().with_overrides(dict(options.sweep.overrides))
    try:
        return verify(options.fit_dir, options.root, options.at, options.experiment, options.neighbours, options.sweep,
                      options.report_sections, options.allocation)
    except AnalysisError as e:
        print(f"scaling verify: error: {e}", file=sys.stderr)
        return 1


def check_stage(options: CheckOptions) -> int:
    """The last stage of `scaling run`: check <root>/fit at C with the sweep's own options, on one
    process (worker 0 of a static partition)."""
    from lib.parallel.distributed import process_count, process_index

    if options.sweep.worker and options.sweep.worker[0] != 0:
        print("verify: left to worker 0")
        return 0
    if process_count() > 1:
        print(f"verify: not run under several processes; run `scaling verify {options.fit_dir}` on one host")
        return 0
    assert process_index() == 0
    return verify(options.fit_dir, options.root, options.at, options.experiment, options.neighbours, options.sweep, options.report_sections,
                  options.allocation)
