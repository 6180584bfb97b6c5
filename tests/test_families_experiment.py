"""experiments/families.py (the sweep it plans, its per-family power-law fit and figure) and the
run store's third parameter count, `active` (moe), in loading and fitting."""

import json

import numpy as np
import pytest

from experiments.cli import build_parser, load_experiment
from lib.config import RunConfig
from lib.store.runstore import RunDir, load_runs


def test_the_families_sweep_expands_to_one_ladder_per_family_at_fixed_tokens():
    module = load_experiment("families")
    plan = module.sweep().plan()
    by_family = {}
    for r in plan.runs:
        by_family.setdefault(r.cfg.model.family, []).append(r)
    assert set(by_family) == {"transformer", "lstm", "cnn"}
    assert all(sorted(r.cfg.model.d_model for r in runs) == module.WIDTHS for runs in by_family.values())
    assert {r.tokens for r in plan.runs} == {module.STEPS * 32 * 32}  # the same D for every run
    assert {r.cfg.optimizer.lr for r in by_family["transformer"]} == {2e-2}
    assert len({r.run_id for r in plan.runs}) == len(plan.runs) == 15
    assert plan.runs[0].cfg.sweep == "families"


def _fake_run(root, name, family, d_model, loss, tokens=819200, active=None):
    cfg = RunConfig().with_overrides({"name": name, "model.family": family, "model.d_model": d_model, "sweep": "families"})
    run = RunDir(root / name)
    run.write_config(cfg.to_dict())
    total = 1000 * d_model
    params = {"total": total, "embedding": 64 * d_model, "non_embedding": total - 64 * d_model, "active": active or total}
    run.write_summary({"eval_loss": loss, "train_loss": loss, "params": params, "tokens": tokens, "sweep": "families",
                       "flops": {"value": 6.0 * params["active"] * tokens, "convention": "6N"}, "entropy_floor": 0.8})
    run.set_state("done")
    return params


def test_the_families_fit_recovers_each_family_power_law_and_draws_one_figure(tmp_path, capsys):
    truth = {"transformer": (0.20, 1e9), "lstm": (0.12, 1e11)}  # alpha_N, N_c
    noise = np.random.default_rng(0).normal(0, 0.005, (2, 5))  # 0.5% scatter in the loss
    for i, (family, (alpha, n_c)) in enumerate(truth.items()):
        for j, d in enumerate((16, 24, 32, 48, 64)):
            n = 1000 * d - 64 * d
            _fake_run(tmp_path, f"{family}-d{d}", family, d, (n_c / n) ** alpha * np.exp(noise[i, j]))
    assert load_experiment("families").analyse(tmp_path) == 0
    record = json.loads((tmp_path / "fit" / "families.json").read_text())
    for family, (alpha, n_c) in truth.items():
        fit = record["fits"][family]
        assert fit["alpha_N"] == pytest.approx(alpha, abs=0.02) and fit["n_points"] == 5
        assert fit["alpha_N_ci"][0] < alpha < fit["alpha_N_ci"][1] and fit["rmse_log_loss"] < 0.01
    assert record["N"].startswith("non-embedding parameters") and record["D"] == [819200.0]
    assert (tmp_path / "fit" / "families.png").stat().st_size > 10_000
    report = (tmp_path / "fit" / "report.md").read_text()
    assert "| lstm | 5 |" in report and "families.png" in report
    assert "transformer  alpha_N = 0.2" in capsys.readouterr().out


def test_scaling_run_hands_the_fit_to_an_experiment_that_defines_its_own(monkeypatch, tmp_path):
    from experiments import sweep_cmd
    from experiments.workflow import fit, run

    calls = []
    monkeypatch.setattr(run, "sweep_stage", lambda root, options, distributed: 0)
    monkeypatch.setattr(fit, "fit_and_summarise", lambda root, sections=None: calls.append("chinchilla") or 0)
    module = load_experiment("families")
    monkeypatch.setattr(run, "load_experiment", lambda spec: module)
    monkeypatch.setattr(module, "analyse", lambda root: calls.append(("families", root)) or 0)
    args = build_parser().parse_args(["run", "families", "--root", str(tmp_path)])
    assert sweep_cmd.cmd_run(args) == 0
    assert calls == [("families", str(tmp_path))]  # no Chinchilla fit of mixed families


def test_the_run_store_gives_active_parameters_for_moe_and_total_for_dense(tmp_path):
    from analysis.data import load_run_store

    moe = _fake_run(tmp_path, "moe-d32", "moe", 32, 1.5, active=12345)
    dense = _fake_run(tmp_path, "tr-d32", "transformer", 32, 1.6)
    runs = load_runs(tmp_path).set_index("run_id")
    assert runs.loc["moe-d32", "N_active"] == 12345 and runs.loc["moe-d32", "N_total"] == moe["total"]
    assert runs.loc["tr-d32", "N_active"] == dense["total"] and runs.loc["moe-d32", "family"] == "moe"
    ds = load_run_store(tmp_path, params="active")
    assert sorted(ds.points["N"]) == sorted([12345.0, float(dense["total"])])
    assert ds.conventions["N"].startswith("active parameters (summary.json params.active; per token")
    assert build_parser().parse_args(["fit", str(tmp_path), "--out", str(tmp_path / "f"), "--params", "active"]).params == "active"


def test_a_summary_without_active_reads_as_dense(tmp_path):
    run = RunDir(tmp_path / "old")
    run.write_config(RunConfig().to_dict())
    run.write_summary({"eval_loss": 2.0, "params": {"total": 100, "embedding": 10, "non_embedding": 90}, "tokens": 1000})
    run.set_state("done")
    runs = load_runs(tmp_path)
    assert runs["N_active"].tolist() == [100] and runs["family"].tolist() == ["transformer"]
    assert np.isfinite(runs["N_active"]).all()
