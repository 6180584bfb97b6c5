"""wandb, offline: its files go under the run folder and nothing under the home directory."""

import os
import pwd
from pathlib import Path

import jax

from lib.train.loop import train


def test_wandb_offline_writes_under_the_run_and_nothing_under_home(tiny_config, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)  # the library must choose safe places itself
    # the account's real home (from the password database, which a library may read instead of $HOME)
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    wandb_paths = [real_home / p for p in ("wandb", ".config/wandb", ".cache/wandb", ".netrc")]
    before = {p: p.stat().st_mtime_ns for p in wandb_paths if p.exists()}
    cfg = tiny_config.with_overrides({"train.steps": 10, "tracking.wandb": True, "tracking.project": "unit"})
    train(cfg, tmp_path / "runs" / "r", devices=jax.devices()[:1])

    wandb_dir = tmp_path / "runs" / "r" / "wandb"
    offline_runs = list(wandb_dir.rglob("offline-run-*"))
    assert offline_runs, f"no offline run under {wandb_dir}"
    assert list(offline_runs[0].rglob("*.wandb")), "the offline run has no .wandb log"
    assert [p for p in home.rglob("*")] == []
    assert {p: p.stat().st_mtime_ns for p in wandb_paths if p.exists()} == before  # nothing under the real home either
