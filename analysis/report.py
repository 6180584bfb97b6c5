"""The entry points: fit a dataset and write DIR/fit.json, DIR/report.md and the figures;
re-draw the figures of an existing DIR; read numbers back out of a record.

    record = fit_and_report("runs/quickstart", "runs/quickstart/fit", {"approach": "all"})
    print(summary(record))                      # the fitted laws, a, b, N_opt/D_opt at 10x max C
    frontier_at(record, 1e21)                   # {"N_opt": {"value", "ci"}, "D_opt": {...}}
    replot("runs/quickstart/fit")               # `scaling plot`

fit.json (schema 1) holds, under "fits", one entry per law/approach fitted ("approach1",
"approach2", "approach3" for --law chinchilla, else the law's name), each with "params" as
{name: {"value", "ci": [lo, hi] or null}}, "a" and "b" (frontier exponents, approaches only),
"n_points", its warnings, its "bootstrap" settings and samples, and "frontier" tables (C = 1e18
... 1e24, and a grid for the plots); then the data "source", "data_range", "filters",
"conventions" (what N, D, C mean), "options", "notes", "skipped" approaches (with the reason)
and "holdout". Files are written atomically (temp file + os.replace): a reader never sees half
a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from analysis import plots
from analysis.data import Dataset, apply_filters, load
from analysis.errors import AnalysisError
from analysis.pipeline import FitOptions, run_fits

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


def _json_safe(x):
    """NaN/inf are not JSON: store null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def prepare(data, options: FitOptions) -> Dataset:
    """Load (unless already a Dataset) and filter the data as the options say."""
    ds = data if isinstance(data, Dataset) else load(data, params=options.params)
    return apply_filters(ds, options.min_tokens_per_param, options.exclude_top_loss)


def fit_and_report(data, out_dir, options=None) -> dict:
    """Fit `data` (a CSV path, a run-store folder or a `Dataset`) and write DIR/fit.json,
    DIR/report.md and the figures. `options`: a `FitOptions`, a dict of its fields, or None for
    the defaults. Returns the fit.json record. Raises `AnalysisError` on unusable input."""
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
    record["figures"] = [os.path.basename(p) for p in plots.draw_all(record, ds.points, out_dir)] if opts.figures else []
    record = _json_safe(record)
    write_atomic(os.path.join(out_dir, FIT_JSON), json.dumps(record, indent=2, allow_nan=False) + "\n")
    write_atomic(os.path.join(out_dir, REPORT_MD), markdown(record))
    return record


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
    return plots.draw_all(record, ds.points, out_dir)


# ------------------------------------------------------------------------------------------------
def summary(record: dict, C: float | None = None) -> str:
    """A few lines for a terminal: each fit's parameters with intervals, a and b, and the
    compute-optimal N and D at compute C (default: 10x the largest C in the data)."""
    C = C or 10.0 * record["data_range"]["C"][1]
    lines = []
    for name, e in record["fits"].items():
        params = ", ".join(f"{k}={_fmt(p['value'])}{' ' + _ci(p) if p.get('ci') else ''}" for k, p in e["params"].items())
        lines.append(f"{name} ({e['n_points']} points): {params}")
        if "a" in e and "frontier" in e:
            lines.append(f"  N_opt ~ C^{e['a']['value']:.3f} {_ci(e['a']) if e['a'].get('ci') else ''}, D_opt ~ C^{e['b']['value']:.3f} {_ci(e['b']) if e['b'].get('ci') else ''}")
            f = frontier_at(record, C, name)
            n, d = f["N_opt"], f["D_opt"]
            lines.append(
                f"  at C = {C:.2g} FLOPs: N_opt = {_fmt(n['value'])} {_ci(n) if n['ci'] else ''}, "
                f"D_opt = {_fmt(d['value'])} {_ci(d) if d['ci'] else ''} ({d['value'] / n['value']:.1f} tokens/param)"
            )
    for name, why in record.get("skipped", {}).items():
        lines.append(f"{name} skipped: {why}")
    ho = record.get("holdout")
    if ho:
        lines.append(f"holdout: without the {ho['k']} largest-C points the fit predicts them to {ho['mean_abs_rel_error']:.2%} mean |relative error|")
    return "\n".join(lines)


def frontier_at(record: dict, C, fit: str = "approach3", level: float | None = None) -> dict:
    """Compute-optimal N and D at any compute C (scalar or array) from one fit of a record:
    {"N_opt": {"value", "ci"}, "D_opt": {...}} with percentile intervals over the bootstrap
    resamples stored in fit.json (ci None without a bootstrap). Approach 3 assumes C = 6ND."""
    from analysis import approaches as ap
    from analysis.bootstrap import intervals

    if fit not in record["fits"] or "frontier" not in record["fits"][fit]:
        raise AnalysisError(f"the record has no compute-optimal frontier for {fit!r}; it has {', '.join(record['fits'])}")
    e = record["fits"][fit]
    level = level or record["options"]["ci_level"]
    cs = np.atleast_1d(np.asarray(C, float))

    def nd(p):
        if fit == "approach3":
            return ap.compute_optimal(p, cs)
        a, b = np.asarray(p["a"], float), np.asarray(p["b"], float)
        nc, dc = np.asarray(p["N_coef"], float), np.asarray(p["D_coef"], float)
        if a.ndim:
            a, b, nc, dc = a[:, None], b[:, None], nc[:, None], dc[:, None]
        return nc * cs**a, dc * cs**b

    n, d = nd({k: v["value"] for k, v in e["params"].items()})
    samples = (e.get("bootstrap") or {}).get("samples")
    out = {}
    for key, v, j in (("N_opt", n, 0), ("D_opt", d, 1)):
        if samples:
            lo, hi = intervals(nd({k: np.asarray(x, float) for k, x in samples.items()})[j], level)
            cis = [[float(a_), float(b_)] for a_, b_ in zip(lo, hi)]
        else:
            cis = [None] * len(cs)
        vals = [{"value": float(x), "ci": c} for x, c in zip(np.atleast_1d(v), cis)]
        out[key] = vals[0] if np.ndim(C) == 0 else vals
    return out


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}"


def _ci(p) -> str:
    return f"[{_fmt(p['ci'][0])}, {_fmt(p['ci'][1])}]" if p.get("ci") else "-"


def markdown(record: dict) -> str:
    """report.md: the data, each fitted law with intervals, the compute-optimal table, checks."""
    lvl = f"{record['options']['ci_level']:.0%}"
    src = record["source"]
    lines = [
        "# Scaling-law fit",
        "",
        f"- Data: {src['kind']} `{src['path']}`; {record['n_points']} points used.",
        *[f"- {k}: {v}" for k, v in record["conventions"].items()],
    ]
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
    for name, e in record["fits"].items():
        lines += ["", f"## {name}: {e.get('formula', '')}", ""]
        boot = e.get("bootstrap")
        if boot:
            lines.append(f"{lvl} intervals from {boot['n_resamples']} bootstrap resamples (seed {boot['seed']}, unit: {boot.get('unit', 'points within budget' if e.get('approach') == 2 else 'runs')}).")
        if "huber_delta" in e:
            state = "converged" if e["converged"] else "did NOT converge"
            lines.append(f"Fitted on {e['n_points']} points: Huber loss (delta {e['huber_delta']:g}) of log residuals, L-BFGS from {e['n_starts']} starts; the best {state} ({e['status']}).")
        else:
            lines.append(f"Fitted on {e['n_points']} points.")
        lines += ["", f"| parameter | value | {lvl} interval |", "|---|---|---|"]
        for k, p in e["params"].items():
            lines.append(f"| {k} | {_fmt(p['value'])} | {_ci(p)} |")
        for k in ("a", "b", "G"):
            if k in e and k not in e["params"]:
                lines.append(f"| {k} | {_fmt(e[k]['value'])} | {_ci(e[k])} |")
        if e.get("approach") == 2:
            lines += ["", "| budget C | points | N_opt | D_opt | min loss | status |", "|---|---|---|---|---|---|"]
            for b in e["budgets"]:
                status = "used" if b["accepted"] else f"refused: {b['reason']}"
                lines.append(f"| {b['C']:.3g} | {b['n_points']} | {_fmt(b['N_opt'])} | {_fmt(b['D_opt'])} | {_fmt(b['loss_opt'])} | {status} |")
        for w in e.get("warnings", []):
            lines.append(f"\n> warning: {w}")
    front = {k: e["frontier"]["table"] for k, e in record["fits"].items() if "frontier" in e}
    if front:
        names = list(front)
        lines += ["", "## Compute-optimal allocation", "", "C = 6*N*D for Approach 3; Approaches 1-2 use the C the data record.", ""]
        head = "| C (FLOPs) | " + " | ".join(f"N_opt {n} | D_opt {n} | D/N {n}" for n in names) + " |"
        lines += [head, "|---" * (1 + 3 * len(names)) + "|"]
        for i, c in enumerate(front[names[0]]["C"]):
            cells = []
            for n in names:
                N, D = front[n]["N_opt"][i], front[n]["D_opt"][i]
                cells += [f"{_fmt(N['value'])} {_ci(N) if N.get('ci') else ''}", f"{_fmt(D['value'])} {_ci(D) if D.get('ci') else ''}", _fmt(D["value"] / N["value"])]
            lines.append(f"| {c:.0e} | " + " | ".join(cells) + " |")
    ho = record.get("holdout")
    if ho:
        lines += [
            "",
            f"## Out-of-sample check: {ho['law']} fitted without the {ho['k']} largest-compute points",
            "",
            f"Mean |relative error| {ho['mean_abs_rel_error']:.3%}, max {ho['max_abs_rel_error']:.3%}, RMSE of log loss {ho['rmse_log']:.4g}.",
            "",
            "| run | N | D | C | observed | predicted | rel. error |",
            "|---|---|---|---|---|---|---|",
            *[f"| {p['run']} | {p['N']:.3g} | {p['D']:.3g} | {p['C']:.3g} | {p['observed']:.4f} | {p['predicted']:.4f} | {p['rel_error']:+.2%} |" for p in ho["points"]],
        ]
    figs = [f for f in record.get("figures", []) if f.endswith(".png")]
    if figs:
        lines += ["", "## Figures", "", *[f"![{f[:-4]}]({f})" for f in figs]]
    return "\n".join(lines) + "\n"
