"""Loading a CSV or a run store, and every kind of bad input: a clear error or a warning that names
the row, never a traceback or a silent wrong fit."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.data import apply_filters, from_frame, load, load_csv, load_run_store
from analysis.errors import AnalysisError, FitWarning


def write_csv(tmp_path, text, name="points.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "N,D,loss\n1e8,2e9,3.1\n2e8,4e9,2.9\n4e8,8e9,2.7\n8e8,1.6e10,2.6\n"


def test_csv_without_c_gets_6nd_and_says_so(tmp_path):
    ds = load_csv(write_csv(tmp_path, GOOD))
    np.testing.assert_allclose(ds.points.C, 6 * ds.points.N * ds.points.D)
    assert "C = 6*N*D (computed" in ds.conventions["C"]
    assert any("no C column" in n for n in ds.notes)
    assert ds.source["kind"] == "csv" and ds.n == 4


def test_csv_with_c_and_no_d_derives_tokens(tmp_path):
    ds = load_csv(write_csv(tmp_path, "n, c ,Loss\n1e8,1.2e18,3.1\n2e8,4.8e18,2.9\n"))
    np.testing.assert_allclose(ds.points.D, [2e9, 4e9])
    assert "D = C/(6*N)" in ds.conventions["D"]


def test_a_c_column_far_from_6nd_is_named_by_line(tmp_path):
    path = tmp_path / "c.csv"  # every C 100x 6ND (units?): warned, not dropped, as the rows agree with each other
    path.write_text("N,D,C,loss\n1e8,2e9,1.2e20,3.0\n2e8,2e9,2.4e20,2.9\n4e8,2e9,4.8e20,2.8\n")
    with pytest.warns(FitWarning, match=r"C disagrees with 6\*N\*D by more than 10x in 3 rows: line 2 \(C/6ND = 100\)"):
        ds = load_csv(path)
    assert len(ds.points) == 3 and ds.cost_source == "given"


def test_a_row_whose_c_is_far_off_the_others_is_refused_by_name(tmp_path):
    N = np.array([1e8, 2e8, 4e8, 8e8, 1.6e9])
    C = 6 * N * 2e9
    C[2] *= 1e13  # the row: C 1e13x off the others
    path = write_csv(tmp_path, "N,D,C,loss\n" + "".join(f"{n:g},2e9,{c:g},{3 - 0.1 * i}\n" for i, (n, c) in enumerate(zip(N, C))))
    with pytest.warns(FitWarning) as record:
        ds = load_csv(path)
    msgs = " | ".join(str(w.message) for w in record)
    assert "refused 1 row(s) whose C/(N*D) is more than 10x off the rows' median 6: line 4 (N=4e+08, D=2e+09, C=4.8e+31: C/(N*D) = 6e+13)" in msgs
    assert list(ds.points.run) == ["line 2", "line 3", "line 5", "line 6"]
    np.testing.assert_allclose(ds.points.C, 6 * ds.points.N * ds.points.D)  # what is left obeys one cost model
    # a row 9x off is within the rule: kept
    C[2] = 6 * N[2] * 2e9 * 9
    ds = load_csv(write_csv(tmp_path, "N,D,C,loss\n" + "".join(f"{n:g},2e9,{c:g},3\n" for n, c in zip(N, C)), "ok.csv"))
    assert ds.n == 5


def test_exact_duplicates_count_once_and_replicates_are_reported(tmp_path):
    text = "N,D,loss\n1e8,2e9,3.1\n2e8,4e9,2.9\n2e8,4e9,2.9\n2e8,4e9,2.95\n4e8,8e9,2.7\n1e8,2e9,3.1\n"
    with pytest.warns(FitWarning, match=r"2 exact duplicate row\(s\) counted once: line 4 repeats line 3; line 7 repeats line 2"):
        ds = load_csv(write_csv(tmp_path, text))
    assert list(ds.points.run) == ["line 2", "line 3", "line 5", "line 6"]  # 6 rows, 2 repeats
    assert "replicates (same N and D, each fitted as a point): N=2e+08, D=4e+09: 2 rows (line 3, line 5; loss 2.9..2.95)" in ds.notes


def test_missing_column_names_it_and_the_columns_present(tmp_path):
    with pytest.raises(AnalysisError, match=r"lacks column\(s\) loss \(it has: N, D, eval\)"):
        load_csv(write_csv(tmp_path, "N,D,eval\n1,2,3\n"))
    with pytest.raises(AnalysisError, match=r"lacks column\(s\) D"):
        load_csv(write_csv(tmp_path, "N,loss\n1,2\n"))


def test_bad_rows_are_reported_by_line_then_dropped_with_a_count(tmp_path):
    text = "N,D,loss\n1e8,2e9,3.1\n2e8,4e9,\n-4e8,8e9,2.7\n8e8,abc,2.6\n1.6e9,3.2e10,0\n3.2e9,6.4e10,2.4\n"
    with pytest.warns(FitWarning) as record:
        ds = load_csv(write_csv(tmp_path, text))
    msgs = " | ".join(str(w.message) for w in record)
    assert "dropped 4 of 6 rows" in msgs
    for piece in ("line 3 (loss=nan)", "line 4 (N=-4e+08)", "line 5 (D=nan)", "line 6 (loss=0)", "line 5 D='abc'"):
        assert piece in msgs, piece
    assert ds.n == 2 and list(ds.points.run) == ["line 2", "line 7"]


def test_no_usable_rows_is_an_error(tmp_path):
    with pytest.warns(FitWarning), pytest.raises(AnalysisError, match="no usable points left"):
        load_csv(write_csv(tmp_path, "N,D,loss\n-1,2,3\n1,2,nan\n"))


def test_unreadable_or_missing_files_are_errors(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(AnalysisError, match="cannot read"):
        load_csv(write_csv(tmp_path, ""))
    with pytest.raises(AnalysisError, match="neither a CSV file nor a run-store folder"):
        load(tmp_path / "nothing-here")


def test_exclude_top_loss_drops_the_k_highest_and_ties_with_the_kth():
    frame = pd.DataFrame({"N": np.arange(1, 9) * 1e8, "D": 1e10, "loss": [3.0, 5.0, 4.0, 4.0, 2.0, 2.5, 2.2, 2.1]})
    ds = apply_filters(from_frame(frame), exclude_top_loss=2)
    assert sorted(ds.points.loss) == [2.0, 2.1, 2.2, 2.5, 3.0]  # 5.0 and both 4.0s
    assert ds.filters["exclude_top_loss"] == 2 and ds.filters["n_dropped"] == 3
    with pytest.raises(AnalysisError, match="would remove all"):
        apply_filters(from_frame(frame), exclude_top_loss=8)


def test_min_tokens_per_param_filter():
    frame = pd.DataFrame({"N": [1e8, 1e8, 1e8], "D": [1e9, 2e9, 5e9], "loss": [3.0, 2.8, 2.6]})
    ds = apply_filters(from_frame(frame), min_tokens_per_param=15)
    assert list(ds.points.D) == [2e9, 5e9] and ds.filters["dropped"] == ["row 0 (D/N=10)"]


# ------------------------------------------------------------------------------------------------
def write_run(root, run_id, state, *, N=None, D=None, C=None, eval_loss=None, train_loss=None, budget=None, curve=(), reason=""):
    """One run folder in the run-store layout (config.json, status.json, metrics.jsonl, summary.json)."""
    d = root / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": run_id}))
    (d / "status.json").write_text(json.dumps({"state": state, "reason": reason}))
    if curve:
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in curve))
    if state == "done":
        summary = {
            "run_id": run_id, "eval_loss": eval_loss, "train_loss": train_loss if train_loss is not None else eval_loss,
            "params": {"total": N, "embedding": 0.1 * N, "non_embedding": 0.9 * N},
            "tokens": D, "flops": {"value": C, "convention": "6N"}, "flops_per_token": C / D,
            "entropy_floor": None, "sweep": "iso", "budget": budget,
        }
        (d / "summary.json").write_text(json.dumps(summary))


def test_run_store_keeps_finished_runs_and_lists_the_others(tmp_path):
    root = tmp_path / "runs"
    curve = [{"step": s, "tokens": 1e8 * s, "flops": 6e16 * s, "train_loss": 4.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 6)]
    write_run(root, "a", "done", N=1e8, D=5e8, C=3e17, eval_loss=3.5, budget=3e17, curve=curve)
    write_run(root, "b", "done", N=2e8, D=2.5e8, C=3e17, eval_loss=None, train_loss=3.6, budget=3e17)
    write_run(root, "c", "failed", reason="loss diverged at step 40")
    write_run(root, "d", "running")
    write_run(root, "e", "done", N=4e8, D=1.25e8, C=3e17, eval_loss=float("nan"), train_loss=3.7, budget=3e17)
    with pytest.warns(FitWarning) as record:
        ds = load_run_store(root, params="non_embedding")
    msgs = " | ".join(str(w.message) for w in record)
    assert "left out 2 of 5 runs that have not finished: c (failed: loss diverged at step 40), d (running)" in msgs
    # a run without a finite eval loss is left out by name; its train loss only when asked for
    assert "left out 2 finished run(s) without a finite eval loss: b (eval_loss nan), e (eval_loss nan); --train-loss-fallback" in msgs
    assert list(ds.points.run) == ["a"]
    with pytest.warns(FitWarning, match="2 runs have no finite eval loss; their final train loss is fitted"):
        both = load_run_store(root, train_loss_fallback=True)
    assert list(both.points.run) == ["a", "b", "e"] and list(both.points.loss) == [3.5, 3.6, 3.7]
    with pytest.warns(FitWarning):
        ds = load_run_store(root, params="non_embedding", train_loss_fallback=True)
    np.testing.assert_allclose(ds.points.N, [0.9e8, 1.8e8, 3.6e8])  # non-embedding
    assert "non-embedding" in ds.conventions["N"] and "6N" in ds.conventions["C"]
    np.testing.assert_allclose(ds.points.N_alt, [1e8, 2e8, 4e8])  # the other count: total
    assert ds.cost_source == "recorded" and ds.alt_N_name == "total parameters"
    assert ds.source == {"kind": "runs", "path": str(root), "params": "non_embedding", "runs": 5,
                         "environments": {"not recorded (summaries before lib/train/environment.py)": 3}}


def test_run_store_without_finished_runs_or_runs_at_all_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="no runs under"):
        load_run_store(tmp_path / "empty")
    write_run(tmp_path / "r", "x", "failed", reason="oom")
    with pytest.warns(FitWarning), pytest.raises(AnalysisError, match="none of the runs .* has finished"):
        load_run_store(tmp_path / "r")
    with pytest.raises(AnalysisError, match="--params must be one of total, non_embedding, active"):
        load_run_store(tmp_path / "r", params="embedding")
