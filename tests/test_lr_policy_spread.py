"""benchmarks/lr_policy_spread.py: each point's lr curve and the rule its vertices ask for."""

import numpy as np
import pandas as pd

from benchmarks.lr_policy_spread import lr_curves, recentred_rule, vertex


def _runs(factors_by_point, c=50.0, gamma=0.4, delta=0.3, rule=(10.0, 0.2, 0.1)):
    """Runs whose loss is exactly 1 + 0.1 (log lr - log lr*)^2 with lr* = c N^-gamma D^-delta, trained
    at a mis-centred rule's lr x each factor."""
    rows = []
    for i, (N, D, factors) in enumerate(factors_by_point):
        best = c * N**-gamma * D**-delta
        centre = rule[0] * N ** -rule[1] * D ** -rule[2]
        for f in factors:
            lr = centre * f
            rows.append({"sweep": "s", "budget": 6 * N * D, "N": N, "D": D, "lr": lr, "lr_factor": f,
                         "loss": 1.0 + 0.1 * np.log(lr / best) ** 2, "run": f"p{i}-x{f:g}"})
    return pd.DataFrame(rows)


def test_the_vertices_recover_the_rule_that_made_the_curves():
    rng = np.random.default_rng(0)
    # the rule that centred the grids has D^-0.2 where the curves' best has D^-0.3: 2-5x too high
    points = [(float(N), float(D), (0.125, 0.25, 0.5, 1.0, 2.0)) for N, D in zip(rng.uniform(1e3, 1e5, 12), rng.uniform(1e5, 1e7, 12))]
    curves = lr_curves(_runs(points, rule=(50.0, 0.4, 0.2)))
    assert len(curves) == 12
    rule, centre = recentred_rule(curves)
    # the curves are exact parabolas whose vertices lie inside the tried lrs: the rule comes back
    assert abs(rule["gamma"] - 0.4) < 1e-6 and abs(rule["delta"] - 0.3) < 1e-6 and abs(rule["c"] / 50.0 - 1) < 1e-5
    best = [np.log(50.0 * float(c["row"]["N"]) ** -0.4 * float(c["row"]["D"]) ** -0.3) for c in curves]
    np.testing.assert_allclose(centre, best, atol=1e-6)


def test_a_vertex_outside_the_tried_lrs_is_clamped_to_them():
    # the best lr is far above every tried lr: the curve is read no further than the highest one
    curves = lr_curves(_runs([(1e3, 1e5, (0.5, 1.0, 2.0))], c=1e6))
    c = curves[0]
    assert vertex(c) == c["x_hi"]
    assert c["log_rule"] == np.log(10.0 * 1e3**-0.2 * 1e5**-0.1)
