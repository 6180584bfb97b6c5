"""Claims on runs (lib/store/claims.py): one holder at a time, a stale holder's claim taken over,
on a local folder and on gs:// (the emulator enforces ifGenerationMatch as GCS does); two
`scaling sweep` processes on one root train every run exactly once."""

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lib.store import claims, storage
from lib.store.runstore import RunDir
from gcs_emulator import BUCKET, running_emulator
from test_sweep_support import clean_env, write_experiment

REPO = Path(__file__).resolve().parents[1]
GS = f"gs://{BUCKET}"


@pytest.fixture(scope="module")
def emulator():
    with pytest.MonkeyPatch.context() as mp, running_emulator(mp) as env:
        yield env


@pytest.fixture(params=["local", "gs"])
def run_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("emulator")
    return f"{GS}/claims-{request.node.name.replace('[', '-').rstrip(']')}-{time.time_ns()}"


def _plant(run_path, host: str, pid: int, heartbeat_at: float) -> None:
    """A claim.json written by some other process."""
    record = {"host": host, "pid": pid, "token": "theirs", "started_at": heartbeat_at, "heartbeat_at": heartbeat_at}
    assert storage.create_new(f"{run_path}/{claims.CLAIM}", json.dumps(record).encode()) is not None


def test_storage_conditional_writes_refuse_a_changed_version(run_root):
    path = f"{run_root}/r/x.json"
    v1 = storage.create_new(path, b"one")
    assert v1 is not None and storage.create_new(path, b"two") is None
    assert storage.read_versioned(path)[0] == b"one"
    v2 = storage.replace_if(path, b"three", v1)
    assert v2 is not None and storage.replace_if(path, b"four", v1) is None  # v1 is gone
    assert not storage.delete_if(path, v1) and storage.read_bytes(path) == b"three"
    assert storage.delete_if(path, v2) and storage.read_versioned(path) is None


def test_a_live_claim_is_respected_and_a_stale_one_taken_over(run_root):
    live, stale, dead = f"{run_root}/live", f"{run_root}/stale", f"{run_root}/dead"
    now = time.time()
    _plant(live, "elsewhere", 1, now)
    _plant(stale, "elsewhere", 1, now - 100)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    _plant(dead, socket.gethostname(), int(dead_pid), now)  # fresh heartbeat, but its process has exited

    mine = claims.Claims(timeout=60)
    try:
        other = mine.acquire(live)
        assert other is not None and (other.host, other.pid) == ("elsewhere", 1)
        assert mine.acquire(stale) is None  # 100 s without a heartbeat > 60 s
        assert mine.acquire(dead) is None
        assert [m for m in mine.messages if "took over" in m and "no heartbeat for 100s" in m]
        assert [m for m in mine.messages if "took over" in m and f"process {dead_pid}" in m]
        for path in (stale, dead):
            h = claims.holder(path)
            assert (h.host, h.pid) == (socket.gethostname(), __import__("os").getpid())
        assert claims.Claims(timeout=60).acquire(stale) is not None  # now ours, alive: refused to a second claimant
    finally:
        mine.release_all()
    assert claims.holder(stale) is None and claims.holder(dead) is None
    assert claims.holder(live).token == "theirs"  # never ours to release


def test_the_heartbeat_keeps_a_claim_fresh_and_one_of_two_takers_wins(run_root):
    held = f"{run_root}/held"
    mine = claims.Claims(timeout=1.0)  # heartbeat every 0.1 s
    try:
        assert mine.acquire(held) is None
        first = claims.holder(held).heartbeat_at
        time.sleep(1.5)  # longer than the timeout: only the heartbeat keeps it live
        assert claims.holder(held).heartbeat_at > first
        assert claims.Claims(timeout=1.0).acquire(held) is not None
    finally:
        mine.release_all()

    contested = f"{run_root}/contested"
    _plant(contested, "elsewhere", 1, time.time() - 100)
    takers = [claims.Claims(timeout=60) for _ in range(4)]
    got = [None] * len(takers)
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, takers[i].acquire(contested))) for i in range(len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(g is None for g in got) == 1, got  # exactly one took the stale claim over
    finally:
        for t in takers:
            t.release_all()


def test_a_release_during_a_heartbeat_leaves_no_claim_behind(run_root, monkeypatch):
    """The release reads the claim's version while the heartbeat rewrites it: the release must wait
    for the rewrite (and delete the new version), not fail on the old one and leave the claim held by
    nobody, as it did when a finished run kept its claim.json."""
    run = f"{run_root}/released"
    mine = claims.Claims(timeout=600)  # no background beat during the test: it is driven by hand
    assert mine.acquire(run) is None
    rewrite = storage.replace_if
    releasing = []

    def rewrite_then_release(path, data, version):
        new = rewrite(path, data, version)  # the claim now has a new version
        releasing.append(threading.Thread(target=mine.release, args=(run,)))
        releasing[0].start()
        releasing[0].join(timeout=0.5)  # a release that does not wait for the beat finishes here
        return new

    monkeypatch.setattr(storage, "replace_if", rewrite_then_release)
    mine._beat_one(claims._claim_path(run))
    releasing[0].join()
    assert claims.holder(run) is None  # released: nothing left behind
    mine.release_all()


def test_status_shows_a_run_whose_heartbeat_stopped_as_stale(tmp_path, monkeypatch):
    from experiments.workflow.status import format_status, status_rows

    monkeypatch.setenv("SCALING_CLAIM_STALE_S", "60")
    now = time.time()
    for name, heartbeat in (("alive", now - 10), ("gone", now - 600)):
        run = RunDir(tmp_path / name)
        run.write_config({"train": {"steps": 10}})
        run.set_state("running")
        _plant(run.path, "elsewhere", 1, heartbeat)
    rows = {r["run"]: r for r in status_rows(tmp_path)}
    assert rows["alive"]["state"] == "running" and "elsewhere pid 1" in rows["alive"]["reason"]
    assert rows["gone"]["state"] == "stale"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - 600))
    assert f"stale (last heartbeat {when} UTC, 10m ago" in format_status(list(rows.values()))
    monkeypatch.setenv("SCALING_CLAIM_STALE_S", "5")  # the timeout is the user's to set
    assert {r["run"]: r["state"] for r in status_rows(tmp_path)} == {"alive": "stale", "gone": "stale"}


def _sweep(exp, root, env, cache):
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", "sweep", str(exp), "--root", root, "--progress", "off",
                             "--pack", "1", "--compile-cache", cache], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("where", ["local", "gs"])
def test_two_sweeps_on_one_root_train_every_run_once(where, tmp_path, compile_cache, request):
    env = clean_env(tmp_path)
    if where == "gs":
        env.update(request.getfixturevalue("emulator"))
        root = f"{GS}/two-sweeps-{time.time_ns()}"
    else:
        root = str(tmp_path / "root")
    steps, log_every = 20, 10
    exp = write_experiment(tmp_path, steps=steps, checkpoint_every=10, axes='{"data.seed": [0, 1, 2]}')
    procs = [_sweep(exp, root, env, compile_cache) for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]

    ids = [n for n in storage.list_dir(root) if not n.startswith(".")]
    assert len(ids) == 3, ids
    for run_id in ids:
        run = RunDir(f"{root}/{run_id}", writer=False)
        status = run.status()
        assert status["state"] == "done" and status["attempts"] == 1, (run_id, status, outs)  # one "running": trained once
        assert [m["step"] for m in run.metrics()] == list(range(log_every, steps + 1, log_every)), run_id  # its own rows, once
        assert run.summary() is not None and claims.holder(run.path) is None
    from experiments.sweep_cmd import cmd_status
    from experiments.workflow.status import status_rows

    assert sorted((r["run"], r["state"]) for r in status_rows(root)) == [(i, "done") for i in sorted(ids)]
    assert cmd_status(__import__("argparse").Namespace(root=root)) == 0  # `scaling status gs://...` too
    trained = [int(re.search(r"(\d+) trained", out).group(1)) if re.search(r"(\d+) trained", out) else 0 for out in outs]
    assert sum(trained) == 3, outs  # the two sweeps' reports agree: each run trained by exactly one of them
