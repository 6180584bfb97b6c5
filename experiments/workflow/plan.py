"""`scaling plan EXP`: what a launch would train, without training.

Every planned run (run id, N, D, C, lr, batch, steps, pack), the total compute and an estimated
time. The estimate is the planned FLOPs at the rate earlier finished runs reached on this machine
(in `--root`, or `--throughput-from DIR`): sum of FLOPs over sum of each run's share of its pack's
time (init, compile, train, eval and checkpoint time divided by the pack's size), so packing,
compiles and evaluation are in it; with no finished runs there is no estimate, and the plan says so.

A sweep whose lr rule is "tuned" and that has no rule under its root yet plans its tune grid first
(what `scaling run` trains before the sweep); the sweep's own runs then get their lrs, and so their
run ids, from the tuning, and are listed with lr and run id unset.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

from lib.store.runstore import read_json, run_dirs
from lib.sweeps import rules
from lib.sweeps.plans import Plan, PlannedRun


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    spec: str  # the experiment's file or name
    root: str | None = None  # where it would train: a tuned lr rule is read there, earlier runs time the estimate
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # --set, as the sweep would take them
    pack: str = "auto"  # as `scaling sweep --pack`
    throughput_from: str | None = None  # another root whose finished runs time the estimate (default: root)


def plan_launch(options: PlanOptions) -> dict:
    """{"sweep", "runs": [{"run_id", "stage", "N", "D", "C", "lr", "batch", "steps", "pack"}], "compute",
    "est_seconds", "throughput", "notes"}."""
    from experiments.workflow.experiment import load_sweep, load_tune, wants_tuning

    sweep = load_sweep(options.spec)
    stages: list[tuple[str, Plan]] = []
    untuned = wants_tuning(sweep) and (options.root is None or read_json(rules.lr_rule_path(options.root)) is None)
    if untuned:
        tune_dir = rules.tune_root(options.root) if options.root else None  # grid extensions recorded there
        stages.append(("tune", load_tune(options.spec).plan(options.overrides, root=tune_dir)))
        stages.append(("sweep", dataclasses.replace(sweep, lr_rule=None).plan(options.overrides, root=options.root)))
    else:
        stages.append(("sweep", sweep.plan(options.overrides, root=options.root)))
    rows, notes = [], []
    for stage, plan in stages:
        lr_unset = untuned and stage == "sweep"
        first = 1 + max((r["pack"] for r in rows), default=-1)  # pack numbers run on across stages
        packs = _packs(plan.runs, options.pack)
        for r in plan.runs:
            rows.append(_row(r, stage, first + packs[r.run_id], lr_unset))
        # an untuned sweep was planned without its rule: its own lr notes would describe the stand-in
        notes += [f"{stage}: {n}" for n in plan.notes if not (lr_unset and n.startswith("learning rate"))]
    if untuned:
        notes.insert(0, "sweep: its lr rule is tuned first (the tune stage above); its runs' lrs and run ids follow from it")
    compute = float(sum(r["C"] for r in rows))
    throughput = measured_throughput(options.throughput_from or options.root)
    est = compute / throughput["flops_per_s"] if throughput else None
    return {"sweep": stages[-1][1].name, "runs": rows, "compute": compute, "est_seconds": est,
            "throughput": throughput, "notes": notes}


def _packs(runs: tuple[PlannedRun, ...], pack: str) -> dict[str, int]:
    from lib.sweeps.executors import make_packs

    return {r.run_id: i for i, members in enumerate(make_packs(runs, pack=pack)) for r in members}


def _row(r: PlannedRun, stage: str, pack: int, lr_unset: bool) -> dict:
    return {"run_id": None if lr_unset else r.run_id, "stage": stage, "N": int(r.params), "D": int(r.tokens), "C": float(r.flops),
            "lr": None if lr_unset else float(r.cfg.optimizer.lr), "batch": int(r.cfg.data.global_batch),
            "steps": int(r.cfg.train.steps), "pack": pack}


def measured_throughput(root) -> dict | None:
    """FLOP/s that the finished runs under `root` reached, each counted at its share of its pack's time."""
    if not root or not os.path.isdir(os.fspath(root)):
        return None
    flops = seconds = 0.0
    n = 0
    for run in run_dirs(root):
        status, summary = run.status() or {}, run.summary() or {}
        spent = sum(summary.get(k) or 0.0 for k in ("init_time_s", "compile_time_s", "train_time_s", "eval_time_s", "checkpoint_time_s"))
        value = (summary.get("flops") or {}).get("value")
        if status.get("state") != "done" or not value or not spent > 0:
            continue
        flops += float(value)
        seconds += spent / max(int(status.get("pack") or 1), 1)
        n += 1
    if not n or not seconds > 0:
        return None
    return {"flops_per_s": flops / seconds, "runs": n, "from": os.fspath(root)}


def format_plan(record: dict) -> str:
    """The plan as a table, its notes, the total and the estimate."""
    def g(x, spec=".3g"):
        return "-" if x is None else format(x, spec)

    runs = record["runs"]
    width = max([len(r["run_id"] or "(after tuning)") for r in runs] + [6])
    lines = [f"{'run':<{width}}  {'stage':<5}  {'N':>8}  {'D':>8}  {'C':>8}  {'lr':>8}  {'batch':>5}  {'steps':>6}  {'pack':>4}"]
    for r in runs:
        lines.append(f"{r['run_id'] or '(after tuning)':<{width}}  {r['stage']:<5}  {g(r['N']):>8}  {g(r['D']):>8}  {g(r['C']):>8}  "
                     f"{g(r['lr']):>8}  {r['batch']:>5}  {r['steps']:>6}  {r['pack']:>4}")
    lines += [f"  note: {n}" for n in record["notes"]]
    total = f"{len(runs)} runs, {record['compute']:.3g} FLOPs"
    tp = record["throughput"]
    if tp:
        lines.append(f"{total}; about {_duration(record['est_seconds'])} at {tp['flops_per_s']:.3g} FLOP/s "
                     f"(the rate of {tp['runs']} finished runs under {tp['from']})")
    else:
        lines.append(f"{total}; no time estimate: no finished runs to time (give --root of an earlier sweep on this machine, "
                     "or --throughput-from DIR)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


# ---------------------------------------------------------------- --power -------------------------
@dataclasses.dataclass(frozen=True)
class PowerPlanOptions:
    """`scaling plan EXP --power`: the truth (alpha=..,beta=..,E=..,A=..,B=.., or the approach-3 fit
    under --from ROOT), the noise (nats; default the earlier fit's residual scale), simulations, seed."""

    truth: str | None = None
    from_root: str | None = None
    noise: float | None = None
    sims: int = 100
    seed: int = 0
    bootstrap: int = 50


def parse_truth(text: str) -> dict:
    """'alpha=0.3,beta=0.25,E=0.8,A=400,B=900' -> dict; a clear error naming what is wrong."""
    from analysis.errors import AnalysisError
    from analysis.power import TRUTH_KEYS

    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in TRUTH_KEYS:
            raise AnalysisError(f"--truth takes {','.join(k + '=..' for k in TRUTH_KEYS)}; {part!r} is not one of them")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise AnalysisError(f"--truth {key.strip()}={value!r}: not a number") from None
    return out


def _truth_from(root: str) -> tuple[dict, float | None]:
    """(approach 3's parameters, its residual scale) from the fit under ROOT (ROOT/fit/fit.json or ROOT/fit.json)."""
    from analysis.errors import AnalysisError
    from analysis.report import read_record

    folder = root if os.path.exists(os.path.join(root, "fit.json")) else os.path.join(root, "fit")
    e = read_record(folder)["fits"].get("approach3")
    if not e:
        raise AnalysisError(f"--from {root}: its fit has no approach 3 (the truth is approach 3's law)")
    return {k: v["value"] for k, v in e["params"].items()}, (e.get("goodness") or {}).get("residual_scale_nats")


def plan_power(options: PlanOptions, power_options: PowerPlanOptions) -> dict:
    """The design's power (analysis.power) with the plan's compute and estimated time."""
    from analysis import power as P
    from analysis.errors import AnalysisError

    po = power_options
    if (po.truth is None) == (po.from_root is None):
        raise AnalysisError("--power needs the truth: --truth alpha=..,beta=..,E=..,A=..,B=.. or --from ROOT (an earlier fit)")
    truth, noise = (parse_truth(po.truth), None) if po.truth else _truth_from(po.from_root)
    noise = po.noise if po.noise is not None else noise
    if noise is None:
        raise AnalysisError("--power needs --noise NATS (no earlier fit gives a residual scale)")
    plan, design = power_design(options)
    record = P.power(design, P.with_defaults(truth, design.floor),
                     P.PowerOptions(n_sims=po.sims, noise=float(noise), seed=po.seed, bootstrap=po.bootstrap))
    return {**record, "compute": plan["compute"], "est_seconds": plan["est_seconds"], "sweep": plan["sweep"],
            "design": {"points": int(design.N.size), "budgets": [float(v) for v in design.budgets]}}


def power_design(options: PlanOptions):
    """(the plan, the analysis.power.Design of its sweep's points: one per (N, D), an lr grid's runs
    being one point; the source's floor; the check budget and the ladder's sizes there)."""
    import numpy as np
    import pandas as pd

    from analysis import power as P
    from analysis.approaches import group_budgets
    from experiments.workflow.experiment import load_sweep
    from lib.data import make_source

    plan = plan_launch(options)
    sweep = load_sweep(options.spec)
    floor = getattr(make_source(sweep.base.data), "entropy_floor", None)
    rows = {(r["N"], r["D"]): r for r in plan["runs"] if r["stage"] == "sweep"}
    N, D, C = (np.array([r[k] for r in rows.values()], float) for k in ("N", "D", "C"))
    labels, values, _ = group_budgets(pd.DataFrame({"C": C}))
    check_C = P.next_budget(values)
    return plan, P.Design(N, D, C, values[labels], floor, check_C=check_C, check_ladder=_check_ladder(sweep, check_C, options))


def _check_ladder(sweep, C: float, options: PlanOptions) -> tuple[float, ...] | None:
    """N of the experiment's ladder shapes trainable at the check budget (None: no ladder; ideal sizes)."""
    from experiments.workflow.check import NoLadder, ladder

    try:
        _, shapes, _ = ladder(dataclasses.replace(sweep, lr_rule=None) if getattr(sweep, "lr_rule", None) == "tuned" else sweep,
                              C, dict(options.overrides), "total")
    except NoLadder:
        return None
    return tuple(s["N"] for s in shapes) or None


def format_power(record: dict) -> str:
    """The power record as a short table."""
    t = record["truth"]
    lines = [f"power of {record['sweep']} ({record['design']['points']} points, budgets "
             f"{', '.join(f'{c:.3g}' for c in record['design']['budgets'])}): {record['n_sims']} simulations, noise {record['noise']:.3g} nats, "
             f"truth alpha {t['alpha']:.3g}, beta {t['beta']:.3g}, E {t['E']:.4g}, A {t['A']:.4g}, B {t['B']:.4g} (a {t['a']:.3f})",
             f"{'approach':<10} {'param':<6} {'truth':>8} {'bias':>8} {'sd':>8} {'coverage':>8}"]
    g = lambda x, s="+.3f": "-" if x is None else format(x, s)  # noqa: E731
    for name, e in record["approaches"].items():
        for p, v in e.items():
            if isinstance(v, dict):
                lines.append(f"{name:<10} {p:<6} {v['truth']:>8.3f} {g(v['bias']):>8} {g(v['sd'], '.3f'):>8} {g(v['coverage'], '.0%'):>8}")
    lines += [f"  {k} skipped: {v}" for k, v in record["skipped"].items()]
    ck = record["check"]
    lines.append(f"bracketed minima: {g(record['bracketed_fraction'], '.0%')} of budgets; allocation check at C = {ck.get('C', float('nan')):.3g}: "
                 f"flags a +-{ck.get('shift_a', 0.1)} error in a with probability {g(record['check_power'], '.0%')} "
                 f"(false alarms {g(record['check_false_alarm'], '.0%')})")
    lines += [f"  note: {n}" for n in ck.get("notes", [])]
    est = record["est_seconds"]
    lines.append(f"plan: {record['compute']:.3g} FLOPs" + (f", about {_duration(est)}" if est else ", no time estimate"))
    return "\n".join(lines)
