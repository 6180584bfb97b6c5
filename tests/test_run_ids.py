"""Run ids are folder names of finished runs: a refactor that changes one silently retrains (or
orphans) every recorded run. This pins the run ids of every experiment's plan — its sweep and, for a
tuned lr rule, its tune grid — to tests/fixtures/run_ids.json.

The fixture is a golden record, written once by `python tests/test_run_ids.py --write` from a commit
whose ids are the reference; rewrite it only when a change is meant to give runs new ids, and say so.
A tuned rule is planned from a fixed lr_rule.json, so the pin covers the lr each run gets too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_ids.json"
# A tuned rule as `scaling tune` writes it (lib/sweeps/rules.py reads c, gamma, batch, N_range).
TUNED_RULE = {"c": 33.4, "gamma": 0.665, "batch": 32, "seq_len": 32, "N_range": [4.0e3, 8.6e4], "steps": 200}


def experiment_names() -> list[str]:
    from experiments.cli import EXPERIMENTS_DIR

    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py")
                  if not p.stem.startswith("_") and not p.stem.endswith("_cmd") and p.stem != "cli")


def planned_run_ids(root: Path) -> dict[str, list[str]]:
    """{experiment: run ids of its plan, EXP:tune: its tune grid's} for every experiment file."""
    from experiments.sweep_cmd import load_sweep
    from experiments.tune_cmd import load_tune, wants_tuning

    rule = root / "tune" / "lr_rule.json"
    rule.parent.mkdir(parents=True, exist_ok=True)
    rule.write_text(json.dumps(TUNED_RULE))
    ids: dict[str, list[str]] = {}
    for name in experiment_names():
        sweep = load_sweep(name)
        ids[name] = [r.run_id for r in sweep.plan({}, root=str(root)).runs]
        if wants_tuning(sweep):
            ids[f"{name}:tune"] = [r.run_id for r in load_tune(name).plan({}, root=str(root)).runs]
    return ids


def test_every_experiments_run_ids_are_unchanged(tmp_path):
    pinned = json.loads(FIXTURE.read_text())
    now = planned_run_ids(tmp_path)
    assert sorted(now) == sorted(pinned), "an experiment was added or removed: rewrite the fixture (see the docstring)"
    for name, ids in pinned.items():
        assert now[name] == ids, f"{name}: run ids changed (first difference: {next(((a, b) for a, b in zip(ids, now[name]) if a != b), None)})"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        FIXTURE.write_text(json.dumps(planned_run_ids(Path(d)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
