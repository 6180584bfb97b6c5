"""A learning-rate rule tuned at several horizons: Tune(budgets=...) plans one group per (size,
horizon), analysis.lr_rule fits lr*(N, D) = c N^-gamma D^-delta, lib.sweeps.rules evaluates it with
each run's D and names a D outside the tuned range; a single-horizon lr_rule.json still loads."""

import json
import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis import lr_rule
from analysis.lr_rule import fit_lr_rule
from lib.config import ConfigError, DataConfig, OptimizerConfig, RunConfig
from lib.store.runstore import write_json_atomic
from lib.sweeps import rules
from lib.sweeps.plans import IsoFlop, Tune, size_tag, tag_tokens

SIZES = [dict(d_model=d, n_layers=L, n_heads=h) for d, L, h in [(16, 1, 2), (32, 2, 2), (48, 2, 4)]]
BASE = RunConfig(data=DataConfig(source="synthetic", seq_len=32, global_batch=32), optimizer=OptimizerConfig(lr=1e-2))


def _optima_points(c=2.0, gamma=0.3, delta=0.15, ns=(2e3, 8e3, 3e4, 1e5), ds=(1e5, 1e6, 1e7), jitter=0.1, seed=1):
    """Tuning grids whose loss is exactly quadratic in log lr about a known lr* (so each group's
    parabola vertex is lr* itself), lr* = c N^-gamma D^-delta x a seeded jitter; and the lr*s."""
    rng = np.random.default_rng(seed)
    points, optima = [], []
    for n in ns:
        for d in ds:
            opt = c * n**-gamma * d**-delta * math.exp(jitter * rng.normal())
            optima.append((n, d, opt))
            grid = [opt * 2.0 ** (k + rng.uniform(-0.4, 0.4)) for k in range(-2, 3)]  # the vertex falls between grid points
            tag = f"d{int(n)}-L1@D{int(d)}"
            points += [{"tag": tag, "N": int(n), "lr": lr, "loss": 1.5 + 0.2 * math.log(lr / opt) ** 2} for lr in grid]
    return points, optima


def test_rule_in_n_and_d_matches_an_independent_least_squares():
    points, optima = _optima_points()
    record = fit_lr_rule(points, n_resamples=200)
    n, d, lr = (np.array(v, float) for v in zip(*optima))
    # independent: numpy lstsq of log lr* on [1, log N, log D]
    (k, sn, sd), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(n), np.log(n), np.log(d)]), np.log(lr), rcond=None)
    assert record["c"] == pytest.approx(math.exp(k), rel=1e-6)
    assert record["gamma"] == pytest.approx(-sn, abs=1e-6) and record["delta"] == pytest.approx(-sd, abs=1e-6)
    assert abs(record["gamma"] - 0.3) < 0.1 and abs(record["delta"] - 0.15) < 0.1  # near the generating law
    lo, hi = record["ci"]["delta"]
    assert lo < record["delta"] < hi
    assert record["D_range"] == [1e5, 1e7] and record["sizes_used"] == 12
    assert all(s["D"] in (1e5, 1e6, 1e7) and s["method"] == "parabola" for s in record["sizes"])


def test_rule_in_n_and_d_needs_two_horizons_and_no_mixed_tags():
    points, _ = _optima_points(ds=(1e6,))
    with pytest.raises(AnalysisError, match="2 or more horizons"):
        fit_lr_rule(points, n_resamples=50)
    points, _ = _optima_points()
    plain = [{**p, "tag": p["tag"].split("@")[0] + "x"} for p in points if p["tag"].endswith("@D100000")]
    with pytest.raises(AnalysisError, match="mix one horizon and several"):
        fit_lr_rule(points + plain, n_resamples=50)


def test_tune_at_several_budgets_plans_one_group_per_size_and_horizon(tmp_path):
    tune = Tune(SIZES, [5e-3, 1e-2, 2e-2], base=BASE, steps=0, budgets=(1e10, 1e11))
    plan = tune.plan()
    assert len(plan.runs) == 3 * 2 * 3
    groups = {}
    for r in plan.runs:
        groups.setdefault(size_tag(r.cfg), []).append(r)
    assert len(groups) == 6
    for tag, runs in groups.items():
        assert {r.tokens for r in runs} == {tag_tokens(tag)} == {lr_rule.tag_tokens(tag)}  # the tag names the group's own D
        assert len({r.params for r in runs}) == 1 and sorted(r.cfg.optimizer.lr for r in runs) == [5e-3, 1e-2, 2e-2]
    for tag in groups:  # each size at both horizons, the longer spending ~10x the FLOPs
        if tag_tokens(tag) < 1e6 and any(t.startswith(tag.split("@")[0]) and tag_tokens(t) > tag_tokens(tag) for t in groups):
            longer = max(tag_tokens(t) for t in groups if t.split("@")[0] == tag.split("@")[0])
            assert longer / tag_tokens(tag) == pytest.approx(10, rel=0.02)
    # a single-horizon Tune keeps its plain size tags (and so its run names and ids)
    assert all("@" not in size_tag(r.cfg) for r in Tune(SIZES, [5e-3, 1e-2, 2e-2], base=BASE, steps=50).plan().runs)
    # an IsoFlop run is grouped by its size alone
    iso = IsoFlop([1e10], SIZES, base=BASE).plan()
    assert all(size_tag(r.cfg) == f"d{r.cfg.model.d_model}-L{r.cfg.model.n_layers}" for r in iso.runs)
    with pytest.raises(ConfigError, match="two or more distinct horizons"):
        Tune(SIZES, [5e-3, 1e-2, 2e-2], base=BASE, steps=0, budgets=(1e10,))
    with pytest.raises(ConfigError, match="exactly one of"):
        Tune(SIZES, [5e-3, 1e-2, 2e-2], base=BASE, steps=100, budgets=(1e10, 1e11))


def test_rule_in_n_and_d_sets_each_runs_lr_from_its_d_and_warns_outside_the_range(tmp_path):
    points, _ = _optima_points()
    record = fit_lr_rule(points, n_resamples=50, meta={"batch": 32})
    write_json_atomic(rules.lr_rule_path(tmp_path), record)
    rule = rules.read_lr_rule(tmp_path)
    iso = IsoFlop([1e9, 1e13], SIZES, base=BASE, lr_rule="tuned", tpp_range=(1e-3, 1e6), min_steps=1, min_batch=32).plan(root=tmp_path)
    for r in iso.runs:
        want = record["c"] * r.params ** -record["gamma"] * r.tokens ** -record["delta"]  # D: the run's own tokens
        assert r.cfg.optimizer.lr == pytest.approx(want, rel=1e-9)
        assert rule(r.cfg) == pytest.approx(want, rel=1e-9)
    d_lo, d_hi = record["D_range"]
    outside = [r for r in iso.runs if not d_lo / rules.EXTRAPOLATION_FACTOR <= r.tokens <= d_hi * rules.EXTRAPOLATION_FACTOR]
    warned = [n for n in iso.notes if "D 1e+05..1e+07 tokens" in n]
    assert outside and len(warned) == 1 and f"{len(outside)} of {len(iso.runs)} points" in warned[0]
    inside = IsoFlop([1e11], SIZES[:1], base=BASE, lr_rule="tuned", min_steps=1, min_batch=32).plan(root=tmp_path)
    assert d_lo <= inside.runs[0].tokens <= d_hi and not any("tokens" in n and "warning" in n for n in inside.notes)


def test_a_single_horizon_rule_file_still_loads_as_a_rule_in_n(tmp_path):
    old = {"c": 33.4, "gamma": 0.665, "batch": 32, "seq_len": 32, "N_range": [4.0e3, 8.6e4], "steps": 200}
    path = rules.lr_rule_path(tmp_path)
    write_json_atomic(path, old)
    rule = rules.read_lr_rule(tmp_path)
    assert rule.delta == 0 and rule.d_range == ()
    cfg = IsoFlop([1e11], SIZES[:1], base=BASE, min_batch=32).plan().runs[0].cfg
    assert rule(cfg) == pytest.approx(33.4 * rules.n_params(cfg) ** -0.665, rel=1e-12)
    assert json.loads(open(path).read()) == old
