"""From a Dataset and options to the fit record (the content of fit.json); no file I/O here.

The record, per law/approach fitted, holds every parameter as {"value", "ci"}, the frontier
exponents a, b, the number of points, plus the data filters and conventions (see report.py).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass

import numpy as np

from analysis import approaches as ap
from analysis.bootstrap import bootstrap_law, interval, intervals
from analysis.data import Dataset
from analysis.errors import AnalysisError
from analysis.fit import fit_law
from analysis.laws import CHINCHILLA, get_law

TABLE_C = tuple(10.0**k for k in range(18, 25))  # the report's compute-optimal table, 1e18..1e24


@dataclass(frozen=True)
class FitOptions:
    law: str = "chinchilla"  # chinchilla | power-N | power-D | power-C | kaplan
    approach: str = "all"  # 1 | 2 | 3 | all (every approach the data allow); chinchilla only
    bootstrap: int = 200  # resamples; 0 for no intervals
    seed: int = 0
    huber_delta: float = 1e-3
    min_tokens_per_param: float | None = None
    exclude_top_loss: int = 0
    params: str = "total"  # total | non_embedding (run stores)
    holdout_largest: int = 0  # refit without the K largest-compute points and predict them
    ci_level: float = 0.95
    n_starts: int | None = None  # None: the law's whole grid; k: a seeded subset of k starts
    budget_gap: float = 0.05  # decades of C separating inferred IsoFLOP budgets
    figures: bool = True

    @classmethod
    def from_any(cls, options) -> "FitOptions":
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise AnalysisError(f"unknown fit option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return cls(**options)

    def validate(self) -> "FitOptions":
        get_law(self.law)
        if str(self.approach) not in ("1", "2", "3", "all"):
            raise AnalysisError(f"--approach must be 1, 2, 3 or all, not {self.approach!r}")
        if self.law != "chinchilla" and str(self.approach) not in ("all", "3"):
            raise AnalysisError(f"--approach {self.approach} needs --law chinchilla (approaches 1-2 give the compute-optimal frontier)")
        if self.bootstrap < 0 or self.exclude_top_loss < 0 or self.holdout_largest < 0:
            raise AnalysisError("--bootstrap, --exclude-top-loss and --holdout-largest must be >= 0")
        if not self.huber_delta > 0:
            raise AnalysisError(f"--huber-delta must be > 0, not {self.huber_delta}")
        if not 0 < self.ci_level < 1:
            raise AnalysisError(f"ci_level must be in (0, 1), not {self.ci_level}")
        return self


def _value(v, ci=None) -> dict:
    return {"value": float(v), "ci": None if ci is None else [float(ci[0]), float(ci[1])]}


def _starts(law, opts: FitOptions):
    grid = law.grid_points()
    if opts.n_starts is None or opts.n_starts >= len(grid):
        return None
    pick = np.random.default_rng(opts.seed).choice(len(grid), size=opts.n_starts, replace=False)
    return grid[np.sort(pick)]


def _groups(points):
    runs = points["run"].astype(str).to_numpy()
    return runs, ("runs" if np.unique(runs).size < len(runs) else "points")


# ------------------------------------------------------------------------------------------------
def fit_parametric(law_name: str, points, opts: FitOptions, c_table, c_grid) -> dict:
    """Fit one law (with bootstrap); for chinchilla also its frontier (Approach 3)."""
    law = get_law(law_name)
    fit = fit_law(law, points, delta=opts.huber_delta, starts=_starts(law, opts), warn=False)  # warnings go in the record
    groups, unit = _groups(points)
    entry = {
        "law": law.name,
        "formula": law.formula,
        "n_points": fit.n_points,
        "objective": fit.objective,
        "huber_delta": fit.delta,
        "converged": fit.converged,
        "status": fit.status,
        "iterations": fit.n_iter,
        "n_starts": fit.n_starts,
        "best_start": dict(zip(law.raw_names, map(float, fit.start))),
        "warnings": list(fit.warnings),
    }
    boot = None
    if opts.bootstrap:
        boot = bootstrap_law(law, points, fit, opts.bootstrap, opts.seed, groups=groups if unit == "runs" else None)
        frac = float(boot.converged.mean())
        entry["bootstrap"] = {
            "n_resamples": boot.n_resamples,
            "seed": boot.seed,
            "unit": boot.unit,
            "level": opts.ci_level,
            "converged_fraction": frac,
            "samples": {k: boot.natural[k].tolist() for k in law.names},  # for intervals at any C
        }
        if frac < 0.9:
            entry["warnings"].append(f"{law.name}: only {frac:.0%} of bootstrap refits converged; intervals are rough")
    ci = (lambda s: interval(s, opts.ci_level)) if boot else (lambda s: None)
    entry["params"] = {k: _value(fit.params[k], ci(boot.natural[k]) if boot else None) for k in law.names}
    if law is CHINCHILLA:
        entry["approach"] = 3
        k = ap.frontier_constants(fit.params)
        kb = ap.frontier_constants(boot.natural) if boot else None
        for name in ("a", "b", "G"):
            entry[name] = _value(k[name], ci(kb[name]) if boot else None)
        entry["frontier"] = _frontier(
            lambda cs: ap.compute_optimal(fit.params, cs),
            (lambda cs: ap.compute_optimal(boot.natural, cs)) if boot else None,
            c_table,
            c_grid,
            opts.ci_level,
        )
    return entry


def _frontier(point_fn, sample_fn, c_table, c_grid, level) -> dict:
    """N_opt, D_opt at the table's C (value + ci) and on the plot grid ([value, lo, hi] lists).
    point_fn(C) -> (N, D); sample_fn(C) -> (N [R, m], D [R, m]) over bootstrap resamples, or None."""
    out = {}
    for key, cs in (("table", np.asarray(c_table, float)), ("grid", np.asarray(c_grid, float))):
        n, d = point_fn(cs)
        if sample_fn is not None:
            ns, ds = sample_fn(cs)
            (nlo, nhi), (dlo, dhi) = intervals(ns, level), intervals(ds, level)
        else:
            nlo = nhi = dlo = dhi = np.full(len(cs), np.nan)
        if key == "table":
            out[key] = {
                "C": cs.tolist(),
                "N_opt": [_value(v, None if np.isnan(lo) else (lo, hi)) for v, lo, hi in zip(n, nlo, nhi)],
                "D_opt": [_value(v, None if np.isnan(lo) else (lo, hi)) for v, lo, hi in zip(d, dlo, dhi)],
            }
        else:
            out[key] = {"C": cs.tolist(), "N_opt": [np.asarray(x, float).tolist() for x in (n, nlo, nhi)], "D_opt": [np.asarray(x, float).tolist() for x in (d, dlo, dhi)]}
    return out


def _powerlaw_entry(res, samples, opts, c_table, c_grid) -> dict:
    """Shared part of the Approach 1 and 2 entries: params, a, b, frontier."""
    boot = samples is not None and len(samples["a"]) > 0
    ci = (lambda k: interval(samples[k], opts.ci_level)) if boot else (lambda k: None)
    params = {
        "N_coef": _value(res.N_fit.coef, ci("N_coef")),
        "a": _value(res.N_fit.exponent, ci("a")),
        "D_coef": _value(res.D_fit.coef, ci("D_coef")),
        "b": _value(res.D_fit.exponent, ci("b")),
    }
    entry = {"params": params, "a": params["a"], "b": params["b"], "formula": "N_opt = N_coef * C^a, D_opt = D_coef * C^b"}
    sample_fn = None
    if boot:
        entry["bootstrap"] = {
            "n_resamples": opts.bootstrap,
            "seed": opts.seed,
            "level": opts.ci_level,
            "n_failed": int(samples["n_failed"]),
            "samples": {k: np.asarray(samples[k]).tolist() for k in ("N_coef", "a", "D_coef", "b")},
        }

        def sample_fn(cs):
            return (
                samples["N_coef"][:, None] * cs ** samples["a"][:, None],
                samples["D_coef"][:, None] * cs ** samples["b"][:, None],
            )

    entry["frontier"] = _frontier(lambda cs: (res.N_fit(cs), res.D_fit(cs)), sample_fn, c_table, c_grid, opts.ci_level)
    return entry


def fit_approach2(points, opts: FitOptions, c_table, c_grid) -> dict:
    labels = ap.group_budgets(points, opts.budget_gap)
    res = ap.approach2(points, groups=labels)
    samples = ap.bootstrap_approach2(points, labels, opts.bootstrap, opts.seed) if opts.bootstrap else None
    entry = _powerlaw_entry(res, samples, opts, c_table, c_grid)
    entry.update(
        approach=2,
        n_points=int(len(points)),
        grouping=res.grouping,
        budget_gap_decades=opts.budget_gap,
        budgets=[dataclasses.asdict(b) for b in res.budgets],
        warnings=list(res.warnings),
    )
    return entry


def fit_approach1(curves, opts: FitOptions, c_table, c_grid) -> dict:
    res = ap.approach1(curves)
    samples = ap.bootstrap_approach1(curves, opts.bootstrap, opts.seed) if opts.bootstrap else None
    entry = _powerlaw_entry(res, samples, opts, c_table, c_grid)
    entry.update(
        approach=1,
        n_points=int(len(curves)),  # metrics lines of the kept runs
        n_envelope=int(len(res.C)),
        n_runs=res.n_runs,
        loss=f"training loss curves (metrics.jsonl train_loss), rolling median over {ap.SMOOTH} logged steps",
        envelope={"C": res.C.tolist(), "N_opt": res.N_opt.tolist(), "D_opt": res.D_opt.tolist(), "loss": res.loss.tolist()},
        warnings=list(res.warnings),
    )
    return entry


def holdout(points, opts: FitOptions) -> dict:
    """Fit without the K largest-compute points; report how well the fit predicts them."""
    k = opts.holdout_largest
    law = get_law(opts.law)
    if k >= len(points) - law.n_params:
        raise AnalysisError(f"--holdout-largest {k} leaves {len(points) - k} points, too few to fit {law.n_params} parameters")
    order = np.argsort(points["C"].to_numpy(), kind="stable")
    train, test = points.iloc[order[:-k]], points.iloc[order[-k:]]
    fit = fit_law(law, train, delta=opts.huber_delta, starts=_starts(law, opts), warn=False)
    pred = law.predict(fit.params, **{c: test[c].to_numpy() for c in law.inputs})
    obs = test["loss"].to_numpy()
    rel = (pred - obs) / obs
    return {
        "law": law.name,
        "k": int(k),
        "n_train": int(len(train)),
        "params": {n: float(v) for n, v in fit.params.items()},
        "points": [
            {"run": str(r), "N": float(n), "D": float(d), "C": float(c), "observed": float(o), "predicted": float(p), "rel_error": float(e)}
            for r, n, d, c, o, p, e in zip(test["run"], test["N"], test["D"], test["C"], obs, pred, rel)
        ],
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "rmse_log": float(np.sqrt(np.mean((np.log(pred) - np.log(obs)) ** 2))),
        "warnings": list(fit.warnings),
    }


# ------------------------------------------------------------------------------------------------
def run_fits(ds: Dataset, options: FitOptions) -> dict:
    """Every fit the options ask for, as the fit.json record."""
    opts = options.validate()
    pts = ds.points
    c_lo = min(pts["C"].min(), TABLE_C[0])
    c_grid = np.geomspace(c_lo, max(pts["C"].max(), TABLE_C[-1]), 60)
    record = {
        "schema": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": ds.source,
        "n_points": int(len(pts)),
        "data_range": {c: [float(pts[c].min()), float(pts[c].max())] for c in ("N", "D", "C", "loss")},
        "conventions": {**ds.conventions, "frontier": "Approach 3 minimises L(N, D) under C = 6*N*D"},
        "filters": ds.filters or {"min_tokens_per_param": None, "exclude_top_loss": 0, "dropped": [], "n_dropped": 0},
        "options": dataclasses.asdict(opts),
        "notes": list(ds.notes),
        "fits": {},
        "skipped": {},
    }
    if opts.law == "chinchilla":
        wanted = ("3", "2", "1") if opts.approach == "all" else (str(opts.approach),)
        for a in wanted:
            try:
                if a == "3":
                    record["fits"]["approach3"] = fit_parametric("chinchilla", pts, opts, TABLE_C, c_grid)
                elif a == "2":
                    record["fits"]["approach2"] = fit_approach2(pts, opts, TABLE_C, c_grid)
                else:
                    record["fits"]["approach1"] = fit_approach1(ds.curves, opts, TABLE_C, c_grid)
            except AnalysisError as e:
                if opts.approach != "all" or a == "3":
                    raise
                record["skipped"][f"approach{a}"] = str(e)
    else:
        record["fits"][opts.law] = fit_parametric(opts.law, pts, opts, TABLE_C, c_grid)
    if opts.holdout_largest:
        record["holdout"] = holdout(pts, opts)
    record["warnings"] = [w for e in record["fits"].values() for w in e.get("warnings", [])] + record.get("holdout", {}).get("warnings", [])
    return record
