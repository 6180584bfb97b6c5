"""The allocation check (analysis/allocation.py, `scaling verify --allocation`) and "no verdict without
3 residual degrees of freedom" (analysis/verify.py).

End to end through the code that reads real runs: a fit record (fit.json, from `run_fits` on a law's
exact losses) and a run store whose check runs are written as finished (config, status, summary with
the true law's loss at their (N, D)); `verify` then trains nothing, reads them, measures the check
budget's minimum and judges each approach's predicted N_opt. A fit whose a is off by 0.3 from the
truth must fail; an exact one must pass.
"""

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from analysis import allocation as A
from analysis import verify as V
from analysis.costmodel import SIX_N
from analysis.data import Dataset
from analysis.pipeline import FitOptions, run_fits
from analysis.predict import chinchilla_frontier

LADDER = textwrap.dedent(
    """
    from lib.config import DataConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.sweeps.plans import IsoFlop, Schedule

    def sweep():
        base = RunConfig(data=DataConfig(seq_len=16, global_batch=16), optimizer=OptimizerConfig(lr=1e-2),
                         train=TrainConfig(eval_tokens=512, keep_checkpoints=1))
        sizes = [dict(d_model=d, n_layers=L, n_heads=2) for d, L in ((8, 1), (12, 1), (16, 1), (20, 1), (24, 1), (28, 1), (32, 1),
                                                                    (40, 1), (48, 1), (56, 1), (64, 1), (48, 2), (64, 2))]
        return IsoFlop([4e8, 1.2e9], sizes, base=base, name="alloc", min_steps=30, tpp_range=(0.5, 5000), per_budget=0,
                       schedule=Schedule(warmup_frac=0.05, log_points=5, eval_points=1, checkpoints=1))
    """
)
C_CHECK = 3.6e9  # 1.2e9^2 / 4e8: the next budget up


def _law(t, N, D):
    return t["E"] + t["A"] / np.asarray(N, float) ** t["alpha"] + t["B"] / np.asarray(D, float) ** t["beta"]


def _truth_with_n_opt(alpha, beta, n_opt, C, E=0.8, B=40.0):
    """A (given the rest) that puts the compute-optimal N at C = 6ND at n_opt: found by brute force."""
    def n_at(A):
        t = dict(E=E, A=A, B=B, alpha=alpha, beta=beta)
        return 10 ** minimize_scalar(lambda x: _law(t, 10**x, C / (6 * 10**x)), bounds=(1, 9), method="bounded",
                                     options={"xatol": 1e-10}).x
    lo, hi = math.log(1e-3), math.log(1e6)
    for _ in range(80):  # N_opt grows with A
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if n_at(math.exp(mid)) < n_opt else (lo, mid)
    return dict(E=E, A=math.exp(lo), B=B, alpha=alpha, beta=beta)


NOISE = 0.003  # nats: eval-loss scatter of the sweep's and the check's runs (seeded draws)


def _record(sweep, truth, root):
    """fit.json of the sweep's own points with the law's losses plus seeded noise; C = 6ND (the cost model is 6N)."""
    plan = sweep.plan({})
    N = np.array([r.params for r in plan.runs], float)
    D = np.array([r.tokens for r in plan.runs], float)
    loss = _law(truth, N, D) + NOISE * np.random.default_rng(0).standard_normal(N.size)
    pts = pd.DataFrame({"N": N, "D": D, "C": 6 * N * D, "loss": loss, "run": [r.run_id for r in plan.runs],
                        "budget": [r.cfg.budget for r in plan.runs], "N_alt": np.nan, "U": np.nan})
    ds = Dataset(points=pts, source={"kind": "runs", "path": str(root), "params": "total"}, conventions={}, cost_source="6N", entropy_floor=truth["E"])
    return run_fits(ds, FitOptions(bootstrap=16, n_starts=32, figures=False))  # the interval needs a few resamples, not 200


def _fake_runs(root, shapes, truth):
    """The check's runs, finished, with the true law's loss at their (N, D) plus seeded noise: as the loop leaves them."""
    eps = np.random.default_rng(1).standard_normal(len(shapes)) * NOISE
    for s, e in zip(shapes, eps):
        r = s["run"]
        d = root / r.run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(r.cfg.to_json())
        (d / "status.json").write_text(json.dumps({"state": "done", "reason": "", "attempts": 1}))
        loss = float(_law(truth, s["N"], r.tokens) + e)
        (d / "summary.json").write_text(json.dumps({"eval_loss": loss, "train_loss": loss, "params": {"total": s["N"]},
                                                   "tokens": r.tokens, "flops": {"value": 6 * s["N"] * r.tokens}}))


@pytest.mark.timeout(600)
def test_allocation_check_fails_a_fit_off_by_0_3_in_a_and_passes_an_exact_one(tmp_path, monkeypatch):
    from experiments.workflow.check import ladder, load_sweep, verify

    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "alloc.py"
    exp.write_text(LADDER)
    sweep = load_sweep(str(exp))
    _, shapes, _ = ladder(sweep, C_CHECK, {"tracking.console": False}, "total")
    Ns = sorted({s["N"] for s in shapes})
    centre = math.exp(np.mean(np.log(Ns[2:-2])))  # the ladder's middle: room for 5 sizes either way
    truth = _truth_with_n_opt(0.3, 0.3, centre, C_CHECK)  # a = 0.5
    # the wrong fit's law: a = 0.8 (beta/(alpha+beta)), N_opt equal to the truth's at the data's centre
    # (the geometric mean of 4e8 and 1.2e9), so its N_opt at C_CHECK is off by 0.3 x log10(C_CHECK / 6.9e8) decades
    c_mid = math.sqrt(4e8 * 1.2e9)
    true_mid = chinchilla_frontier(truth, SIX_N, [c_mid])[0][0]
    wrong = _truth_with_n_opt(0.1, 0.4, true_mid, c_mid)
    results = {}
    for name, law in (("exact", truth), ("wrong", wrong)):
        root = tmp_path / name
        fit_dir = root / "fit"
        fit_dir.mkdir(parents=True)
        record = _record(sweep, law, root)
        (fit_dir / "fit.json").write_text(json.dumps(record, default=float))
        _fake_runs(root, shapes, truth)  # the check's runs always follow the truth
        assert verify(fit_dir, root, C_CHECK, str(exp), allocation=True) == 0
        results[name] = json.loads((fit_dir / "check.json").read_text())
    a3 = {k: next(e for e in r["checks"] if e["approach"] == "approach3") for k, r in results.items()}
    n_true = chinchilla_frontier(truth, SIX_N, [C_CHECK])[0][0]
    # the exact fit: predicted and measured N_opt agree with the truth's optimum, and the check passes
    assert all(len(r["allocation"]["points"]) >= 5 for r in results.values())
    exact = a3["exact"]["allocation"]
    assert set(exact) >= {"predicted_N_opt", "measured_N_opt", "log10_error", "inside"}
    assert exact["predicted_N_opt"]["value"] == pytest.approx(n_true, rel=0.02)
    assert abs(math.log10(exact["measured_N_opt"]["value"] / n_true)) < 0.05  # the parabola's vertex, 5 noisy sizes
    assert exact["inside"] is True
    # the wrong fit: its prediction is off by 0.3 x the decades of C from the data's centre, and the check says so
    wrong_a = a3["wrong"]["allocation"]
    assert math.log10(wrong_a["predicted_N_opt"]["value"] / n_true) == pytest.approx(0.3 * math.log10(C_CHECK / c_mid), abs=0.03)
    assert wrong_a["inside"] is False
    alloc = results["wrong"]["allocation"]
    assert len(alloc["points"]) >= 5 and alloc["detectable_shift_a"] is not None
    # the loss comparison at the trained (N, D): approach 3's law there against what each run reached
    for p in a3["exact"]["allocation"]["law_at_trained"]:  # the noise, and the exact fit's small error
        assert p["error"] == pytest.approx(0.0, abs=5 * NOISE)
    assert "Allocation check at C = 3.6e+09" in (root / "fit" / "report.md").read_text()


def test_measure_gives_no_interval_below_3_dof_and_the_detectable_shift():
    N = 650 * 1.7 ** (np.arange(5) - 2)  # around the optimum, ~650
    C = 1e10
    D = C / (6 * N)
    t = dict(E=0.8, A=5.0, B=60.0, alpha=0.3, beta=0.3)
    loss = _law(t, N, D) + np.array([1e-3, -2e-3, 1.5e-3, -1e-3, 2e-3])
    m = A.measure(C, N, D, loss, SIX_N)  # 5 sizes, 3 parameters: 2 dof
    assert m["ci"] is None and "2 residual degree" in m["no_interval"]
    assert A.allocation({"value": m["value"], "ci": None}, m)["inside"] is None
    m2 = A.measure(C, N, D, loss, SIX_N, pooled=(2e-3, 6))  # the sweep's noise: 8 dof
    half = (math.log10(m2["ci"][1]) - math.log10(m2["ci"][0])) / 2
    assert m2["dof"] == 8 and half > 0
    reach = math.log10(C) - np.mean(np.log10([1e8, 1e9]))
    assert A.detectable_shift_a(m2, C, [1e8, 1e9]) == pytest.approx(half / reach)


def test_no_verdict_without_three_residual_dof():
    """Approach 3 fitted to 6 points (4 parameters: 2 residual dof) gives no interval and no verdict."""
    N = np.array([1e3, 3e3, 1e4, 3e3, 1e4, 3e4])
    C = np.array([1e9, 1e9, 1e9, 1e10, 1e10, 1e10])
    D = C / (6 * N)
    t = dict(E=0.8, A=5.0, B=60.0, alpha=0.3, beta=0.3)
    pts = pd.DataFrame({"N": N, "D": D, "C": C, "loss": _law(t, N, D) * (1 + 1e-3 * np.array([1, -1, 2, -2, 1, -1])),
                        "run": [f"r{i}" for i in range(6)], "budget": C, "N_alt": np.nan, "U": np.nan})
    ds = Dataset(points=pts, source={"kind": "csv"}, conventions={}, cost_source="6N", entropy_floor=0.8)
    record = run_fits(ds, FitOptions(bootstrap=20, n_starts=64, figures=False, approach="3"))
    assert record["fits"]["approach3"]["goodness"]["residual_dof"] == 2
    rows, why = V.predictions(record, 3e10)
    assert why is None and rows["approach3"]["loss"]["pi"] is None and "2 residual degree" in rows["approach3"]["loss"]["no_interval"]
    e = V.entry("approach3", 3e10, {"run_id": "r", "N": 1e4, "D": 5e5, "achieved": 1.0}, rows["approach3"])
    assert e["inside"] is None and e["predicted"]["pi"] is None
    check = {"C": 3e10, "status": "done", "checks": [e], "runs": [{"run_id": "r", "state": "done", "achieved": 1.0}], "predictions": rows}
    assert any("no verdict" in line for line in V.markdown_lines(check, record))
    assert any("no verdict" in line for line in V.console_lines(check))


@pytest.mark.timeout(600)
def test_an_allocation_size_whose_best_lr_is_on_its_grids_edge_gets_one_run_past_it(tmp_path, monkeypatch):
    """Learning rate per point at the allocation check too: with the sweep's lr grid x0.5/1/2 and every
    size's loss falling towards lr x2.5, each size's best sits on the x2 edge; the check adds x4 once
    (recorded under the check's sweep name), and each size is then fitted at its bracketed best, x2.5."""
    from experiments.workflow import check as check_mod
    from lib.sweeps import rules

    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "alloc_grid.py"
    exp.write_text(LADDER.replace('name="alloc",', 'name="alloc", lr_grid=(0.5, 1.0, 2.0),'))
    sweep = check_mod.load_sweep(str(exp))
    _, shapes, _ = check_mod.ladder(sweep, C_CHECK, {"tracking.console": False}, "total")
    Ns = sorted({s["N"] for s in shapes})
    truth = _truth_with_n_opt(0.3, 0.3, math.exp(np.mean(np.log(Ns[2:-2]))), C_CHECK)
    root = tmp_path / "root"
    (root / "fit").mkdir(parents=True)
    (root / "fit" / "fit.json").write_text(json.dumps(_record(sweep, truth, root), default=float))
    trained = []

    def fake_run_sweep(planned, root_, options):  # every planned run, finished: the law plus an lr penalty around x3
        for r in planned.plan().runs:
            d = root_ / r.run_id
            if (d / "summary.json").exists():
                continue
            trained.append(r.run_id)
            N = float(r.params)
            loss = float(_law(truth, N, r.tokens)) + 0.05 * math.log(r.cfg.optimizer.lr_factor / 2.5) ** 2
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.json").write_text(r.cfg.to_json())
            (d / "status.json").write_text(json.dumps({"state": "done", "reason": "", "attempts": 1}))
            (d / "summary.json").write_text(json.dumps({"eval_loss": loss, "train_loss": loss, "params": {"total": N},
                                                       "tokens": r.tokens, "flops": {"value": 6 * N * r.tokens}}))

    monkeypatch.setattr(check_mod, "run_sweep", fake_run_sweep)
    assert check_mod.verify(root / "fit", root, C_CHECK, str(exp), allocation=True) == 0
    alloc = json.loads((root / "fit" / "check.json").read_text())["allocation"]
    sizes = len(alloc["points"])
    assert sizes >= 5
    extensions = rules.read_lr_grid_extensions(root, "alloc-check")
    assert len(extensions) == sizes and all(f == [4.0] for f in extensions.values())
    rule_lr = {s["N"]: s["run"].cfg.optimizer.lr for s in shapes if s["run"].cfg.optimizer.lr_factor == 1.0}
    for p in alloc["points"]:  # the parabola in log lr through x1, x2, x4 is the penalty itself: its vertex is x2.5
        assert p["lr_edge"] is None and p["lr"] == pytest.approx(2.5 * rule_lr[p["N"]], rel=1e-9)
    first = list(trained)
    assert sum("lrx4" in r for r in first) == sizes
    # a relaunch trains nothing and extends nothing again: once per point
    assert check_mod.verify(root / "fit", root, C_CHECK, str(exp), allocation=True) == 0
    assert trained == first and rules.read_lr_grid_extensions(root, "alloc-check") == extensions
