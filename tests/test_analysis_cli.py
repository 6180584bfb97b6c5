"""`scaling fit` / `scaling plot` end to end: a synthetic IsoFLOP run store with training curves,
CSVs, bad input (exit 1 with one error line, no traceback), the written files."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import fit_cmd
from test_analysis_data import write_run

LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
G_TRUE = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loss(N, D):
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def cli(*argv):
    parser = argparse.ArgumentParser(prog="scaling")
    fit_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """Three IsoFLOP budgets x 7 sizes drawn from LAW with 0.3% noise, curves in metrics.jsonl,
    plus a failed and a running run."""
    root = tmp_path_factory.mktemp("store") / "runs"
    rng = np.random.default_rng(0)
    for C in (1e15, 1e16, 1e17):
        n_star = G_TRUE * (C / 6) ** A_TRUE
        for N in n_star * np.geomspace(1 / 4, 4, 7):
            D = C / (6 * N)
            tokens = np.geomspace(D / 30, D, 30)
            curve = [
                {"step": i + 1, "tokens": t, "flops": 6 * N * t, "train_loss": loss(N, t) * np.exp(0.003 * rng.standard_normal()), "lr": 1e-3}
                for i, t in enumerate(tokens)
            ]
            curve[-1]["eval_loss"] = loss(N, D) * np.exp(0.003 * rng.standard_normal())
            write_run(root, f"iso-{C:.0e}-{N:.3g}", "done", N=N, D=D, C=C, eval_loss=curve[-1]["eval_loss"], budget=C, curve=curve)
    write_run(root, "iso-broken", "failed", reason="NaN loss at step 12")
    write_run(root, "iso-late", "running")
    return root


@pytest.fixture(scope="module")
def fitted(run_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    # 256 of the grid's starts keep this quick (tests/test_analysis_replication.py runs all 4,500)
    code = cli("fit", run_store, "--out", out, "--bootstrap", 40, "--approach", "all", "--holdout-largest", 3, "--n-starts", 256)
    return code, out, json.loads((out / "fit.json").read_text())


def test_run_store_fit_runs_all_three_approaches(fitted):
    code, out, rec = fitted
    assert code == 0
    assert set(rec["fits"]) == {"approach1", "approach2", "approach3"} and rec["skipped"] == {}
    assert rec["n_points"] == 21
    for name, e in rec["fits"].items():
        for p in e["params"].values():
            assert set(p) == {"value", "ci"} and p["ci"][0] <= p["value"] <= p["ci"][1], (name, p)
        assert e["a"]["value"] == pytest.approx(A_TRUE, abs=0.05), name
        assert e["b"]["value"] == pytest.approx(1 - A_TRUE, abs=0.05), name
    a3 = rec["fits"]["approach3"]
    assert set(a3["params"]) == {"E", "A", "B", "alpha", "beta"} and a3["n_starts"] == 256
    for k in ("E", "alpha", "beta"):  # 21 noisy points: the truth lies within the intervals
        assert a3["params"][k]["ci"][0] <= LAW[k] <= a3["params"][k]["ci"][1], k
    assert rec["fits"]["approach2"]["n_points"] == 21 and len(rec["fits"]["approach2"]["budgets"]) == 3


def test_fit_json_records_conventions_filters_and_left_out_runs(fitted):
    _, _, rec = fitted
    assert rec["conventions"]["N"].startswith("total parameters") and "6N" in rec["conventions"]["C"]
    assert "C = 6*N*D" in rec["conventions"]["frontier"]
    assert rec["filters"]["exclude_top_loss"] == 0 and rec["filters"]["n_dropped"] == 0
    assert any("iso-broken (failed: NaN loss at step 12)" in n and "iso-late (running)" in n for n in rec["notes"])
    assert rec["options"]["bootstrap"] == 40 and rec["fits"]["approach3"]["bootstrap"]["unit"] == "points"
    assert rec["holdout"]["k"] == 3 and len(rec["holdout"]["points"]) == 3
    assert all(p["C"] == 1e17 for p in rec["holdout"]["points"])
    assert rec["holdout"]["mean_abs_rel_error"] < 0.02


def test_report_and_figures_are_written(fitted):
    _, out, rec = fitted
    report = (out / "report.md").read_text()
    assert "## Compute-optimal allocation" in report and "| 1e+24 |" in report and "Out-of-sample check" in report
    for fig in ("isoflop", "loss_vs_compute", "frontier", "fitted_vs_observed"):
        for ext in ("png", "svg"):
            assert (out / f"{fig}.{ext}").stat().st_size > 5000, fig
            assert f"{fig}.{ext}" in rec["figures"]
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # atomic writes left no temp files


def test_plot_redraws_the_figures_from_fit_json(fitted):
    _, out, _ = fitted
    (out / "frontier.png").unlink()
    assert cli("plot", out) == 0
    assert (out / "frontier.png").exists()


def test_csv_fit_with_a_one_variable_law(tmp_path, capsys):
    C = np.geomspace(1e17, 1e21, 40)
    path = tmp_path / "c.csv"
    path.write_text("N,D,C,loss\n" + "".join(f"{c / 6e11:.6g},1e11,{c:.6g},{2.0 + 1e3 * c ** -0.15:.8f}\n" for c in C))
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--law", "power-C", "--bootstrap", 20) == 0
    rec = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert rec["fits"]["power-C"]["params"]["alpha"]["value"] == pytest.approx(0.15, rel=1e-3)
    assert (tmp_path / "o" / "power_C.png").exists()
    assert "power-C (40 points)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "csv, message",
    [
        ("N,D,eval\n1,2,3\n", "lacks column(s) loss"),
        ("N,D,loss\n1e8,1e9,3\n2e8,2e9,2.9\n4e8,4e9,2.8\n", "3 data points cannot determine the 5 parameters"),
        ("N,D,loss\n-1,2,3\n", "no usable points left"),
    ],
)
def test_bad_csv_exits_1_with_one_error_line(tmp_path, capsys, csv, message):
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--bootstrap", 0) == 1
    err = capsys.readouterr().err
    assert "scaling fit: error:" in err and message in err and "Traceback" not in err


def test_single_budget_with_approach_2_is_an_error_but_all_skips_it(tmp_path, capsys):
    rows = "".join(f"{n:.6g},{1e18 / (6 * n):.6g},1e18,{loss(n, 1e18 / (6 * n)):.6f}\n" for n in np.geomspace(1e7, 1e9, 7))
    path = tmp_path / "one.csv"
    path.write_text("N,D,C,loss\n" + rows)
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--approach", "2", "--bootstrap", 0) == 1
    assert "needs two or more FLOP budgets" in capsys.readouterr().err
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--bootstrap", 0, "--n-starts", 64, "--no-figures") == 0
    rec = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert set(rec["fits"]) == {"approach3"} and "two or more FLOP budgets" in rec["skipped"]["approach2"]


def test_usage_errors(tmp_path, capsys):
    assert cli("fit", "--out", tmp_path / "o") == 1
    assert "give either --csv FILE or a RUN_ROOT" in capsys.readouterr().err
    assert cli("plot", tmp_path / "no-fit-here") == 1
    assert "fit.json does not exist" in capsys.readouterr().err


def test_module_entry_point_reports_bad_input_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.fit_cmd", "fit", "--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "CSV file" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_programmatic_entry_point_with_in_memory_points(tmp_path):
    """What the sweep runner calls: fit_and_report(data, out_dir, options) -> the fit.json record."""
    import pandas as pd

    from analysis.data import from_frame
    from analysis.errors import AnalysisError
    from analysis.report import fit_and_report, replot, summary

    N, R = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e9, 6), np.geomspace(5, 100, 5)))
    frame = pd.DataFrame({"N": N, "D": N * R, "loss": loss(N, N * R)})
    out = tmp_path / "fit"
    rec = fit_and_report(from_frame(frame), out, {"approach": "3", "bootstrap": 10, "n_starts": 64, "exclude_top_loss": 2})
    assert rec == json.loads((out / "fit.json").read_text())
    assert rec["n_points"] == 28 and rec["source"]["path"] == str(out / "points.csv")
    assert len(replot(out)) == 6  # loss_vs_compute, frontier, fitted_vs_observed; from the copied points
    assert "approach3 (28 points)" in summary(rec) and "N_opt ~ C^" in summary(rec)
    with pytest.raises(AnalysisError, match="unknown fit option"):
        fit_and_report(from_frame(frame), out, {"bootstraps": 10})


def test_frontier_at_any_compute_matches_the_tables_and_the_closed_form(fitted):
    from analysis import approaches as ap
    from analysis.report import frontier_at

    _, _, rec = fitted
    for name, e in rec["fits"].items():
        table = e["frontier"]["table"]
        i = table["C"].index(1e20)
        got = frontier_at(rec, 1e20, name)  # from the bootstrap samples stored in fit.json
        for key in ("N_opt", "D_opt"):
            assert got[key]["value"] == pytest.approx(table[key][i]["value"], rel=1e-9)
            assert got[key]["ci"] == pytest.approx(table[key][i]["ci"], rel=1e-9)
    p = {k: v["value"] for k, v in rec["fits"]["approach3"]["params"].items()}
    both = frontier_at(rec, [1e19, 1e21])
    assert [x["value"] for x in both["N_opt"]] == pytest.approx(list(ap.compute_optimal(p, np.array([1e19, 1e21]))[0]))
