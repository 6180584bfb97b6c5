"""Tasks: what a batch is, what training minimises and what eval scores, for the one train loop.

`task_of(cfg)` picks the task from the data source (lib.config.task_kind): `lm` (next-token
cross-entropy over token rows [B, T+1]; lib/tasks/lm.py) or `classify` (cross-entropy over labels,
top-1 error as a second eval metric, batches {"image": [B, H, W, C], "label": [B]};
lib/tasks/classify.py). The train step, the eval step, init and the loop call these and never
branch on the task or the family. A task gives:

  dummy(cfg)                    a batch of one model input, for init
  batch_spec(cfg, rows)         the batch pytree as {shape, dtype} for `rows` rows (compile ahead)
  train_loss(params, model_state, model, batch, rng)
                                -> (what training minimises, (logged {"train_loss", ...}, new model_state))
  eval_metrics(params, model_state, model, batch) -> {"eval_loss": mean, ...}: means over the batch's
                                rows, so equal chunks average to the mean over the eval set
  summary_fields(cfg, source, last, units, flops_per_unit, flops_in) -> the task's fields of the run
                                summary (lib/train/summary.py): D under its unit's key, C per convention, ...

`model_state` holds the model's mutable collections besides "params" (batch norm's running
averages, "batch_stats"); {} for every LM family. D counts `lib.config.unit_name` units: tokens
(seq_len per row) or images (one per row).

May import: lib.config, lib.models.
"""

from __future__ import annotations

from lib.config import RunConfig, task_kind
from lib.tasks import classify, lm

TASKS = {"lm": lm, "classify": classify}


def task_of(cfg: RunConfig):
    return TASKS[task_kind(cfg)]


def split_variables(variables: dict) -> tuple[dict, dict]:
    """flax `init` output -> (params, model_state: every other collection, e.g. batch_stats)."""
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


__all__ = ["TASKS", "classify", "lm", "split_variables", "task_of"]
