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
parts per run (ROOT/loss_parts/parts.csv).

The theory's own mechanism is measured too. Phrase memory by expected sightings c = (D / tokens per
phrase) p_r gives c50, the sightings at which half of a phrase's filler is remembered, and the
memory frontier r*, the rank seen c50 times. If a model knew exactly the phrases above r*, its
memory part would be the tail mass beyond r* times (F - 1) log(filler tokens) per phrase
(lib.data.synthetic memory_beyond): loss_parts.json's "frontier" says how close the measured part is,
and how r* moves with N where capacity binds and with D where data binds, as exponents in the
theory's terms (memory ~ r*^-a): the alpha and beta of the mechanism, free of the functional form
E + A N^-alpha + B D^-beta that the fits above assume.
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
        out["c50"] = c50 = half_memory_sightings(sightings, losses_BT[later], math.log(run.source.filler_vocab))
        # The memory frontier: the rank whose phrase is seen c50 times, and the memory part of a model
        # that knows exactly the phrases above it.
        src = run.source
        out["r_star"] = float(src.rank_of_prob(c50 / (tokens / src.mean_tokens_per_phrase))) if math.isfinite(c50) else float("nan")
        out["memory_if_frontier"] = float(src.memory_beyond(out["r_star"])) if math.isfinite(c50) else float("nan")
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
    `root`'s sweep (not its check runs or seed replicates, nor tune/ or sensitivity/ below it: the
    points the fit takes), with N, D, C, budget, lr_factor and the recorded eval loss."""
    import pandas as pd

    from analysis.data import is_check_sweep, seed_replicates
    from lib.store.runstore import load_runs

    runs = load_runs(root)
    # a check's runs test the fit, and a seed replicate is another draw of a point, not another lr: neither is fitted
    replicate = seed_replicates(runs["sweep"], runs["seed"]) if "seed" in runs else False
    done = runs[(runs["state"] == "done") & ~runs["sweep"].map(is_check_sweep) & ~replicate]
    # dropna=False: a grid sweep's runs have no budget; groupby would otherwise drop them all silently
    best = done.loc[done.groupby(["budget", "N_total"], dropna=False)["eval_loss"].idxmin()].sort_values(["budget", "N_total"])
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


def frontier_exponents(parts, zipf_a: float, resamples: int = 2000, seed: int = 0) -> dict:
    """How the memory frontier r* moves with N and D, in the theory's terms: memory ~ r*^-a, so
    alpha = a * d log r* / d log N where capacity binds and beta = a * d log r* / d log D where data
    binds. Data-bound points: those that remember a phrase after at most twice the fewest sightings
    any point needs (min c50); capacity-bound: for each size, its longest run, where that needs more.
    Slopes by least squares in logs, 95% intervals from a bootstrap over points (seed `seed`)."""
    ok = parts[np.isfinite(parts["c50"])]
    floor = float(ok["c50"].min())
    data = ok[ok["c50"] <= 2 * floor]
    longest = ok.loc[ok.groupby("N")["D"].idxmax()]
    capacity = longest[longest["c50"] > 2 * floor]
    rng = np.random.default_rng(seed)

    def slope(x, y) -> dict | None:
        x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
        if x.size < 3 or np.ptp(x) == 0:
            return None
        boot = []
        for _ in range(resamples):
            i = rng.integers(0, x.size, x.size)
            if np.ptp(x[i]) > 0:
                boot.append(zipf_a * np.polyfit(x[i], y[i], 1)[0])
        return {"value": float(zipf_a * np.polyfit(x, y, 1)[0]), "ci": [float(v) for v in np.percentile(boot, [2.5, 97.5])], "points": int(x.size)}

    ratio = (ok["later_filler"] / ok["memory_if_frontier"]).to_numpy(float)
    return {
        "memory_over_frontier_tail": {"median": float(np.median(ratio)), "min": float(ratio.min()), "max": float(ratio.max()),
                                      "corr": float(np.corrcoef(ok["later_filler"], ok["memory_if_frontier"])[0, 1])},
        "c50_min": floor,
        "alpha": slope(capacity["N"], capacity["r_star"]),
        "beta": slope(data["D"], data["r_star"]),
        "capacity_points": capacity["run_id"].tolist(),
        "data_points": data["run_id"].tolist(),
    }


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
              "max_gap_to_recorded_eval_loss": gap, "fits": fits, "theory": _theory(root)}
    if "c50" in parts and np.isfinite(parts["c50"]).sum() >= 3:
        record["frontier"] = frontier_exponents(parts, record["theory"]["zipf_a"])
    write_atomic(os.path.join(out_dir, "loss_parts.json"), json.dumps(record, indent=2) + "\n")
    same = "the parts sum to the recorded eval loss" if rows is None else f"{rows} held-out rows per run (not the runs' own eval sets): the mean differs from the recorded eval loss by"
    print(f"\n{len(parts)} points (each at its best lr); {same} at most {gap:.2e}")
    for name, f in fits.items():
        print(f"  {name:6s} (E held at {f['E']:.4f}): alpha {_fmt(f.get('alpha'))}  beta {_fmt(f.get('beta'))}  a {_fmt(f.get('a'))}")
    fr = record.get("frontier")
    if fr:
        t, m = record["theory"], fr["memory_over_frontier_tail"]
        print(f"  memory frontier r* (the rank seen c50 times): memory part / the tail beyond r* = {m['median']:.3f} "
              f"(median; {m['min']:.3f}..{m['max']:.3f}, corr {m['corr']:.4f})")
        print(f"  r* against N where capacity binds: alpha {_fmt(fr['alpha'])}; against D where data binds: beta {_fmt(fr['beta'])} "
              f"(theory alpha {t['alpha']:.3f}, beta {t['beta']:.3f})")
    print(f"-> {out_dir}/loss_parts.json, {PARTS_CSV}, memory/ and rest/ (fit.json, report.md)")
    return 0


def _theory(root) -> dict:
    """The language's theory, as its runs record it (summary.json "theory"), and its Zipf exponent a."""
    from lib.store.runstore import run_dirs

    for run in run_dirs(root):
        theory = (run.summary() or {}).get("theory")
        if theory:
            return {**theory, "zipf_a": theory["alpha"]}  # alpha = a: the tail beyond rank r is ~ r^-a
    raise ValueError(f"{root}: no run records the language's theory (summary.json 'theory'): not the synthetic language")


def _fmt(entry) -> str:
    if entry is None:
        return "-"
    if isinstance(entry, dict):
        ci = entry.get("ci")
        return f"{entry['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return f"{float(entry):.3f}"
