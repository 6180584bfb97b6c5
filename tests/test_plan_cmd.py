"""`scaling plan EXP`: what a launch would train, checked against what the same launch did train
(the session's mini `scaling run`, tests/conftest.py mini_run)."""

import json
import subprocess
import sys

import pytest

from experiments.cli import load_experiment
from experiments.workflow.plan import format_plan
from lib.store.runstore import run_dirs
from test_sweep_support import clean_env


def _plan(tmp_path, *args):
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "plan", *map(str, args), "--pack", "8"],
                          env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(600)
def test_the_plan_lists_the_runs_a_launch_trains_with_their_compute_and_time(mini_run, tmp_path):
    exp, root, proc = mini_run
    assert proc.returncode == 0
    record = json.loads(_plan(tmp_path, exp, "--root", root, "--json"))
    trained = {r.path.name: r for r in run_dirs(root) if (r.summary() or {}).get("sweep") == "mini"}
    assert {r["run_id"] for r in record["runs"]} == set(trained)
    for row in record["runs"]:
        summary, config = trained[row["run_id"]].summary(), trained[row["run_id"]].config()
        assert (row["N"], row["D"], row["steps"]) == (summary["params"]["total"], summary["tokens"], summary["steps"])
        assert row["C"] == pytest.approx(summary["flops"]["value"], rel=1e-9) and row["lr"] == config["optimizer"]["lr"]
    assert record["compute"] == pytest.approx(sum(r.summary()["flops"]["value"] for r in trained.values()), rel=1e-9)
    # The estimate: the planned FLOPs at the rate the root's finished runs reached (each at its share of its pack).
    spent = sum(sum(s.get(k) or 0 for k in ("init_time_s", "compile_time_s", "train_time_s", "eval_time_s", "checkpoint_time_s"))
                / (r.status().get("pack") or 1) for r in run_dirs(root) for s in [r.summary() or {}] if (r.status() or {}).get("state") == "done")
    flops = sum(r.summary()["flops"]["value"] for r in run_dirs(root) if (r.status() or {}).get("state") == "done")
    assert record["est_seconds"] == pytest.approx(record["compute"] / (flops / spent), rel=1e-9)
    text = format_plan(record)  # what the command prints without --json
    assert f"{len(trained)} runs, " in text and "FLOP/s (the rate of" in text


def test_a_fresh_plan_has_no_estimate_and_a_tuned_sweep_plans_its_tune_grid_first(tmp_path):
    record = json.loads(_plan(tmp_path, "quickstart", "--json"))
    stages = [r["stage"] for r in record["runs"]]
    quickstart = load_experiment("quickstart")  # 3 budgets x PER_BUDGET points, each at every lr of the grid
    assert stages == sorted(stages, key=["tune", "sweep"].index)
    assert stages.count("sweep") == len(quickstart.BUDGETS) * quickstart.PER_BUDGET * len(quickstart.LR_GRID)
    assert all(r["run_id"] is None and r["lr"] is None for r in record["runs"] if r["stage"] == "sweep")
    assert record["est_seconds"] is None and record["throughput"] is None
    assert record["compute"] == pytest.approx(sum(r["C"] for r in record["runs"]))
    assert "no time estimate" in format_plan(record) and "(after tuning)" in format_plan(record)
