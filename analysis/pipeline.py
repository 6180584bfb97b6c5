"""From a Dataset and options to the fit record (the content of fit.json); no file I/O here.

Read top to bottom: options -> the one cost model -> each approach (fit, bootstrap with its
accounting, goodness of fit) -> the compute-optimal table anchored to the data -> sensitivity
lines -> holdout. Every number a report prints comes from this record, and every prediction
from `analysis.predict.predict`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import approaches as ap, progress
from analysis import lr_grid as lr_grid_lib
from analysis.bootstrap import bootstrap_law, interval
from analysis.costmodel import SIX_N, CostModel, fit_cost_model
from analysis.data import COLUMNS, Dataset
from analysis.errors import AnalysisError
from analysis.noise import point_keys
from analysis.fit import fit_law
from analysis.laws import CHINCHILLA, Law, chinchilla_fixed_E, get_law
from analysis.predict import anchors, chinchilla_frontier, fit_loglog, local_exponents, point_fits, predict, predict_points

MIN_USABLE = 0.8  # intervals from fewer usable bootstrap resamples are flagged
FIGURE_REACH = 100.0  # figures extend at most this factor past the data (unless --at asks more)


@dataclass(frozen=True)
class FitOptions:
    law: str = "chinchilla"  # chinchilla | power-N | power-D | power-C | kaplan | chinchilla-tied | data-constrained
    approach: str = "all"  # 1 | 2 | 3 | all (every approach the data allow); chinchilla only
    bootstrap: int = 200  # resamples; 0 for no intervals
    seed: int = 0
    huber_delta: float = 1e-3
    min_tokens_per_param: float | None = None
    exclude_top_loss: int = 0
    params: str = "total"  # total | non_embedding | active (run stores; analysis.data.PARAMS_CHOICES)
    metric: str = "loss"  # loss | error (run stores of image classifiers: top-1 eval error; analysis.data.METRICS)
    holdout_largest: int = 0  # refit without the K largest budgets and predict them
    ci_level: float = 0.95
    n_starts: int | None = None  # None: the law's whole grid; k: a seeded subset of k starts
    budget_gap: float = 0.05  # decades of C separating inferred IsoFLOP budgets
    at: tuple[float, ...] = ()  # extra compute values for the table (and the figures' reach)
    points: tuple[tuple[float, float], ...] = ()  # (N, D) pairs: the loss each N, D law predicts there (--model/--tokens)
    # The floor: approach 3's E is held there (the primary fit; the free-E fit is a diagnostic beside
    # it) and approach 2's L*(C) = E + A C^-gamma rests on it. None: the entropy floor every run
    # records, where they record one (approach 2: else approach 3's E).
    fix_E: float | None = None
    free_E: bool = False  # approach 3 fits E freely even where a floor is known (then no diagnostic)
    figures: bool = True
    train_loss_fallback: bool = False  # run stores: a run without a finite eval loss is fitted on its train loss (else left out, named)

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
        options = dict(options)
        options["at"] = tuple(float(c) for c in (options.get("at") or ()))
        options["points"] = tuple((float(n), float(d)) for n, d in (options.get("points") or ()))
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
        bad_pts = [p for p in self.points if len(p) != 2 or not all(np.isfinite(v) and v > 0 for v in p)]
        if bad_pts:
            raise AnalysisError(f"--model/--tokens take positive (N, D) pairs, not {bad_pts}")
        if self.fix_E is not None and not (np.isfinite(self.fix_E) and self.fix_E >= 0):
            raise AnalysisError(f"--fix-E takes a finite loss >= 0 (the floor under L*(C)), not {self.fix_E}")
        bad_at = [c for c in self.at if not (np.isfinite(c) and c > 0)]
        if bad_at:
            raise AnalysisError(f"--at takes positive compute values in FLOPs, not {bad_at}")
        return self


def _value(v, ci=None) -> dict:
    ok = ci is not None and np.all(np.isfinite(ci))
    return {"value": float(v), "ci": [float(ci[0]), float(ci[1])] if ok else None}


def _starts(law, opts: FitOptions):
    grid = law.grid_points()
    if opts.n_starts is None or opts.n_starts >= len(grid):
        return None
    pick = np.random.default_rng(opts.seed).choice(len(grid), size=opts.n_starts, replace=False)
    return grid[np.sort(pick)]


def _groups(points):
    runs = points["run"].astype(str).to_numpy()
    return runs, ("runs" if np.unique(runs).size < len(runs) else "points")


def _accounting(n_resamples: int, n_used: int, unit: str, level: float, seed: int, **counts) -> dict:
    """What a bootstrap did, for the record and the report."""
    frac = n_used / n_resamples if n_resamples else 0.0
    return {
        "n_resamples": int(n_resamples),
        "n_used": int(n_used),
        **{k: int(v) for k, v in counts.items()},
        "usable_fraction": frac,
        "flagged": frac < MIN_USABLE,
        "unit": unit,
        "level": level,
        "seed": seed,
    }


def cost_model_for(ds: Dataset, N=None) -> CostModel:
    """The dataset's cost model (N: another definition of the model size to express it in)."""
    pts = ds.points
    N = pts["N"] if N is None else N
    if ds.cost_source == "6N":
        return SIX_N
    return fit_cost_model(N, pts["D"], pts["C"], ds.cost_source)


# ---------------------------------------------------------------- the budgets' own minima -------
def budget_minima(points, groups, cost) -> list[dict]:
    """Each budget's observed optimum, the yardstick of the leave-one-budget-out checks: the local
    IsoFLOP fit's minimum where it is bracketed, else the lowest point (said so)."""
    labels, values, _ = groups
    out = []
    for k, C in enumerate(values):
        sel = labels == k
        sub = points[sel]
        b = ap.fit_budget(C, sub["N"].to_numpy(float), sub["D"].to_numpy(float), sub["loss"].to_numpy(float), cost)
        if b.accepted:
            out.append({"C": float(C), "N_opt": b.N_opt, "loss": b.loss_opt, "how": "local IsoFLOP fit", "label": k})
        else:
            i = int(np.argmin(sub["loss"].to_numpy()))
            out.append({"C": float(C), "N_opt": float(sub["N"].iloc[i]), "loss": float(sub["loss"].iloc[i]), "how": "lowest point (minimum not bracketed)", "label": k})
    return out


def _lobo_summary(rows: list[dict]) -> dict:
    done = [r for r in rows if "predicted" in r]
    out = {"budgets": rows, "n": len(done)}
    if done:
        out["mean_abs_log10_N_ratio"] = float(np.mean([abs(np.log10(r["predicted"]["N_opt"] / r["observed"]["N_opt"])) for r in done]))
        with_loss = [r for r in done if r["predicted"].get("loss") is not None]
        if with_loss:
            out["mean_abs_loss_error_nats"] = float(np.mean([abs(r["predicted"]["loss"] - r["observed"]["loss"]) for r in with_loss]))
    return out


# ---------------------------------------------------------------- Approach 3 and other laws -----
def isoflop_strata(points, groups):
    """The budget of each point, to stratify a law's bootstrap by, where the data are IsoFLOP
    profiles (the runs name their budget, or every inferred budget holds >= 3 model sizes): a
    resample then keeps every budget with its number of runs. None otherwise (scattered C values
    would make strata of one point that never vary)."""
    labels, values, how = groups
    if len(values) < 2 or len(labels) != len(points):
        return None
    if how.startswith("the runs"):
        return labels
    n = points["N"].to_numpy(float)
    return labels if min(np.unique(n[labels == k]).size for k in range(len(values))) >= 3 else None


def fit_parametric(law_name: str, points, opts: FitOptions, cost: CostModel, groups, minima, c_range,
                   law: Law | None = None, lobo: bool = True) -> dict:
    """Fit one law (with bootstrap); for chinchilla also its frontier under the cost model. `law`:
    a variant of `law_name`'s form to fit instead (chinchilla with E held: `chinchilla_fixed_E`);
    `lobo`: the leave-one-budget-out refits (chinchilla)."""
    law = law or get_law(law_name)
    chinchilla = law_name == "chinchilla"  # the form with a compute-optimal frontier (E free or held)
    fit = fit_law(law, points, delta=opts.huber_delta, starts=_starts(law, opts), warn=False)  # warnings go in the record
    runs, unit = _groups(points)
    entry = {
        "law": law_name,
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
    pred = law.predict(fit.params, **{c: points[c].to_numpy(float) for c in law.inputs})
    resid = pred - points["loss"].to_numpy()
    dof = fit.n_points - law.n_params
    entry["goodness"] = {
        "rmse_nats": float(np.sqrt(np.mean(resid**2))),
        # the scale a new run scatters with: the residual sum of squares over n - k (the fitted
        # parameters absorb k degrees of freedom; the in-sample RMSE is sqrt((n-k)/n) too small)
        "residual_scale_nats": float(np.sqrt(resid @ resid / dof)) if dof > 0 else None,
        "residual_dof": int(dof),
    }
    samples = None
    if opts.bootstrap:
        strata = isoflop_strata(points, groups)
        boot = bootstrap_law(law, points, fit, opts.bootstrap, opts.seed, groups=runs if unit == "runs" else None, strata=strata)
        finite = np.all([np.isfinite(v) for v in boot.natural.values()], axis=0)
        if chinchilla:  # a refit with alpha or beta <= 0 has no frontier: unusable, counted
            finite &= (boot.natural["alpha"] > 0) & (boot.natural["beta"] > 0)
        used = boot.converged & finite
        entry["bootstrap"] = _accounting(
            boot.n_resamples, used.sum(),
            ("runs" if boot.unit == "runs" else "points") + " with replacement" + (" within each budget" if strata is not None else ""),
            opts.ci_level, opts.seed, n_not_converged=(~boot.converged).sum(), n_invalid=(boot.converged & ~finite).sum(),
        )
        samples = {k: v[used] for k, v in boot.natural.items()}
        entry["bootstrap"]["samples"] = {k: v.tolist() for k, v in samples.items()}
        if entry["bootstrap"]["flagged"]:
            entry["warnings"].append(f"{law.name}: only {used.mean():.0%} of bootstrap refits are usable; its intervals are rough")
    ci = (lambda k: interval(samples[k], opts.ci_level)) if samples else (lambda k: None)
    entry["params"] = {k: _value(fit.params[k], ci(k)) for k in law.names}
    if chinchilla:
        entry.update(approach=3, frontier_model="chinchilla")
        a, b = local_exponents(fit.params, cost, *c_range)
        ab = local_exponents(samples, cost, *c_range) if samples else None
        entry["a"] = _value(a, interval(ab[0], opts.ci_level) if ab else None)
        entry["b"] = _value(b, interval(ab[1], opts.ci_level) if ab else None)
        entry["exponents_note"] = (
            f"a, b: slopes of log N_opt, log D_opt over the data's C range ({c_range[0]:.3g}..{c_range[1]:.3g}) "
            f"under the cost model; beta/(alpha+beta) = {fit.params['beta'] / (fit.params['alpha'] + fit.params['beta']):.4f} is their limit where c/6N is constant"
        )
        if lobo:
            entry["goodness"]["lobo"] = _lobo_approach3(points, fit, opts, cost, groups, minima, law)
    return entry


def _lobo_approach3(points, fit, opts, cost, groups, minima, law: Law = CHINCHILLA) -> dict:
    """Refit without each budget, COLD from the same starts as the full fit (a warm start from
    the full fit would carry what it learnt from the held-out budget); predict its minimum."""
    labels = groups[0]
    if len(minima) < 2:
        return _lobo_summary([])
    rows = []
    for m in minima:
        row = {"C": m["C"], "observed": {"N_opt": m["N_opt"], "loss": m["loss"], "how": m["how"]}}
        try:  # the budget's points weigh 0: the full fit's problem shape, so no new compilation
            refit = fit_law(law, points, delta=opts.huber_delta, starts=_starts(law, opts), warn=False,
                            weights=(labels != m["label"]).astype(float))
        except AnalysisError as e:
            refit = None
            row["skipped"] = f"the refit without this budget failed: {e}"
        if refit is not None:
            N, _, L = chinchilla_frontier(refit.params, cost, np.array([m["C"]]))
            if refit.converged and np.isfinite(N[0]):
                row["predicted"] = {"N_opt": float(N[0]), "loss": float(L[0]), "E": float(refit.params["E"])}
            else:
                row["skipped"] = "the refit without this budget did not converge or has no frontier"
        rows.append(row)
    return _lobo_summary(rows)


# ---------------------------------------------------------------- Approaches 1 and 2 ------------
def _power_law_params(res, samples, opts) -> dict:
    ci = (lambda k: interval(samples[k], opts.ci_level)) if samples is not None and len(samples["a"]) else (lambda k: None)
    return {
        "N_coef": _value(res.N_fit.coef, ci("N_coef")),
        "a": _value(res.N_fit.exponent, ci("a")),
        "D_coef": _value(res.D_fit.coef, ci("D_coef")),
        "b": _value(res.D_fit.exponent, ci("b")),
    }


def _power_law_entry(approach: int, through: str, res, samples, opts, points) -> dict:
    """The part of the Approach 1 and 2 entries that is the same: N_opt = N_coef C^a through `through`."""
    params = _power_law_params(res, samples, opts)
    return {
        "approach": approach,
        "formula": f"N_opt = N_coef * C^a (through {through}); D_opt = C / c(N_opt)",
        "frontier_model": "power law",
        "params": params,
        "a": params["a"],
        "b": params["b"],
        "n_points": int(len(points)),
    }


def _bootstrap_entry(samples: ap.BootstrapSamples, opts, entry) -> None:
    counts = {"n_failed": samples.n_failed}
    if entry["approach"] == 2:
        counts["n_lost_budget"] = samples.n_lost_budget
    entry["bootstrap"] = _accounting(samples.n_resamples, samples.n_used, samples.unit, opts.ci_level, opts.seed, **counts)
    entry["bootstrap"]["samples"] = {k: np.asarray(samples[k]).tolist() for k in ("N_coef", "a", "D_coef", "b")}
    if entry["bootstrap"]["flagged"]:
        entry["warnings"].append(
            f"approach {entry['approach']}: only {entry['bootstrap']['usable_fraction']:.0%} of bootstrap resamples are usable; its intervals are rough"
        )


def loss_floor(ds_floor, opts: FitOptions, record: dict) -> tuple[float, str | None]:
    """Approach 2's E under L*(C) = E + A C^-gamma: --fix-E, else the entropy floor the runs
    record, else approach 3's fitted E, else none (0: the plain power law A C^-gamma)."""
    if opts.fix_E is not None:
        return float(opts.fix_E), "--fix-E"
    if ds_floor is not None:
        return float(ds_floor), "the entropy floor the runs record"
    e3 = record["fits"].get("approach3")
    if e3:
        return float(e3["params"]["E"]["value"]), "approach 3's fitted E"
    return 0.0, None


def fit_approach2(points, opts: FitOptions, cost, groups, minima, floor=(0.0, None), lobo_E=None, noise=None) -> dict:
    """`floor`: (E, where it comes from) of L*(C); `lobo_E`: {budget C: E} of approach 3's
    refits without that budget, so the leave-one-out check of L*(C) never sees the held-out
    budget through E; `noise`: {budget C: BudgetNoise} measured by seed replicates (analysis/noise.py)."""
    res = ap.approach2(points, cost, groups=groups, noise=noise)
    ok = res.accepted
    samples = ap.bootstrap_approach2(points, groups, cost, opts.bootstrap, opts.seed, noise=noise) if opts.bootstrap else None
    entry = {
        **_power_law_entry(2, "the IsoFLOP minima", res, samples, opts, points),
        "grouping": res.grouping,
        "budget_gap_decades": opts.budget_gap,
        "budgets": [dataclasses.asdict(b) for b in res.budgets],
        "power_law_weights": "1/se^2 of each minimum's log10 N_opt" if res.weights is not None else "equal (some minimum has no se)",
        "noise": {"pooled_residuals": {"sigma": res.pooled[0], "dof": res.pooled[1]} if res.pooled else None,
                  "seed_replicates": {f"{C:g}": dataclasses.asdict(v) for C, v in sorted((noise or {}).items())} or None},
        "warnings": list(res.warnings),
    }
    if samples is not None:
        _bootstrap_entry(samples, opts, entry)
    entry["loss_law"], note = _loss_law(ok, *floor)
    if note:
        entry["warnings"].append(note)
    labels, values, _ = groups
    resid = []
    for b in ok:  # residuals of each local parabola over its window
        k = int(np.argmin(np.abs(np.log(values / b.C))))
        sub = points[(labels == k) & np.isin(points["N"].to_numpy(float), b.window)]
        resid.append(sub["loss"].to_numpy(float) - np.polyval(b.coeffs, np.log10(sub["N"].to_numpy(float))))
    resid = np.concatenate(resid) if resid else np.array([])
    entry["goodness"] = {
        "rmse_nats": float(np.sqrt(np.mean(resid**2))) if resid.size else None,
        "rmse_what": "the local IsoFLOP parabolas' residuals over their windows",
        "lobo": _lobo_power_law(ok, minima, floor, lobo_E or {}),
    }
    return entry


def _loss_law(budgets, E, source) -> tuple[dict, str | None]:
    """L*(C) through the budgets' minimum losses, weighted by their se, with the floor E; where
    a minimum is not above E the floor cannot hold: the plain power law, said so."""
    C, L, se = [b.C for b in budgets], [b.loss_opt for b in budgets], [b.loss_opt_se for b in budgets]
    try:
        return fit_loglog(C, L, se, E, source), None
    except AnalysisError as e:
        if not E:
            raise
        return fit_loglog(C, L, se), f"approach 2: L*(C) has no floor ({source} E = {E:.4g} is not below every minimum: {e})"


def _lobo_power_law(budgets, minima, floor, lobo_E) -> dict:
    """Approach 2 without each budget: power law and L*(C) through the others, at its C."""
    rows = []
    by_c = {m["C"]: m for m in minima}
    E, source = floor
    for i, b in enumerate(budgets):
        m = by_c.get(b.C)
        row = {"C": b.C, "observed": {"N_opt": m["N_opt"], "loss": m["loss"], "how": m["how"]}}
        rest = [x for j, x in enumerate(budgets) if j != i]
        if len(rest) < 2:
            row["skipped"] = "fewer than two other budgets"
        else:
            law = ap.fit_power_law([x.C for x in rest], [x.N_opt for x in rest], ap.minima_weights(rest))
            E_i = lobo_E.get(b.C, E) if source == "approach 3's fitted E" else E
            loss, _ = _loss_law(rest, E_i, source)
            row["predicted"] = {"N_opt": float(law(b.C)), "loss": float(loss["E"] + loss["A"] * b.C ** -loss["gamma"])}
        rows.append(row)
    return _lobo_summary(rows)


def fit_approach1(points, opts: FitOptions, cost, groups, minima) -> dict:
    res = ap.approach1(points, cost)
    samples = ap.bootstrap_approach1(points, cost, opts.bootstrap, opts.seed) if opts.bootstrap else None
    entry = {
        **_power_law_entry(1, "the envelope of end-of-run losses", res, samples, opts, points),
        "loss": "final eval loss of each run (end-of-run points only, no smoothing), interpolated in log C between a size's horizons",
        "n_sizes": int(res.n_sizes),
        "left_out": list(res.left_out),
        "envelope": {"C": res.C.tolist(), "N_opt": res.N_opt.tolist(), "D_opt": res.D_opt.tolist(), "loss": res.loss.tolist()},
        "warnings": list(res.warnings),
    }
    if samples is not None:
        _bootstrap_entry(samples, opts, entry)
    rows = []
    labels = groups[0]
    for m in minima:
        row = {"C": m["C"], "observed": {"N_opt": m["N_opt"], "loss": m["loss"], "how": m["how"]}}
        try:
            r = ap.approach1(points[labels != m["label"]].reset_index(drop=True), cost)
            row["predicted"] = {"N_opt": float(r.N_fit(m["C"])), "loss": None}
        except AnalysisError as e:
            row["skipped"] = str(e)
        rows.append(row)
    entry["goodness"] = {"rmse_nats": None, "rmse_what": "Approach 1 has no loss model", "lobo": _lobo_summary(rows)}
    return entry


# ---------------------------------------------------------------- laws of one variable ----------
def unlimited_points(points, law_name: str, groups) -> tuple:
    """The points where the law's other variables do not limit the loss, and the rule:
    L(N): per model size its lowest loss (its longest or best run); L(D): per token count its
    lowest loss; L(C): per budget its lowest loss (the compute-optimal point)."""
    if law_name == "power-N":
        key, rule = points["N"], "per model size N, the point with the lowest loss (D is least limiting there)"
    elif law_name == "power-D":
        key, rule = points["D"], "per token count D, the point with the lowest loss (N is least limiting there)"
    elif law_name == "power-C":
        key, rule = groups[0], "per FLOP budget, the point with the lowest loss (the compute-optimal point)"
    else:
        return points, "every point (the law models all its inputs)"
    best = points.assign(_k=np.asarray(key)).groupby("_k")["loss"].idxmin()
    return points.loc[np.sort(best.to_numpy())].reset_index(drop=True), rule


def with_unique_tokens(points):
    """The points with U (unique tokens) filled where unknown by D (no repetition), capped at D."""
    U = points["U"].to_numpy(float) if "U" in points else np.full(len(points), np.nan)
    D = points["D"].to_numpy(float)
    bad = np.isfinite(U) & ~(U > 0)
    if bad.any():
        raise AnalysisError(f"column U (unique tokens) must be > 0; {int(bad.sum())} row(s) are not (first: {points['run'].iloc[np.flatnonzero(bad)[0]]})")
    return points.assign(U=np.where(np.isfinite(U), np.minimum(U, D), D))


# ---------------------------------------------------------------- sensitivity and holdout --------
def sensitivity(ds: Dataset, pts, opts, cost, entry3, c_max) -> list[dict]:
    """a and N_opt at the largest budget under other conventions: C = 6ND instead of the
    recorded cost; the other definition of N (total vs non-embedding), refitted."""
    rows = []
    params = {k: v["value"] for k, v in entry3["params"].items()}
    c_lo = float(pts["C"].min())

    def line(what, p, c):
        a, _ = local_exponents(p, c, c_lo, c_max)
        N, _, _ = chinchilla_frontier(p, c, np.array([c_max]))
        return {"what": what, "a": float(a), "N_opt_at_C_max": float(N[0])}

    rows.append(line(f"as fitted ({ds.conventions.get('N', 'N')}; {'C = 6ND' if cost.is_6N else 'recorded cost'})", params, cost))
    if not cost.is_6N:
        rows.append(line("C = 6ND instead of the recorded cost", params, SIX_N))
    if "N_alt" in pts and np.all(np.isfinite(pts["N_alt"])):
        alt = pts.assign(N=pts["N_alt"])
        law = approach3_law(ds.entropy_floor, opts)  # as approach 3 was fitted: E held where it is
        fit = fit_law(law, alt, delta=opts.huber_delta, starts=_starts(law, opts), warn=False)
        alt_cost = cost_model_for(ds, N=alt["N"]) if not cost.is_6N else SIX_N
        rows.append(line(f"N = {ds.alt_N_name} (refitted)", fit.params, alt_cost))
    return rows


def holdout(points, opts: FitOptions, cost, groups, minima, law: Law | None = None) -> dict:
    """Fit without the K largest budgets; report how well the fit predicts their points and minima.
    `law`: the form to refit (default the options' law; approach 3's E-held variant where it is held)."""
    k = opts.holdout_largest
    labels, values, _ = groups
    if k >= len(values):
        raise AnalysisError(f"--holdout-largest {k} would hold out every one of the {len(values)} budgets")
    held = set(np.argsort(values)[-k:].tolist())
    test_mask = np.isin(labels, list(held))
    law = law or get_law(opts.law)
    points = with_unique_tokens(points) if "U" in law.inputs else points
    train, test = points[~test_mask], points[test_mask]
    if len(train) <= law.n_params:
        raise AnalysisError(f"--holdout-largest {k} leaves {len(train)} points, too few to fit {law.n_params} parameters")
    fit = fit_law(law, train, delta=opts.huber_delta, starts=_starts(law, opts), warn=False)
    pred = law.predict(fit.params, **{c: test[c].to_numpy() for c in law.inputs})
    obs = test["loss"].to_numpy()
    rel = (pred - obs) / obs
    out = {
        "law": law.name,
        "k": int(k),
        "budgets": sorted(float(values[i]) for i in held),
        "n_train": int(len(train)),
        "params": {n: float(v) for n, v in fit.params.items()},
        "points": [
            {"run": str(r), "N": float(n), "D": float(d), "C": float(c), "observed": float(o), "predicted": float(p), "rel_error": float(e)}
            for r, n, d, c, o, p, e in zip(test["run"], test["N"], test["D"], test["C"], obs, pred, rel)
        ],
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "rmse_nats": float(np.sqrt(np.mean((pred - obs) ** 2))),
        "warnings": list(fit.warnings),
    }
    if opts.law == "chinchilla":
        out["minima"] = []
        for m in minima:
            if m["label"] in held:
                N, _, L = chinchilla_frontier(fit.params, cost, np.array([m["C"]]))
                out["minima"].append({"C": m["C"], "observed": {"N_opt": m["N_opt"], "loss": m["loss"]}, "predicted": {"N_opt": float(N[0]), "loss": float(L[0])}})
    return out


# ------------------------------------------------------------------------------------------------
def run_fits(ds: Dataset, options: FitOptions) -> dict:
    """Every fit the options ask for, as the fit.json record."""
    opts = options.validate()
    pts = ds.points
    cost = cost_model_for(ds)
    groups = ap.group_budgets(pts, opts.budget_gap)
    c_min, c_max = float(pts["C"].min()), float(pts["C"].max())
    c_range = (c_min, c_max) if c_max > c_min * 1.01 else (c_min, c_min * 10.0)
    reach = max([c_max * FIGURE_REACH, *opts.at])
    minima = budget_minima(pts, groups, cost) if len(groups[1]) >= 2 else []
    record = {
        "schema": 2,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": ds.source,
        "n_points": int(len(pts)),
        "data_range": {c: [float(pts[c].min()), float(pts[c].max())] for c in ("N", "D", "C", "loss")},
        "n_budgets": int(len(groups[1])),
        "budgets": [float(c) for c in groups[1]],
        "entropy_floor": ds.entropy_floor,
        "cost_model": cost.to_dict(),
        "conventions": {**ds.conventions, "C_model": cost.describe()},
        "filters": ds.filters or {"min_tokens_per_param": None, "exclude_top_loss": 0, "dropped": [], "n_dropped": 0},
        "options": dataclasses.asdict(opts),
        "notes": list(ds.notes),
        "branches": (ds.source or {}).get("branches"),  # which points are WSD cooldown branches (lib/sweeps/cooldowns.py)
        "fits": {},
        "skipped": {},
    }
    if opts.law == "chinchilla":
        wanted = ("3", "2", "1") if opts.approach == "all" else (str(opts.approach),)
        for a in wanted:
            progress.stage(f"approach {a}: fit" + (f" and {opts.bootstrap} bootstrap refits" if opts.bootstrap else ""))
            try:
                if a == "3":
                    record["fits"]["approach3"], free = fit_approach3(ds, pts, opts, cost, groups, minima, c_range)
                    if free is not None:
                        record["approach3_free_E"] = free
                elif a == "2":
                    lobo3 = record["fits"].get("approach3", {}).get("goodness", {}).get("lobo", {}).get("budgets", [])
                    lobo_E = {r["C"]: r["predicted"]["E"] for r in lobo3 if "predicted" in r}
                    floor = loss_floor(ds.entropy_floor, opts, record)
                    record["fits"]["approach2"] = fit_approach2(pts, opts, cost, groups, minima, floor, lobo_E, ds.budget_noise)
                else:
                    record["fits"]["approach1"] = fit_approach1(pts, opts, cost, groups, minima)
            except AnalysisError as e:
                if opts.approach != "all" or a == "3":
                    raise
                record["skipped"][f"approach{a}"] = str(e)
        if "approach3" in record["fits"]:
            record["sensitivity"] = sensitivity(ds, pts, opts, cost, record["fits"]["approach3"], c_max)
    else:
        progress.stage(f"{opts.law}: fit" + (f" and {opts.bootstrap} bootstrap refits" if opts.bootstrap else ""))
        used, rule = unlimited_points(with_unique_tokens(pts) if "U" in get_law(opts.law).inputs else pts, opts.law, groups)
        entry = fit_parametric(opts.law, used, opts, cost, groups, minima, c_range)
        entry["points_used"] = {"rule": rule, "runs": used["run"].astype(str).tolist()}
        record["fits"][opts.law] = entry
    table_c = anchors(c_max, opts.at)
    grid_c = np.geomspace(min([c_min, *opts.at]), reach, 60)  # the figures reach every --at, below the data too
    for name, e in record["fits"].items():
        if "frontier_model" in e:
            e["table"] = predict(record, name, table_c)
            e["grid"] = _grid(predict(record, name, grid_c))
    if opts.points:
        N, D = np.array(opts.points, float).T
        for name in point_fits(record):
            record["fits"][name]["points_table"] = predict_points(record, name, N, D)
    if opts.holdout_largest:
        progress.stage(f"holdout: refit without the {opts.holdout_largest} largest budget(s)")
        record["holdout"] = holdout(pts, opts, cost, groups, minima, approach3_law(ds.entropy_floor, opts) if opts.law == "chinchilla" else None)
    if ds.lr_grid is not None and opts.law == "chinchilla":
        record["lr_grid"] = {"choices": ds.lr_grid["choices"], "n_edge": sum(bool(c["edge"]) for c in ds.lr_grid["choices"])}
        record["lr_sensitivity"], record["lr_sensitivity_exponents"], record["lr_sensitivity_left_out"] = lr_sensitivity(ds, opts)
    if ds.seed_replicates is not None and opts.law == "chinchilla":
        record["seed_sensitivity"], record["seed_sensitivity_exponents"], record["seed_sensitivity_left_out"] = seed_sensitivity(ds, opts)
    record["warnings"] = [w for e in record["fits"].values() for w in e.get("warnings", [])] + record.get("holdout", {}).get("warnings", [])
    return record


def pinned_E(ds_floor, opts: FitOptions) -> tuple[float | None, str | None]:
    """(E, where it comes from) that approach 3 holds E at: --fix-E, else the entropy floor every run
    records; (None, None) with --free-E, or where no floor is known."""
    if opts.free_E:
        return None, None
    if opts.fix_E is not None:  # --fix-E 0 is no floor for approach 3 (its law's E is a positive loss): E free
        return (float(opts.fix_E), "--fix-E") if opts.fix_E > 0 else (None, None)
    if ds_floor is not None and ds_floor > 0:
        return float(ds_floor), "the entropy floor every run records"
    return None, None


def approach3_law(ds_floor, opts: FitOptions) -> Law:
    """Chinchilla's law as approach 3 fits it: E held at the pinned floor, else free."""
    E, _ = pinned_E(ds_floor, opts)
    return CHINCHILLA if E is None else chinchilla_fixed_E(E)


def fit_approach3(ds: Dataset, pts, opts: FitOptions, cost, groups, minima, c_range) -> tuple[dict, dict | None]:
    """(approach 3's entry, the free-E diagnostic or None). Where the floor is known exactly, E is held
    there and A, B, alpha, beta are fitted (a free E trades itself against the exponents: anywhere
    from 0.46 to 1.17 across runs of one command, with the floor known to 4 digits); the free-E fit
    stays beside it, point estimates only, with both fits' predictions at 10x and 100x the data."""
    E, source = pinned_E(ds.entropy_floor, opts)
    if E is None:
        return fit_parametric("chinchilla", pts, opts, cost, groups, minima, c_range), None
    entry = fit_parametric("chinchilla", pts, opts, cost, groups, minima, c_range, law=chinchilla_fixed_E(E))
    entry["E_pinned"] = {"value": E, "source": source}
    free = fit_parametric("chinchilla", pts, dataclasses.replace(opts, bootstrap=0), cost, groups, minima, c_range, lobo=False)
    c_max = c_range[1]
    at = np.array([10.0 * c_max, 100.0 * c_max])

    def at_reach(e):
        N, D, L = chinchilla_frontier({k: v["value"] for k, v in e["params"].items()}, cost, at)
        return [{"C": float(c), "N_opt": float(n), "D_opt": float(d), "loss": float(loss)} for c, n, d, loss in zip(at, N, D, L)]

    diagnostic = {
        "params": {k: v["value"] for k, v in free["params"].items()},
        "a": free["a"]["value"],
        "rmse_nats": free["goodness"]["rmse_nats"],
        "predictions": {"E_pinned": at_reach(entry), "E_free": at_reach(free)},
        "note": f"approach 3 is fitted with E held at {E:.6g} ({source}); this fit lets E free, as a diagnostic",
    }
    return entry, diagnostic


def lr_sensitivity(ds: Dataset, opts: FitOptions) -> tuple[dict, dict, dict]:
    """Each approach refitted with every point at lr x f of its rule (f in the grid: the runs with that
    lr_factor) and at its best lr, without bootstrap: how much the learning-rate policy moves the
    exponents. ({approach: {"lr_x0.5": a, ..., "lr_best": a}}, {approach: {variant: {"alpha", "beta"}}},
    {variant left out: why}: `_refits`)."""
    runs = pd.DataFrame(ds.lr_grid["runs"])
    variants = {f"lr_x{f:g}": lr_grid_lib.at_factor(runs, f) for f in sorted(runs["lr_factor"].unique())}
    variants["lr_best"] = ds.points
    return _refits(ds, variants, opts)


def seed_sensitivity(ds: Dataset, opts: FitOptions) -> tuple[dict, dict, dict]:
    """Each approach refitted, without bootstrap, on the points at the rule's lr (x1 of the lr grid;
    the points themselves without one) and on each seed replicate of them (lib/sweeps/plans.py Sweep.seeds):
    how much the exponents move with the init alone, at a fixed lr policy.
    ({approach: {"seed0": a, "seed1": a, ..., "spread": max - min}}, {approach: {variant: {"alpha", "beta"}}},
    {variant left out: why}); a seed whose replicates do not cover every point is left out, said so."""
    reps = ds.seed_replicates
    variants = {f"seed{reps['main_seed']}": ds.at_rule, **{f"seed{seed}": pts for seed, pts in sorted(reps["points"].items())}}
    return _refits(ds, variants, opts)


def _point_tuples(frame: pd.DataFrame) -> list[tuple]:
    return list(zip(*point_keys(frame)))


def _refits(ds: Dataset, variants: dict, opts: FitOptions) -> tuple[dict, dict, dict]:
    """Each approach's a (and alpha, beta where it has them) refitted on each variant's points, with
    the main fit's options less the bootstrap, holdout and tables. A variant is cut to the main fit's
    points (what the data filters kept) and left out if it misses one, so every value compares the
    same points; the third result says which were left out and why. The spread is max - min over the
    variants fitted, None with fewer than two (a spread over one variant would read as 0)."""
    quick = dataclasses.replace(opts, bootstrap=0, holdout_largest=0, at=(), points=())
    kept = set(_point_tuples(ds.points))
    a_by, exps_by, left_out = {}, {}, {}
    for name, pts in variants.items():
        pts = pts[[k in kept for k in _point_tuples(pts)]]
        if len(pts) < len(ds.points):  # e.g. an lr factor some points lack (diverged runs, an edge extension)
            left_out[name] = f"has {len(pts)} of the fit's {len(ds.points)} points"
            continue
        try:
            fits = run_fits(dataclasses.replace(ds, points=pts[list(COLUMNS)].reset_index(drop=True), lr_grid=None, seed_replicates=None),
                            quick)["fits"]
        except AnalysisError as e:
            left_out[name] = f"the fit refused it: {e}"
            continue
        for approach, e in fits.items():
            a_by.setdefault(approach, {})[name] = e["a"]["value"]
            if "alpha" in e.get("params", {}):
                exps_by.setdefault(approach, {})[name] = {k: e["params"][k]["value"] for k in ("alpha", "beta")}
    for approach, values in a_by.items():
        values["spread"] = max(values.values()) - min(values.values()) if len(values) >= 2 else None
    return a_by, exps_by, left_out


def _grid(rows: list[dict]) -> dict:
    """Plot-ready columns: C, and [value, lo, hi] lists for N_opt, D_opt and loss."""
    def cols(key):
        vals = [r[key] for r in rows]
        if any(v is None for v in vals):
            return None
        lo_hi = [v["ci"] or [np.nan, np.nan] for v in vals]
        return [[v["value"] for v in vals], [x[0] for x in lo_hi], [x[1] for x in lo_hi]]

    return {"C": [r["C"] for r in rows], "N_opt": cols("N_opt"), "D_opt": cols("D_opt"), "loss": cols("loss")}
