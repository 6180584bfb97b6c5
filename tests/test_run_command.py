"""`scaling run` end to end on a tiny IsoFLOP sweep: sweep -> fit -> figures -> console summary."""

import json
import re
import textwrap

import pytest

EXPERIMENT = textwrap.dedent(
    """
    from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
    from lib.sweeps.plans import IsoFlop, Schedule

    def sweep():
        base = RunConfig(
            data=DataConfig(seq_len=16, global_batch=16),
            optimizer=OptimizerConfig(lr=1e-2),
            train=TrainConfig(eval_tokens=512, keep_checkpoints=1),
        )
        sizes = [dict(d_model=d, n_layers=1, n_heads=2) for d in (8, 12, 16, 24)]
        return IsoFlop([4e8, 1.2e9], sizes, base=base, name="mini", min_steps=30,
                       schedule=Schedule(warmup_frac=0.05, log_points=5, eval_points=1, checkpoints=1))
    """
)


@pytest.mark.timeout(600)
def test_scaling_run_trains_fits_plots_and_summarises(mini_run):
    _, root, proc = mini_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    planned = int(re.search(r"sweep mini: (\d+) runs into", proc.stdout).group(1))
    assert planned >= 6 and f"sweep mini: {planned} trained, 0 already done, 0 failed" in proc.stdout
    # The console summary: the fitted law with intervals and the frontier one budget up (1.2e9^2/4e8).
    assert re.search(r"approach3 at C = 3\.6e\+09 \(extrapolation x(2\.9\d|3)\): N_opt = .* loss = .*prediction interval", proc.stdout)
    assert proc.stdout.index("data: N ") < proc.stdout.index("approach3 (")  # the data range comes first
    record = json.loads((root / "fit" / "fit.json").read_text())
    params = record["fits"]["approach3"]["params"]
    assert set(params) == {"E", "A", "B", "alpha", "beta"}
    assert all(len(p["ci"]) == 2 and p["ci"][0] <= p["value"] <= p["ci"][1] for p in params.values())
    # Approach 2 is fitted through both budgets' interior minima, or skipped naming each budget it
    # refused and why; either way the IsoFLOP figure shows both budgets.
    if "approach2" in record["fits"]:
        budgets = record["fits"]["approach2"]["budgets"]
        assert [b["accepted"] for b in budgets] == [True, True]
        assert all(b["N_range"][0] < b["N_opt"] < b["N_range"][1] for b in budgets)
    else:
        assert re.search(r"Refused: C=(4e\+08|1\.2e\+09): \S", record["skipped"]["approach2"]), record["skipped"]
    assert "isoflop.png" in record["figures"]
    assert not (root / "fit" / "check.json").exists()  # --no-verify skipped the check
    figures = record["figures"]
    assert figures and all((root / "fit" / f).stat().st_size > 1000 for f in figures)
    assert any(f.endswith(".png") for f in figures) and any(f.endswith(".svg") for f in figures)
    report = (root / "fit" / "report.md").read_text()
    assert report.count("|") > 10 and re.search(r"extrapolation x(2\.9\d|3)\b", report)  # the table reaches the next budget
