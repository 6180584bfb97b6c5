"""Are two run roots the same experiment, number for number? (a refactor must leave them bit-identical)

    python benchmarks/compare_roots.py ROOT_A ROOT_B [--json OUT]

Matches every run folder, summary.json, metrics.jsonl row and JSON result (fit/fit.json,
fit/check.json, tune/lr_rule.json, ...) by its path relative to its root and compares every number
exactly (==, NaN equal to NaN). What measures the machine rather than the experiment (wall times,
throughput, hosts, pids, timestamps, paths) is left out by key name. The environments the runs
trained in (summary.json `environment`: CPU model, ISA, threads, versions; lib/train/environment.py)
are listed for each root first: between two environments the numbers are expected to differ by
rounding, within one they are expected to be equal to the bit. Prints a table, writes JSON, and
exits 1 when anything differs or is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.store.runstore import UNRECORDED_ENVIRONMENT as UNRECORDED  # noqa: E402

# Keys that measure the machine or the moment, not the experiment.
_MACHINE_KEY = re.compile(r"time|seconds|_s$|throughput|per_s|per_sec|host|pid|date|wall|elapsed|heartbeat|"
                          r"started|finished|created|path|dir|root|figures|version|mfu|flops_per_s|environment")
_COMPARED = ("summary.json", "lr_rule.json", "fit.json", "check.json", "grid_extensions.json", "config.json")


def _leaves(obj, prefix=""):
    """(dotted key, value) for every scalar leaf, skipping machine-dependent keys."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not _MACHINE_KEY.search(str(k)):
                yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _records(root: Path) -> dict[str, object]:
    """Relative path -> parsed content of every compared JSON file and every metrics.jsonl; a file
    that does not parse (a truncated write) is {"unreadable": the parser's message}, which differs
    from any readable record, so it is reported, not raised."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if "checkpoints" in path.parts or ".corrupt-" in path.name:
            continue
        try:
            if path.name in _COMPARED:
                out[rel] = json.loads(path.read_text())
            elif path.name == "metrics.jsonl":
                out[rel] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            out[rel] = {"unreadable": f"{path}: {e}"}
    return out


def environments(records: dict) -> dict[str, int]:
    """{environment key: runs} over the summaries of one root (UNRECORDED before summaries held it)."""
    keys = [(rec.get("environment") or {}).get("key", UNRECORDED) for rel, rec in records.items() if rel.endswith("summary.json")]
    return {k: keys.count(k) for k in sorted(set(keys))}


def compare(root_a: Path, root_b: Path) -> dict:
    a, b = _records(root_a), _records(root_b)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    numbers, differences = 0, []
    for rel in sorted(set(a) & set(b)):
        la, lb = dict(_leaves(a[rel])), dict(_leaves(b[rel]))
        for key in sorted(set(la) | set(lb)):
            numbers += 1
            if key not in la or key not in lb or not _same(la[key], lb[key]):
                differences.append({"file": rel, "key": key, "a": la.get(key), "b": lb.get(key)})
    return {"root_a": str(root_a), "root_b": str(root_b), "environments_a": environments(a), "environments_b": environments(b),
            "files_compared": len(set(a) & set(b)),
            "values_compared": numbers, "only_in_a": only_a, "only_in_b": only_b,
            "differences": differences, "identical": not (only_a or only_b or differences)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root_a", type=Path)
    p.add_argument("root_b", type=Path)
    p.add_argument("--json", type=Path, default=Path("compare_roots.json"), help="where to write the result")
    args = p.parse_args(argv)
    result = compare(args.root_a, args.root_b)
    for side in ("a", "b"):
        for key, n in result[f"environments_{side}"].items():
            print(f"{'environment ' + side.upper():<22}{key}: {n} run(s)")
    recorded = [{k for k in result[f"environments_{side}"] if k != UNRECORDED} for side in ("a", "b")]
    if all(recorded) and recorded[0] != recorded[1]:
        print("  (the roots trained in different environments: rounding differences are expected)")
    elif not all(recorded):
        print("  (a root's summaries do not record their environment: whether a difference is the machine's is unknown)")
    print(f"{'files compared':<22}{result['files_compared']}")
    print(f"{'values compared':<22}{result['values_compared']}")
    print(f"{'only in A / only in B':<22}{len(result['only_in_a'])} / {len(result['only_in_b'])}")
    print(f"{'values that differ':<22}{len(result['differences'])}")
    for d in result["differences"][:20]:
        print(f"  {d['file']} {d['key']}: {d['a']!r} vs {d['b']!r}")
    for rel in (result["only_in_a"] + result["only_in_b"])[:20]:
        print(f"  one side only: {rel}")
    print("IDENTICAL" if result["identical"] else "DIFFERENT")
    from results_io import write_json  # benchmarks/ is this script's folder

    print(f"written: {write_json(args.json, result)}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
