"""A run store whose points trained at an lr grid: each point fitted at its best lr, and the
learning-rate policy's effect on the exponents reported (analysis/data.py, pipeline.lr_sensitivity)."""

import json
import math

import numpy as np
import pytest

from analysis.data import load_run_store
from analysis.pipeline import FitOptions, run_fits
from analysis.report import markdown

TRUTH = dict(E=1.8, A=400.0, alpha=0.34, B=410.0, beta=0.28)
SIZES = [5e3, 1e4, 2e4, 4e4, 8e4, 1.6e5]
BUDGETS = [1e11, 3e11, 1e12]
FACTORS = (0.5, 1.0, 2.0)
PENALTY = 0.5  # nats per (log lr)^2


def law(N, D):
    return TRUTH["E"] + TRUTH["A"] * N ** -TRUTH["alpha"] + TRUTH["B"] * D ** -TRUTH["beta"]


def best_lr_of(N, D):
    """Where each run's loss is lowest: the rule's lr (0.3 N^-0.3) off by a factor that grows with D,
    as when a rule tuned at short horizons sets the lr of long runs."""
    return 0.3 * N**-0.3 * (D / 1.8e6) ** -0.1


def _write(root, run_id, N, D, budget, lr, factor, loss):
    d = root / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": run_id, "optimizer": {"lr": lr, "lr_factor": factor}}))
    (d / "status.json").write_text(json.dumps({"state": "done"}))
    (d / "summary.json").write_text(json.dumps({
        "run_id": run_id, "eval_loss": loss, "train_loss": loss, "params": {"total": N, "embedding": 0.0, "non_embedding": N},
        "tokens": D, "flops": {"value": 6 * N * D, "convention": "6N"}, "flops_per_token": 6 * N,
        "entropy_floor": None, "sweep": "iso", "budget": budget}))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Every point at lr x 0.5, 1, 2 of the rule; loss = the law + 0.05 (log lr - log lr*)^2, exactly
    quadratic in log lr, so a point's vertex is the law itself wherever lr* lies inside its grid."""
    root = tmp_path_factory.mktemp("lrgrid")
    inside = []
    for C in BUDGETS:
        for N in SIZES:
            D = C / (6 * N)
            centre = 0.3 * N**-0.3
            star = best_lr_of(N, D)
            inside.append(abs(math.log(star / centre)) < math.log(2) / 2)  # the x1 run is the best of its grid
            for f in FACTORS:
                lr = centre * f
                _write(root, f"iso-{C:g}-{N:g}-x{f:g}", N, D, C, lr, f, law(N, D) + PENALTY * math.log(lr / star) ** 2)
    return root, inside


def test_each_point_is_fitted_at_its_best_lr(store):
    root, inside = store
    ds = load_run_store(root)
    assert len(ds.points) == len(SIZES) * len(BUDGETS) and len(ds.lr_grid["runs"]) == 3 * len(ds.points)
    truth = law(ds.points["N"].to_numpy(), ds.points["D"].to_numpy())
    assert all(not c["edge"] for c in ds.lr_grid["choices"]) and all(inside)
    np.testing.assert_allclose(ds.points["loss"].to_numpy(), truth, rtol=1e-12)  # each vertex is the law
    x1 = ds.lr_grid["runs"]
    assert sorted({r["lr_factor"] for r in x1}) == [0.5, 1.0, 2.0]
    assert any("learning rate per point: 18 points" in n for n in ds.notes)


def test_the_lr_policy_spread_is_reported_per_approach(store):
    """Approach 3 refitted per lr policy: at each point's best lr the exact law comes back; at a fixed
    multiple of the (D-biased) rule the exponents move, and the spread says by how much."""
    root, inside = store
    assert all(inside)  # every point's best lr bracketed: the best-lr points are the law itself
    record = run_fits(load_run_store(root), FitOptions(bootstrap=0, approach="3", n_starts=64))
    row = record["lr_sensitivity"]["approach3"]
    assert set(row) == {"lr_x0.5", "lr_x1", "lr_x2", "lr_best", "spread"}
    assert row["lr_best"] == pytest.approx(record["fits"]["approach3"]["a"]["value"])
    values = [v for k, v in row.items() if k != "spread"]
    assert row["spread"] == pytest.approx(max(values) - min(values))
    exps = record["lr_sensitivity_exponents"]["approach3"]
    assert exps["lr_best"] == pytest.approx({"alpha": TRUTH["alpha"], "beta": TRUTH["beta"]}, abs=1e-6)
    assert abs(exps["lr_x2"]["beta"] - TRUTH["beta"]) > 0.01 and row["spread"] > 0.01
    text = markdown({**record, "figures": []})
    assert "## Learning-rate policy" in text and "a @ x0.5" in text and "best lr" in text


def test_replicates_at_one_lr_stay_separate_points(tmp_path):
    """Runs that share a point and an lr (e.g. seeds) are no lr grid: each stays a point."""
    for seed, loss in enumerate((2.5, 2.6)):
        _write(tmp_path, f"rep-s{seed}", 1e4, 1e6, 6e10, 0.01, 1.0, loss)
    _write(tmp_path, "other", 2e4, 5e5, 6e10, 0.01, 1.0, 2.55)
    ds = load_run_store(tmp_path)
    assert ds.lr_grid is None and sorted(ds.points["loss"]) == [2.5, 2.55, 2.6]
