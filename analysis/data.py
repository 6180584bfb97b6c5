"""Loading and validating the points a fit uses: a CSV or a run store, then the data filters.

A `Dataset` holds one row per point (a finished run, or a CSV row) with columns
`N, D, C, loss, run, budget, N_alt` (`budget` NaN where unknown; `N_alt` the other parameter
count of a run store, total vs non-embedding), where its C comes from (the cost model's
source), the entropy floor the runs record, the conventions (what N and C mean) and notes.

Bad rows (missing, non-numeric, non-positive) are reported with their CSV line or run id, then
dropped with a count; input that cannot be used at all raises `AnalysisError` saying how to fix it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from analysis import lr_grid as lr_grid_lib
from analysis.errors import AnalysisError, FitWarning
from analysis.noise import budget_noise

COLUMNS = ("N", "D", "C", "loss", "run", "budget", "N_alt", "U")  # U: unique tokens where the data repeat (NaN: unknown)
C_AGREEMENT = 10.0  # a given C more than this factor away from 6ND is named in a warning
C_OUTLIER = 10.0  # a row whose C/(N*D) is more than this factor off the rows' median is refused (named)
_SHOW = 10  # bad rows listed by name before "and k more"
METRICS = ("loss", "error")  # what a run store's points fit: eval loss, or an image classifier's top-1 eval error
PARAMS_CHOICES = ("total", "non_embedding", "active")  # which N a run store gives (summary.json params.<choice>)
CHECK_SUFFIX = "-check"  # a run whose sweep is named "<sweep>-check" tests a fit (scaling verify): never fitted


def is_check_sweep(name) -> bool:
    """Whether a run's sweep name marks it as a prediction-check run."""
    return isinstance(name, str) and name.endswith(CHECK_SUFFIX)


@dataclass(frozen=True)
class Dataset:
    points: pd.DataFrame  # N, D, C, loss, run, budget, N_alt (NaN where unknown)
    source: dict  # {"kind": "csv"|"runs", "path": ..., ...}: enough to load it again
    conventions: dict  # {"N": ..., "D": ..., "C": ..., "loss": ...}
    notes: tuple[str, ...] = ()
    filters: dict = field(default_factory=dict)
    cost_source: str = "6N"  # where C comes from: "recorded" (runs), "given" (a C column), "6N"
    entropy_floor: float | None = None  # the data's best achievable loss, when the source knows it
    alt_N_name: str | None = None  # what N_alt holds (the other parameter count of a run store)
    # A run store whose points trained at an lr grid (analysis/lr_grid.py): {"runs": every run of the
    # grids (records), "choices": what each point's best lr was}; `points` then holds each point at its best.
    lr_grid: dict | None = None
    # A run store with seed replicates (lib/sweeps/plans.py Sweep.seeds): {"main_seed": the points' train.seed,
    # "points": {seed: that seed's points (COLUMNS), one per main point}}; set aside, never in `points`.
    seed_replicates: dict | None = None
    # {budget: analysis.noise.BudgetNoise}: one run's loss noise per budget, from the seed replicates and
    # the points at their rule's lr (approach 2's se and bootstrap use it); kept by filters and refits.
    budget_noise: dict | None = None

    @property
    def at_rule(self) -> pd.DataFrame:
        """The points at their rule's lr: x1 of their lr grid, or the points themselves without one."""
        return lr_grid_lib.at_factor(pd.DataFrame(self.lr_grid["runs"]), 1.0) if self.lr_grid is not None else self.points

    @property
    def n(self) -> int:
        return len(self.points)

    def with_note(self, *notes: str) -> "Dataset":
        return replace(self, notes=self.notes + tuple(notes))


def _warn(msg: str) -> str:
    warnings.warn(msg, FitWarning, stacklevel=3)
    return msg


def _drop_bad(frame: pd.DataFrame, cols, label) -> tuple[pd.DataFrame, list[str]]:
    """Drop rows with a missing or non-positive value in `cols`; say which (label(i) names a row)."""
    vals = frame[list(cols)].to_numpy(dtype=float)
    bad_cells = ~(np.isfinite(vals) & (vals > 0))
    bad = bad_cells.any(axis=1)
    notes = []
    if bad.any():
        rows = np.flatnonzero(bad)
        desc = [
            f"{label(i)} ({', '.join(f'{c}={vals[i, j]:g}' for j, c in enumerate(cols) if bad_cells[i, j])})"
            for i in rows[:_SHOW]
        ]
        more = f"; and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
        notes.append(
            _warn(
                f"dropped {len(rows)} of {len(frame)} rows with a missing, non-numeric or non-positive "
                f"value: {'; '.join(desc)}{more}"
            )
        )
    return frame.loc[~bad].reset_index(drop=True), notes


def _odd_rows(frame: pd.DataFrame, raw: pd.DataFrame, pick: dict, label, check_cost: bool) -> tuple[pd.DataFrame, list[str]]:
    """Rows that are valid one by one but not as a set: an exact repeat of an earlier row (counted
    once), a row whose C/(N*D) is more than C_OUTLIER x off the median of the rows (refused: its C
    or its units are wrong, and one such C bends the cost model for every point), and replicates
    (same N and D, another loss: kept, each a point, and said). Each named by its row."""
    notes = []
    rows = frame["_row"].to_numpy()
    cols = [c for c in pick.values() if c is not None]
    keys = ["\x1f".join(map(repr, row)) for row in raw.loc[rows, cols].itertuples(index=False)]  # NaN reads "nan": equal to itself
    first: dict[str, int] = {}
    repeat = np.zeros(len(frame), bool)
    desc = []
    for i, (key, row) in enumerate(zip(keys, rows)):
        if key in first:
            repeat[i] = True
            desc.append(f"{label(row)} repeats {label(first[key])}")
        else:
            first[key] = row
    if repeat.any():
        more = f"; and {len(desc) - _SHOW} more" if len(desc) > _SHOW else ""
        notes.append(_warn(f"{len(desc)} exact duplicate row(s) counted once: {'; '.join(desc[:_SHOW])}{more}"))
        frame = frame.loc[~repeat].reset_index(drop=True)
    if check_cost and len(frame) > 2:
        ratio = (frame["C"] / (frame["N"] * frame["D"])).to_numpy(float)
        med = float(np.median(ratio))
        off = (ratio > med * C_OUTLIER) | (ratio < med / C_OUTLIER)
        if off.any():
            idx = np.flatnonzero(off)
            desc = [f"{label(frame['_row'][i])} (N={frame['N'][i]:g}, D={frame['D'][i]:g}, C={frame['C'][i]:g}: C/(N*D) = {ratio[i]:.3g})" for i in idx[:_SHOW]]
            more = f"; and {idx.size - _SHOW} more" if idx.size > _SHOW else ""
            notes.append(_warn(f"refused {idx.size} row(s) whose C/(N*D) is more than {C_OUTLIER:g}x off the rows' median {med:.3g}: "
                               f"{'; '.join(desc)}{more}; check their C (and the units of N, D and C)"))
            frame = frame.loc[~off].reset_index(drop=True)
    same = frame.groupby(["N", "D"], sort=False)["loss"]
    reps = [(nd, g) for nd, g in same if len(g) > 1]
    if reps:
        desc = [f"N={n:g}, D={d:g}: {len(g)} rows ({', '.join(label(frame['_row'][i]) for i in g.index[:_SHOW])}; loss {g.min():.4g}..{g.max():.4g})"
                for (n, d), g in reps[:_SHOW]]
        more = f"; and {len(reps) - _SHOW} more" if len(reps) > _SHOW else ""
        notes.append(f"replicates (same N and D, each fitted as a point): {'; '.join(desc)}{more}")
    return frame, notes


def _finish(points: pd.DataFrame, what: str) -> pd.DataFrame:
    if len(points) == 0:
        raise AnalysisError(f"no usable points left in {what}: every row was dropped (see the messages above)")
    return points[list(COLUMNS)].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
def load_csv(path) -> Dataset:
    """A CSV with columns N, D, loss (optional C, run, budget; D may be replaced by C).

    Column names are matched ignoring case and surrounding spaces. C defaults to 6*N*D and D to
    C/(6N) when only one of them is given; the conventions record which. Bad rows are named by
    their line in the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AnalysisError(f"CSV file {path} does not exist")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"cannot read {path} as CSV: {e}") from None
    ds = from_frame(raw, name=path, row_label=lambda i: f"line {i + 2}", what="the CSV")
    return replace(ds, source={"kind": "csv", "path": os.path.abspath(path), "rows": int(len(raw))})


def from_frame(raw: pd.DataFrame, name: str = "the data frame", row_label=None, what: str = "the data") -> Dataset:
    """A Dataset from a DataFrame with columns N, D, loss (optional C, run, budget), validated as
    a CSV is. `row_label(i)` names row i in messages (default "row i")."""
    row_label = row_label or (lambda i: f"row {i}")
    raw = raw.reset_index(drop=True)
    by_name = {str(c).strip().lower(): c for c in raw.columns}
    pick = {k: by_name.get(k.lower()) for k in COLUMNS}
    need = ["N", "loss"] + ([] if pick["D"] is not None or pick["C"] is not None else ["D"])
    missing = [k for k in need if pick[k] is None]
    if missing:
        raise AnalysisError(
            f"{name} lacks column(s) {', '.join(missing)} (it has: {', '.join(map(str, raw.columns))}); "
            "the data need N (parameters), D (tokens) and loss, optionally C (training FLOPs), run and budget"
        )
    frame = pd.DataFrame(index=raw.index)
    non_numeric = []
    for k in ("N", "D", "C", "loss", "budget", "U"):
        if pick[k] is not None:
            col = pd.to_numeric(raw[pick[k]], errors="coerce")
            bad_text = col.isna() & raw[pick[k]].notna()
            non_numeric += [f"{row_label(i)} {k}={raw[pick[k]][i]!r}" for i in np.flatnonzero(bad_text)[:_SHOW]]
            frame[k] = col.astype(float)
    notes = []
    conventions = {"N": f"parameters as given in {what}", "D": f"tokens as given in {what}", "loss": f"as given in {what}"}
    if pick["C"] is None:
        frame["C"] = 6.0 * frame["N"] * frame["D"]
        conventions["C"] = f"C = 6*N*D (computed: {what} has no C column)"
        notes.append(f"{what} has no C column: C = 6*N*D")
    else:
        conventions["C"] = f"training FLOPs as given in {what}"
    if pick["D"] is None:
        frame["D"] = frame["C"] / (6.0 * frame["N"])
        conventions["D"] = f"D = C/(6*N) (computed: {what} has no D column)"
        notes.append(f"{what} has no D column: D = C/(6*N)")
    if pick["budget"] is None:
        frame["budget"] = np.nan
    if pick["U"] is None:
        frame["U"] = np.nan
    frame["run"] = raw[pick["run"]].astype(str) if pick["run"] is not None else [row_label(i) for i in raw.index]
    frame["N_alt"] = np.nan
    if non_numeric:
        notes.append(_warn(f"non-numeric values read as missing: {'; '.join(non_numeric)}"))
    # derived columns (C from N, D; D from C, N) are bad only where a given one is: report those
    given = [k for k in ("N", "D", "C", "loss") if pick[k] is not None]
    frame["_row"] = raw.index  # the row's place in the input, for naming it after rows are dropped
    frame, dropped = _drop_bad(frame, given, row_label)
    frame, odd = _odd_rows(frame, raw, pick, row_label, check_cost=pick["C"] is not None and pick["D"] is not None)
    dropped += odd
    if pick["C"] is not None and pick["D"] is not None:  # the rows kept, all off 6ND alike: other units or conventions?
        ratio = (frame["C"] / (6.0 * frame["N"] * frame["D"])).to_numpy(float)
        off = np.flatnonzero((ratio > C_AGREEMENT) | (ratio < 1 / C_AGREEMENT))
        if off.size:
            desc = "; ".join(f"{row_label(frame['_row'][i])} (C/6ND = {ratio[i]:.3g})" for i in off[:_SHOW])
            more = f"; and {off.size - _SHOW} more" if off.size > _SHOW else ""
            dropped.append(_warn(f"C disagrees with 6*N*D by more than {C_AGREEMENT:g}x in {off.size} rows: {desc}{more}; check the units of N, D and C"))
    return Dataset(
        points=_finish(frame, name),
        source={"kind": "frame", "path": None, "rows": int(len(raw))},
        conventions=conventions,
        notes=tuple(notes + dropped),
        cost_source="given" if pick["C"] is not None else "6N",
    )


# ------------------------------------------------------------------------------------------------
def _runstore():
    try:
        from lib.store import runstore
    except ImportError as e:  # the training half of the codebase is not installed here
        raise AnalysisError(f"reading a run store needs lib.store.runstore, which cannot be imported ({e})") from None
    return runstore


def _sweep_names(rs, runs) -> list:
    """Each run's sweep: its summary's, or for a run without one yet (not done) its config's."""
    names = list(runs["sweep"])
    for i, (name, state, path) in enumerate(zip(runs["sweep"], runs["state"], runs["path"])):
        if not isinstance(name, str) and state != "done":
            names[i] = (rs.RunDir(path, writer=False).config() or {}).get("sweep")
    return names


def unique_tokens(rs, runs) -> np.ndarray:
    """Each finished run's unique training tokens where its data repeat: its source's own
    description (summary data.unique_tokens: windows x seq_len, what D counts per epoch), else
    D / epochs; NaN for an infinite source (no epochs) or a run that records neither."""
    out = np.full(len(runs), np.nan)
    for i, (path, D) in enumerate(zip(runs["path"], runs["D"])):
        summary = rs.RunDir(path, writer=False).summary() or {}
        u = (summary.get("data") or {}).get("unique_tokens")
        epochs = summary.get("epochs")
        if u is None and isinstance(epochs, (int, float)) and epochs > 0 and np.isfinite(float(D)):
            u = float(D) / float(epochs)
        out[i] = float(u) if isinstance(u, (int, float)) else np.nan
    return out


def load_run_store(root, params: str = "total", metric: str = "loss", train_loss_fallback: bool = False) -> Dataset:
    """Every finished run under `root` (lib.store.runstore layout); others are listed and left out.

    N is the run's total, non-embedding or active parameter count (`params`; active: what one token
    passes through, which differs from total only for routed (moe) models), D its tokens, C its
    recorded FLOPs, loss its final eval loss. A run without a finite eval loss is left out, named,
    unless `train_loss_fallback`: then its final train loss is fitted, said so.
    """
    if params not in PARAMS_CHOICES:
        raise AnalysisError(f"--params must be one of {', '.join(PARAMS_CHOICES)}, not {params!r}")
    if metric not in METRICS:
        raise AnalysisError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise AnalysisError(f"run root {root} is not a directory")
    rs = _runstore()
    runs = rs.load_runs(root)
    if len(runs) == 0:
        raise AnalysisError(f"no runs under {root} (a run is a folder holding config.json)")
    notes = []
    check = pd.Series([is_check_sweep(s) for s in _sweep_names(rs, runs)], index=runs.index, dtype=bool)
    if check.any():  # they test the fit (check.json); fitting them would move what they test
        notes.append(f"left out {int(check.sum())} prediction-check run(s) (sweep '*{CHECK_SUFFIX}': {', '.join(runs.run_id[check][:_SHOW])}); "
                     "they are reported in check.json, not fitted")
        runs = runs[~check].reset_index(drop=True)
        if len(runs) == 0:
            raise AnalysisError(f"the only runs under {root} are prediction-check runs; nothing to fit")
    trunks = runs["role"] == "trunk" if "role" in runs else pd.Series(False, index=runs.index)
    if trunks.any():  # constant-rate trunks (lib/sweeps/cooldowns.py): their branches are the points
        notes.append(f"left out {int(trunks.sum())} WSD trunk run(s) ({', '.join(runs.run_id[trunks][:_SHOW])}): constant-rate "
                     "prefixes of their cooldown branches, which are fitted")
        runs = runs[~trunks].reset_index(drop=True)
    done = runs["state"] == "done"
    if (~done).any():
        left = [f"{r.run_id} ({r.state}{': ' + str(r.reason) if isinstance(r.reason, str) and r.reason else ''})" for r in runs[~done].itertuples()]
        shown = ", ".join(left[:_SHOW]) + (f" and {len(left) - _SHOW} more" if len(left) > _SHOW else "")
        notes.append(_warn(f"left out {len(left)} of {len(runs)} runs that have not finished: {shown}"))
    runs = runs[done].reset_index(drop=True)
    if len(runs) == 0:
        raise AnalysisError(f"none of the runs under {root} has finished (state 'done'); nothing to fit")
    environments, env_notes = _environments(runs)
    notes += env_notes
    n_col = f"N_{params}"
    alt_col = "N_non_embedding" if params == "total" else "N_total"
    loss = runs["eval_loss" if metric == "loss" else "eval_error"].astype(float)
    if metric == "error" and loss.isna().all():
        raise AnalysisError(f"--metric error: no run under {root} records an eval_error (only image classifiers do)")
    no_eval = ~np.isfinite(loss.to_numpy(float))
    if metric == "loss" and no_eval.any():
        train = runs["train_loss"].astype(float).to_numpy()
        use_train = no_eval & np.isfinite(train) & train_loss_fallback
        if use_train.any():
            notes.append(_warn(f"{int(use_train.sum())} runs have no finite eval loss; their final train loss is fitted (--train-loss-fallback): "
                               f"{', '.join(runs.run_id[use_train][:_SHOW])}"))
            loss = loss.where(~use_train, runs["train_loss"].astype(float))
        out = no_eval & ~use_train
        if out.any():  # a train loss is not an eval loss: never fitted unless asked for
            left = [f"{r} (eval_loss {v})" for r, v in zip(runs.run_id[out], loss[out])]
            hint = "" if train_loss_fallback else "; --train-loss-fallback fits such runs on their final train loss"
            notes.append(_warn(f"left out {len(left)} finished run(s) without a finite eval loss: {', '.join(left[:_SHOW])}"
                               + (f" and {len(left) - _SHOW} more" if len(left) > _SHOW else "") + hint))
            runs, loss = runs[~out].reset_index(drop=True), loss[~out].reset_index(drop=True)
            if len(runs) == 0:
                raise AnalysisError(f"none of the finished runs under {root} has a finite eval loss{hint}")
    frame = pd.DataFrame(
        {
            "N": runs[n_col].astype(float),
            "D": runs["D"].astype(float),
            "C": runs["C"].astype(float),
            "loss": loss,
            "run": runs["run_id"].astype(str),
            "budget": runs["budget"].astype(float),
            "N_alt": runs[alt_col].astype(float),
            "U": unique_tokens(rs, runs),
        }
    )
    frame, dropped = _drop_bad(frame, ["N", "D", "C", "loss"], lambda i: f"run {frame['run'][i]}")
    frame, replicates, rep_notes = _set_replicates_aside(frame, runs)
    notes += rep_notes
    frame, lr_grid, lr_notes = _best_lr_per_point(frame, runs)
    notes += lr_notes
    units = sorted({str(u) for u in runs["units"].dropna()}) if "units" in runs else ["tokens"]
    if len(units) > 1:  # an LM's tokens and a classifier's images are no common axis
        raise AnalysisError(f"the runs under {root} count D in different units ({', '.join(units)}: language models and "
                            "image classifiers); fit each task's runs from their own root")
    conv = sorted({str(c) for c in runs["flops_convention"].dropna()})
    if len(conv) > 1:
        notes.append(_warn(f"runs record C in different FLOP conventions ({', '.join(conv)}); their C values are not comparable"))
    conventions = {
        "N": f"{params.replace('_', '-')} parameters (summary.json params.{params}"
             + ("; per token: a moe model's routed experts and router, not all its experts" if params == "active" else "") + ")",
        "D": f"training {units[0] if units else 'tokens'} (summary.json {units[0] if units else 'tokens'})",
        "C": f"recorded training FLOPs, convention {', '.join(conv) or 'unknown'} (summary.json flops)",
        "loss": "final eval loss (summary.json eval_loss)" if metric == "loss" else "final top-1 eval error (summary.json eval_error)",
    }
    floor_col = "entropy_floor" if metric == "loss" else "bayes_error"  # the fitted quantity's floor
    floors = runs.loc[runs["run_id"].isin(frame["run"]), floor_col].dropna().astype(float).unique()
    if len(floors) > 1:
        notes.append(_warn(f"runs record different entropy floors ({', '.join(f'{f:.4g}' for f in floors)}); none is reported"))
    source = {"kind": "runs", "path": os.path.abspath(root), "params": params, "runs": int(len(done)), "environments": environments,
              **({"metric": metric} if metric != "loss" else {}),
              **({"units": units[0]} if units and units[0] != "tokens" else {})}
    if "trunk" in runs:
        branch = runs["trunk"].notna() & runs["run_id"].isin(frame["run"])
        if branch.any():  # cooldown branches of WSD trunks: end-of-run points like any run, flops = trunk prefix + branch
            source["branches"] = {"n": int(branch.sum()), "runs": sorted(runs.run_id[branch]),
                                  "trunks": sorted({str(t) for t in runs.trunk[branch]})}
            notes.append(f"{int(branch.sum())} of the points are cooldown branches of {len(source['branches']['trunks'])} WSD trunk(s); "
                         "each is recorded with its whole compute (trunk prefix + branch), as a from-scratch run")
    ds = Dataset(
        points=_finish(frame, root),
        source=source,
        conventions=conventions,
        notes=tuple(notes + dropped),
        cost_source="recorded",
        entropy_floor=float(floors[0]) if len(floors) == 1 else None,
        alt_N_name=alt_col.replace("N_", "").replace("_", "-") + " parameters",
        lr_grid=lr_grid,
        seed_replicates=replicates,
    )
    noise = budget_noise(ds.at_rule, replicates["points"]) if replicates is not None else {}
    if not noise:
        return ds
    return replace(ds, budget_noise=noise).with_note(
        "one run's loss noise per budget, measured by the seed replicates at the rule's lr (approach 2's se, weights and bootstrap "
        "use it where it has enough dof, in place of the pooled residual scale, pooled over the sizes of each budget's window: "
        "the scale each budget used is in approach 2's table); over all the budget's sizes: "
        + ", ".join(f"{C:.3g}: {v.describe()}" for C, v in sorted(noise.items())))


def _environments(runs: pd.DataFrame) -> tuple[dict[str, int], list[str]]:
    """{environment: finished runs} and a warning where they trained in more than one: a config
    reproduces its run bit for bit only in its own environment (CPU model, ISA, threads, versions;
    lib/train/environment.py), so a root mixed from two is reproduced exactly by neither."""
    counts = {str(k): int(n) for k, n in runs["environment"].value_counts().sort_index().items()}
    recorded = [k for k in counts if k != _runstore().UNRECORDED_ENVIRONMENT]
    if len(recorded) < 2:
        return counts, []
    listed = "; ".join(f"{k}: {n} run(s)" for k, n in counts.items())
    return counts, [_warn(f"the runs trained in {len(recorded)} environments ({listed}); their floats differ by rounding between "
                          "environments, so no one machine reproduces this fit bit for bit (rerun a run where its summary's environment says)")]


def seed_replicates(sweep, seed) -> np.ndarray:
    """Which runs (their sweep names and train.seed, aligned) are seed replicates: a run of sweep
    "S-seed<k>" trained at train.seed k, where S is the sweep of some run that is not a replicate
    (lib/sweeps/plans.py Sweep.seeds). The fit sets them aside, and `scaling loss-parts` leaves them
    out of a point's best run."""
    sweep, seed = list(sweep), list(seed)
    parsed = [_runstore().parse_replicate_sweep(s) for s in sweep]
    main_sweeps = {s for s, p in zip(sweep, parsed) if p is None}
    return np.array([p is not None and p[0] in main_sweeps and seed[i] == p[1] for i, p in enumerate(parsed)], dtype=bool)


def _set_replicates_aside(frame: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict | None, list[str]]:
    """(the frame without seed-replicate runs, {"main_seed", "points": {seed: frame}} or None, notes).
    A replicate is a run of sweep "S-seed<k>" trained at train.seed k, where S is the sweep of points
    that are not replicates and share one seed (lib/sweeps/plans.py Sweep.seeds); any other run is a point."""
    if "seed" not in runs:
        return frame, None, []
    info = runs.set_index("run_id")
    sweep = info.loc[frame["run"], "sweep"].to_numpy()
    seed = info.loc[frame["run"], "seed"].to_numpy()
    is_rep = seed_replicates(sweep, seed)
    if not is_rep.any():
        return frame, None, []
    main_seeds = {int(s) for s, r in zip(seed, is_rep) if not r and s is not None and not pd.isna(s)}
    reps = frame[is_rep].assign(seed=[int(s) for s in seed[is_rep]])
    by_seed = {int(k): g[list(COLUMNS)].reset_index(drop=True) for k, g in reps.groupby("seed")}
    note = (f"left out {int(is_rep.sum())} seed-replicate run(s) of seed(s) {', '.join(map(str, by_seed))} (sweeps '*-seed<k>'): "
            "each seed's points are fitted on their own, as seed_sensitivity")
    if len(main_seeds) != 1:
        return frame[~is_rep].reset_index(drop=True), None, [note + f"; not compared: the points' own train.seed is not one value ({sorted(main_seeds)})"]
    return frame[~is_rep].reset_index(drop=True), {"main_seed": main_seeds.pop(), "points": by_seed}, [note]


def _best_lr_per_point(frame: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict | None, list[str]]:
    """Points trained at several learning rates (runs sharing sweep, budget, N and D: a sweep's lr
    grid) become one point each, at its best lr (analysis/lr_grid.py); other points are unchanged."""
    if "lr" not in runs or runs["lr"].isna().all():
        return frame, None, []
    info = runs.set_index("run_id")
    grid = frame.assign(sweep=info.loc[frame["run"], "sweep"].fillna("").to_numpy(),
                        lr=info.loc[frame["run"], "lr"].astype(float).to_numpy(),
                        lr_factor=info.loc[frame["run"], "lr_factor"].fillna(1.0).astype(float).to_numpy())
    by_point = grid.groupby(list(lr_grid_lib.POINT_KEYS), dropna=False)
    # a point's runs form an lr grid when they differ in lr alone; runs that share a point and an lr
    # (replicates, e.g. over seeds) stay separate points
    in_grid = (by_point["lr"].transform("size") > 1) & (by_point["lr"].transform("nunique") == by_point["lr"].transform("size"))
    if not in_grid.any():
        return frame, None, []
    best, choices = lr_grid_lib.select_best(grid[in_grid])
    best = pd.concat([best, grid[~in_grid]], ignore_index=True)
    grid = grid[in_grid]
    edges = [c for c in choices if c["edge"]]
    note = (f"learning rate per point: {len(choices)} points trained at several learning rates ({len(grid)} runs); each is fitted "
            "at its best (a parabola in log lr through its best run and its neighbours)")
    if edges:
        note += f"; {len(edges)} with the best lr on a grid edge (loss as measured, not bracketed): " + ", ".join(
            f"{min(c['run_ids'])} ({c['edge']})" for c in edges[:_SHOW])
    return best[list(COLUMNS)].reset_index(drop=True), {"runs": grid.to_dict("records"), "choices": choices}, [note]


def load(source, params: str = "total", metric: str = "loss", train_loss_fallback: bool = False) -> Dataset:
    """A CSV file or a run-store folder."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return load_run_store(source, params=params, metric=metric, train_loss_fallback=train_loss_fallback)
    if os.path.isfile(source):
        return load_csv(source)
    raise AnalysisError(f"{source} is neither a CSV file nor a run-store folder")


# ------------------------------------------------------------------------------------------------
def apply_filters(ds: Dataset, min_tokens_per_param: float | None = None, exclude_top_loss: int = 0) -> Dataset:
    """Drop points trained on fewer than `min_tokens_per_param` tokens per parameter, then the
    `exclude_top_loss` highest-loss points (ties with the K-th highest go too, as in Besiroglu et
    al. 2024's `loss < sorted(loss)[-K]`). The filters and what they removed go into `filters`."""
    pts = ds.points
    notes = []
    filters = {"min_tokens_per_param": min_tokens_per_param, "exclude_top_loss": int(exclude_top_loss or 0), "dropped": []}
    if min_tokens_per_param:
        keep = pts["D"] / pts["N"] >= float(min_tokens_per_param)
        if (~keep).any():
            filters["dropped"] += [f"{r} (D/N={d / n:.3g})" for r, d, n in zip(pts.run[~keep], pts.D[~keep], pts.N[~keep])]
            notes.append(f"--min-tokens-per-param {min_tokens_per_param:g} removed {int((~keep).sum())} points")
        pts = pts[keep].reset_index(drop=True)
    k = int(exclude_top_loss or 0)
    if k < 0:
        raise AnalysisError(f"--exclude-top-loss must be >= 0, not {k}")
    if k:
        if k >= len(pts):
            raise AnalysisError(f"--exclude-top-loss {k} would remove all {len(pts)} points")
        threshold = np.sort(pts["loss"].to_numpy())[-k]
        keep = pts["loss"] < threshold
        filters["dropped"] += [f"{r} (loss={v:.4g})" for r, v in zip(pts.run[~keep], pts.loss[~keep])]
        notes.append(f"--exclude-top-loss {k} removed {int((~keep).sum())} points with loss >= {threshold:.4g}")
        pts = pts[keep].reset_index(drop=True)
    if len(pts) == 0:
        raise AnalysisError("the filters removed every point; loosen --min-tokens-per-param")
    filters["n_dropped"] = len(filters["dropped"])
    return replace(ds, points=pts, notes=ds.notes + tuple(notes), filters=filters)
