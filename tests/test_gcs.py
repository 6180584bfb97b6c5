"""Runs, checkpoints and run-store readers on gs:// paths, against a GCS emulator on localhost.

gcsfs (the run store, orbax's folders) and tensorstore (orbax's array data) both talk to the
emulator over HTTP, so the client code that runs against real GCS runs here (see gcs_emulator.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lib.store import runstore
from lib.store import storage
from lib.config import parse_set_args
from lib.store.runstore import RunDir, load_curves, load_runs
from lib.train.loop import train
from gcs_emulator import BUCKET, list_objects, recorded_requests, running_emulator
from test_sweep_support import TRAIN_EVERY, TRAIN_SETS, TRAIN_STEPS, train_cli

GS = f"gs://{BUCKET}"
STEPS, EVERY = TRAIN_STEPS, TRAIN_EVERY
TIMING = {"step_time_s", "tokens_per_s", "flops_per_s", "mfu"}  # differ between any two runs


@pytest.fixture(scope="module")
def emulator():
    with pytest.MonkeyPatch.context() as mp, running_emulator(mp) as env:
        yield env


def _config():
    from experiments.cli import load_experiment

    return load_experiment("tiny").config().with_overrides(parse_set_args(TRAIN_SETS))


def _run_to_the_end(workdir, cache) -> str:
    return _finish(_start(workdir, cache))


def _start(workdir, cache) -> subprocess.Popen:
    """`scaling train` in a fresh process with one CPU device, as a user runs it."""
    cmd, env = train_cli(workdir, cache)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-5000:]
    return out


@pytest.fixture(scope="module")
def gs_run(emulator, compile_cache):
    """The uninterrupted run of `local_reference`, on gs://."""
    _run_to_the_end(f"{GS}/runs/r1", compile_cache)
    return f"{GS}/runs/r1"


@pytest.fixture(scope="module")
def local_reference(reference_train_run):
    """The uninterrupted run on a local folder (tests/conftest.py, shared with test_train) that every
    gs:// run must reproduce bit for bit."""
    return reference_train_run


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _params(checkpoints, step):
    with ocp.CheckpointManager(checkpoints) as mgr:
        return mgr.restore(step, args=ocp.args.StandardRestore())["params"]


# ---- a whole run on gs:// ---------------------------------------------------------------------
def test_a_run_on_gs_writes_its_store_and_checkpoints_there_and_equals_the_local_run(gs_run, local_reference):
    objects = list_objects("runs/r1")
    assert {"config.json", "status.json", "summary.json", "data.json", "metrics.jsonl"} <= set(objects)
    assert not [o for o in objects if o.endswith(".tmp") or o.startswith("metrics/")]  # one upload each; log merged
    committed = sorted(int(o.split("/")[1]) for o in objects if o.startswith("checkpoints/") and o.endswith("/commit_success.txt") and o.count("/") == 2)
    assert committed == [150, 200]  # keep_checkpoints=2 deleted the older ones on GCS too

    run, ref = RunDir(gs_run), RunDir(local_reference)
    assert run.state() == "done" and run.config() == ref.config()
    assert [r["step"] for r in run.metrics()] == list(range(10, STEPS + 1, 10))
    assert _without_timing(run.metrics()) == _without_timing(ref.metrics())
    assert run.summary()["eval_loss"] == ref.summary()["eval_loss"]
    jax.tree.map(np.testing.assert_array_equal, _params(run.checkpoint_dir, STEPS), _params(ref.checkpoint_dir, STEPS))

    assert train(_config(), gs_run, devices=jax.devices()[:1]) == run.summary()  # a relaunch is a no-op


def test_load_runs_and_load_curves_read_a_gs_root_as_a_local_one(gs_run, local_reference):
    storage.write_bytes(f"{GS}/runs/not-a-run/notes.txt", b"no config.json: not listed")
    on_gs, local = load_runs(f"{GS}/runs"), load_runs(local_reference.parent)
    assert list(on_gs["run_id"]) == ["r1"] and on_gs["path"][0] == gs_run
    assert on_gs.drop(columns="path").equals(local.drop(columns="path"))
    assert load_curves(f"{GS}/runs").equals(load_curves(local_reference.parent))
    with pytest.raises(FileNotFoundError, match="no objects under it"):
        load_runs(f"{GS}/no-such-root")


# ---- kill and resume --------------------------------------------------------------------------
def _wait_for_commit(prefix, proc, step, timeout=120):
    """On GCS orbax marks a finished step with commit_success.txt (no folder rename)."""
    marker = f"{GS}/{prefix}/checkpoints/{step}/commit_success.txt"
    t0 = time.time()
    while storage.read_bytes(marker) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_sigkill_after_a_checkpoint_on_gs_then_relaunch_equals_the_uninterrupted_local_run(emulator, local_reference, compile_cache):
    cmd, env = train_cli(f"{GS}/kill/cut", compile_cache)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_commit("kill/cut", proc, EVERY)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    cut = RunDir(f"{GS}/kill/cut")
    assert cut.state() == "running" and cut.summary() is None  # really cut mid-run
    logged = [r["step"] for r in cut.metrics()]
    assert logged == list(range(10, logged[-1] + 1, 10)) and EVERY <= logged[-1] < STEPS
    assert any(o.startswith("metrics/0") for o in list_objects("kill/cut"))  # the live log is chunks
    # A kill mid-save on GCS leaves a step folder without its commit marker: it must be ignored.
    storage.write_bytes(f"{GS}/kill/cut/checkpoints/{STEPS}/_CHECKPOINT_METADATA", b"{}")

    assert "resumed from checkpoint at step" in _run_to_the_end(f"{GS}/kill/cut", compile_cache)
    cut, ref = RunDir(f"{GS}/kill/cut"), RunDir(local_reference)
    assert cut.state() == "done" and cut.status()["attempts"] == 2
    assert _without_timing(cut.metrics()) == _without_timing(ref.metrics())  # no duplicated or lost rows
    assert cut.summary()["eval_loss"] == ref.summary()["eval_loss"]
    jax.tree.map(np.testing.assert_array_equal, _params(cut.checkpoint_dir, STEPS), _params(ref.checkpoint_dir, STEPS))


# ---- the metrics log: same rows on both stores ------------------------------------------------
ROWS = [{"step": s, "train_loss": 5.0 - s / 100, "eval_loss": float("nan") if s == 20 else None} for s in range(10, 110, 10)]


@pytest.fixture(params=["local", "gs"])
def run_path(request, tmp_path):
    if request.param == "gs":
        request.getfixturevalue("emulator")
        return f"{GS}/unit/{request.node.name.replace('[', '-').rstrip(']')}"
    return str(tmp_path / "run")


def test_the_metrics_log_reads_back_the_same_on_both_stores(run_path, monkeypatch):
    monkeypatch.setattr(runstore, "COMPACT_AFTER", 3)
    run = RunDir(run_path)
    for i in range(0, 10, 2):  # five appends of two rows
        run.append_metrics(ROWS[i:i + 2])
    expected = [{**r, "eval_loss": None} for r in ROWS]  # NaN is stored as null
    assert run.metrics() == expected == RunDir(run_path, writer=False).metrics()
    if storage.is_url(run_path):  # merged after the third append; two chunks since
        assert list_objects(run_path.split(BUCKET + "/")[1]) == ["metrics.jsonl", "metrics/00000003.jsonl", "metrics/00000004.jsonl"]
    else:
        assert sorted(os.listdir(run_path)) == ["metrics.jsonl"]

    run.truncate_metrics(last_step=70)  # resume from a checkpoint at step 70
    assert run.metrics() == expected[:7]
    run.append_metrics(ROWS[7:8])
    again = RunDir(run_path)  # a relaunched writer continues after the chunks that exist
    again.append_metrics(ROWS[8:9])
    again.set_state("done")
    assert run.metrics() == expected[:9]
    assert storage.list_dir(f"{run_path}/metrics") == []  # a stopped run's log is metrics.jsonl alone
    assert [json.loads(line)["step"] for line in storage.read_bytes(f"{run_path}/metrics.jsonl").decode().splitlines()] == list(range(10, 100, 10))


def test_a_chunk_left_by_a_kill_between_merge_and_delete_is_read_once(emulator):
    path = f"{GS}/unit/stale"
    storage.write_bytes(f"{path}/metrics.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in ROWS[:4]))
    storage.write_bytes(f"{path}/metrics/00000000.jsonl", json.dumps(ROWS[3]).encode() + b"\n")  # merged, not deleted
    storage.write_bytes(f"{path}/metrics/00000001.jsonl", json.dumps(ROWS[4]).encode() + b"\n")
    assert [r["step"] for r in RunDir(path).metrics()] == [10, 20, 30, 40, 50]


def test_a_reader_sees_what_another_process_wrote_since_its_last_read(emulator):
    path = f"{GS}/unit/two-processes"
    reader, writer = RunDir(path, writer=False), RunDir(path)
    writer.set_state("running")
    writer.append_metrics(ROWS[:1])
    assert reader.state() == "running" and len(reader.metrics()) == 1
    code = (f"import json; from lib.store.runstore import RunDir; r = RunDir({path!r}); "
            f"r.append_metrics(json.loads({json.dumps(ROWS[1:3])!r})); r.set_state('running', reason='x' * 500)")
    subprocess.run([sys.executable, "-c", code], env=os.environ, check=True, timeout=60)
    assert reader.status()["reason"] == "x" * 500  # a longer status.json than the one read before
    assert [r["step"] for r in reader.metrics()] == [10, 20, 30]  # chunks listed afresh, not from a cache


def test_json_writes_on_gs_are_one_upload_each(emulator):
    path = f"{GS}/unit/json"
    with recorded_requests() as requests:
        for n in range(3):
            runstore.write_json_atomic(f"{path}/status.json", {"n": n})
    assert len(requests) == 3 and all(r.startswith("POST /upload/storage/v1/b/") for r in requests)  # no temp + copy + delete
    assert list_objects("unit/json") == ["status.json"]
    assert runstore.read_json(f"{path}/status.json") == {"n": 2}
    assert runstore.read_json(f"{path}/missing.json") is None


# ---- paths and errors -------------------------------------------------------------------------
def test_a_gs_path_without_gcsfs_names_the_package_to_install():
    code = ("import sys; sys.modules['gcsfs'] = None\n"  # as if gcsfs were not installed
            "from lib.store.runstore import RunDir\n"
            "RunDir('gs://bucket/runs/r1')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "gs:// paths need the gcsfs package: pip install gcsfs" in out.stderr


def test_writing_into_a_missing_bucket_says_so(emulator):
    with pytest.raises(FileNotFoundError, match="bucket no-such-bucket does not exist"):
        RunDir("gs://no-such-bucket/runs/r1").write_config({"name": "r1"})


def test_the_token_store_of_a_gs_run_stays_local(tmp_path):
    root = storage.default_data_root("gs://bucket/runs/r1")
    assert os.path.isabs(root) and "gs:" not in root
    assert storage.default_data_root(tmp_path / "runs" / "r1") == str(tmp_path / "runs" / ".data")  # unchanged
