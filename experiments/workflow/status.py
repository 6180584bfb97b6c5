"""`scaling status`: a table of a root's runs -- state, attempts, step, losses -- including the planned
runs not started yet (from the sweep manifests) and runs whose trainer is gone ("stale")."""

from __future__ import annotations

import os

from experiments.workflow.sweep import MANIFESTS
from lib.config import ConfigError
from lib.store import claims, storage
from lib.store.runstore import RunDir, read_json, run_dirs, shown_state, summary_D
from lib.store.storage import is_url


def status_rows(root) -> list[dict]:
    """One row per run folder under `root` (or `root` itself if it is a run), plus planned runs not started."""
    root = os.fspath(root)
    runs = [RunDir(root, writer=False)] if storage.read_bytes(_join(root, "config.json")) is not None else run_dirs(root)
    timeout = claims.stale_after_s()
    rows = []
    for run in runs:
        status, summary, config = run.status() or {}, run.summary(), run.config() or {}
        state, reason = _live_state(status, summary, claims.holder(run.path), timeout)
        summary = summary or {}
        metrics = run.metrics()
        params = (summary.get("params") or {}).get("total")
        rows.append({
            "run": run.path.name,
            "state": state,
            "attempts": status.get("attempts", 0),
            "step": f"{metrics[-1]['step'] if metrics else 0}/{config.get('train', {}).get('steps', '?')}",
            "eval_loss": summary.get("eval_loss") or next((m["eval_loss"] for m in reversed(metrics) if m.get("eval_loss") is not None), None),
            "N": params,
            "D": summary_D(summary),
            "C": (summary.get("flops") or {}).get("value") or config.get("budget") or None,
            "reason": reason,
            "_order": (config.get("budget") or 0.0, params or 0, run.path.name),
        })
    rows.sort(key=lambda r: r.pop("_order"))  # as the sweep runs them: by budget, then size
    present = {r["run"] for r in rows}
    manifests = _join(root, MANIFESTS)
    for name in storage.list_dir(manifests):
        if name.endswith(".json"):
            for run_id in (read_json(_join(manifests, name)) or {}).get("runs", []):
                if run_id not in present:
                    present.add(run_id)
                    rows.append({"run": run_id, "state": "missing", "attempts": 0, "step": "-", "eval_loss": None, "N": None, "D": None, "C": None, "reason": ""})
    return rows


def _join(root: str, *names: str) -> str:
    return "/".join([root.rstrip("/"), *names]) if is_url(root) else os.path.join(root, *names)


def _live_state(status: dict, summary: dict | None, holder, timeout: float) -> tuple[str, str]:
    """(state, reason) as `status` shows it: a "running" run whose trainer is gone -- its claim's
    heartbeat stale, or no claim at all (killed after the claim went, or before claims existed) -- is
    "stale", never "running" forever; "done" without a summary is "incomplete" (runstore.shown_state)."""
    state, reason = shown_state(status, summary)
    if holder is not None:
        why = holder.stale_reason(timeout)
        if why is None:
            return ("running" if state == "running" else state), (reason if state != "running" else f"held by {holder.describe()}")
        return "stale", f"stale (last heartbeat {holder.last_heartbeat()}; {holder.describe()}: {why}); relaunch to resume"
    if state == "running":
        return "stale", "stale (no claim: its trainer is gone); relaunch to resume"
    return state, reason


def format_status(rows: list[dict]) -> str:
    def g(x, spec=".3g"):
        return "-" if x is None else format(x, spec)

    width = max([len(r["run"]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<11} {'att':>3}  {'step':>11}  {'eval_loss':>9}  {'N':>8}  {'D':>8}  {'C':>8}"]
    for r in rows:
        lines.append(f"{r['run']:<{width}}  {r['state']:<11} {r['attempts']:>3}  {r['step']:>11}  {g(r['eval_loss'], '.4f'):>9}  "
                     f"{g(r['N']):>8}  {g(r['D']):>8}  {g(r['C']):>8}")
        if r["reason"] and r["state"] != "done":
            lines.append(f"{'':<{width}}  ^ {r['reason']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def show_status(root) -> int:
    """`scaling status ROOT`: the table, or a one-line error naming the root."""
    shown = root
    root = os.fspath(root)
    if not is_url(root) and os.path.isfile(root):
        raise ConfigError(f"{root} is a file: give the --root folder of a sweep (or a run's folder)")
    if not (storage.list_dir(root) if is_url(root) else os.path.isdir(root)):
        raise ConfigError(f"{root} does not exist: give the --root of a sweep (or a run's folder)")
    try:
        rows = status_rows(root)
    except FileNotFoundError as e:  # a URL root with no run under it
        raise ConfigError(str(e)) from None
    if not rows:
        print(f"no runs under {shown}")
        return 0
    print(format_status(rows))
    return 0
