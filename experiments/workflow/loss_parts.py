"""`scaling loss-parts ROOT`: where the loss above the floor goes, on the synthetic phrase language.

A run's held-out loss is split by what each predicted token is (lib.data.synthetic target_roles).
Filler tokens 2..F of a phrase are fixed by its ID, so their Bayes loss is exactly 0 and a model's
loss on them is phrase memory it lacks: the term the language's theory is about (capacity N^-0.30,
data D^-0.23; lib/data/synthetic.py). Everything else -- the ID digits, the filler token that ends
the ID, the boundary -- carries the whole floor plus what the model has not learnt of the ID trie's
structure, a term the theory says nothing about. Each part, summed over its tokens and divided by
all predicted tokens, so the parts add up to the eval loss:

    memory(N, D) = loss on filler tokens 2..F          floor 0
    rest(N, D)   = loss on every other token           floor = the run's entropy_floor

Both are fitted at each point's best-lr run with approach 3 and E held at the part's floor (the
same fitter as `scaling fit --csv`), into ROOT/loss_parts/{memory,rest}/, beside a table of the
parts per run (ROOT/loss_parts/parts.csv). If the memory part's exponents sit near the theory and
the rest's do not, the whole loss's distance from the theory comes from the structure term.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

PARTS_CSV = "parts.csv"


# Buckets of a phrase's expected sightings in training, c = (D / mean tokens per phrase) * p_r.
SIGHTINGS_EDGES = (0.0, *(2.0**k for k in range(13)), float("inf"))


def measure(run_path, rows: int | None = None, tokens: float | None = None) -> dict:
    """Run `run_path`'s latest checkpoint on `rows` held-out rows (default: its own eval set, so the
    parts sum to its recorded eval loss): {role name: loss summed over that role's tokens / all
    predicted tokens, ..., "tokens_<role>": count, "eval_loss": the mean, "rows", "step"}; with
    `tokens` (the run's training tokens) also the mean loss per later filler token of the phrases
    expected to have been seen c times, per bucket of SIGHTINGS_EDGES ("memory_c<lo>",
    "n_c<lo>": how many such tokens): whether a phrase seen c times is remembered."""
    import jax

    from lib.config import eval_rows
    from lib.data.synthetic import ROLE_LATER_FILLER, ROLE_NAMES
    from lib.train.restore import load_trained

    run = load_trained(run_path)
    if not hasattr(run.source, "target_roles"):
        raise ValueError(f"{run_path}: data.source {run.cfg.data.source!r} has no phrase roles; loss-parts reads the synthetic language only")
    rows = rows or eval_rows(run.cfg.train.eval_tokens, run.cfg.data.seq_len)
    tokens_BT1 = run.source.eval_rows(0, rows)
    losses_BT = np.asarray(jax.device_get(_token_losses(run.model)(run.params, tokens_BT1)), np.float64)
    roles_BT = run.source.target_roles(tokens_BT1)
    out = {"rows": rows, "step": run.step, "eval_loss": float(losses_BT.mean())}
    for code, name in enumerate(ROLE_NAMES):
        mask = roles_BT == code
        out[name] = float(losses_BT[mask].sum() / losses_BT.size)
        out[f"tokens_{name}"] = int(mask.sum())
    if tokens:
        later = roles_BT == ROLE_LATER_FILLER
        ranks = run.source.target_ranks(tokens_BT1)[later]
        sightings = tokens / run.source.mean_tokens_per_phrase * run.source.rank_probs(ranks)
        bucket = np.searchsorted(SIGHTINGS_EDGES, sightings, side="right") - 1
        for k, lo in enumerate(SIGHTINGS_EDGES[:-1]):
            inside = bucket == k
            out[f"n_c{lo:g}"] = int(inside.sum())
            out[f"memory_c{lo:g}"] = float(losses_BT[later][inside].mean()) if inside.any() else float("nan")
        out["c50"] = half_memory_sightings(sightings, losses_BT[later], math.log(run.source.filler_vocab))
    return out


def half_memory_sightings(sightings, losses, unknown: float) -> float:
    """The expected sightings at which a phrase's filler loss falls to half of `unknown` (the loss of
    a filler never memorised, log of the filler alphabet): a logistic fit of "remembered" (loss below
    half) against log sightings, read at probability 1/2. NaN where it never or always remembers."""
    from scipy.optimize import minimize

    seen = sightings > 0
    x, y = np.log(sightings[seen]), (losses[seen] < unknown / 2).astype(float)
    if y.all() or not y.any():
        return float("nan")

    def nll(theta):
        z = theta[1] * (x - theta[0])
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    res = minimize(nll, x0=np.array([float(np.median(x)), 1.0]), method="Nelder-Mead")
    return float(np.exp(res.x[0]))


_JITTED: dict = {}


def _token_losses(model):
    """One compiled per-token loss per model shape (flax modules hash by their fields)."""
    import jax

    from lib.tasks.lm import token_losses

    if model not in _JITTED:
        _JITTED[model] = jax.jit(lambda params, tokens_BT1: token_losses(params, model, tokens_BT1))
    return _JITTED[model]


def measure_root(root, rows: int | None = None):
    """A frame of the parts of each point's best run (over its lr grid, by recorded eval loss) of
    `root`'s sweep (not its check runs, nor tune/ or sensitivity/ below it), with N, D, C, budget,
    lr_factor and the recorded eval loss."""
    import pandas as pd

    from analysis.data import is_check_sweep
    from lib.store.runstore import load_runs

    runs = load_runs(root)
    done = runs[(runs["state"] == "done") & ~runs["sweep"].map(is_check_sweep)]  # a check's runs test the fit; not fitted
    best = done.loc[done.groupby(["budget", "N_total"])["eval_loss"].idxmin()].sort_values(["budget", "N_total"])
    found = []
    for _, r in best.iterrows():
        parts = measure(r["path"], rows, tokens=r["D"])
        found.append({"run_id": r["run_id"], "N": r["N_total"], "D": r["D"], "C": r["C"], "budget": r["budget"], "sweep": r["sweep"],
                      "lr_factor": r["lr_factor"], "recorded_eval_loss": r["eval_loss"], "entropy_floor": r["entropy_floor"], **parts})
        print(f"  {r['run_id']}: eval {parts['eval_loss']:.4f} (recorded {r['eval_loss']:.4f}), memory {parts['later_filler']:.4f}, "
              f"half remembered at {parts.get('c50', float('nan')):.0f} sightings", flush=True)
    return pd.DataFrame(found)


def fit_parts(best, out_dir) -> dict:
    """Approach 3 with E held at each part's floor, on the memory part and on the rest."""
    from analysis.report import fit_and_report

    floor = float(best["entropy_floor"].iloc[0])
    memory = best.assign(loss=best["later_filler"])[["N", "D", "C", "loss", "run_id"]].rename(columns={"run_id": "run"})
    rest = best.assign(loss=best["eval_loss"] - best["later_filler"])[["N", "D", "C", "loss", "run_id"]].rename(columns={"run_id": "run"})
    fits = {}
    for name, frame, E in (("memory", memory, 0.0), ("rest", rest, floor)):
        path = os.path.join(out_dir, name)
        os.makedirs(path, exist_ok=True)
        csv = os.path.join(path, "points.csv")
        frame.to_csv(csv, index=False)
        record = fit_and_report(csv, path, {"approach": "3", "fix_E": E, "figures": False})
        params = record["fits"]["approach3"]["params"]
        fits[name] = {"E": E, **{k: params[k] for k in ("alpha", "beta") if k in params}, "a": record["fits"]["approach3"].get("a")}
    return fits


def loss_parts(root, rows: int | None = None) -> int:
    from analysis.report import write_atomic

    out_dir = os.path.join(os.fspath(root), "loss_parts")
    os.makedirs(out_dir, exist_ok=True)
    parts = measure_root(root, rows)
    if parts.empty:
        print(f"loss-parts: no finished runs under {root}", file=sys.stderr)
        return 1
    gap = float((parts["eval_loss"] - parts["recorded_eval_loss"]).abs().max())
    write_atomic(os.path.join(out_dir, PARTS_CSV), parts.to_csv(index=False))
    fits = fit_parts(parts, out_dir)
    record = {"points": len(parts), "rows": int(parts["rows"].iloc[0]),
              "max_gap_to_recorded_eval_loss": gap, "fits": fits}
    write_atomic(os.path.join(out_dir, "loss_parts.json"), json.dumps(record, indent=2) + "\n")
    print(f"\n{len(parts)} points (each at its best lr); the parts sum to the recorded eval loss within {gap:.2e}")
    for name, f in fits.items():
        print(f"  {name:6s} (E held at {f['E']:.4f}): alpha {_fmt(f.get('alpha'))}  beta {_fmt(f.get('beta'))}  a {_fmt(f.get('a'))}")
    print(f"-> {out_dir}/loss_parts.json, {PARTS_CSV}, memory/ and rest/ (fit.json, report.md)")
    return 0


def _fmt(entry) -> str:
    if entry is None:
        return "-"
    if isinstance(entry, dict):
        ci = entry.get("ci")
        return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return f"{float(entry):.3f}"
