"""Seed replicates (lib/sweeps/plans.py Sweep.seeds): each point trained again at its rule's lr with another
train.seed, set aside by the loader, fitted per seed, and reported as seed_sensitivity beside the
lr-policy spread (issue 22: is the lr-policy spread the policy, or the seed?)."""

import dataclasses
import json

import numpy as np
import pytest

from analysis.data import load_run_store
from analysis.pipeline import FitOptions, run_fits
from analysis.report import markdown
from experiments.quickstart import BASE
from lib.config import ConfigError
from lib.sweeps.plans import IsoFlop, Schedule
from lib.store.runstore import parse_replicate_sweep, replicate_sweep
from lib.train.step import pack_key

SIZES = [dict(d_model=d, n_layers=L, n_heads=2) for d, L in ((8, 1), (16, 1), (16, 2), (24, 2))]


def _sweep(**kw) -> IsoFlop:
    return IsoFlop([1e10, 3e10], SIZES, base=BASE, name="iso", tpp_range=(1, 1e4), min_steps=20,
                   schedule=Schedule(log_points=2, eval_points=1, checkpoints=1), lr_grid=(0.5, 1.0, 2.0), **kw)


def test_each_point_gets_one_replicate_per_seed_in_its_own_sweep_and_pack():
    plain, plan = _sweep().plan(), _sweep(seeds=(1, 2)).plan()
    grid = {r.run_id: r for r in plain.runs}
    assert all(r.run_id in {p.run_id for p in plan.runs} for r in plain.runs)  # the grid's runs and ids unchanged
    reps = [r for r in plan.runs if r.run_id not in grid]
    points = {r.point for r in plain.runs}
    assert len(reps) == 2 * len(points)
    by_name = {r.cfg.name: r for r in plain.runs}
    for r in reps:
        point, seed = r.cfg.name.rsplit("-seed", 1)
        x1 = by_name[point]  # the point's own run: lr x1
        assert r.cfg.train.seed == int(seed) != x1.cfg.train.seed and r.cfg.sweep == replicate_sweep("iso", int(seed))
        assert r.cfg.optimizer.lr == x1.cfg.optimizer.lr and r.cfg.optimizer.lr_factor == x1.cfg.optimizer.lr_factor
        assert (r.params, r.tokens, r.cfg.data.seed) == (x1.params, x1.tokens, x1.cfg.data.seed)
        assert r.point == ""  # not a member of the lr grid: lr-edge extensions never look at it
        assert pack_key(r.cfg) == pack_key(x1.cfg)  # trains in its point's pack
    assert any("seed replicates" in n and "iso-seed1" in n for n in plan.notes)


@pytest.mark.parametrize("seeds", [(0,), (1, 1), (-1,), (True,), (1.5,)])
def test_bad_seeds_are_refused_naming_the_field(seeds):
    with pytest.raises(ConfigError, match="seeds"):
        _sweep(seeds=seeds).plan()


def test_replicate_sweep_names_round_trip():
    assert parse_replicate_sweep(replicate_sweep("ladder", 2)) == ("ladder", 2)
    assert parse_replicate_sweep("ladder") is None and parse_replicate_sweep(None) is None


# --- the fit -------------------------------------------------------------------------------------
TRUTH = dict(E=1.8, A=400.0, alpha=0.34, B=410.0, beta=0.28)
NS = [5e3, 1e4, 2e4, 4e4, 8e4, 1.6e5]
BUDGETS = [1e11, 3e11, 1e12]
FACTORS = (0.5, 1.0, 2.0)


def law(N, D):
    return TRUTH["E"] + TRUTH["A"] * N ** -TRUTH["alpha"] + TRUTH["B"] * D ** -TRUTH["beta"]


def _write(root, run_id, N, D, budget, factor, loss, sweep="iso", seed=0):
    d = root / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": run_id, "optimizer": {"lr": 0.01 * factor, "lr_factor": factor}, "train": {"seed": seed}}))
    (d / "status.json").write_text(json.dumps({"state": "done"}))
    (d / "summary.json").write_text(json.dumps({
        "run_id": run_id, "eval_loss": loss, "train_loss": loss, "params": {"total": N, "embedding": 0.0, "non_embedding": N},
        "tokens": D, "flops": {"value": 6 * N * D, "convention": "6N"}, "flops_per_token": 6 * N,
        "entropy_floor": None, "sweep": sweep, "budget": budget}))


def _store(root, replicate_noise: dict[int, float], off_below_tpp: float = 0.0):
    """Every point at lr x 0.5, 1, 2 (x1 best, the law plus 0.02); a replicate per seed at x1 whose loss
    is the x1 loss times (1 + noise * a fixed pattern over the points), so noise 0 repeats x1 exactly.
    Points with D/N below `off_below_tpp` are 1 nat off the law in every run."""
    rng = np.random.default_rng(0)
    pattern = rng.standard_normal(len(BUDGETS) * len(NS))
    k = 0
    for C in BUDGETS:
        for N in NS:
            D = C / (6 * N)
            off = 1.0 if D / N < off_below_tpp else 0.0
            for f in FACTORS:
                _write(root, f"iso-{C:g}-{N:g}-x{f:g}", N, D, C, f, law(N, D) + off + 0.02 + 0.3 * np.log(f) ** 2)
            for seed, noise in replicate_noise.items():
                loss = (law(N, D) + off + 0.02) * (1 + noise * pattern[k])
                _write(root, f"iso-{C:g}-{N:g}-seed{seed}", N, D, C, 1.0, loss, sweep=replicate_sweep("iso", seed), seed=seed)
            k += 1
    return root


def test_replicates_are_set_aside_and_fitted_per_seed(tmp_path):
    opts = FitOptions(bootstrap=0, approach="all", n_starts=16)
    plain = load_run_store(_store(tmp_path / "plain", {}))
    ds = load_run_store(_store(tmp_path / "reps", {1: 0.0, 2: 0.003}))
    # the main points are exactly those of the store without replicates
    assert ds.points.drop(columns="run").equals(plain.points.drop(columns="run"))
    assert ds.seed_replicates["main_seed"] == 0 and sorted(ds.seed_replicates["points"]) == [1, 2]
    assert any("seed-replicate run(s) of seed(s) 1, 2" in n for n in ds.notes)
    record = run_fits(ds, opts)
    assert record["fits"]["approach3"]["a"] == run_fits(plain, opts)["fits"]["approach3"]["a"]
    for approach, row in record["seed_sensitivity"].items():
        assert set(row) == {"seed0", "seed1", "seed2", "spread"}
        assert row["seed0"] == pytest.approx(record["lr_sensitivity"][approach]["lr_x1"])  # the same points, the same fit
        assert row["seed1"] == pytest.approx(row["seed0"], abs=1e-6)  # a replicate equal to x1 gives x1's a
        assert row["spread"] == pytest.approx(max(row[k] for k in ("seed0", "seed1", "seed2")) - min(row[k] for k in ("seed0", "seed1", "seed2")))
    assert all(row["spread"] > 1e-3 for row in record["seed_sensitivity"].values())  # 0.3% loss noise moves a
    text = markdown({**record, "figures": []})
    assert "## Seed" in text and "a @ seed2" in text and "lr-policy spread" in text


def test_a_seed_missing_a_point_is_left_out_and_said_so(tmp_path):
    """A replicate lost (a crash, a corrupt file): its seed no longer covers every point, so it is not
    fitted; the record and the report name it, and a spread over a single seed is n/a, not 0."""
    import shutil

    root = _store(tmp_path, {1: 0.0, 2: 0.003})
    shutil.rmtree(root / "iso-1e+11-5000-seed1")
    opts = FitOptions(bootstrap=0, approach="all", n_starts=16)
    record = run_fits(load_run_store(root), opts)
    assert set(record["seed_sensitivity_left_out"]) == {"seed1"} and "17 of the fit's 18 points" in record["seed_sensitivity_left_out"]["seed1"]
    for row in record["seed_sensitivity"].values():
        assert set(row) == {"seed0", "seed2", "spread"} and row["spread"] == pytest.approx(abs(row["seed2"] - row["seed0"]))
    assert "Left out: seed1: has 17 of the fit's 18 points" in markdown({**record, "figures": []})
    shutil.rmtree(root / "iso-1e+11-5000-seed2")
    record = run_fits(load_run_store(root), opts)
    assert set(record["seed_sensitivity_left_out"]) == {"seed1", "seed2"}
    assert all(set(row) == {"seed0", "spread"} and row["spread"] is None for row in record["seed_sensitivity"].values())
    text = markdown({**record, "figures": []})
    assert "seed spread" in text and "| n/a |" in text


def test_the_policy_and_seed_refits_use_the_points_the_filters_kept(tmp_path):
    """--min-tokens-per-param drops the points that are off the law; the refits at x1 and per seed must
    drop them too (they read the lr grid's runs and the replicates, which the filter does not touch)."""
    from analysis.report import prepare

    opts = FitOptions(bootstrap=0, approach="3", n_starts=16, min_tokens_per_param=40)
    ds = prepare(_store(tmp_path, {1: 0.0}, off_below_tpp=40), opts)
    assert 0 < len(ds.points) < len(NS) * len(BUDGETS)
    record = run_fits(ds, opts)
    truth = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])
    assert record["fits"]["approach3"]["a"]["value"] == pytest.approx(truth, abs=0.01)
    for row in (record["lr_sensitivity"]["approach3"], record["seed_sensitivity"]["approach3"]):
        assert all(v == pytest.approx(truth, abs=0.01) for k, v in row.items() if k != "spread"), row


def test_only_true_replicates_are_set_aside(tmp_path):
    """A '-seed<k>' sweep with no main sweep beside it, or whose runs trained at another seed, is points."""
    _write(tmp_path, "a", 1e4, 1e6, 6e10, 1.0, 2.5, sweep="solo-seed1", seed=1)  # no sweep 'solo'
    _write(tmp_path, "b", 2e4, 5e5, 6e10, 1.0, 2.55, sweep="iso")
    _write(tmp_path, "c", 4e4, 2.5e5, 6e10, 1.0, 2.6, sweep="iso-seed3", seed=0)  # named seed 3, trained at 0
    ds = load_run_store(tmp_path)
    assert ds.seed_replicates is None and len(ds.points) == 3


def test_a_replicate_trains_in_its_points_pack_from_another_init(tmp_path, compile_cache, monkeypatch):
    from experiments.workflow.options import SweepOptions
    from experiments.workflow.sweep import run_sweep
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrackingConfig, TrainConfig
    from lib.store.runstore import RunDir
    from lib.sweeps.executors import enable_compile_cache, make_packs
    from lib.sweeps.plans import Grid

    monkeypatch.setenv("WANDB_MODE", "disabled")
    base = RunConfig(name="rep", model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
                     data=DataConfig(seq_len=16, global_batch=8), optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2),
                     train=TrainConfig(steps=20, log_every=10, eval_every=20, eval_tokens=256, checkpoint_every=20),
                     tracking=TrackingConfig(console=False))
    sweep = Grid(base, name="rep", lr_grid=(0.5, 1, 2), seeds=(1,))
    try:
        report = run_sweep(sweep, tmp_path, SweepOptions(progress="off", compile_cache=compile_cache))
    finally:
        enable_compile_cache(None)
    assert report.exit_code == 0
    plan = sweep.plan(root=tmp_path)
    assert len(make_packs(plan.runs)) == 1  # one program for the grid (and any edge extension) and the replicate
    runs = {r.cfg.name: RunDir(tmp_path / r.run_id) for r in plan.runs}
    assert {"rep", "rep-lrx0.5", "rep-lrx2", "rep-seed1"} <= set(runs) and len(runs) <= 5  # <= one edge extension
    assert all(r.status()["state"] == "done" for r in runs.values())
    x1, rep = runs["rep"].summary(), runs["rep-seed1"].summary()
    assert rep["eval_loss"] != x1["eval_loss"]  # another init, the same lr and data
    ds = load_run_store(tmp_path)
    assert len(ds.points) == 1 and list(ds.seed_replicates["points"]) == [1]
    assert ds.seed_replicates["points"][1]["loss"].iloc[0] == pytest.approx(rep["eval_loss"])


def test_the_prediction_check_trains_no_replicates():
    """The check's sweep is the experiment's at the next budget: its seed replicates are not carried
    over (their sweep, '<name>-check-seed<k>', is no check sweep, so the fit would take them as points)."""
    from experiments.cli import load_experiment
    from experiments.workflow.check import check_sweep

    sweep = load_experiment("ladder").sweep()
    assert sweep.seeds
    check = check_sweep(dataclasses.replace(sweep, lr_rule=None), 3.33e12)
    assert check.seeds == () and all(r.cfg.sweep == "ladder-check" for r in check.plan().runs)


@pytest.mark.parametrize("run", ["iso-1e+11-5000-x2", "iso-1e+11-5000-seed1"])
def test_a_finished_run_whose_config_is_corrupt_is_left_out_not_made_a_point(tmp_path, run):
    """Its lr and seed are unknown: fitted, it would split its point's lr grid into single points (a
    doubled row) or turn a replicate into a main point. The fit's reader counts it as unfinished."""
    good = load_run_store(_store(tmp_path / "good", {1: 0.0}))
    root = _store(tmp_path / "bad", {1: 0.0})
    (root / run / "config.json").write_bytes(b'{"name": "iso", "optim')
    ds = load_run_store(root)
    assert len(ds.points) == len(good.points) and len(ds.seed_replicates["points"][1]) <= len(good.seed_replicates["points"][1])
    assert any("not finished" in n and run in n for n in ds.notes)
