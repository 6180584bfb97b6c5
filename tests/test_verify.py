"""The prediction check (`scaling verify`, the last stage of `scaling run`): the shape it picks, the
skip when the fit has no usable frontier, and end to end on a reduced sweep: check.json, its run in
the root, a rerun that trains nothing, --neighbours, and a diverged check run reported as such."""

import json
import math
import re
import subprocess
import sys

import pytest

from analysis import verify as V
from analysis.report import markdown
from test_run_command import EXPERIMENT
from test_sweep_support import clean_env

ENTRY_KEYS = {"C", "N", "D", "run_id", "approach", "predicted", "achieved", "error", "relative_error", "inside"}


# ---------------------------------------------------------------- pure parts -----------------------
def test_nearest_is_nearest_in_log_n_and_neighbours_sit_on_each_side():
    Ns = [1000.0, 2000.0, 4000.0, 8000.0, 16000.0]
    assert V.nearest(Ns, 2900.0) == 2  # log: 2900/2000 = 1.45 > 4000/2900 = 1.38 (linear distance would say 2000)
    assert V.nearest(Ns, 2700.0) == 1
    assert V.nearest(Ns, 1e6) == 4 and V.nearest(Ns, 1.0) == 0  # beyond the ladder: its end
    assert V.nearest(Ns, 2900.0, exclude=[2]) == 1
    assert V.neighbour_indices(Ns, 2, 3000.0) == (1, 3)  # N_opt/2 = 1500 -> 2000 (below 4000), 2 N_opt = 6000 -> 8000
    assert V.neighbour_indices(Ns, 0, 900.0) == (None, 1)  # nothing below the smallest shape
    runs = [{"run_id": "a", "achieved": 2.0}, {"run_id": "b", "achieved": 1.9}, {"run_id": "c", "achieved": 2.1}]
    assert V.neighbours_verdict(runs, "b") == {"runs": ["a", "b", "c"], "best": "b", "optimum_was_best": True}
    assert V.neighbours_verdict(runs, "a")["optimum_was_best"] is False
    assert V.neighbours_verdict([*runs[:2], {"run_id": "c", "achieved": None}], "b")["optimum_was_best"] is None


def test_entry_has_exactly_the_schema_and_the_error_in_interval_units():
    row = {"C": 3e9, "N_opt": {"value": 2500.0, "ci": None}, "loss": {"value": 2.0, "ci": None, "pi": [1.8, 2.4]}}
    e = V.entry("approach3", 3e9, {"run_id": "r", "N": 2532.0, "D": 1.6e5, "achieved": 2.2}, row)
    assert set(e) == ENTRY_KEYS and set(e["predicted"]) == {"value", "pi"}
    assert e["error"] == pytest.approx(0.2) and e["relative_error"] == pytest.approx(0.1) and e["inside"] is True
    assert V.interval_units(e) == pytest.approx(0.5)  # 0.2 of the upper half-width 0.4
    failed = V.entry("approach3", 3e9, {"run_id": "r", "N": 2532.0, "D": 1.6e5, "achieved": None}, row)
    assert failed["achieved"] is None and failed["error"] is None and failed["inside"] is False


def test_ladder_shape_is_the_nearest_in_log_n(tmp_path):
    from experiments.workflow.check import ladder, load_sweep
    from lib import flops

    exp = tmp_path / "mini.py"
    exp.write_text(EXPERIMENT)
    sweep = load_sweep(str(exp))
    _, shapes, notes = ladder(sweep, 3.6e9, {}, "total")
    assert len(shapes) == len(sweep.sizes) and not notes  # every size trainable at C: the per-budget filters are off
    for s in shapes:  # the same N definition the fit uses (params total), with the run's vocabulary
        assert s["N"] == flops.param_counts(s["run"].cfg.model)["total"]
        assert s["run"].cfg.sweep == "mini-check" and s["run"].cfg.budget == 3.6e9
        assert abs(s["run"].flops / 3.6e9 - 1) <= sweep.tolerance
        assert s["run"].cfg.optimizer.lr == sweep.base.optimizer.lr  # the sweep's hyperparameter rule
    Ns = [s["N"] for s in shapes]
    for target in (500.0, 2877.0, 4000.0, 1e5):
        i = V.nearest(Ns, target)
        assert all(abs(math.log(Ns[i] / target)) <= abs(math.log(n / target)) for n in Ns)


def _record(fits: dict, skipped: dict) -> dict:
    """The parts of a fit.json record the check and the report read."""
    return {
        "schema": 2, "source": {"kind": "runs", "path": "/nowhere", "params": "total"}, "n_points": 6,
        "data_range": {"N": [1e3, 8e3], "D": [1e4, 1e5], "C": [4e8, 1.2e9], "loss": [2.7, 3.6]},
        "n_budgets": 2, "budgets": [4e8, 1.2e9], "entropy_floor": None,
        "cost_model": {"kind": "6N", "coeffs": [0.0], "log10_N_range": [0.0, 30.0], "max_rel_error": 0.0, "n_sizes": 0, "description": "C = 6*N*D"},
        "conventions": {"N": "total parameters"}, "filters": {"min_tokens_per_param": None, "exclude_top_loss": 0, "dropped": [], "n_dropped": 0},
        "options": {"ci_level": 0.95, "params": "total"}, "notes": [], "fits": fits, "skipped": skipped, "warnings": [],
    }


@pytest.mark.parametrize("fits, skipped, why", [
    ({}, {"approach3": "L-BFGS did not converge", "approach2": "no interior minimum", "approach1": "too few horizons"},
     r"every approach was refused\): approach3: L-BFGS did not converge; approach2: no interior minimum"),
    ({"power-N": {"formula": "L = E + A/N^alpha", "n_points": 6, "params": {"E": {"value": 1.0, "ci": None}}}}, {},
     r"the fit is power-N; fit with --law chinchilla"),
])
def test_a_fit_without_a_usable_frontier_skips_the_check_with_its_reason(tmp_path, fits, skipped, why):
    from experiments.workflow.check import verify

    fit_dir = tmp_path / "fit"
    fit_dir.mkdir()
    (fit_dir / "fit.json").write_text(json.dumps(_record(fits, skipped)))
    assert verify(fit_dir) == 0  # no root, experiment or training needed to say why not
    check = json.loads((fit_dir / "check.json").read_text())
    assert check["status"] == "skipped" and check["checks"] == [] and re.search(why, check["reason"])
    assert check["C"] == pytest.approx(1.2e9 * 3)  # the next budget up: 1.2e9^2 / 4e8
    report = (fit_dir / "report.md").read_text()
    head = report.index("## Prediction check")
    assert head < report.index("- Data:") and "Skipped at C = 3.6e+09" in report and re.search(why, report)


def test_a_check_the_fit_no_longer_makes_is_marked_stale():
    check = {"C": 3.6e9, "status": "done", "checks": [{"approach": "approach3", "C": 3.6e9, "predicted": {"value": 2.0, "pi": None}}]}
    view = V.attach(_record({}, {"approach3": "refused"}), check)
    assert view["check"]["stale"] == ["approach3"] and "check" not in _record({}, {})
    assert "made against an earlier fit" in markdown({**view, "check": {**view["check"], "checks": [], "runs": []}})


# ---------------------------------------------------------------- end to end -----------------------
def _cli(tmp_path, *args, cache):
    env = clean_env(tmp_path, cache=cache)  # one compile per shape across the steps below and mini_run
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args), "--progress", "off"],
                          env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.timeout(900)
def test_scaling_run_checks_its_prediction_idempotently(tmp_path, compile_cache, mini_run):
    """`scaling run` relaunched on a swept root (tests/test_run_command.py's, copied): nothing to
    train in the sweep, the fit again, then the check stage."""
    import shutil

    exp, swept, first = mini_run
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root, fit = tmp_path / "root", tmp_path / "root" / "fit"
    shutil.copytree(swept, root)
    proc = _cli(tmp_path, "run", exp, "--root", root, "--neighbours", cache=compile_cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"sweep mini: all \d+ runs were already done", proc.stdout)
    assert re.search(r"sweep mini-check: [23] trained", proc.stdout) and "prediction check at C = 3.6e+09" in proc.stdout

    check = json.loads((fit / "check.json").read_text())
    assert check["status"] == "done" and check["C"] == pytest.approx(3.6e9) and check["checks"]
    record = json.loads((fit / "fit.json").read_text())
    predicting = [n for n, e in record["fits"].items() if "frontier_model" in e and n != "approach1"]
    assert [e["approach"] for e in check["checks"]] == predicting  # one entry per approach that made a prediction
    for e in check["checks"]:
        assert set(e) == ENTRY_KEYS and set(e["predicted"]) == {"value", "pi"} and len(e["predicted"]["pi"]) == 2
        assert isinstance(e["inside"], bool) and e["inside"] == (e["predicted"]["pi"][0] <= e["achieved"] <= e["predicted"]["pi"][1])
        assert e["error"] == pytest.approx(e["achieved"] - e["predicted"]["value"])
        assert e["relative_error"] == pytest.approx(e["error"] / e["predicted"]["value"])
        run = root / e["run_id"]
        assert json.loads((run / "status.json").read_text())["state"] == "done"  # its run exists in the root
        summary = json.loads((run / "summary.json").read_text())
        assert summary["eval_loss"] == pytest.approx(e["achieved"]) and summary["sweep"] == "mini-check"
        assert (e["N"], e["D"]) == (summary["params"]["total"], summary["tokens"])
        assert abs(summary["flops"]["value"] / 3.6e9 - 1) < 0.02
    # the chosen shape's N is the ladder's nearest to N_opt (log N) among the experiment's sizes
    from experiments.workflow.check import ladder, load_sweep

    Ns = [s["N"] for s in ladder(load_sweep(str(exp)), 3.6e9, {}, "total")[1]]
    for e in check["checks"]:
        n_opt = check["predictions"][e["approach"]]["N_opt"]["value"]
        assert e["N"] == Ns[V.nearest(Ns, n_opt)]
    # the report opens with the check; the figures carry it; the fit left the check run out, saying so
    report = (fit / "report.md").read_text()
    assert report.index("**Data range:**") < report.index("## Prediction check") < report.index("## Compute-optimal allocation")
    assert re.search(r"\| approach3 \| [\d.]+ \| [\d.]+ \| [\d.e+]+ \| \d\.\d{4} \| \[\d\.\d{4}, \d\.\d{4}\] \| \d\.\d{4} \| [+-]\d\.\d{4} \| [+-]\d\.\d\d \|", report)
    assert {"loss_vs_compute.png", "frontier.png"} <= set(record["figures"])
    # --neighbours: N_opt/2 and 2 N_opt at the same C, and whether the optimum was the best of the three
    roles = [r["role"] for r in check["runs"]]
    assert roles.count("check") == len({e["run_id"] for e in check["checks"]}) and roles.count("neighbour") >= 1
    assert all(r["state"] == "done" and (root / r["run_id"] / "summary.json").exists() for r in check["runs"])
    assert isinstance(check["neighbours"]["optimum_was_best"], bool) and "Neighbours at the same C" in report

    # rerun: the same fit, nothing trained, the check runs untouched
    def stamps():
        return {p: p.stat().st_mtime_ns for r in check["runs"] for p in (root / r["run_id"]).rglob("*") if p.is_file()}

    before = stamps()
    proc = _cli(tmp_path, "run", exp, "--root", root, "--neighbours", cache=compile_cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sweep mini: all" in proc.stdout and re.search(r"sweep mini-check: all \d runs were already done; nothing trained", proc.stdout)
    assert re.search(r"left out [23] prediction-check run", proc.stdout)
    assert json.loads((fit / "check.json").read_text())["checks"] == check["checks"]
    assert before == stamps()
    assert json.loads((fit / "fit.json").read_text())["n_points"] == record["n_points"]

    # a check run that diverged: reported in check.json and report.md; fit.json stands
    run = root / check["checks"][0]["run_id"]
    (run / "summary.json").unlink()
    (run / "status.json").write_text(json.dumps({"state": "failed", "reason": "loss is nan at step 7", "diverged": True, "attempts": 1}))
    fit_json = (fit / "fit.json").read_bytes()
    good = (fit / "check.json").read_text()
    (fit / "check.json").unlink()  # first without the check that ran: the failed one is the check
    from experiments.cli import main  # in this process: the subprocess launches above cover the entry point

    assert main(["verify", str(fit), "--progress", "off", "--compile-cache", compile_cache]) == 1
    failed = json.loads((fit / "check.json").read_text())
    assert failed["status"] == "failed" and "loss is nan at step 7" in failed["reason"]
    assert all(e["achieved"] is None and e["error"] is None and e["inside"] is False for e in failed["checks"])
    assert "**diverged**" in (fit / "report.md").read_text() and (fit / "fit.json").read_bytes() == fit_json
    # with the check that ran back in place, a failed one never replaces it: it goes beside it
    from experiments.workflow.options import SweepOptions
    from experiments.workflow.check import verify

    (fit / "check.json").write_text(good)
    assert verify(fit, options=SweepOptions(progress="off", compile_cache=compile_cache)) == 1
    assert (fit / "check.json").read_text() == good
    assert json.loads((fit / "check.failed.json").read_text())["reason"] == failed["reason"]
