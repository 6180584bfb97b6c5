"""The workflow's typed options travel to worker processes as JSON (experiments/workflow/worker.py):
what a worker receives is the parent's options, equal field by field, never command-line strings."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest

from experiments.workflow.options import TUNE_GRID, SweepOptions


def test_sweep_options_survive_the_trip_to_a_worker():
    options = SweepOptions(overrides={"model.d_model": 64, "optimizer.lr": 0.003, "data.source": "synthetic"}, retries=5,
                           worker=(1, 4), executor="local", progress="off", compile_cache="off", run_logs=True, spec="quickstart",
                           grid=TUNE_GRID, ray_address="auto", ray_resources={"CPU": 2.0, "GPU": 1.0}, pack="3")
    back = SweepOptions.from_json(options.to_json())
    assert back == options and isinstance(back.worker, tuple)
    plain = json.loads(options.to_json())  # plain JSON of the fields: nothing pickled, nothing parsed from argv
    assert set(plain) == {f.name for f in dataclasses.fields(SweepOptions)} and plain["worker"] == [1, 4] and plain["grid"] == "tune"


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SweepOptions().retries = 3


def test_each_worker_process_gets_its_share_as_json(tmp_path, monkeypatch):
    """The processes executor starts `python -m experiments.workflow.worker JOB`: JOB holds the root and
    the sweep's options with this worker's share, the experiment's absolute path and the grid to plan."""
    from experiments.workflow import sweep

    exp = tmp_path / "exp.py"
    exp.write_text("")
    started = {}
    monkeypatch.setattr("lib.sweeps.executors.run_processes", lambda share, root, commands, logs, progress: started.update(commands=commands, logs=logs))
    options = SweepOptions(overrides={"model.d_model": 32}, retries=1, worker=(1, 2), executor="processes", spec=os.path.relpath(exp),
                           grid=TUNE_GRID, run_logs=True, pack="2")
    share = type("Share", (), {"name": "s"})()
    sweep._run_worker_processes(share, str(tmp_path / "root"), options, [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}], None)
    shares = []
    for (argv, env), log in zip(started["commands"], started["logs"]):
        assert argv[:3] == [sys.executable, "-m", "experiments.workflow.worker"] and len(argv) == 4
        job = json.loads(argv[3])
        got = SweepOptions.from_json(json.dumps(job["options"]))
        assert job["root"] == str(tmp_path / "root") and got.spec == str(exp) and got.grid == TUNE_GRID
        assert (got.overrides, got.retries, got.run_logs, got.pack, got.executor, got.progress) == ({"model.d_model": 32}, 1, True, "2", "local", "off")
        shares.append(got.worker)
        assert log.endswith(f"s-worker{got.worker[0]}of{got.worker[1]}.log")
    assert shares == [(1, 4), (3, 4)]  # host 1 of 2, two workers each: shares 1 and 3 of 4
