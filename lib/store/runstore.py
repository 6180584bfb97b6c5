"""The run store: one folder per run holding its config, status, metrics, summary and checkpoints.

    <run dir>/config.json    the RunConfig
    <run dir>/status.json    {"state": pending|running|done|failed|interrupted, "reason", timestamps}
    <run dir>/metrics.jsonl  one JSON object per logged step
    <run dir>/summary.json   final numbers: eval loss, N in each convention, D, C
    <run dir>/checkpoints/   orbax
    <run dir>/claim.json     who trains it now, with a heartbeat (lib/store/claims.py)

JSON files are written atomically, so a reader or a relaunch never sees half a file: locally a
temp file renamed over the target, on an object store (gs://) one upload (see lib/storage.py).

The metrics log, locally, is metrics.jsonl appended line by line; a torn last line (a kill
mid-write) is dropped on read and on resume. Objects cannot be appended to, so on an object store
each append is a new object, `metrics/<seq>.jsonl` (durable at once, and never a rewrite of one
object per log line, which GCS rate-limits), and every COMPACT_AFTER chunks, on resume, and when
the run stops the writer merges them into metrics.jsonl and deletes them. Readers take
metrics.jsonl, then the chunks' rows past its last step (a chunk left by a kill between the merge
and the delete is already in metrics.jsonl). A finished run looks the same on both stores.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from typing import Any, Iterable

from etils import epath

from lib.store import storage

STATES = ("pending", "running", "done", "failed", "interrupted")
CONFIG, STATUS, METRICS, SUMMARY, CHECKPOINTS = (
    "config.json",
    "status.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
)
METRICS_LOG = "metrics"  # object stores: metrics/<seq>.jsonl chunks, merged into metrics.jsonl
COMPACT_AFTER = 64  # chunks; bounds what a reader fetches while a run is live

# Seed replicates (lib/sweeps/plans.py `Sweep.seeds`): a sweep S's point trained again at train.seed k
# is a run of sweep "S-seed<k>", named "<point>-seed<k>"; the loader (analysis/data.py) sets such runs
# aside when S is a sweep of the root's other points and the run trained at seed k.
SEED_TAG = "-seed"
_REPLICATE_SWEEP = re.compile(r"^(?P<sweep>.+)-seed(?P<seed>\d+)$")


def replicate_sweep(sweep: str, seed: int) -> str:
    """The sweep name of `sweep`'s seed replicates at `seed`."""
    return f"{sweep}{SEED_TAG}{int(seed)}"


def parse_replicate_sweep(name) -> tuple[str, int] | None:
    """(main sweep, seed) when `name` has the shape of a replicate sweep's name, else None (a shape only)."""
    m = _REPLICATE_SWEEP.match(name) if isinstance(name, str) else None
    return (m["sweep"], int(m["seed"])) if m else None


def _path(p) -> epath.Path:
    return epath.Path(p)


def write_json_atomic(path, obj: Any) -> None:
    storage.write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def read_json(path) -> Any | None:
    data = storage.read_bytes(path)
    return None if data is None else json.loads(data)


def read_record(path) -> dict | None:
    """A run's JSON record (config, status, summary, ...), or None when absent. A record that is
    not a JSON object -- truncated, empty, garbage (a disk filled up, a copy cut short, a hand
    edit) -- is moved aside to <name>.corrupt-<UTC time> (never deleted), named in one line on
    stderr, and read as absent: the run counts as unfinished, and a sweep retrains or resumes it."""
    data = storage.read_bytes(path)
    if data is None:
        return None
    try:
        record = json.loads(data)
        if isinstance(record, dict):
            return record
        problem = f"a JSON {type(record).__name__}, not an object"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = "empty" if not data.strip() else f"not valid JSON ({e})"
    path = os.fspath(path)
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        storage.move(path, aside)
        where = f"moved aside to {aside}"
    except FileNotFoundError:  # another reader moved it first
        where = "already moved aside by another process"
    except OSError as e:  # a read-only root: leave it, say so
        where = f"could not move it aside ({e})"
    print(f"warning: {path} is corrupt ({problem}); {where}; the run counts as unfinished", file=sys.stderr, flush=True)
    return None


def _json_default(x):
    if hasattr(x, "item"):  # numpy / jax scalars
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _clean(value):
    """NaN/inf are not JSON; store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonl(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps({k: _clean(v) for k, v in r.items()}, default=_json_default) + "\n" for r in rows).encode()


def _parse_jsonl(data: bytes | None) -> list[dict]:
    rows = []
    for line in (data or b"").decode().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write
    return rows


class RunDir:
    """Reads and writes one run's folder. Writers are no-ops unless `writer` (process 0)."""

    def __init__(self, path, writer: bool = True):
        self._remote = storage.is_url(path)
        if self._remote:
            storage.filesystem(path)  # fail now, naming the package, if gs:// is not installed
        self.path = _path(path)
        self.writer = writer
        self._next_chunk: int | None = None  # object stores: the next metrics/<seq>.jsonl
        self._open_chunks = 0  # chunks written since the last merge

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict | None:
        return read_record(self.path / STATUS)

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
        environment = extra.pop("environment", None)  # where this attempt trains (lib/train/environment.py)
        status.update(extra)
        for key in ("host", "pid", "pack"):  # who trained it last (in a pack of how many) stays on record through done/failed
            if key in old:
                status.setdefault(key, old[key])
        # Every environment its attempts trained in, in order: a run resumed on another machine rounds
        # differently after the resume, and its summary says so (lib/train/summary.py).
        environments = list(old.get("environments", []))
        if environment is not None and environment not in environments:
            environments.append(environment)
        if environments:
            status["environments"] = environments
        if state != "running" and self._remote:
            self._merge_metrics()  # a stopped run's log is one object, as locally
        write_json_atomic(self.path / STATUS, status)

    def finished(self) -> bool:
        """Done, with its summary and config readable: nothing to train. (A record missing or
        corrupt -- moved aside by read_record -- makes it a run to complete from its checkpoint.)"""
        return self.state() == "done" and self.summary() is not None and self.config() is not None

    # -- config / summary -----------------------------------------------------------------------
    def write_config(self, config_dict: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / CONFIG, config_dict)

    def config(self) -> dict | None:
        return read_record(self.path / CONFIG)

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / SUMMARY, {k: _clean(v) for k, v in summary.items()})

    def summary(self) -> dict | None:
        return read_record(self.path / SUMMARY)

    def write_extra(self, name: str, obj: dict) -> None:
        """Any other small JSON record of the run (e.g. data.json: the data's identity)."""
        if self.writer:
            write_json_atomic(self.path / name, obj)

    def read_extra(self, name: str) -> dict | None:
        return read_record(self.path / name)

    # -- metrics --------------------------------------------------------------------------------
    def append_metrics(self, rows: Iterable[dict]) -> None:
        if not self.writer:
            return
        data = _jsonl(rows)
        if not data:
            return
        if not self._remote:
            storage.append_bytes(self.path / METRICS, data)
            return
        if self._next_chunk is None:  # first append of this writer: continue after what exists
            seqs = [_chunk_seq(n) for n in self._chunk_names()]
            self._next_chunk, self._open_chunks = max(seqs, default=-1) + 1, len(seqs)
        storage.write_bytes(self.path / METRICS_LOG / f"{self._next_chunk:08d}.jsonl", data)
        self._next_chunk += 1
        self._open_chunks += 1
        if self._open_chunks >= COMPACT_AFTER:
            self._merge_metrics()

    def metrics(self) -> list[dict]:
        return self._read_log()[0]

    def truncate_metrics(self, last_step: int) -> None:
        """On resume from a checkpoint at `last_step`, forget what was logged after it."""
        if self.writer:
            self._merge_metrics(last_step)

    def _merge_metrics(self, last_step: int | None = None) -> None:
        """Rewrite metrics.jsonl with every row (up to `last_step`), then delete the chunks."""
        rows, chunks = self._read_log()
        if last_step is None and not chunks:
            return
        if last_step is not None:
            rows = [r for r in rows if r.get("step", 0) <= last_step]
        storage.write_bytes(self.path / METRICS, _jsonl(rows))  # first, so no row is ever lost
        storage.delete(chunks)
        self._open_chunks = 0

    def _read_log(self) -> tuple[list[dict], list]:
        """(rows, chunk paths): metrics.jsonl, then the chunks' rows past its last step."""
        rows = _parse_jsonl(storage.read_bytes(self.path / METRICS))
        chunks = [self.path / METRICS_LOG / n for n in self._chunk_names()]
        if chunks:
            last = rows[-1].get("step") if rows else None
            for data in storage.read_many(chunks):
                rows += [r for r in _parse_jsonl(data) if last is None or r.get("step") is None or r["step"] > last]
        return rows, chunks

    def _chunk_names(self) -> list[str]:
        names = [n for n in storage.list_dir(self.path / METRICS_LOG) if _chunk_seq(n) is not None]
        return sorted(names, key=_chunk_seq)

    @property
    def checkpoint_dir(self) -> epath.Path:
        return self.path / CHECKPOINTS


def _chunk_seq(name: str) -> int | None:
    stem, _, ext = name.partition(".")
    return int(stem) if ext == "jsonl" and stem.isdigit() else None


# -- readers for analysis ---------------------------------------------------------------------------
def run_dirs(root) -> list[RunDir]:
    """Every folder under `root` (one level) that holds a config.json."""
    root = _path(root)
    if storage.is_url(root):  # one listing, then the configs fetched together
        names = storage.list_dir(root)
        if not names:
            raise FileNotFoundError(f"run root {root} does not exist (no objects under it)")
        configs = storage.read_many([root / n / CONFIG for n in names])
        return [RunDir(root / n, writer=False) for n, c in zip(names, configs) if c is not None]
    if not root.exists():
        raise FileNotFoundError(f"run root {root} does not exist")
    return sorted(
        (RunDir(p, writer=False) for p in root.iterdir() if p.is_dir() and (p / CONFIG).exists()),
        key=lambda r: r.path.name,
    )


def shown_state(status: dict, summary: dict | None, has_config: bool = True) -> tuple[str, str]:
    """(state, reason) of a run for readers: "done" without a summary (a kill between the final
    checkpoint and summary.json, or a corrupt one moved aside) or, where the reader read it, without
    its config is "incomplete", not finished -- as `RunDir.finished` decides for the sweep."""
    state, reason = status.get("state", "pending"), status.get("reason", "")
    if state == "done" and (summary is None or not has_config):
        missing = "summary.json" if summary is None else "config.json"
        return "incomplete", f"done but {missing} is missing or corrupt; relaunch to complete it from the final checkpoint"
    return state, reason


def summary_D(summary: dict):
    """A run's D: its tokens, or for an image classifier (summary "units": "images") its images."""
    return summary.get(summary.get("units", "tokens"))


# A summary's environment key (lib/train/environment.py: where its floats came from), or this where a
# summary written before it has none; the fit and benchmarks/compare_roots.py count runs by it.
UNRECORDED_ENVIRONMENT = "not recorded (summaries before lib/train/environment.py)"


def load_runs(root):
    """One row per run: run_id, state, reason, path, losses, N (each convention), D, C, family, ...

    N_active is what one token passes through (summary params.active: the routed experts of a moe
    model, not all of them); runs recorded before it existed are dense, so it is their N_total."""
    import pandas as pd

    rows = []
    for run in run_dirs(root):
        status = run.status() or {}
        summary = run.summary()
        config = run.config()  # without it a run's lr and seed are unknown: not a point to fit
        state, reason = shown_state(status, summary, has_config=config is not None)
        summary, config = summary or {}, config or {}
        params = summary.get("params") or {}
        flops = summary.get("flops") or {}
        rows.append(
            {
                "run_id": run.path.name,
                "state": state,
                "reason": reason,
                "path": os.fspath(run.path),
                "eval_loss": summary.get("eval_loss"),
                "train_loss": summary.get("train_loss"),
                "eval_error": summary.get("eval_error"),  # image classifiers: top-1 error (and its Bayes floor)
                "bayes_error": summary.get("bayes_error"),
                "N_total": params.get("total"),
                "N_embedding": params.get("embedding"),
                "N_non_embedding": params.get("non_embedding"),
                "N_active": params.get("active", params.get("total")),
                "D": summary_D(summary),
                "units": summary.get("units", "tokens"),
                "C": flops.get("value"),
                "flops_convention": flops.get("convention"),
                "entropy_floor": summary.get("entropy_floor"),
                "entropy_rate": summary.get("entropy_rate"),
                "sweep": summary.get("sweep"),
                "budget": summary.get("budget"),
                "family": (config.get("model") or {}).get("family", "transformer"),
                "lr": (config.get("optimizer") or {}).get("lr"),  # the peak lr this run trained at
                "lr_factor": (config.get("optimizer") or {}).get("lr_factor", 1.0),  # of its point's lr (a sweep's lr grid)
                "seed": (config.get("train") or {}).get("seed"),  # its init (a sweep's seed replicates differ in it alone)
                "trunk": summary.get("trunk"),  # a cooldown branch: its trunk's run id (lib/sweeps/cooldowns.py)
                "role": summary.get("role"),  # "trunk": a constant-rate trunk, no point to fit
                "environment": (summary.get("environment") or {}).get("key", UNRECORDED_ENVIRONMENT),  # where its floats came from
            }
        )
    columns = [
        "run_id", "state", "reason", "path", "eval_loss", "train_loss", "eval_error", "bayes_error", "N_total", "N_embedding",
        "N_non_embedding", "N_active", "D", "units", "C", "flops_convention", "entropy_floor", "entropy_rate", "sweep", "budget", "family",
        "lr", "lr_factor", "seed", "trunk", "role", "environment",
    ]
    df = pd.DataFrame(rows, columns=columns)
    numeric = ["eval_loss", "train_loss", "eval_error", "bayes_error", "N_total", "N_embedding", "N_non_embedding", "N_active", "D", "C", "entropy_floor", "entropy_rate", "budget"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return df


def load_curves(root):
    """One row per logged metrics line of every run: run_id, step, tokens, flops, train_loss, eval_loss."""
    import pandas as pd

    columns = ["run_id", "step", "tokens", "flops", "train_loss", "eval_loss"]
    rows = [  # "tokens": D in the run's units (an image classifier's rows count "images")
        {"run_id": run.path.name, **{c: m.get(c) for c in columns[1:]}, "tokens": m.get("tokens", m.get("images"))}
        for run in run_dirs(root)
        for m in run.metrics()
    ]
    df = pd.DataFrame(rows, columns=columns)
    df[columns[1:]] = df[columns[1:]].apply(pd.to_numeric, errors="coerce")
    return df
