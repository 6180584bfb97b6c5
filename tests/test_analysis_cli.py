"""`scaling fit` / `scaling plot` / `scaling predict` end to end: a synthetic IsoFLOP run store on
one ladder of sizes, CSVs, bad input (exit 1 with one error line, no traceback), the written files."""

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


LADDER = np.geomspace(G_TRUE * (1e15 / 6) ** A_TRUE / 8, G_TRUE * (1e17 / 6) ** A_TRUE * 8, 15)


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """Three IsoFLOP budgets on one ladder of 15 sizes (each budget trains the sizes within 8x of
    its optimum, so middle sizes reach 3 horizons for Approach 1), drawn from LAW with 0.3%
    noise, plus a failed and a running run."""
    root = tmp_path_factory.mktemp("store") / "runs"
    rng = np.random.default_rng(0)
    for C in (1e15, 1e16, 1e17):
        n_star = G_TRUE * (C / 6) ** A_TRUE
        for N in LADDER[(LADDER > n_star / 8) & (LADDER < n_star * 8)]:
            D = C / (6 * N)
            eval_loss = loss(N, D) * np.exp(0.003 * rng.standard_normal())
            write_run(root, f"iso-{C:.0e}-{N:.3g}", "done", N=N, D=D, C=C, eval_loss=eval_loss, budget=C)
    write_run(root, "iso-broken", "failed", reason="NaN loss at step 12")
    write_run(root, "iso-late", "running")
    return root


@pytest.fixture(scope="module")
def fitted(run_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    # 256 of the grid's starts keep this quick (tests/test_analysis_replication.py runs all 4,500)
    code = cli("fit", run_store, "--out", out, "--bootstrap", 40, "--approach", "all", "--holdout-largest", 1, "--n-starts", 256, "--at", 3e19,
               "--at", 1e12, "--model", 7e7, "--tokens", 2e10)
    return code, out, json.loads((out / "fit.json").read_text())


def test_run_store_fit_runs_all_three_approaches(fitted):
    code, out, rec = fitted
    assert code == 0
    assert set(rec["fits"]) == {"approach1", "approach2", "approach3"} and rec["skipped"] == {}
    n = rec["n_points"]
    for name, e in rec["fits"].items():
        for p in e["params"].values():
            assert set(p) == {"value", "ci"} and p["ci"][0] <= p["value"] <= p["ci"][1], (name, p)
        assert e["a"]["value"] == pytest.approx(A_TRUE, abs=0.05 if name != "approach1" else 0.1), name
    a3 = rec["fits"]["approach3"]
    assert set(a3["params"]) == {"E", "A", "B", "alpha", "beta"} and a3["n_starts"] == 256 and a3["n_points"] == n
    for k in ("E", "alpha", "beta"):  # noisy points: the truth lies within the intervals
        # (give or take a fifth of the width: the 2.5% point of 40 resamples is their 1st or 2nd
        # smallest, and beta's truth sits at this sample's lower edge: 0.2802 vs 0.28 stratified by budget)
        lo, hi = a3["params"][k]["ci"]
        assert lo - 0.2 * (hi - lo) <= LAW[k] <= hi + 0.2 * (hi - lo), k
    assert len(rec["fits"]["approach2"]["budgets"]) == 3
    assert rec["fits"]["approach1"]["n_sizes"] >= 3 and rec["fits"]["approach1"]["left_out"]  # the end sizes lack horizons


def test_fit_json_records_the_range_cost_model_accounting_and_goodness(fitted):
    _, _, rec = fitted
    assert rec["data_range"]["C"] == [1e15, 1e17] and rec["n_budgets"] == 3 and rec["budgets"] == [1e15, 1e16, 1e17]
    assert rec["cost_model"]["kind"] == "recorded" and "6N" in rec["conventions"]["C"]
    assert rec["filters"]["exclude_top_loss"] == 0 and rec["filters"]["n_dropped"] == 0
    assert any("iso-broken (failed: NaN loss at step 12)" in n and "iso-late (running)" in n for n in rec["notes"])
    for name, e in rec["fits"].items():
        b = e["bootstrap"]
        counted = b["n_used"] + sum(v for k, v in b.items() if k.startswith("n_") and k not in ("n_resamples", "n_used"))
        assert counted == b["n_resamples"] == 40, name  # every resample accounted for
        assert len(next(iter(b["samples"].values()))) == b["n_used"] and b["flagged"] == (b["n_used"] < 32)
        lobo = e["goodness"]["lobo"]
        assert len(lobo["budgets"]) == 3 and all(("predicted" in r) != ("skipped" in r) for r in lobo["budgets"]), name
        # Approach 1 without a budget keeps 2 horizons per size: it cannot run, and says so
        assert lobo["n"] >= 2 if name != "approach1" else all("needs >= 3 horizons" in r["skipped"] for r in lobo["budgets"]), name
    a3 = rec["fits"]["approach3"]
    assert a3["bootstrap"]["unit"] == "points with replacement within each budget"  # IsoFLOP runs: stratified by budget
    assert 0.001 < a3["goodness"]["rmse_nats"] < 0.02  # 0.3% noise on losses ~3-4 nats
    assert a3["goodness"]["lobo"]["mean_abs_log10_N_ratio"] < 0.1 and a3["goodness"]["lobo"]["mean_abs_loss_error_nats"] < 0.03
    ho = rec["holdout"]
    assert ho["k"] == 1 and ho["budgets"] == [1e17] and all(p["C"] == 1e17 for p in ho["points"])
    assert ho["mean_abs_rel_error"] < 0.02 and len(ho["minima"]) == 1


def test_the_table_is_anchored_to_the_data_and_marks_extrapolation(fitted):
    _, _, rec = fitted
    for e in rec["fits"].values():
        assert [r["C"] for r in e["table"]] == pytest.approx([1e12, 1e17, 3e17, 1e18, 1e19, 3e19])
        # C / C_max above the data (1e15..1e17), C / C_min below them, 0 within
        assert [r["extrapolation"] for r in e["table"]] == pytest.approx([1e-3, 0, 3, 10, 100, 300])
        assert max(e["grid"]["C"]) == pytest.approx(3e19)  # --at reaches past the 100x default
        assert min(e["grid"]["C"]) == pytest.approx(1e12)  # and below the data
    a3 = rec["fits"]["approach3"]["table"][1]
    assert a3["loss"]["pi"][0] <= a3["loss"]["ci"][0] <= a3["loss"]["value"] <= a3["loss"]["ci"][1] <= a3["loss"]["pi"][1]
    assert rec["fits"]["approach1"]["table"][1]["loss"] is None  # no loss model


def test_report_and_figures_are_written(fitted):
    _, out, rec = fitted
    report = (out / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Data range:** N ")  # the report opens with the data range
    assert "## Compute-optimal allocation" in report and "extrapolation x100" in report and "Out-of-sample check" in report
    assert "| approach3 | 1e+12 |" in report and "| extrapolation: x1e+03 below the data |" in report
    assert "Leave-one-budget-out" in report and "usable of 40 bootstrap resamples" in report and "## Sensitivity" in report
    for fig in ("isoflop", "loss_vs_compute", "frontier", "fitted_vs_observed"):
        for ext in ("png", "svg"):
            assert (out / f"{fig}.{ext}").stat().st_size > 5000, fig
            assert f"{fig}.{ext}" in rec["figures"]
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # atomic writes left no temp files


@pytest.fixture
def drawn(monkeypatch):
    """name -> the matplotlib Figure of every figure saved while the test runs."""
    from analysis import plots

    figures, save = {}, plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, out_dir, name: figures.setdefault(name, fig) and save(fig, out_dir, name))
    return figures


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()] for t in leg.get_texts()]


def test_plot_redraws_the_figures_from_fit_json(fitted, drawn):
    _, out, _ = fitted
    (out / "frontier.png").unlink()
    assert cli("plot", out) == 0
    assert (out / "frontier.png").exists()
    assert set(drawn) == {"isoflop", "loss_vs_compute", "frontier", "fitted_vs_observed"}
    for name, fig in drawn.items():  # every legend lies outside every axes: it covers no point
        fig.canvas.draw()
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, name
        for leg in legends:
            box = leg.get_window_extent()
            assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes), name
    for name in ("loss_vs_compute", "frontier"):  # the --at below the data is marked with its factor
        assert "--at C = 1e+12: extrapolation: x1e+03 below the data" in legend_texts(drawn[name])


def test_csv_fit_with_a_one_variable_law(tmp_path, capsys):
    C = np.geomspace(1e17, 1e21, 40)
    path = tmp_path / "c.csv"
    path.write_text("N,D,C,loss\n" + "".join(f"{c / 6e11:.6g},1e11,{c:.6g},{2.0 + 1e3 * c ** -0.15:.8f}\n" for c in C))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.png").write_text("not the fit's")
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--law", "power-C", "--bootstrap", 20, "--progress", "on") == 0
    rec = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert rec["fits"]["power-C"]["params"]["alpha"]["value"] == pytest.approx(0.15, rel=1e-3)
    assert (tmp_path / "o" / "power_C.png").exists()
    out, err = capsys.readouterr()
    assert "power-C (40 points)" in out
    # the progress line names each stage as it starts (tqdm on stderr)
    assert err.index("fit: power-C: fit and 20 bootstrap refits") < err.index("fit: figures") and "stage 1/2" in err
    # a refit into the same folder draws other figures: the old fit's go, files it did not draw stay
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--law", "power-N", "--bootstrap", 0) == 0
    rec = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert "power_N.png" in rec["figures"] and not any(f.startswith("power_C") for f in rec["figures"])
    assert set(os.listdir(tmp_path / "o")) == {"fit.json", "report.md", "mine.png", *rec["figures"]}


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


def test_the_isoflop_figure_marks_the_budgets_approach_2_refuses(tmp_path, drawn):
    """Two budgets, the larger one's sizes all below its optimum: approach 2 refuses it (and so
    is skipped), and the IsoFLOP figure is drawn anyway, saying which budget and why."""
    rows = []
    for C, sizes in ((1e16, np.geomspace(1e6, 1e8, 7)), (1e18, np.geomspace(1e5, 3e6, 5))):
        n_opt = G_TRUE * (C / 6) ** A_TRUE  # 1e18: ~8e7, so 1e5..3e6 never brackets it
        assert C < 1e17 or sizes.max() < n_opt / 10
        rows += [f"{n:.6g},{C / (6 * n):.6g},{C:.6g},{loss(n, C / (6 * n)):.6f}\n" for n in sizes]
    path = tmp_path / "two.csv"
    path.write_text("N,D,C,loss\n" + "".join(rows))
    assert cli("fit", "--csv", path, "--out", tmp_path / "o", "--bootstrap", 0, "--n-starts", 32, "--approach", "all") == 0
    rec = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert "approach2" not in rec["fits"] and "C=1e+18" in rec["skipped"]["approach2"]
    assert "isoflop.png" in rec["figures"] and (tmp_path / "o" / "isoflop.png").stat().st_size > 5000
    labels = legend_texts(drawn["isoflop"])
    assert "C = 1e+16" in labels
    (refused,) = [t for t in labels if t.startswith("C = 1e+18 refused: ")]
    assert "largest" in refused  # the reason: the minimum lies above the largest model trained
    assert "skipped" in drawn["isoflop"].axes[0].get_title()


def test_usage_errors(tmp_path, capsys):
    assert cli("fit", "--out", tmp_path / "o") == 2  # a usage error, as argparse's
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
    assert "approach3 (28 points)" in summary(rec) and "N_opt ~ C^" in summary(rec) and "data: N " in summary(rec)
    with pytest.raises(AnalysisError, match="unknown fit option"):
        fit_and_report(from_frame(frame), out, {"bootstraps": 10})


def test_predict_at_any_compute_matches_the_table(fitted, capsys):
    from analysis.predict import predict

    _, out, rec = fitted
    for name, e in rec["fits"].items():
        row = next(r for r in e["table"] if r["C"] == pytest.approx(1e18))
        (got,) = predict(rec, name, [1e18])  # from the bootstrap samples stored in fit.json
        for key in ("N_opt", "D_opt"):
            assert got[key]["value"] == pytest.approx(row[key]["value"], rel=1e-9)
            assert got[key]["ci"] == pytest.approx(row[key]["ci"], rel=1e-9)
    assert cli("predict", out, "--at", 1e18, "--at", 5e16, "--json") == 0
    js = json.loads(capsys.readouterr().out)
    assert js["C"] == [1e18, 5e16] and set(js["approaches"]) == {"approach1", "approach2", "approach3"}
    r3 = js["approaches"]["approach3"]
    assert set(r3[0]) == {"C", "N_opt", "D_opt", "loss", "extrapolation"} and set(r3[0]["loss"]) == {"value", "ci", "pi"}
    assert r3[0]["extrapolation"] == pytest.approx(10) and r3[1]["extrapolation"] == 0
    # the recorded C is 6ND here, so Approach 3's optimum is Hoffmann's closed form of its parameters
    from analysis import approaches as ap

    p = {k: v["value"] for k, v in rec["fits"]["approach3"]["params"].items()}
    assert r3[0]["N_opt"]["value"] == pytest.approx(float(ap.compute_optimal(p, 1e18)[0]), rel=1e-5)
    assert cli("predict", out, "--at", 1e18) == 0
    text = capsys.readouterr().out
    assert "approach3 at C = 1e+18 (extrapolation x10)" in text and "prediction interval" in text
    # below the data (C_min = 1e15) as plainly as above: the factor, in the text and the JSON
    assert cli("predict", out, "--at", 1e10) == 0
    text = capsys.readouterr().out
    assert text.count("(extrapolation: x1e+05 below the data)") == 3 and "within the data" not in text
    assert cli("predict", out, "--at", 1e10, "--json") == 0
    js = json.loads(capsys.readouterr().out)
    assert all(rows[0]["extrapolation"] == pytest.approx(1e10 / 1e15) for rows in js["approaches"].values())


def test_predict_at_any_model_size_and_tokens_against_the_closed_form_law(fitted, capsys):
    """--model/--tokens: the loss L(N, D) = E + A/N^alpha + B/D^beta of the fitted parameters,
    its interval the percentiles of the law over the stored bootstrap refits (by hand here), the
    prediction interval wider, and N and D's extrapolation factors each on their own side."""
    _, out, rec = fitted
    e3 = rec["fits"]["approach3"]
    p = {k: v["value"] for k, v in e3["params"].items()}
    s = {k: np.asarray(v) for k, v in e3["bootstrap"]["samples"].items()}
    N, D = [7e7, 1e5, 3e8], [2e10, 5e9, 1e6]
    assert cli("predict", out, "--model", N[0], "--tokens", D[0], "--model", N[1], "--tokens", D[1], "--model", N[2], "--tokens", D[2], "--json") == 0
    rows = json.loads(capsys.readouterr().out)["points"]
    assert [r["approach"] for r in rows] == ["approach3"] * 3  # approaches 1-2 have no loss model at (N, D)
    (nlo, nhi), (dlo, dhi) = rec["data_range"]["N"], rec["data_range"]["D"]
    for r, n, d in zip(rows, N, D):
        assert set(r) >= {"N", "D", "approach", "loss", "extrapolation"} and set(r["loss"]) == {"value", "ci", "pi"}
        law = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]
        assert r["loss"]["value"] == pytest.approx(law, rel=1e-12)
        boot = s["E"] + s["A"] / n ** s["alpha"] + s["B"] / d ** s["beta"]
        assert r["loss"]["ci"] == pytest.approx(np.percentile(boot, [2.5, 97.5]), rel=1e-9)
        assert r["loss"]["pi"][0] < r["loss"]["ci"][0] and r["loss"]["pi"][1] > r["loss"]["ci"][1]
        want_n = n / nhi if n > nhi else (nlo / n if n < nlo else 0.0)
        want_d = d / dhi if d > dhi else (dlo / d if d < dlo else 0.0)
        assert r["extrapolation"] == pytest.approx({"N": want_n, "D": want_d}, rel=1e-12)
    assert rows[0]["extrapolation"]["N"] == 0 and rows[0]["extrapolation"]["D"] > 1  # over-trained: beyond the data in D only
    assert rows[1]["extrapolation_side"]["N"] == "below" and rows[2]["extrapolation_side"]["D"] == "below"
    # the same numbers in `scaling fit --model/--tokens`'s record and report, and as text
    assert e3["points_table"][0]["loss"] == rows[0]["loss"]
    report = (out / "report.md").read_text()
    assert "## Loss at given (N, D)" in report and f"{rows[0]['loss']['value']:.4f}" in report
    assert cli("predict", out, "--model", 7e7, "--tokens", 2e10) == 0
    assert "approach3 at N = 7e+07, D = 2e+10 (extrapolation: D x" in capsys.readouterr().out
    # one --tokens per --model, said in one line; --at still works beside them
    assert cli("predict", out, "--model", 7e7, "--model", 8e7, "--tokens", 2e10) == 2  # a usage error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give one --tokens per --model: 2 --model and 1 --tokens values" in err
    assert cli("predict", out, "--at", 1e18, "--model", 7e7, "--tokens", 2e10, "--json") == 0
    assert set(json.loads(capsys.readouterr().out)) == {"C", "approaches", "points"}
    assert cli("predict", out) == 2 and "give --at C" in capsys.readouterr().err
