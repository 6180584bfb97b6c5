"""A worker process of the processes executor: `python -m experiments.workflow.worker JOB`, JOB being
the JSON {"root": ..., "options": SweepOptions as JSON} that experiments/workflow/sweep.py writes.
It trains its share (options.worker) of the experiment's sweep or tune grid in this process."""

from __future__ import annotations

import json
import os
import sys

from experiments.workflow.options import SweepOptions


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lib.config import ConfigError
    from experiments.workflow.sweep import sweep_stage

    if len(argv) != 1:
        print("usage: python -m experiments.workflow.worker JOB_JSON (started by the processes executor)", file=sys.stderr)
        return 2
    job = json.loads(argv[0])
    try:
        return sweep_stage(job["root"], SweepOptions.from_json(json.dumps(job["options"])))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
