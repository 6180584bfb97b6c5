"""Where metrics go: the run store always, wandb when configured, and the console.

wandb honours WANDB_MODE (offline works with no network). Unless the user set them, wandb's
folders (run files, cache, config, artifacts) are pointed into the run folder, so nothing lands
in the home directory.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

from lib.store import storage
from lib.config import RunConfig
from lib.store.runstore import RunDir

_WANDB_DIR_VARS = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config",
                   "WANDB_DATA_DIR": "data", "WANDB_ARTIFACT_DIR": "artifacts"}
_SET_BY_US: dict[str, str] = {}  # what this module set them to: another run of this process points them at its own folder


class Tracker:
    def __init__(self, run: RunDir, cfg: RunConfig, run_id: str, is_writer: bool):
        self.run, self.cfg, self.run_id = run, cfg, run_id
        self.console = cfg.tracking.console and is_writer
        self._wandb = self._start_wandb() if (cfg.tracking.wandb and is_writer) else None

    def _start_wandb(self):
        import wandb

        # wandb needs a local folder: beside a local run, under the temp dir for a gs:// run.
        base = os.fspath(self.run.path / "wandb") if not storage.is_url(self.run.path) else os.path.join(
            tempfile.gettempdir(), f"scaling-wandb-{self.run_id}")
        for var, sub in _WANDB_DIR_VARS.items():
            if not os.environ.get(var) or os.environ[var] == _SET_BY_US.get(var):  # the user's setting wins
                path = os.path.join(base, sub) if sub else base
                os.makedirs(path, exist_ok=True)
                os.environ[var] = _SET_BY_US[var] = path  # this run's folder, not the first run's of this process
        t = self.cfg.tracking
        return wandb.init(
            project=t.project,
            group=t.group or self.cfg.sweep or None,
            name=t.name or self.run_id,
            id=self.run_id,
            resume="allow",
            reinit="create_new",  # the runs of a pack each have their own wandb run, side by side
            dir=os.environ["WANDB_DIR"],
            config=self.cfg.to_dict(),
        )

    def log(self, row: dict) -> None:
        self.run.append_metrics([row])
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])
        if self.console:
            print(_console_line(row, self.cfg.train.steps), file=sys.stdout, flush=True)

    def say(self, message: str) -> None:
        if self.console:
            print(f"[{self.run_id}] {message}", flush=True)

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        if self._wandb is not None:
            if summary:
                self._wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self._wandb.finish(exit_code=1 if failed else 0)
            self._wandb = None


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _console_line(r: dict, total_steps: int) -> str:
    parts = [
        f"step {r['step']:>6}/{total_steps}",
        f"loss {_fmt(r.get('train_loss'), '.4f')}",
        f"eval {_fmt(r.get('eval_loss'), '.4f')}" if "eval_loss" in r else None,
        f"lr {_fmt(r.get('lr'), '.2e')}",
        f"gnorm {_fmt(r.get('grad_norm'), '.3f')}",
        f"{_fmt(r.get('tokens_per_s'), '.3g')} tok/s",
        f"{_fmt((r.get('flops_per_s') or 0) / 1e12, '.3g')} TFLOP/s",
        f"mfu {_fmt(r.get('mfu'), '.1%')}",
    ]
    return " | ".join(p for p in parts if p)
