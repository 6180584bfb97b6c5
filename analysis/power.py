"""Design power before compute: simulate an experiment's own design under a known law and fit each
simulated dataset with the pipeline `scaling fit` uses, so a design says how precise each exponent
will be, and whether its check can fail, before anything is trained.

    design = Design(N, D, C, budget, floor)              # the planner's points (one per (N, D))
    record = power(design, truth, PowerOptions(...))     # the JSON of `scaling plan --power`

Per simulation: L = E + A/N^alpha + B/D^beta + Gaussian noise (sd `noise` nats) at every point.
  approach 3  the law approach 3 fits (`pipeline.approach3_law`: E held at the source's floor where
              it knows one), from a seeded subset of the pipeline's start grid (`n_starts`), and the pipeline's stratified bootstrap
              (`bootstrap.resample_weights`, refits from each fit's best distinct optima): all K
              datasets in ONE batched L-BFGS call (each row its own losses, `fit.solve`), and all
              K x R resamples in a second; a = `predict.local_exponents` over the data's C range.
  approach 2  `approaches.approach2` (local robust parabolas; refuses unbracketed budgets) and
              `approaches.bootstrap_approach2` per dataset (numpy/scipy, no L-BFGS).
  approach 1  `approaches.approach1` + `bootstrap_approach1` where the design has the horizons it
              needs (else skipped, with approach 1's reason).
Truth for a: the true law's `local_exponents` over the same C range and cost model, the quantity
every approach estimates. Coverage: the fraction of simulations whose 95% interval holds the truth.

check_power: the probability that the allocation check (`analysis.allocation`) flags a fit whose a is
off by `shift_a` (0.1): each simulation's approach-3 N_opt interval at the check budget, rotated
about the data's centre by that shift, sets where the check's sizes go; their losses are drawn from
the truth with the same noise; the measured minimum (pooled with the simulation's approach-2 noise)
is compared with the shifted prediction. `check_false_alarm` is the same without the shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd

from analysis import allocation as al
from analysis import approaches as ap
from analysis.bootstrap import distinct_starts, interval, resample_weights
from analysis.costmodel import CostModel, fit_cost_model
from analysis.errors import AnalysisError
from analysis.fit import SolverConfig, solve
from analysis.laws import CHINCHILLA
from analysis.lbfgs import CONVERGED
from analysis.pipeline import FitOptions, approach3_law, isoflop_strata
from analysis.predict import chinchilla_frontier, local_exponents

TRUTH_KEYS = ("alpha", "beta", "E", "A", "B")


@dataclass(frozen=True)
class Design:
    """The planned points (one per distinct (N, D): an lr grid's runs are one point), the budget each
    belongs to, and the data source's floor (None where it knows none)."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    budget: np.ndarray
    floor: float | None = None
    check_C: float | None = None  # the check budget (default: the next budget up, as `scaling verify`)
    check_ladder: tuple[float, ...] | None = None  # the N of the shapes trainable there (None: ideal sizes)

    @property
    def budgets(self) -> np.ndarray:
        return np.unique(self.budget)

    def points(self, loss) -> pd.DataFrame:
        return pd.DataFrame({"N": self.N, "D": self.D, "C": self.C, "loss": loss, "run": [f"p{i}" for i in range(self.N.size)],
                             "budget": self.budget})


@dataclass(frozen=True)
class PowerOptions:
    n_sims: int = 100
    noise: float = 0.01  # nats, sd of each point's loss about the law
    seed: int = 0
    bootstrap: int = 50  # resamples per simulated fit (intervals; `scaling fit` uses 200)
    ci_level: float = 0.95
    shift_a: float = 0.1  # the error in a the check should catch
    # approach 3's starts per dataset: a seeded subset of the pipeline's grid (`scaling fit --n-starts`);
    # None: the whole grid (900 with E held), 14x the cost for K simulations
    n_starts: int | None = 64
    approaches: tuple[str, ...] = ("3", "2", "1")


def truth_a(truth: dict, cost: CostModel, c_range) -> float:
    return float(local_exponents(truth, cost, *c_range)[0])


def simulate(design: Design, truth: dict, noise: float, n_sims: int, rng) -> np.ndarray:
    """[K, n] losses: the true law at the design's points plus Gaussian noise."""
    L = truth["E"] + truth["A"] / design.N ** truth["alpha"] + truth["B"] / design.D ** truth["beta"]
    return L[None, :] + noise * rng.standard_normal((n_sims, design.N.size))


def _summary(est: np.ndarray, ci: np.ndarray, true: float) -> dict:
    """bias, sd and coverage of one parameter over the simulations that gave an estimate."""
    ok = np.isfinite(est)
    has_ci = ok & np.all(np.isfinite(ci), axis=1)
    out = {"bias": float(np.mean(est[ok]) - true) if ok.any() else None,
           "sd": float(np.std(est[ok], ddof=1)) if ok.sum() > 1 else None,
           "coverage": float(np.mean((ci[has_ci, 0] <= true) & (true <= ci[has_ci, 1]))) if has_ci.any() else None,
           "truth": float(true), "n": int(ok.sum())}
    return out


# ---------------------------------------------------------------- approach 3, batched -------------
def approach3(design: Design, Y: np.ndarray, cost: CostModel, c_range, opts: PowerOptions) -> dict:
    """Approach 3 on every simulated dataset at once: {"params": {name: [K]}, "samples": {name: [K, R]},
    "a": [K], "a_samples": [K, R], "usable": [K, R]}."""
    fopts = FitOptions(seed=opts.seed, n_starts=opts.n_starts, bootstrap=opts.bootstrap, ci_level=opts.ci_level)
    law = approach3_law(design.floor, fopts)
    grid = law.grid_points()
    if opts.n_starts is not None and opts.n_starts < len(grid):
        grid = grid[np.sort(np.random.default_rng(opts.seed).choice(len(grid), opts.n_starts, replace=False))]
    K, n = Y.shape
    S = grid.shape[0]
    log_x = np.log(np.stack([design.N, design.D]))
    log_y = np.log(Y)
    theta, value, _, status = solve(law, np.tile(grid, (K, 1)), log_x, np.repeat(log_y, S, axis=0), np.ones((K * S, n)),
                                    SolverConfig(delta=fopts.huber_delta), problems=np.repeat(np.arange(K), S))
    theta, value = theta.reshape(K, S, -1), value.reshape(K, S)
    order = np.argsort(value, axis=1, kind="stable")
    best = theta[np.arange(K), order[:, 0]]
    ok = np.isfinite(value[np.arange(K), order[:, 0]])
    params = law.to_natural(best)
    out = {"law": law, "params": params, "ok": ok}
    a = np.where(ok, local_exponents(params, cost, *c_range)[0], np.nan)
    out["a"] = a
    if not opts.bootstrap:
        return out
    # the pipeline's bootstrap: stratified by budget, each resample refitted from the fit's best
    # distinct optima (bootstrap.refit_weighted), float64 throughout; all K x R problems in one call
    R, s = opts.bootstrap, 3
    strata = isoflop_strata(design.points(Y[0]), ap.group_budgets(design.points(Y[0])))
    w = resample_weights(np.arange(n), R, opts.seed, strata)  # the same seed as every `scaling fit`
    starts = np.empty((K, s, best.shape[1]))
    for k in range(K):
        st = distinct_starts(SimpleNamespace(ends=theta[k][order[k]]), s)
        starts[k] = st[np.arange(s) % len(st)]  # fewer distinct optima: repeat the best
    theta0 = np.broadcast_to(starts[:, None], (K, R, s, best.shape[1])).reshape(-1, best.shape[1])
    rows_y = np.repeat(log_y, R * s, axis=0)
    rows_w = np.tile(np.repeat(w, s, axis=0), (K, 1))
    th, val, _, stat = solve(law, theta0, log_x, rows_y, rows_w, SolverConfig(delta=fopts.huber_delta, float32_first=False),
                             problems=np.repeat(np.arange(K * R), s))
    th, val, stat = th.reshape(K * R, s, -1), val.reshape(K * R, s), stat.reshape(K * R, s)
    pick = np.argmin(val, axis=1)
    raw = th[np.arange(K * R), pick]
    conv = np.isin(stat[np.arange(K * R), pick], CONVERGED)
    samples = {k_: v.reshape(K, R) for k_, v in law.to_natural(raw).items()}
    usable = conv.reshape(K, R) & np.all([np.isfinite(v) for v in samples.values()], axis=0)
    usable &= (samples["alpha"] > 0) & (samples["beta"] > 0)
    out.update(samples=samples, usable=usable)
    out["a_samples"] = local_exponents({k_: v.ravel() for k_, v in samples.items()}, cost, *c_range)[0].reshape(K, R)
    return out


def _intervals(samples: np.ndarray, usable: np.ndarray, level: float) -> np.ndarray:
    return np.array([interval(s[u], level) if u.sum() >= 2 else [np.nan, np.nan] for s, u in zip(samples, usable)])


# ---------------------------------------------------------------- the whole record ---------------
def power(design: Design, truth: dict, options: PowerOptions = PowerOptions()) -> dict:
    """`scaling plan --power`'s record (less the plan's compute and time, which the caller adds)."""
    opts = options
    missing = [k for k in TRUTH_KEYS if k not in truth]
    if missing:
        raise AnalysisError(f"the truth needs {', '.join(TRUTH_KEYS)}; missing {', '.join(missing)}")
    if opts.n_sims < 2:
        raise AnalysisError(f"--sims must be >= 2 (a spread needs two simulations), not {opts.n_sims}")
    if not (opts.noise >= 0 and math.isfinite(opts.noise)):
        raise AnalysisError(f"--noise takes a finite level in nats >= 0, not {opts.noise}")
    truth = {k: float(truth[k]) for k in TRUTH_KEYS}
    rng = np.random.default_rng(opts.seed)
    Y = simulate(design, truth, opts.noise, opts.n_sims, rng)
    if np.any(Y <= 0):
        raise AnalysisError("the truth plus noise gives non-positive losses; lower --noise or raise E")
    cost = fit_cost_model(design.N, design.D, design.C, "recorded")
    c_range = (float(design.C.min()), float(design.C.max()))
    a_true = truth_a(truth, cost, c_range)
    level = opts.ci_level
    record = {"n_sims": int(opts.n_sims), "noise": float(opts.noise), "truth": {**truth, "a": a_true}, "approaches": {},
              "skipped": {}, "bootstrap": int(opts.bootstrap), "seed": int(opts.seed), "ci_level": level,
              "approach3_starts": opts.n_starts or "the whole grid"}
    groups = ap.group_budgets(design.points(Y[0]))
    a3 = None
    if "3" in opts.approaches:
        a3 = approach3(design, Y, cost, c_range, opts)
        names = ["a", "alpha", "beta"] + ([] if _pinned(a3) else ["E"])
        entry = {}
        for name in names:
            est = a3["a"] if name == "a" else np.where(a3["ok"], a3["params"][name], np.nan)
            if opts.bootstrap:
                smp = a3["a_samples"] if name == "a" else a3["samples"][name]
                ci = _intervals(smp, a3["usable"], level)
            else:
                ci = np.full((opts.n_sims, 2), np.nan)
            entry[name] = _summary(est, ci, a_true if name == "a" else truth[name])
        if _pinned(a3):
            entry["E_pinned"] = float(design.floor)
        record["approaches"]["approach3"] = entry
    bracketed, sigmas = [], []
    a2_est, a2_ci = np.full(opts.n_sims, np.nan), np.full((opts.n_sims, 2), np.nan)
    for k in range(opts.n_sims):
        pts = design.points(Y[k])
        try:
            res = ap.approach2(pts, cost, groups=groups)
            bracketed += [b.accepted for b in res.budgets]
            ok = res.accepted
            sigmas.append((ok[0].sigma, ok[0].sigma_dof) if ok and ok[0].sigma_dof > 0 else None)
        except AnalysisError:
            labels, values, _ = groups
            bracketed += [ap.fit_budget(values[j], design.N[labels == j], design.D[labels == j], Y[k][labels == j], cost).accepted
                          for j in range(len(values))]
            sigmas.append(None)
            continue
        if "2" in opts.approaches:
            a2_est[k] = res.N_fit.exponent
            if opts.bootstrap:
                try:
                    bs = ap.bootstrap_approach2(pts, groups, cost, opts.bootstrap, opts.seed)
                    if bs.n_used >= 2:
                        a2_ci[k] = interval(bs.a, level)
                except AnalysisError:
                    pass
    record["bracketed_fraction"] = float(np.mean(bracketed)) if bracketed else None
    if "2" in opts.approaches:
        record["approaches"]["approach2"] = {"a": _summary(a2_est, a2_ci, a_true)}
    if "1" in opts.approaches:
        _approach1(design, truth, Y, cost, a_true, opts, record)
    record.update(_check_power(design, truth, Y, cost, a3, sigmas, opts))
    return record


def _pinned(a3: dict) -> bool:
    """Approach 3 held E at the floor (a law with no E among its fitted parameters)."""
    return a3["law"] is not CHINCHILLA


def _approach1(design, truth, Y, cost, a_true, opts, record) -> None:
    exact = truth["E"] + truth["A"] / design.N ** truth["alpha"] + truth["B"] / design.D ** truth["beta"]
    try:
        ap.approach1(design.points(exact), cost)
    except AnalysisError as e:
        record["skipped"]["approach1"] = str(e)
        return
    est, ci = np.full(opts.n_sims, np.nan), np.full((opts.n_sims, 2), np.nan)
    for k in range(opts.n_sims):
        pts = design.points(Y[k])
        try:
            est[k] = ap.approach1(pts, cost).N_fit.exponent
            if opts.bootstrap:
                bs = ap.bootstrap_approach1(pts, cost, opts.bootstrap, opts.seed)
                if bs.n_used >= 2:
                    ci[k] = interval(bs.a, opts.ci_level)
        except AnalysisError:
            continue
    record["approaches"]["approach1"] = {"a": _summary(est, ci, a_true)}


# ---------------------------------------------------------------- the check's power ---------------
def next_budget(budgets) -> float:
    """As `scaling verify`: one step past the largest budget at the ratio of the last two."""
    b = np.sort(np.asarray(budgets, float))
    return float(b[-1] ** 2 / b[-2]) if b.size >= 2 and b[-1] > b[-2] else float(3.0 * b[-1])


def _check_power(design, truth, Y, cost, a3, sigmas, opts) -> dict:
    """{"check_power", "check_false_alarm", "check": {...}}: how often the allocation check at the
    next budget flags approach 3's prediction rotated by +-shift_a (and unrotated)."""
    if a3 is None or not opts.bootstrap:
        return {"check_power": None, "check_false_alarm": None,
                "check": {"note": "needs approach 3 with bootstrap intervals"}}
    C = float(design.check_C or next_budget(design.budgets))
    reach = math.log10(C) - float(np.mean(np.log10(design.budgets)))
    K = Y.shape[0]
    samples = {k: np.where(a3["usable"], v, np.nan) for k, v in a3["samples"].items()}
    n_fit = chinchilla_frontier(a3["params"], cost, [C])[0][:, 0]
    n_smp = chinchilla_frontier({k: v.ravel() for k, v in samples.items()}, cost, [C])[0].reshape(K, -1)
    rng = np.random.default_rng(opts.seed + 1)
    ladder = np.asarray(design.check_ladder, float) if design.check_ladder else None
    flags = {s: [] for s in (+opts.shift_a, -opts.shift_a, 0.0)}
    detect, short, planned = [], 0, 0
    for k in range(K):
        ok = np.isfinite(n_smp[k])
        if not (np.isfinite(n_fit[k]) and ok.sum() >= 2):
            continue
        ci = interval(n_smp[k][ok], opts.ci_level)
        for shift, out in flags.items():
            f = 10 ** (shift * reach)
            pred = {"value": float(n_fit[k] * f), "ci": [ci[0] * f, ci[1] * f]}
            idx, nts = al.plan_sizes(pred["value"], ladder)
            planned += 1
            short += bool(nts)  # the ladder lacks sizes near this prediction (counted, not one note per simulation)
            N = ladder[idx] if ladder is not None else al.target_sizes(pred["value"])
            D = np.asarray(cost.tokens(N, C), float)
            L = truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"] + opts.noise * rng.standard_normal(N.size)
            m = al.measure(C, N, D, L, cost, sigmas[k], opts.ci_level)
            v = al.allocation(pred, m)["inside"]
            out.append(np.nan if v is None else float(not v))
            if shift == 0.0:
                d = al.detectable_shift_a(m, C, design.budgets)
                detect.append(np.nan if d is None else d)

    def frac(x):
        x = np.asarray(x, float)
        return float(np.nanmean(x)) if np.isfinite(x).any() else None

    up, down, zero = (flags[s] for s in (+opts.shift_a, -opts.shift_a, 0.0))
    return {
        "check_power": frac(up + down),
        "check_false_alarm": frac(zero),
        "check": {"C": C, "shift_a": opts.shift_a, "power_up": frac(up), "power_down": frac(down),
                  "no_verdict_fraction": float(np.mean(np.isnan(np.asarray(up + down, float)))) if up else None,
                  "detectable_shift_a_median": float(np.nanmedian(detect)) if np.isfinite(np.asarray(detect, float)).any() else None,
                  "sizes": al.N_SIZES, "spacing": al.SPACING,
                  "notes": [f"in {short} of {planned} simulated checks the ladder had fewer than {al.N_SIZES} shapes within {al.SPACING}x of the "
                            "target sizes around the predicted N_opt, or did not bracket it: extend the ladder there"] if short else []},
    }


def with_defaults(truth: dict, floor: float | None) -> dict:
    """--truth without E on a source with a known floor: E is the floor."""
    t = dict(truth)
    if "E" not in t and floor is not None:
        t["E"] = float(floor)
    return t

