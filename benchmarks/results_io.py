"""Where a benchmark's measurements go: one JSON file under benchmarks/results/, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(path, record: dict) -> Path:
    """Write `record` to `path` (a bare name lands in benchmarks/results/) via a temporary file and a rename."""
    path = Path(path)
    if not path.parent.parts:
        path = RESULTS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return path
