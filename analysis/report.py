"""The entry points: fit a dataset and write DIR/fit.json, DIR/report.md and the figures;
re-draw the figures of an existing DIR; read numbers back out of a record.

    record = fit_and_report("runs/quickstart", "runs/quickstart/fit", {"approach": "all"})
    print(summary(record))                      # each approach, a, and the prediction at the next budget
    predict(record, "approach3", [1e13])        # N_opt, D_opt, loss (ci, pi) at any C
    replot("runs/quickstart/fit")               # `scaling plot`

fit.json (schema 2) opens with the data: "data_range" (N, D, C, loss), "budgets", the
"cost_model" every number uses (C = c(N)·D), "entropy_floor" where the runs record one, the
"conventions", "filters" and "notes". Under "fits", one entry per approach ("approach1..3" for
--law chinchilla, else the law's name), each with "params" as {name: {"value", "ci"}}, "a" and
"b", its "bootstrap" accounting (resampled unit, used / failed / refused counts, flagged when
under 80% usable) and usable samples, its "goodness" (residual RMSE in nats and the
leave-one-budget-out check), the compute-optimal "table" at the anchors (C_max x 1, 3, 10, 100
and any --at; each row with its "extrapolation" factor) and a "grid" for the figures. Then
"sensitivity" (a and N_opt under other conventions), "skipped" approaches with the reason, and
"holdout". Files are written atomically (temp file + os.replace): a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from analysis import plots, progress
from analysis.data import Dataset, apply_filters, load
from analysis.errors import AnalysisError
from analysis.pipeline import FitOptions, run_fits
from analysis.predict import extrapolation_text, predict
from analysis.verify import attach as attach_check, markdown_lines as check_lines, read_check

FIT_JSON, REPORT_MD, POINTS_CSV = "fit.json", "report.md", "points.csv"


def write_atomic(path, text: str) -> None:
    """Write a temp file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(x):
    """NaN/inf are not JSON: store null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def prepare(data, options: FitOptions) -> Dataset:
    """Load (unless already a Dataset) and filter the data as the options say."""
    ds = data if isinstance(data, Dataset) else load(data, params=options.params, metric=options.metric, train_loss_fallback=options.train_loss_fallback)
    return apply_filters(ds, options.min_tokens_per_param, options.exclude_top_loss)


def fit_and_report(data, out_dir, options=None, sections=None) -> dict:
    """Fit `data` (a CSV path, a run-store folder or a `Dataset`) and write DIR/fit.json,
    DIR/report.md and the figures. `options`: a `FitOptions`, a dict of its fields, or None for
    the defaults. `sections`: None, or a function of the fit.json record giving the lines that
    report.md carries after its own (e.g. `scaling run`'s lr rule and sensitivity fits).
    Returns the fit.json record. Raises `AnalysisError` on unusable input."""
    opts = FitOptions.from_any(options).validate()
    ds = prepare(data, opts)
    record = run_fits(ds, opts)
    os.makedirs(out_dir, exist_ok=True)
    if not record["source"].get("path"):
        # data handed over in memory: keep the points beside fit.json so `scaling plot` can redraw
        points_csv = os.path.join(out_dir, POINTS_CSV)
        write_atomic(points_csv, ds.points.to_csv(index=False))
        record["source"] = {**record["source"], "kind": "csv", "path": os.path.abspath(points_csv), "copied_from": "an in-memory data frame"}
        record["filters_applied_before_copy"] = True
    check = read_check(out_dir)  # a prediction check of an earlier fit here: shown, marked stale if this fit differs
    earlier = _earlier_figures(out_dir)
    if opts.figures:
        progress.stage("figures")
    record["figures"] = [os.path.basename(p) for p in plots.draw_all(attach_check(record, check), ds.points, out_dir)] if opts.figures else []
    for name in sorted(earlier - set(record["figures"])):  # a refit drawing fewer figures leaves none of the old fit's behind
        os.unlink(os.path.join(out_dir, name))
    record = json_safe(record)
    write_atomic(os.path.join(out_dir, FIT_JSON), json.dumps(record, indent=2, allow_nan=False) + "\n")
    write_report(out_dir, record, check, sections(record) if sections else ())
    return record


def write_report(out_dir, record: dict, check: dict | None, sections=()) -> None:
    """The one writer of DIR/report.md: the fit's markdown (with the check, if any), then `sections`."""
    text = markdown(attach_check(record, check))
    if sections:
        text = text.rstrip("\n") + "\n\n" + "\n".join(sections) + "\n"
    write_atomic(os.path.join(out_dir, REPORT_MD), text)


def _earlier_figures(out_dir) -> set[str]:
    """The figure files the fit already in `out_dir` drew (its fit.json lists them): the only files
    a refit there may remove."""
    try:
        names = read_record(out_dir).get("figures") or []
    except AnalysisError:  # no earlier fit (or an unreadable one): nothing known to be ours
        return set()
    return {n for n in names if isinstance(n, str) and n == os.path.basename(n) and n.endswith((".png", ".svg"))
            and os.path.isfile(os.path.join(out_dir, n))}


def read_record(out_dir) -> dict:
    path = os.path.join(out_dir, FIT_JSON)
    if not os.path.exists(path):
        raise AnalysisError(f"{path} does not exist; run `scaling fit` first")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path} is not valid JSON ({e})") from None


def replot(out_dir) -> list[str]:
    """Re-draw the figures from DIR/fit.json and the data it names (no refitting)."""
    record = read_record(out_dir)
    src = record.get("source", {})
    if not src.get("path") or not os.path.exists(src["path"]):
        raise AnalysisError(f"the data fit.json names ({src.get('path')}) is gone; fit again")
    opts = FitOptions.from_any(record["options"])
    if record.get("filters_applied_before_copy"):
        opts = FitOptions.from_any({**record["options"], "min_tokens_per_param": None, "exclude_top_loss": 0})
    ds = prepare(src["path"], opts)
    if len(ds.points) != record["n_points"]:
        raise AnalysisError(
            f"the data at {src['path']} now give {len(ds.points)} points, fit.json was fitted on "
            f"{record['n_points']}; fit again rather than draw a fit over other data"
        )
    return plots.draw_all(attach_check(record, read_check(out_dir)), ds.points, out_dir)


def render(out_dir, sections=()) -> list[str]:
    """Re-draw the figures and rewrite report.md from DIR/fit.json and DIR/check.json (after
    `scaling verify` writes the check), `sections` after the fit's own. Returns the figure paths."""
    record = read_record(out_dir)
    write_report(out_dir, record, read_check(out_dir), sections)
    return replot(out_dir) if record.get("figures") else []


# ------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4g}"


def _ci(p, key="ci") -> str:
    return f"[{_fmt(p[key][0])}, {_fmt(p[key][1])}]" if p and p.get(key) else ""


def _extrap(factor: float) -> str:
    return extrapolation_text(factor)


def data_range_line(record: dict) -> str:
    r, src = record["data_range"], record.get("source", {})
    units = src.get("units", "tokens")  # image classifiers: images (and the loss is per image)
    what = "top-1 error" if src.get("metric") == "error" else f"nats/{units[:-1]}"
    return (
        f"N {_fmt(r['N'][0])}..{_fmt(r['N'][1])} params, D {_fmt(r['D'][0])}..{_fmt(r['D'][1])} {units}, "
        f"C {_fmt(r['C'][0])}..{_fmt(r['C'][1])} FLOPs in {record['n_budgets']} budget(s), "
        f"loss {r['loss'][0]:.4f}..{r['loss'][1]:.4f} {what} ({record['n_points']} points)"
    )


def prediction_lines(record: dict, C: float) -> list[str]:
    """One line per approach: N_opt, D_opt and the loss (ci, pi) at C, and whether C extrapolates."""
    lines = []
    for name, e in record["fits"].items():
        if "frontier_model" not in e:
            continue
        (row,) = predict(record, name, [C])
        n, d, loss = row["N_opt"], row["D_opt"], row["loss"]
        txt = f"  {name} at C = {C:.3g} ({_extrap(row['extrapolation'])}): N_opt = {_fmt(n['value'])} {_ci(n)}, D_opt = {_fmt(d['value'])} {_ci(d)}"
        txt += f", loss = {loss['value']:.4f} {_ci(loss)} (prediction interval {_ci(loss, 'pi') or 'n/a'})" if loss else ", loss: no loss model"
        lines.append(txt)
    return lines


def _extrap_nd(row: dict) -> str:
    parts = [f"{k} x{row['extrapolation'][k]:.3g} {row['extrapolation_side'][k]} the data" for k in ("N", "D") if row["extrapolation"][k]]
    return "extrapolation: " + ", ".join(parts) if parts else "within the data in N and D"


def loss_law_line(ll: dict) -> str:
    """Approach 2's L*(C): its floor and where E comes from, the weights, and why there is no interval."""
    E = ll.get("E", 0.0)
    head = f"L*(C) = {E:.4g} + {ll['A']:.4g} * C^-{ll['gamma']:.4f}" if E else f"L*(C) = {ll['A']:.4g} * C^-{ll['gamma']:.4f}"
    line = (f"{head} through the budgets' minimum losses (E from {ll.get('E_source') or 'nowhere: no floor'}; "
            f"{'weighted by each minimum loss standard error' if ll.get('weighted') else 'unweighted'}; "
            f"{ll['dof']} residual dof; RMSE {ll['rmse_nats']:.4f} nats)")
    why = ll.get("no_interval") or ("no residual dof" if ll["dof"] < 1 else None)
    return line + (f"; its loss predictions carry no interval: {why}." if why else ".")


def point_lines(rows: list[dict]) -> list[str]:
    """One line per predict_points row: the loss at (N, D) with ci and pi, and how far N and D extrapolate."""
    return [
        f"  {r['approach']} at N = {r['N']:.3g}, D = {r['D']:.3g} ({_extrap_nd(r)}): loss = {r['loss']['value']:.4f} "
        f"{_ci(r['loss']) or '(no interval)'} (prediction interval {_ci(r['loss'], 'pi') or 'n/a'})"
        for r in rows
    ]


def points_table_lines(record: dict, lvl: str) -> list[str]:
    """report.md's table of the loss at the (N, D) pairs given to `scaling fit --model/--tokens`."""
    rows = [r for e in record["fits"].values() for r in e.get("points_table", [])]
    if not rows:
        return []
    out = ["", "## Loss at given (N, D)", "", f"The loss each law predicts at the --model/--tokens pairs; {lvl} intervals over the bootstrap refits, "
           "the prediction interval (pi) adds the scatter of a new run (residual scale corrected for the fitted parameters).", "",
           "| approach | N | D | D/N | loss [ci] | loss pi | range |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = r["loss"]
        out.append(f"| {r['approach']} | {r['N']:.3g} | {r['D']:.3g} | {_fmt(r['D'] / r['N'])} | {loss['value']:.4f} {_ci(loss) or '(no interval)'} | "
                   f"{_ci(loss, 'pi') or 'n/a'} | {_extrap_nd(r)} |")
    return out


def summary(record: dict, C: float | None = None) -> str:
    """A few lines for a terminal: the data range, each fit with intervals, and the prediction at
    compute C (default: 3x the largest C in the data)."""
    C = C or 3.0 * record["data_range"]["C"][1]
    lines = [f"data: {data_range_line(record)}", f"cost model: {record['cost_model']['description']}"]
    for name, e in record["fits"].items():
        params = ", ".join(f"{k}={_fmt(p['value'])}{' (held)' if k == 'E' and e.get('E_pinned') else ' ' + _ci(p) if p.get('ci') else ''}"
                           for k, p in e["params"].items())
        lines.append(f"{name} ({e['n_points']} points): {params}")
        if "a" in e and "a" not in e["params"]:
            lines.append(f"  N_opt ~ C^{_fmt(e['a']['value'])} {_ci(e['a'])}, D_opt ~ C^{_fmt(e['b']['value'])} {_ci(e['b'])}")
        boot = e.get("bootstrap")
        if boot and boot["flagged"]:
            lines.append(f"  warning: only {boot['n_used']} of {boot['n_resamples']} bootstrap resamples usable; intervals are rough")
    lines += prediction_lines(record, C)
    for name, why in record.get("skipped", {}).items():
        lines.append(f"{name} skipped: {why}")
    ho = record.get("holdout")
    if ho:
        lines.append(f"holdout: without the {ho['k']} largest budget(s) the fit predicts their points to {ho['mean_abs_rel_error']:.2%} mean |relative error|")
    return "\n".join(lines)


def _boot_line(e: dict, lvl: str) -> str:
    b = e["bootstrap"]
    extra = ", ".join(f"{k[2:].replace('_', ' ')}: {v}" for k, v in b.items() if k.startswith("n_") and k not in ("n_resamples", "n_used"))
    line = (
        f"{lvl} intervals from {b['n_used']} usable of {b['n_resamples']} bootstrap resamples "
        f"(unit: {b['unit']}; seed {b['seed']}; {extra or 'none unusable'})."
    )
    if b["flagged"]:
        line += f" **Flagged: under {80}% usable; the intervals are rough.**"
    return line


def _goodness_lines(e: dict) -> list[str]:
    g = e.get("goodness") or {}
    out = []
    if g.get("rmse_nats") is not None:
        out.append(f"Residual RMSE {g['rmse_nats']:.4f} nats ({g.get('rmse_what', 'fitted minus observed loss over the points')}).")
    lobo = g.get("lobo")
    if lobo and lobo["budgets"]:
        head = f"Leave-one-budget-out: {lobo['n']} budget(s) predicted from the others"
        if "mean_abs_log10_N_ratio" in lobo:
            head += f"; N_opt off by a factor {10 ** lobo['mean_abs_log10_N_ratio']:.3g} on average"
        if "mean_abs_loss_error_nats" in lobo:
            head += f", minimum loss off by {lobo['mean_abs_loss_error_nats']:.4f} nats"
        out += ["", head + ".", "", "| budget C | observed N_opt | predicted N_opt | observed min loss | predicted min loss |", "|---|---|---|---|---|"]
        for r in lobo["budgets"]:
            o, p = r["observed"], r.get("predicted")
            if p is None:
                out.append(f"| {r['C']:.3g} | {_fmt(o['N_opt'])} | skipped: {r.get('skipped', '')} | {o['loss']:.4f} | |")
            else:
                out.append(f"| {r['C']:.3g} | {_fmt(o['N_opt'])} | {_fmt(p['N_opt'])} | {o['loss']:.4f} | {_fmt(p.get('loss'))} |")
        out.append("")
        out.append("Observed optima: the budget's local IsoFLOP fit, or its lowest point where the minimum is not bracketed.")
    return out


def markdown(record: dict) -> str:
    """report.md: the data range first, then the compute-optimal table anchored to the data, then
    each approach with its intervals, accounting and goodness of fit, sensitivity and holdout."""
    lvl = f"{record['options']['ci_level']:.0%}"
    src = record["source"]
    lines = [
        "# Scaling-law fit",
        "",
        f"**Data range:** {data_range_line(record)}. Every number below outside C = {record['data_range']['C'][0]:.3g}..{record['data_range']['C'][1]:.3g} is an extrapolation, marked with its factor.",
        "",
        *(check_lines(record["check"], record) if record.get("check") else []),
        f"- Data: {src['kind']} `{src['path']}`.",
        *[f"- Trained in: {k} ({n} run(s)). The same command reproduces these numbers bit for bit there; on another CPU "
          "model, core count or jax version they move by rounding (lib/train/environment.py)."
          for k, n in (src.get("environments") or {}).items()],
        f"- Cost model (used by every approach, table and figure): {record['cost_model']['description']}.",
        *[f"- {k}: {v}" for k, v in record["conventions"].items() if k != "C_model"],
    ]
    floor = record.get("entropy_floor")
    e3 = record["fits"].get("approach3")
    if floor is not None:
        images = record.get("source", {}).get("units") == "images"
        what = "the Bayes cross-entropy of the images" if images else "best achievable loss over a training window"
        line = f"- Entropy floor recorded by the runs ({what}): {floor:.4f} nats/{'image' if images else 'token'}."
        if e3 and not e3.get("E_pinned"):
            E = e3["params"]["E"]
            line += f" Fitted E = {E['value']:.4f} {_ci(E)}: {'consistent with' if E.get('ci') and E['ci'][0] <= floor <= E['ci'][1] else ('below' if E['value'] < floor else 'above')} the floor."
        lines.append(line)
    lines += pinned_E_lines(record)
    f = record["filters"]
    lines.append(
        f"- Filters: min tokens per parameter = {f.get('min_tokens_per_param')}, exclude top loss = "
        f"{f.get('exclude_top_loss')}; {f.get('n_dropped', 0)} points removed"
        + (f" ({', '.join(f['dropped'][:10])}{', ...' if len(f['dropped']) > 10 else ''})" if f.get("dropped") else "")
        + "."
    )
    for note in record.get("notes", []):
        lines.append(f"- Note: {note}")
    for name, why in record.get("skipped", {}).items():
        lines.append(f"- Skipped {name}: {why}")

    front = {k: e["table"] for k, e in record["fits"].items() if "table" in e}
    if front:
        lines += ["", "## Compute-optimal allocation", "", f"Anchored to the data: the largest budget x 1, 3, 10, 100 (and any --at). {lvl} intervals; the loss's prediction interval (pi) includes the scatter of a new run.", ""]
        lines += ["| approach | C (FLOPs) | N_opt | D_opt | D/N | loss [ci] | loss pi | range |", "|---|---|---|---|---|---|---|---|"]
        for name, rows in front.items():
            for r in rows:
                n, d, loss = r["N_opt"], r["D_opt"], r["loss"]
                cells = [name, f"{r['C']:.3g}", f"{_fmt(n['value'])} {_ci(n)}", f"{_fmt(d['value'])} {_ci(d)}", _fmt(d["value"] / n["value"])]
                cells += [f"{loss['value']:.4f} {_ci(loss) or '(no interval' + (': ' + loss['no_interval'] if loss.get('no_interval') else '') + ')'}",
                          _ci(loss, "pi") or "n/a"] if loss else ["n/a (no loss model)", ""]
                cells.append(_extrap(r["extrapolation"]))
                lines.append("| " + " | ".join(cells) + " |")

    lines += points_table_lines(record, lvl)

    for name, e in record["fits"].items():
        lines += ["", f"## {name}: {e.get('formula', '')}", ""]
        if e.get("bootstrap"):
            lines.append(_boot_line(e, lvl))
        if "huber_delta" in e:
            state = "converged" if e["converged"] else "did NOT converge"
            lines.append(f"Fitted on {e['n_points']} points: Huber loss (delta {e['huber_delta']:g}) of log residuals, L-BFGS from {e['n_starts']} starts; the best {state} ({e['status']}).")
        else:
            lines.append(f"Fitted on {e['n_points']} points.")
        if e.get("points_used"):
            lines.append(f"Points used: {e['points_used']['rule']} ({len(e['points_used']['runs'])} points).")
        if e.get("loss"):
            lines.append(f"Loss: {e['loss']}.")
        for lo in e.get("left_out", []):
            lines.append(f"Left out: {lo}.")
        lines += ["", f"| parameter | value | {lvl} interval |", "|---|---|---|"]
        for k, p in e["params"].items():
            lines.append(f"| {k} | {_fmt(p['value'])} | {_ci(p) or '-'} |")
        for k in ("a", "b"):
            if k in e and k not in e["params"]:
                lines.append(f"| {k} | {_fmt(e[k]['value'])} | {_ci(e[k]) or '-'} |")
        if e.get("exponents_note"):
            lines += ["", e["exponents_note"] + "."]
        if e.get("loss_law"):
            ll = e["loss_law"]
            lines += ["", loss_law_line(ll)]
        if e.get("approach") == 2:
            lines += ["", "| budget C | points | window | N_opt [+-1 se] | D_opt | min loss | noise behind the se | status |",
                      "|---|---|---|---|---|---|---|---|"]
            for b in e["budgets"]:
                status = ("used" + (" (one-sided window)" if b.get("one_sided") else "")) if b["accepted"] else f"refused: {b['reason']}"
                se = b.get("log10_N_opt_se")
                band = f" [{_fmt(b['N_opt'] / 10 ** se)}, {_fmt(b['N_opt'] * 10 ** se)}]" if se is not None and b["accepted"] and math.isfinite(se) else ""
                noise = f"{b['sigma']:.3g} nats: {b.get('sigma_source', '')}" if b["accepted"] and b.get("sigma") is not None and math.isfinite(b["sigma"]) else "-"
                lines.append(f"| {b['C']:.3g} | {b['n_points']} | {len(b.get('window') or [])} sizes | {_fmt(b['N_opt'])}{band} | {_fmt(b['D_opt'])} | "
                             f"{_fmt(b['loss_opt'])} | {noise} | {status} |")
            if e["budgets"] and e["budgets"][0].get("rule"):
                lines += ["", f"Minimum rule: {e['budgets'][0]['rule']}"]
        lines += [""] + _goodness_lines(e)
        for w in e.get("warnings", []):
            lines.append(f"\n> warning: {w}")

    sens = record.get("sensitivity")
    if sens:
        lines += ["", f"## Sensitivity (Approach 3 at the largest budget, C = {record['data_range']['C'][1]:.3g})", "", "| convention | a | N_opt at C_max |", "|---|---|---|"]
        lines += [f"| {r['what']} | {_fmt(r['a'])} | {_fmt(r['N_opt_at_C_max'])} |" for r in sens]
    lines += lr_sensitivity_lines(record)
    lines += seed_sensitivity_lines(record)
    ho = record.get("holdout")
    if ho:
        lines += [
            "",
            f"## Out-of-sample check: {ho['law']} fitted without the {ho['k']} largest budget(s) ({', '.join(f'{c:.3g}' for c in ho['budgets'])})",
            "",
            f"Mean |relative error| {ho['mean_abs_rel_error']:.3%}, max {ho['max_abs_rel_error']:.3%}, RMSE {ho['rmse_nats']:.4g} nats.",
            "",
            "| run | N | D | C | observed | predicted | rel. error |",
            "|---|---|---|---|---|---|---|",
            *[f"| {p['run']} | {p['N']:.3g} | {p['D']:.3g} | {p['C']:.3g} | {p['observed']:.4f} | {p['predicted']:.4f} | {p['rel_error']:+.2%} |" for p in ho["points"]],
        ]
        for m in ho.get("minima", []):
            lines.append(f"\nHeld-out budget {m['C']:.3g}: observed optimum N = {_fmt(m['observed']['N_opt'])}, loss {m['observed']['loss']:.4f}; predicted N = {_fmt(m['predicted']['N_opt'])}, loss {m['predicted']['loss']:.4f}.")
    figs = [f for f in record.get("figures", []) if f.endswith(".png")]
    if figs:
        lines += ["", "## Figures", "", *[f"![{f[:-4]}]({f})" for f in figs]]
    return "\n".join(lines) + "\n"


def lr_sensitivity_lines(record: dict) -> list[str]:
    """The learning-rate policy's effect: each approach's a with every point at lr x f of its rule, and at its best."""
    sens = record.get("lr_sensitivity")
    if not sens:
        return []
    variants = sorted({v for row in sens.values() for v in row if v.startswith("lr_x")}, key=lambda v: float(v[4:])) + ["lr_best"]
    lines = _spread_table(record, sens, "## Learning-rate policy (each point trained at lr x f of its rule; refitted without bootstrap)",
                          variants, [v[3:] if v != "lr_best" else "best lr" for v in variants], "spread")
    grid = record.get("lr_grid") or {}
    if grid.get("n_edge"):
        edged = [f"{min(c['run_ids'])} ({c['edge']})" for c in grid["choices"] if c["edge"]]
        lines += ["", f"{grid['n_edge']} point(s) have their best lr on a grid edge (loss as measured): {', '.join(edged)}."]
    return lines


def seed_sensitivity_lines(record: dict) -> list[str]:
    """The seed's effect at a fixed lr policy: each approach's a with every point at its rule's lr, for
    the points' own seed and each seed replicate; beside it the lr-policy spread, to tell one from the other."""
    sens = record.get("seed_sensitivity")
    if not sens:
        return []
    seeds = sorted({v for row in sens.values() for v in row if v.startswith("seed")}, key=lambda v: int(v[4:]))
    lr = record.get("lr_sensitivity") or {}
    lr_spread = {approach: _fmt(row["spread"]) for approach, row in lr.items()}
    lines = _spread_table(record, sens, "## Seed (each point at its rule's lr, trained again with another train.seed; refitted without bootstrap)",
                          seeds, seeds, "seed spread", ("lr-policy spread", lambda approach: lr_spread.get(approach, "-")))
    left = record.get("seed_sensitivity_left_out") or {}
    if left:
        lines += ["", "Left out: " + "; ".join(f"{v}: {why}" for v, why in left.items()) + " (a seed's replicates must cover every point)."]
    return lines


def _spread_table(record: dict, sens: dict, title: str, variants: list[str], labels: list[str], spread: str, extra=None) -> list[str]:
    """A table of a per variant and its spread, one row per approach, with a's interval from the main
    fit; `extra`: (header, approach -> cell) for one more column before the interval."""
    header = "| approach | " + " | ".join(f"a @ {label}" for label in labels) + f" | {spread} | " + (f"{extra[0]} | " if extra else "") + "a's interval |"
    lines = ["", title, "", header, "|---" * (len(variants) + 3 + bool(extra)) + "|"]
    for approach, row in sens.items():
        e = record["fits"].get(approach, {})
        ci = _ci(e["a"]) if "a" in e else ""
        lines.append(f"| {approach} | " + " | ".join(_fmt(row[v]) if v in row else "-" for v in variants) + f" | {_fmt(row['spread'])} | "
                     + (f"{extra[1](approach)} | " if extra else "") + f"{ci or '-'} |")
    return lines


def pinned_E_lines(record: dict) -> list[str]:
    """Approach 3 with E held at the floor, and the free-E fit beside it (the diagnostic)."""
    e3, free = record["fits"].get("approach3") or {}, record.get("approach3_free_E")
    if not e3.get("E_pinned"):
        return []
    pin = e3["E_pinned"]
    lines = [f"- Approach 3 (primary) holds E = {pin['value']:.6g} ({pin['source']}) and fits A, B, alpha, beta; `--free-E` fits E too."]
    if free:
        p = free["params"]
        lines.append(f"- Diagnostic, E free: E = {p['E']:.4g}, alpha = {p['alpha']:.3g}, beta = {p['beta']:.3g}, a = {free['a']:.3g} "
                     f"(RMSE {free['rmse_nats']:.4f} nats). Predictions at 10x / 100x the largest budget, E held vs free: "
                     + "; ".join(f"C = {h['C']:.3g}: N_opt {_fmt(h['N_opt'])} vs {_fmt(f['N_opt'])}, loss {h['loss']:.4f} vs {f['loss']:.4f}"
                                 for h, f in zip(free["predictions"]["E_pinned"], free["predictions"]["E_free"])) + ".")
    return lines
