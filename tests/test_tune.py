"""The tune stage and hyperparameter rules: lr*(N) fitting, edges, sweeps that follow a rule, the
IsoFLOP batch rule, and `scaling tune` end to end (tiny grid; a relaunch is a no-op)."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.lr_rule import edges, fit_lr_rule, report_lines, size_optimum
from lib import flops as flops_lib
from lib.config import ConfigError, DataConfig, OptimizerConfig, RunConfig
from lib.sweeps import rules
from lib.sweeps.plans import Grid, IsoFlop, TokensPerParam, Tune

SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in [(16, 1, 2), (32, 2, 2), (64, 2, 4), (96, 3, 6)]]
BASE = RunConfig(data=DataConfig(seq_len=32, global_batch=32), optimizer=OptimizerConfig(lr=1e-2))


def _points(truth_c=0.8, truth_gamma=0.3, ns=(1e4, 3e4, 1e5, 3e5, 1e6), noise=0.0, seed=0, skew=0.0):
    rng = np.random.default_rng(seed)
    grid = [1e-3 * 2**k for k in range(10)]
    out = []
    for i, n in enumerate(ns):
        opt = truth_c * n**-truth_gamma
        for lr in grid:
            x = math.log(lr / opt)
            out.append({"tag": f"s{i}", "N": int(n), "lr": lr, "loss": 2.0 + 0.1 * x * x + skew * x**3 + noise * rng.normal()})
    return out


# ---------------------------------------------------------------- fitting ----------------------
def test_lr_rule_recovers_a_known_power_law():
    record = fit_lr_rule(_points())
    assert record["gamma"] == pytest.approx(0.3, abs=1e-6) and record["c"] == pytest.approx(0.8, rel=1e-5)
    for s in record["sizes"]:
        assert s["method"] == "parabola" and s["edge"] is None
        assert s["lr_opt"] == pytest.approx(0.8 * s["N"] ** -0.3, rel=1e-6)  # the vertex, between grid points
    # Noisy, skewed losses: still close, and the bootstrap interval holds the truth.
    noisy = fit_lr_rule(_points(noise=0.003, skew=0.01, seed=1))
    assert noisy["gamma"] == pytest.approx(0.3, abs=0.05)
    lo, hi = noisy["ci"]["gamma"]
    assert lo <= 0.3 <= hi and hi - lo < 0.3
    assert noisy == fit_lr_rule(_points(noise=0.003, skew=0.01, seed=1))  # seeded: the same record


def test_a_best_lr_on_an_edge_is_reported_and_not_fitted():
    pts = [p for p in _points() if not (p["tag"] == "s4" and p["lr"] < 0.05)]  # s4's optimum (~0.0127) left of its grid
    pts += [p for p in _points(ns=(2e4,)) if p["lr"] < 0.04]  # s0 again at another N: optimum right of its (cut) grid
    pts = [dict(p, tag="cut") if p["N"] == 20000 else p for p in pts]
    record = fit_lr_rule(pts)
    assert edges(record) == {"s4": "low", "cut": "high"}
    assert record["sizes_used"] == 4 and record["gamma"] == pytest.approx(0.3, abs=1e-6)
    assert any("s4" in w and "lowest" in w for w in record["warnings"])
    assert any("cut" in w and "highest" in w for w in record["warnings"])
    assert "not fitted" in "\n".join(report_lines(record))
    # A diverged run beyond the best brackets it: no edge, the grid point is the estimate.
    opt = size_optimum([0.01, 0.02, 0.04], [3.0, 2.5, None])
    assert opt["edge"] is None and opt["method"] == "grid" and opt["lr_opt"] == 0.02
    # Too few sizes inside their grids: an error naming the edges, not a silent fit.
    with pytest.raises(AnalysisError, match="at least 2 sizes"):
        fit_lr_rule([p for p in pts if p["tag"] in ("s4", "cut", "s0")])


def test_lr_fit_input_errors():
    with pytest.raises(AnalysisError, match="at least 3"):
        size_optimum([0.01, 0.02], [1.0, 2.0])
    with pytest.raises(AnalysisError, match="positive"):
        size_optimum([0.0, 0.01, 0.02], [1.0, 0.5, 2.0])
    assert size_optimum([0.01, 0.02, 0.04], [None, None, None])["edge"] == "all diverged"


# ---------------------------------------------------------------- sweeps with a rule ------------
def _rule(cfg):
    return 0.5 * flops_lib.param_counts(cfg.model)["total"] ** -0.25


def test_sweeps_give_each_run_the_rules_lr_and_a_new_hash():
    iso = IsoFlop([1e11, 3e11], SIZES, base=BASE, tpp_range=(1, 1000))
    for sweep in (iso, TokensPerParam(SIZES, [10, 20], base=BASE), Grid(BASE, {"data.seed": [0, 1]})):
        plain, ruled = sweep.plan(), dataclasses.replace(sweep, lr_rule=_rule).plan()
        assert [r.cfg.name for r in plain.runs] == [r.cfg.name for r in ruled.runs]
        for a, b in zip(plain.runs, ruled.runs):
            scale = math.sqrt(b.cfg.data.global_batch / 32)  # an IsoFlop budget may halve the batch: sqrt rule
            assert b.cfg.optimizer.lr == pytest.approx(_rule(b.cfg) * scale) and a.cfg.optimizer.lr == pytest.approx(1e-2 * scale)
            assert a.run_id != b.run_id  # the lr is part of the content hash
        assert any(n.startswith("learning rate: lr = _rule") for n in ruled.notes)
        lines = ruled.lr_lines()
        assert len(lines) == len(ruled.runs) and all(f"lr {r.cfg.optimizer.lr:.3g}" in line for r, line in zip(ruled.runs, lines))
    forced = dataclasses.replace(iso, lr_rule=_rule).plan({"optimizer.lr": 3e-3})
    assert {r.cfg.optimizer.lr for r in forced.runs} == {3e-3} and any("--set optimizer.lr overrides" in n for n in forced.notes)
    with pytest.raises(ConfigError, match="positive finite"):
        dataclasses.replace(iso, lr_rule=lambda cfg: -1.0).plan()
    with pytest.raises(ConfigError, match="drop one"):
        Grid(BASE, {"optimizer.lr": [1e-3, 1e-2]}, lr_rule=_rule)


def test_the_tuned_rule_is_read_from_the_root(tmp_path):
    sweep = TokensPerParam(SIZES, [20], base=BASE, lr_rule="tuned")
    with pytest.raises(ConfigError, match="scaling tune"):
        sweep.plan(root=tmp_path)
    os.makedirs(tmp_path / "tune")
    (tmp_path / "tune" / "lr_rule.json").write_text(json.dumps({"c": 0.5, "gamma": 0.25, "batch": 16, "N_range": [1e4, 1e5]}))
    plan = sweep.plan(root=tmp_path)
    for r in plan.runs:  # tuned at batch 16, run at 32: x sqrt(2), stated in the notes
        assert r.cfg.optimizer.lr == pytest.approx(0.5 * r.params**-0.25 * math.sqrt(2))
    assert any("tune/lr_rule.json" in n for n in plan.notes) and any("sqrt(B / 16)" in n for n in plan.notes)
    none = TokensPerParam(SIZES, [20], base=BASE, lr_rule="tuned", lr_batch_scaling="none").plan(root=tmp_path)
    assert [r.cfg.optimizer.lr for r in none.runs] == pytest.approx([0.5 * r.params**-0.25 for r in none.runs])
    with pytest.raises(ConfigError, match="root"):
        sweep.plan()


def test_isoflop_batch_is_one_per_budget_unless_asked_otherwise():
    base = RunConfig(data=DataConfig(seq_len=32, global_batch=64), optimizer=OptimizerConfig(lr=1e-2))
    sizes = [dict(d_model=d, n_layers=2, n_heads=4) for d in (16, 32, 48, 64, 96, 128)]
    per_budget = IsoFlop([3e10, 1e11, 3e11], sizes, base=base, tpp_range=(1, 1e4), min_steps=200, min_batch=4).plan()
    batches = {}
    for r in per_budget.runs:
        batches.setdefault(r.cfg.budget, set()).add(r.cfg.data.global_batch)
        assert r.cfg.train.steps >= 200 or r.cfg.data.global_batch == 4
        assert r.cfg.optimizer.lr == pytest.approx(1e-2 * math.sqrt(r.cfg.data.global_batch / 64))  # sqrt rule off the base batch
    assert all(len(b) == 1 for b in batches.values()) and len({min(b) for b in batches.values()}) > 1, batches
    assert any(n.startswith("batch: one per budget") for n in per_budget.notes)
    per_run = IsoFlop([3e10], sizes, base=base, tpp_range=(1, 1e4), min_steps=200, min_batch=4, batch_rule="run").plan()
    assert len({r.cfg.data.global_batch for r in per_run.runs}) > 1  # the old rule: batch varies with N in a budget...
    for r in per_run.runs:  # ...and the lr follows it
        assert r.cfg.optimizer.lr == pytest.approx(1e-2 * math.sqrt(r.cfg.data.global_batch / 64))
    ruled = IsoFlop([3e10, 3e11], sizes, base=base, tpp_range=(1, 1e4), batch_rule=lambda C: 16 if C < 1e11 else 32).plan()
    assert {(r.cfg.budget, r.cfg.data.global_batch) for r in ruled.runs} == {(3e10, 16), (3e11, 32)}
    fixed = IsoFlop([3e10], sizes, base=base, tpp_range=(1, 1e4), min_steps=200).plan({"data.global_batch": 64})
    assert {r.cfg.data.global_batch for r in fixed.runs} == {64} and {r.cfg.optimizer.lr for r in fixed.runs} == {1e-2}


# ---------------------------------------------------------------- the Tune sweep ----------------
def test_tune_plans_a_grid_per_size_and_rejects_bad_grids(tmp_path):
    tune = Tune(SIZES[:2], [3e-3, 1e-2, 3e-2], base=BASE, steps=50)
    plan = tune.plan()
    assert len(plan.runs) == 6 and {r.cfg.train.steps for r in plan.runs} == {50}
    assert {r.cfg.name for r in plan.runs} >= {"tune-d16-L1-lr0.003", "tune-d32-L2-lr0.03"}
    assert len({r.run_id for r in plan.runs}) == 6
    (tmp_path / rules.GRID_EXTENSIONS_FILE).write_text(json.dumps({"d16-L1": [0.09]}))
    extended = tune.plan(root=tmp_path)  # the stage's extensions, as every process plans them
    assert len(extended.runs) == 7 and any(r.cfg.name == "tune-d16-L1-lr0.09" for r in extended.runs)
    assert {r.run_id for r in plan.runs} < {r.run_id for r in extended.runs}
    for bad, match in [(dict(lrs=[1e-3, 1e-2]), "at least 3"), (dict(lrs=[1e-3, 1e-3, 1e-2]), "at least 3"),
                       (dict(lrs=[0.0, 1e-3, 1e-2]), "positive"), (dict(lrs=[-1e-3, 1e-3, 1e-2]), "positive"),
                       (dict(lrs=[1e-3, 1e-2, 1e-1], sizes=[]), "Tune.sizes"), (dict(lrs=[1e-3, 1e-2, 1e-1], tokens_per_param=5.0), "exactly one"),
                       (dict(lrs=[1e-3, 1e-2, 1e-1], steps=0), "exactly one")]:
        kw = {"sizes": SIZES, "base": BASE, **bad}
        with pytest.raises(ConfigError, match=match):
            Tune(kw.pop("sizes"), kw.pop("lrs"), **kw)
    tpp = Tune(SIZES[:2], [1e-3, 1e-2, 1e-1], base=BASE, steps=0, tokens_per_param=10).plan()
    for r in tpp.runs:
        assert abs(r.tokens / r.params / 10 - 1) < 0.1
    iso = Tune(SIZES[:2], [1e-3, 1e-2, 1e-1], base=BASE, steps=0, budget=1e11).plan()  # each size's IsoFLOP horizon
    assert len({r.cfg.train.steps for r in iso.runs}) == 2 and all(abs(r.flops / 1e11 - 1) < 0.02 for r in iso.runs)


MINI = """
from lib.config import DataConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Schedule, Tune

BASE = RunConfig(data=DataConfig(seq_len=16, global_batch=8), optimizer=OptimizerConfig(lr=1e-2),
                 train=TrainConfig(eval_tokens=128, keep_checkpoints=1))
SIZES = [dict(d_model=d, n_layers=1, n_heads=2) for d in (8, 16)]

def tune():
    return Tune(SIZES, [1e-3, 3e-2, 1.0], base=BASE, steps=20)

def sweep():
    return IsoFlop([4e8, 1.2e9], SIZES, base=BASE, name="mini", min_steps=30, lr_rule="tuned")
"""


@pytest.mark.timeout(300)
def test_scaling_run_tunes_first_and_a_relaunch_is_a_no_op(tmp_path, capsys):
    from experiments.cli import build_parser
    from experiments.sweep_cmd import load_sweep, options_from_args
    from experiments.workflow.options import TuneOptions
    from experiments.workflow.tune import tune_stage

    exp = tmp_path / "mini.py"
    exp.write_text(MINI)
    root = tmp_path / "root"
    args = build_parser().parse_args(["run", str(exp), "--root", str(root), "--progress", "off"])
    options = TuneOptions(sweep=options_from_args(args))
    assert tune_stage(str(root), options) == 0
    out = capsys.readouterr().out
    record = json.loads((root / "tune" / "lr_rule.json").read_text())
    assert record["batch"] == 8 and record["steps"] == 20 and len(record["sizes"]) == 2
    assert (root / "tune" / "lr_rule.png").exists() and "tune: lr*(N) = " in out
    status = {p: os.path.getmtime(p / "status.json") for p in (root / "tune").iterdir() if (p / "status.json").exists()}
    # The grid extensions, recomputed from the runs' losses on disk: while a size's best lr sits on
    # an edge of its grid (at most --extend = 2 times), one lr a grid step past that edge is added.
    losses: dict[str, dict[float, float]] = {}
    for p in status:
        cfg, summary = (json.loads((p / f).read_text()) for f in ("config.json", "summary.json"))
        tag = f"d{cfg['model']['d_model']}-L{cfg['model']['n_layers']}"
        loss = summary.get("eval_loss")
        losses.setdefault(tag, {})[cfg["optimizer"]["lr"]] = loss if loss is not None and math.isfinite(loss) else math.inf
    expected = {}
    for tag, by_lr in losses.items():
        grid = [1e-3, 3e-2, 1.0]
        for _ in range(2):
            best = min(grid, key=lambda lr: by_lr[lr])
            if best not in (grid[0], grid[-1]):
                break
            lr = grid[0] ** 2 / grid[1] if best == grid[0] else grid[-1] ** 2 / grid[-2]
            expected.setdefault(tag, []).append(lr)
            grid = sorted([*grid, lr])
    ext_file = root / "tune" / "grid_extensions.json"
    recorded = json.loads(ext_file.read_text()) if ext_file.exists() else {}
    assert set(recorded) == set(expected) and all(recorded[t] == pytest.approx(expected[t]) for t in expected)
    assert len(status) == 6 + sum(len(v) for v in expected.values())  # each extension trained once
    # The sweep planned now follows the rule; the tune stage of a relaunch does nothing.
    plan = load_sweep(str(exp)).plan(root=root)
    for r in plan.runs:
        assert r.cfg.optimizer.lr == pytest.approx(record["c"] * r.params ** -record["gamma"])
    assert tune_stage(str(root), options) == 0
    assert "exists; skipping the tune stage" in capsys.readouterr().out
    from experiments.workflow.experiment import load_grid, load_tune
    from experiments.workflow.options import TUNE_GRID
    from experiments.workflow.tune import run_tune

    assert run_tune(load_tune(str(exp)), root) == 0 and "nothing to do" in capsys.readouterr().out
    assert {p: os.path.getmtime(p / "status.json") for p in status} == status
    # Worker processes, given grid="tune" in their options, plan exactly the runs on disk (extensions included).
    tune = load_grid(str(exp), TUNE_GRID)
    assert isinstance(tune, Tune) and {r.run_id for r in tune.plan(root=root / "tune").runs} == {p.name for p in status}


def test_the_report_section_is_written_with_the_report_by_its_one_writer(tmp_path, monkeypatch):
    """report.md is written whole, by analysis.report.write_report, with the lr-rule section after the
    fit's own markdown: rewriting it (a refit, the check's redraw) gives one copy, never a splice."""
    from analysis import report as R
    from experiments.workflow.report import REPORT_BEGIN, REPORT_END, _report_section

    record = fit_lr_rule(_points())
    record["figures"] = ["lr_rule.png", "lr_rule.svg"]
    monkeypatch.setattr(R, "markdown", lambda record: "# Fit\n\nbody\n")  # the fit's own part, whatever it holds
    section = _report_section(record, ["sensitivity single_lr: approach3 a = 0.47"], str(tmp_path))
    assert section[0] == REPORT_BEGIN and section[-1] == REPORT_END
    out = tmp_path / "fit"
    out.mkdir()
    for _ in range(2):
        R.write_report(str(out), {}, None, section)
    text = (out / "report.md").read_text()
    assert text == "# Fit\n\nbody\n\n" + "\n".join(section) + "\n"
    assert text.count("## Learning-rate rule") == 1
    assert "![lr rule](../tune/lr_rule.png)" in text and "- sensitivity single_lr: approach3 a = 0.47" in text
    R.write_report(str(out), {}, None)  # without sections: the fit's part alone
    assert (out / "report.md").read_text() == "# Fit\n\nbody\n"
