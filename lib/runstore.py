"""The run store: one folder per run holding its config, status, metrics, summary and checkpoints.

    <run dir>/config.json    the RunConfig
    <run dir>/status.json    {"state": pending|running|done|failed|interrupted, "reason", timestamps}
    <run dir>/metrics.jsonl  one JSON object per logged step
    <run dir>/summary.json   final numbers: eval loss, N in each convention, D, C
    <run dir>/checkpoints/   orbax

JSON files are written atomically (temp file + rename), so a reader or a relaunch never sees half
a file. metrics.jsonl is appended line by line; a torn last line (a kill mid-write) is dropped on
read and on resume. Paths may be local or any `etils.epath` location (e.g. gs://).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from typing import Any, Iterable

from etils import epath

STATES = ("pending", "running", "done", "failed", "interrupted")
CONFIG, STATUS, METRICS, SUMMARY, CHECKPOINTS = (
    "config.json",
    "status.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
)


def _path(p) -> epath.Path:
    return epath.Path(p)


def write_json_atomic(path, obj: Any) -> None:
    path = _path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(path)  # atomic on POSIX filesystems; a copy+delete on object stores, still never torn


def read_json(path) -> Any | None:
    path = _path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _json_default(x):
    if hasattr(x, "item"):  # numpy / jax scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _clean(value):
    """NaN/inf are not JSON; store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDir:
    """Reads and writes one run's folder. Writers are no-ops unless `writer` (process 0)."""

    def __init__(self, path, writer: bool = True):
        self.path = _path(path)
        self.writer = writer

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict | None:
        return read_json(self.path / STATUS)

    def state(self) -> str | None:
        s = self.status()
        return s["state"] if s else None

    def set_state(self, state: str, reason: str = "", **extra) -> None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; one of {STATES}")
        if not self.writer:
            return
        now = time.time()
        old = self.status() or {}
        status = {
            "state": state,
            "reason": reason,
            "updated_at": now,
            "created_at": old.get("created_at", now),
            "attempts": old.get("attempts", 0) + (1 if state == "running" else 0),
        }
        status.update(extra)
        write_json_atomic(self.path / STATUS, status)

    # -- config / summary -----------------------------------------------------------------------
    def write_config(self, config_dict: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / CONFIG, config_dict)

    def config(self) -> dict | None:
        return read_json(self.path / CONFIG)

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / SUMMARY, {k: _clean(v) for k, v in summary.items()})

    def summary(self) -> dict | None:
        return read_json(self.path / SUMMARY)

    def write_extra(self, name: str, obj: dict) -> None:
        """Any other small JSON record of the run (e.g. data.json: the data's identity)."""
        if self.writer:
            write_json_atomic(self.path / name, obj)

    def read_extra(self, name: str) -> dict | None:
        return read_json(self.path / name)

    # -- metrics --------------------------------------------------------------------------------
    def append_metrics(self, rows: Iterable[dict]) -> None:
        if not self.writer:
            return
        lines = "".join(json.dumps({k: _clean(v) for k, v in r.items()}, default=_json_default) + "\n" for r in rows)
        if not lines:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / METRICS).open("a") as f:
            f.write(lines)

    def metrics(self) -> list[dict]:
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a kill mid-write
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """On resume from a checkpoint at `last_step`, forget what was logged after it."""
        if not self.writer:
            return
        kept = [r for r in self.metrics() if r.get("step", 0) <= last_step]
        path = self.path / METRICS
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)

    @property
    def checkpoint_dir(self) -> epath.Path:
        return self.path / CHECKPOINTS


# -- readers for analysis ---------------------------------------------------------------------------
def run_dirs(root) -> list[RunDir]:
    """Every folder under `root` (one level) that holds a config.json."""
    root = _path(root)
    if not root.exists():
        raise FileNotFoundError(f"run root {root} does not exist")
    return sorted(
        (RunDir(p, writer=False) for p in root.iterdir() if p.is_dir() and (p / CONFIG).exists()),
        key=lambda r: r.path.name,
    )


def load_runs(root):
    """One row per run: run_id, state, reason, path, losses, N (each convention), D, C, ..."""
    import pandas as pd

    rows = []
    for run in run_dirs(root):
        status = run.status() or {}
        summary = run.summary() or {}
        params = summary.get("params") or {}
        flops = summary.get("flops") or {}
        rows.append(
            {
                "run_id": run.path.name,
                "state": status.get("state", "pending"),
                "reason": status.get("reason", ""),
                "path": os.fspath(run.path),
                "eval_loss": summary.get("eval_loss"),
                "train_loss": summary.get("train_loss"),
                "N_total": params.get("total"),
                "N_embedding": params.get("embedding"),
                "N_non_embedding": params.get("non_embedding"),
                "D": summary.get("tokens"),
                "C": flops.get("value"),
                "flops_convention": flops.get("convention"),
                "entropy_floor": summary.get("entropy_floor"),
                "sweep": summary.get("sweep"),
                "budget": summary.get("budget"),
            }
        )
    columns = [
        "run_id", "state", "reason", "path", "eval_loss", "train_loss", "N_total", "N_embedding",
        "N_non_embedding", "D", "C", "flops_convention", "entropy_floor", "sweep", "budget",
    ]
    df = pd.DataFrame(rows, columns=columns)
    numeric = ["eval_loss", "train_loss", "N_total", "N_embedding", "N_non_embedding", "D", "C", "entropy_floor", "budget"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return df


def load_curves(root):
    """One row per logged metrics line of every run: run_id, step, tokens, flops, train_loss, eval_loss."""
    import pandas as pd

    columns = ["run_id", "step", "tokens", "flops", "train_loss", "eval_loss"]
    rows = [
        {"run_id": run.path.name, **{c: m.get(c) for c in columns[1:]}}
        for run in run_dirs(root)
        for m in run.metrics()
    ]
    df = pd.DataFrame(rows, columns=columns)
    df[columns[1:]] = df[columns[1:]].apply(pd.to_numeric, errors="coerce")
    return df
