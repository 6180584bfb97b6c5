"""analysis/lr_grid.py: a point's loss at its best lr from its lr-grid runs, checked against closed
forms and numpy's own least-squares parabola."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.lr_grid import at_factor, best_lr, edge_extensions, select_best


def _bowl(lr, lr_star=0.02, floor=1.5, k=0.3):
    """A loss exactly quadratic in log lr."""
    return floor + k * np.log(np.asarray(lr) / lr_star) ** 2


def test_an_exact_parabola_in_log_lr_gives_its_vertex():
    lrs = 0.02 * np.array([0.25, 0.5, 1.0, 2.0]) * 1.3  # the optimum between grid points
    best = best_lr(lrs, _bowl(lrs))
    assert best["lr"] == pytest.approx(0.02, rel=1e-9) and best["loss"] == pytest.approx(1.5, abs=1e-12)
    assert best["edge"] is None and best["runs"] == 4


def test_the_vertex_equals_numpys_parabola_through_the_best_and_its_neighbours():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lrs = np.exp(np.sort(rng.uniform(-6, -2, 5)))
        losses = rng.uniform(2.0, 3.0, 5)
        i = int(np.argmin(losses))
        best = best_lr(lrs, losses)
        if i in (0, 4):
            assert best["edge"] == ("low" if i == 0 else "high") and best["loss"] == losses[i] and best["lr"] == lrs[i]
            continue
        c2, c1, c0 = np.polyfit(np.log(lrs[i - 1 : i + 2]), losses[i - 1 : i + 2], 2)
        x = -c1 / (2 * c2)
        assert best["lr"] == pytest.approx(math.exp(x), rel=1e-9)
        assert best["loss"] == pytest.approx(c0 + c1 * x + c2 * x * x, rel=1e-9)
        assert best["loss"] <= losses[i] and lrs[i - 1] <= best["lr"] <= lrs[i + 1]


def test_edges_and_diverged_runs():
    assert best_lr([1e-3, 2e-3, 4e-3], [2.0, 2.1, 2.2])["edge"] == "low"
    assert best_lr([1e-3, 2e-3, 4e-3], [2.2, 2.1, 2.0])["edge"] == "high"
    assert best_lr([1e-3, 2e-3, 4e-3], [2.2, 2.1, float("nan")]) == {"lr": 2e-3, "loss": 2.1, "edge": None, "runs": 3}
    assert best_lr([1e-3, 2e-3], [float("nan"), float("inf")]) is None
    assert best_lr([1e-3], [2.0])["edge"] is None  # a point without a grid
    with pytest.raises(ValueError, match="distinct"):
        best_lr([1e-3, 1e-3], [2.0, 2.1])


def _frame():
    """Two budgets x two sizes, each at lr x 0.5, 1, 2 of its centre; one point's optimum is past the high edge."""
    rows = []
    for budget, N, D, centre, lr_star in [(1e11, 4e3, 4e6, 0.1, 0.1), (1e11, 8e3, 2e6, 0.05, 0.06),
                                          (3e11, 4e3, 1.2e7, 0.1, 0.3), (3e11, 8e3, 6e6, 0.05, 0.04)]:
        for f in (0.5, 1.0, 2.0):
            lr = centre * f
            rows.append({"sweep": "iso", "budget": budget, "N": N, "D": D, "lr": lr, "lr_factor": f,
                         "loss": float(_bowl(lr, lr_star, floor=3 - 0.1 * math.log10(budget))),
                         "run": f"iso-{budget:g}-{N:g}-x{f}", "point": f"iso-{budget:g}-{N:g}"})
    return pd.DataFrame(rows)


def test_select_best_gives_one_row_per_point_at_its_best_lr_and_names_the_edge():
    frame = _frame()
    best, choices = select_best(frame)
    assert len(best) == 4 and len(choices) == 4
    by_point = best.set_index("point")
    assert by_point.loc["iso-1e+11-8000", "lr"] == pytest.approx(0.06, rel=1e-9)
    assert by_point.loc["iso-1e+11-8000", "loss"] == pytest.approx(3 - 1.1, abs=1e-9)
    edge = by_point.loc["iso-3e+11-4000"]
    assert edge["lr"] == pytest.approx(0.2) and edge["loss"] == pytest.approx(float(_bowl(0.2, 0.3, 3 - 0.1 * math.log10(3e11))))
    assert [c["edge"] for c in choices if c["edge"]] == ["high"]
    assert edge_extensions(frame) == {"iso-3e+11-4000": pytest.approx(4.0)}
    x1 = at_factor(frame, 1.0)
    assert len(x1) == 4 and set(x1["lr_factor"]) == {1.0}
    with pytest.raises(ValueError, match="trained twice"):
        select_best(pd.concat([frame, frame.iloc[:1]]))
