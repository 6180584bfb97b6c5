"""The prediction check: the fit's compute-optimal prediction at the next budget, the shape that
tests it, and the record of what training that shape achieved (FIT_DIR/check.json).

The pure half of `scaling verify` (experiments/workflow/check.py trains; this module decides and
records, so it is testable without training):

    C = next_budget(record)                       # the sweep's next budget up
    rows, why = predictions(record, C)            # per approach with a loss model, or the skip reason
    i = nearest([N of each ladder shape], N_opt)  # the shape to train: nearest in log N
    entry(approach, C, run, rows[approach])       # one record of "checks" in check.json

check.json: {"C", "status": done|failed|skipped, "reason", "shape_rule", "checks": [one entry per
approach that made a prediction: exactly {"C", "N", "D", "run_id", "approach", "predicted":
{"value", "pi": [lo, hi]}, "achieved", "error", "relative_error", "inside"}], "runs": [each run
trained, with its state], "predictions": {approach: predict()'s row at C}, "neighbours" (with
--neighbours), "notes"}. `error` = achieved - predicted (nats); `relative_error` = error /
predicted; `inside`: the achieved loss lies in the prediction interval; None (no verdict) where the
approach has no interval (fewer than MIN_DOF = 3 residual degrees of freedom: predicted.no_interval
says so); False when the run did not finish.
A failed check run leaves achieved/error null and says so in "status" and "reason".
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

from analysis.errors import AnalysisError
from analysis.predict import predict

CHECK_JSON = "check.json"
SHAPE_RULE = "the trainable shape of the experiment's size ladder nearest N_opt in log N (no interpolation)"
NEXT_BUDGET_FALLBACK = 3.0  # with one budget: the next is 3x the largest C
STALE_TOL = 1e-6  # relative: a stored prediction differing more than this from the fit's is stale
MIN_DOF = 3  # residual degrees of freedom behind a prediction interval; fewer: no interval, no verdict


def residual_dof(entry: dict) -> int | None:
    """The residual degrees of freedom behind an approach's loss prediction: approach 3 (and other
    laws) n - k of its fit, approach 2 its L*(C)'s budgets - 2; None where the record does not say."""
    if (entry.get("loss_law") or {}).get("dof") is not None:
        return int(entry["loss_law"]["dof"])
    dof = (entry.get("goodness") or {}).get("residual_dof")
    return None if dof is None else int(dof)


# ---------------------------------------------------------------- what to check ------------------
def next_budget(record: dict) -> float:
    """One step past the sweep's largest budget at the ratio of its last two (3x C_max with one)."""
    budgets = sorted(float(b) for b in record.get("budgets") or [])
    if len(budgets) >= 2 and budgets[-1] > budgets[-2]:
        return budgets[-1] * budgets[-1] / budgets[-2]
    return NEXT_BUDGET_FALLBACK * float(record["data_range"]["C"][1])


def predictions(record: dict, C: float) -> tuple[dict[str, dict], str | None]:
    """({approach: predict() row at C} for every approach that predicts a finite N_opt and loss,
    None), or ({}, the reason no approach does)."""
    frontier = [n for n, e in record["fits"].items() if "frontier_model" in e]
    if not frontier:
        why = [f"{k}: {v}" for k, v in (record.get("skipped") or {}).items()]
        head = "no approach has a compute-optimal frontier"
        if not record["fits"]:
            head += " (every approach was refused)"
        elif why:
            head += f" (fitted: {', '.join(record['fits'])}, without one)"
        else:
            head += f" (the fit is {', '.join(record['fits'])}; fit with --law chinchilla)"
        return {}, head + (": " + "; ".join(why) if why else "")
    rows, why = {}, []
    for name in frontier:
        (row,) = predict(record, name, [C])
        loss = row["loss"]
        if loss is None:
            why.append(f"{name}: no loss model")
        elif not (math.isfinite(row["N_opt"]["value"]) and math.isfinite(loss["value"])):
            why.append(f"{name}: no compute-optimal optimum at C = {C:.3g} (the fitted law has none)")
        else:
            dof = residual_dof(record["fits"][name])
            if dof is not None and dof < MIN_DOF and loss.get("pi"):  # no interval, so no verdict (issue 23)
                row["loss"] = {**loss, "ci": None, "pi": None,
                               "no_interval": f"{dof} residual degree(s) of freedom; an interval needs >= {MIN_DOF}"}
            rows[name] = {**row, "residual_dof": dof}
    if not rows:
        return {}, "no approach predicts a loss at the optimum: " + "; ".join(why)
    return rows, None


def nearest(sizes_N: Sequence[float], target: float, exclude: Sequence[int] = ()) -> int | None:
    """Index of the size nearest `target` in log N (ties: the smaller), skipping `exclude`."""
    best, best_d = None, math.inf
    for i, n in enumerate(sizes_N):
        if i in exclude or not (n and n > 0):
            continue
        d = abs(math.log(n / target))
        if d < best_d - 1e-12 or (abs(d - best_d) <= 1e-12 and best is not None and n < sizes_N[best]):
            best, best_d = i, d
    return best


def neighbour_indices(sizes_N: Sequence[float], chosen: int, N_opt: float) -> tuple[int | None, int | None]:
    """The ladder shapes nearest N_opt/2 below the chosen one and nearest 2 N_opt above it
    (None where the ladder has nothing on that side)."""
    n0 = sizes_N[chosen]
    below = [i for i, n in enumerate(sizes_N) if n < n0]
    above = [i for i, n in enumerate(sizes_N) if n > n0]
    lo = nearest(sizes_N, N_opt / 2, exclude=[i for i in range(len(sizes_N)) if i not in below])
    hi = nearest(sizes_N, N_opt * 2, exclude=[i for i in range(len(sizes_N)) if i not in above])
    return lo, hi


# ---------------------------------------------------------------- the record ----------------------
def entry(approach: str, C: float, run: dict, row: dict) -> dict:
    """One check: the prediction of `approach` at C (predict()'s `row`) against `run` (its
    "run_id", "N", "D" and "achieved" loss, None when the run did not finish)."""
    loss = row["loss"]
    pred, pi = float(loss["value"]), loss.get("pi")
    achieved = run.get("achieved")
    ok = achieved is not None and math.isfinite(achieved)
    error = float(achieved) - pred if ok else None
    return {
        "C": float(C),
        "N": run.get("N"),
        "D": run.get("D"),
        "run_id": run["run_id"],
        "approach": approach,
        "predicted": {"value": pred, "pi": [float(pi[0]), float(pi[1])] if pi else None,
                      **({"no_interval": loss["no_interval"]} if not pi and loss.get("no_interval") else {})},
        "achieved": float(achieved) if ok else None,
        "error": error,
        "relative_error": error / pred if ok else None,
        # no interval (fewer than MIN_DOF residual dof): no verdict, None; a failed run: False
        "inside": (None if ok and not pi else bool(ok and pi is not None and pi[0] <= achieved <= pi[1])),
    }


def interval_units(e: dict) -> float | None:
    """The error in half-widths of the prediction interval on its side: +-1 is the interval's edge."""
    pi = e["predicted"]["pi"]
    if e["error"] is None or not pi:
        return None
    half = (pi[1] - e["predicted"]["value"]) if e["error"] >= 0 else (e["predicted"]["value"] - pi[0])
    return e["error"] / half if half > 0 else None


def neighbours_verdict(runs: Sequence[dict], optimum_run: str) -> dict:
    """Of the optimum's run and its neighbours (same C), which achieved the lowest loss."""
    done = [r for r in runs if r.get("achieved") is not None]
    out = {"runs": [r["run_id"] for r in runs], "best": None, "optimum_was_best": None}
    if len(done) == len(runs) and len(runs) > 1:
        best = min(done, key=lambda r: r["achieved"])
        out.update(best=best["run_id"], optimum_was_best=best["run_id"] == optimum_run)
    return out


def skipped(C: float, reason: str, notes: Sequence[str] = ()) -> dict:
    return {"C": float(C), "status": "skipped", "reason": reason, "shape_rule": SHAPE_RULE, "checks": [], "runs": [], "notes": list(notes)}


def read_check(out_dir) -> dict | None:
    path = os.path.join(os.fspath(out_dir), CHECK_JSON)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path} is not valid JSON ({e}); delete it and run `scaling verify` again") from None


def attach(record: dict, check: dict | None) -> dict:
    """The record with its check (for the report and figures; fit.json never holds it). A check
    whose predictions this fit no longer makes (the fit changed since) is marked "stale"."""
    if check is None:
        return record
    check = dict(check)
    stale = []
    for e in check.get("checks", []):
        try:
            (row,) = predict(record, e["approach"], [e["C"]])
            now = row["loss"]["value"] if row["loss"] else None
        except AnalysisError:
            now = None
        if now is None or abs(now - e["predicted"]["value"]) > STALE_TOL * abs(now):
            stale.append(e["approach"])
    check["stale"] = stale
    return {**record, "check": check}


# ---------------------------------------------------------------- report.md -----------------------
def _f(v, spec=".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown_lines(check: dict, record: dict) -> list[str]:
    """The "Prediction check" section of report.md."""
    lvl = f"{record['options']['ci_level']:.0%}"
    C = check["C"]
    c_max = record["data_range"]["C"][1]
    where = f"x{C / c_max:.3g} beyond the largest budget of the data" if C > c_max * (1 + 1e-9) else "within the data"
    lines = ["## Prediction check", ""]
    if check.get("status") == "skipped":
        lines.append(f"Skipped at C = {C:.3g} FLOPs: {check['reason']}.")
        return lines + [f"- Note: {n}" for n in check.get("notes", [])] + [""]
    runs = {r["run_id"]: r for r in check.get("runs", [])}
    lines.append(
        f"The fit predicted the compute-optimal loss at C = {C:.3g} FLOPs ({where}); the model it recommends "
        f"was trained there with the sweep's own rules and compared. Shape: {check.get('shape_rule', SHAPE_RULE)}."
    )
    if check.get("stale"):
        lines += ["", f"> warning: check.json was made against an earlier fit ({', '.join(check['stale'])} now predict(s) otherwise); run `scaling verify` again."]
    lines += ["", f"| approach | N_opt predicted | N trained | D trained | predicted loss | {lvl} pi | achieved | error (nats) | error / pi half-width | relative error | inside |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    preds = check.get("predictions", {})
    for e in check["checks"]:
        n_opt = (preds.get(e["approach"]) or {}).get("N_opt", {}).get("value")
        pi = e["predicted"]["pi"]
        u = interval_units(e)
        run = runs.get(e["run_id"], {})
        achieved = _f(e["achieved"]) if e["achieved"] is not None else f"run {run.get('state', 'failed')}"
        why = e["predicted"].get("no_interval")
        inside = "yes" if e["inside"] else (f"no verdict (no interval{': ' + why if why else ''})" if e["achieved"] is not None and not pi else "no")
        lines.append(
            f"| {e['approach']} | {_f(n_opt, '.4g')} | {_f(e['N'], '.4g')} | {_f(e['D'], '.4g')} | {e['predicted']['value']:.4f} | "
            + (f"[{pi[0]:.4f}, {pi[1]:.4f}]" if pi else "n/a")
            + f" | {achieved} | {_f(e['error'], '+.4f')} | {_f(u, '+.2f')} | {_f(e['relative_error'], '+.2%')} | {inside} |"
        )
    lines.append("")
    for r in check.get("runs", []):
        head = f"- Run `{r['run_id']}` ({r.get('role', 'check')}; {r.get('shape', '')}): N = {_f(r.get('N'), '.4g')}, D = {_f(r.get('D'), '.4g')}"
        if r.get("state") == "done":
            line = head + f", achieved {_f(r.get('achieved'))}."
            if r.get("law_at_run") is not None:
                line += f" Approach 3's law at this (N, D): {r['law_at_run']:.4f}."
        else:
            line = head + f": **{r.get('state', 'failed')}** ({r.get('reason') or 'no reason recorded'}); the fit's other outputs stand."
        lines.append(line)
    nb = check.get("neighbours")
    if nb:
        if nb.get("optimum_was_best") is None:
            lines.append(f"- Neighbours (N_opt/2 and 2 N_opt at the same C): {nb.get('note') or 'not every run finished; no verdict'}.")
        else:
            verdict = "was" if nb["optimum_was_best"] else f"was NOT (best: `{nb['best']}`)"
            lines.append(f"- Neighbours at the same C: the predicted optimum {verdict} the best of the {len(nb['runs'])}.")
        for m in nb.get("missing", []):
            lines.append(f"- Neighbour: {m}.")
    lines += allocation_lines(check, "- ")
    lines += [f"- Note: {n}" for n in check.get("notes", [])]
    lines.append("- Error / pi half-width: the error divided by the prediction interval's half-width on its side (|x| <= 1: inside).")
    return lines + [""]


def console_lines(check: dict) -> list[str]:
    """A few lines for the terminal."""
    C = check["C"]
    if check.get("status") == "skipped":
        return [f"prediction check at C = {C:.3g}: skipped: {check['reason']}"]
    out = []
    runs = {r["run_id"]: r for r in check.get("runs", [])}
    for e in check["checks"]:
        pi = e["predicted"]["pi"]
        head = f"prediction check at C = {C:.3g} ({e['approach']}, run {e['run_id']}, N = {_f(e['N'], '.4g')}): predicted {e['predicted']['value']:.4f}" + (f" [{pi[0]:.4f}, {pi[1]:.4f}]" if pi else "")
        if e["achieved"] is None:
            run = runs.get(e["run_id"], {})
            out.append(head + f", achieved: none (run {run.get('state', 'failed')}: {run.get('reason') or 'no reason recorded'})")
        else:
            u = interval_units(e)
            out.append(head + f", achieved {e['achieved']:.4f}: error {e['error']:+.4f} nats ({e['relative_error']:+.2%}"
                       + (f", {u:+.2f} pi half-widths" if u is not None else "") + "), "
                       + (("inside" if e["inside"] else "OUTSIDE") + " the interval" if pi
                          else f"no verdict (no prediction interval{': ' + e['predicted']['no_interval'] if e['predicted'].get('no_interval') else ''})"))
    out += allocation_lines(check, "  ")
    nb = check.get("neighbours")
    if nb and nb.get("optimum_was_best") is not None:
        out.append("  neighbours: the predicted optimum " + ("was the best of the three" if nb["optimum_was_best"] else f"was not the best (best: {nb['best']})"))
    return out



def allocation_lines(check: dict, bullet: str) -> list[str]:
    """The allocation check (analysis/allocation.py) in words: the measured optimum, each approach's
    predicted N_opt against it, and the smallest shift in a the check could have detected."""
    al = check.get("allocation")
    if not al:
        return []
    m = al.get("measured") or {}

    def n_ci(v):
        return "n/a" if v.get("value") is None else f"{v['value']:.4g}" + (f" [{v['ci'][0]:.4g}, {v['ci'][1]:.4g}]" if v.get("ci") else "")

    out = [f"{bullet}Allocation check at C = {check['C']:.3g}: {len(al.get('points', []))} sizes trained; measured N_opt {n_ci(m)}"
           + (f" ({m.get('no_interval') or m.get('reason')})" if not m.get("ci") and (m.get("no_interval") or m.get("reason")) else "") + "."]
    for e in check.get("checks", []):
        a = e.get("allocation")
        if not a:
            continue
        verdict = "no verdict: " + a.get("no_verdict", "") if a["inside"] is None else ("consistent" if a["inside"] else "INCONSISTENT")
        err = f", log10 error {a['log10_error']:+.3f}" if a.get("log10_error") is not None else ""
        out.append(f"{bullet}  {e['approach']}: predicted N_opt {n_ci(a['predicted_N_opt'])}{err}: {verdict}")
    if al.get("detectable_shift_a") is not None:
        out.append(f"{bullet}  smallest shift in a this check could detect: {al['detectable_shift_a']:.3f} (the measured interval's half-width "
                   "over the decades of C from the data's centre)")
    out += [f"{bullet}  note: {n}" for n in al.get("notes", [])]
    return out
