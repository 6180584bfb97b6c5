"""A finished sweep's training, pack by pack: how fast this tree trains the very packs a sweep trained.

Reads the runs under ROOT (their config.json and status.json), groups them into the packs they trained
in (the same pack key and length, in packs of the size each run's status records), and times each
pack's step as the loop compiles it -- with this tree's transformer, with the transformer as it was at
older revisions (`--baseline REV ..`, train_throughput.py's switch) and/or vmapped over its runs
(`--vmap`; on CPU the loop maps them one by one) -- in alternating rounds in one process, on one
fixed batch (the loop's own host work per tick hides behind the step: docs/speed.md). Prints each
pack's median step per variant and the training time each variant implies for the whole sweep (each
pack's steps x its step), and writes JSON (default benchmarks/results/sweep_packs.json). Every pack
trains on one device here, as a CPU sweep's do.

This is the issue-26 measure "per FLOP" without training the sweep again: the same packs, lengths and
FLOPs, only the step differs. Compile, init, eval and checkpoints are not in it (the runs' summaries
have them).

    python benchmarks/sweep_packs.py runs/quickstart --baseline 02c9e0b     # the quickstart sweep, against a revision
    python benchmarks/sweep_packs.py runs/quickstart --vmap                 # one vmap over each pack's runs
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_json  # noqa: E402
from benchmarks.packed_throughput import timed_steps  # noqa: E402
from benchmarks.train_throughput import transformer_at  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lib.config import RunConfig  # noqa: E402
from lib.data import make_source  # noqa: E402
from lib.parallel import sharding  # noqa: E402
from lib.store.storage import default_data_root  # noqa: E402
from lib.train.environment import numerics_environment  # noqa: E402
from lib.train.step import build_pack, build_steps, pack_key  # noqa: E402


def sweep_packs(root: Path) -> tuple[list[tuple[str, list[RunConfig]]], list[str]]:
    """(name, configs) of each pack the runs under `root` trained in, by pack key, length and the pack
    size their status.json records (runs of one key and length beyond that size: packs of it, in
    run-id order); and a line for each run left out because its config.json does not parse. A run
    without a recorded pack size (or a readable status.json) counts as alone."""
    groups, left_out = collections.defaultdict(list), []
    for run_dir in sorted(p.parent for p in root.glob("*/config.json")):
        try:
            cfg = RunConfig.from_json((run_dir / "config.json").read_text())
        except ValueError as e:  # a truncated or foreign file (JSONDecodeError is a ValueError)
            left_out.append(f"{run_dir.name}: config.json does not parse ({e})")
            continue
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        groups[(pack_key(cfg), cfg.train.steps, int(status.get("pack") or 1))].append((run_dir.name, cfg))
    packs = []
    for (_, _, size), runs in groups.items():
        for i in range(0, len(runs), size):
            chunk = runs[i:i + size]
            packs.append((chunk[0][0] + (f" (+{len(chunk) - 1})" if len(chunk) > 1 else ""), [c for _, c in chunk]))
    return packs, left_out


def built_pack(cfgs: list[RunConfig], mesh, rev: str | None, vmap: bool, root: Path) -> dict:
    """The pack as the loop builds it, on one device (the transformer at `rev`; vmap: one vmap over its
    runs -- a pack of one is the lone program either way): its jitted step, a fresh stacked initial
    state per call of `start` (the step donates it), one batch, the advance mask and hparams."""
    with transformer_at(rev):
        lone = build_steps(cfgs[0], mesh)
        pack = build_pack(cfgs, mesh, chunk=None if vmap else "auto")
    source = make_source(cfgs[0].data, data_root=cfgs[0].data.data_root or default_data_root(str(root)))
    batch = pack.batch(jax.tree.map(lambda *x: np.stack(x), *[source.batch(0, 0, 1) for _ in cfgs]), mesh)
    inits = [lone.init(jax.random.key(c.train.seed)) for c in cfgs]
    return {"step": pack.train_step, "start": lambda: pack.stack(*inits), "batch": batch,
            "advance": sharding.replicated_array(np.ones(len(cfgs), bool), mesh), "hparams": pack.hparams}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="a sweep's folder of runs (e.g. runs/quickstart; its tune runs: runs/quickstart/tune)")
    p.add_argument("--baseline", nargs="*", default=[], metavar="GIT_REV", help="also time each pack with the transformer as it was at these revisions")
    p.add_argument("--vmap", action="store_true", help="also time each pack vmapped over its runs (this tree)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of all variants in turn; the median round is reported")
    p.add_argument("--steps", type=int, default=30, help="timed steps per round")
    p.add_argument("--out", default="sweep_packs.json")
    args = p.parse_args()
    packs, left_out = sweep_packs(args.root)
    for line in left_out:
        print(f"left out {line}", file=sys.stderr)
    if not packs:
        p.error(f"root: no runs with a config.json under {args.root}")
    variants = {"this": (None, False), **{f"at {rev}": (rev, False) for rev in args.baseline}, **({"vmap": (None, True)} if args.vmap else {})}
    mesh = sharding.make_mesh(packs[0][1][0].mesh, jax.devices()[:1])
    print(f"{len(packs)} packs under {args.root}; {jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"{'pack':<44} {'runs':>4} {'steps':>6} " + " ".join(f"{v + ' ms':>14}" for v in variants))
    rows, implied = [], dict.fromkeys(variants, 0.0)
    with sharding.activate(mesh):
        for name, cfgs in packs:
            built = {v: built_pack(cfgs, mesh, rev, vmap, args.root) for v, (rev, vmap) in variants.items()}
            times = {v: [] for v in variants}
            for _ in range(args.rounds):
                for v, b in built.items():  # each round from the same initial state
                    times[v].append(timed_steps(b["step"], b["start"](), b["advance"], [b["batch"]] * 2, b["hparams"], args.steps)[0])
            step_s = {v: float(np.median(t)) for v, t in times.items()}
            steps = cfgs[0].train.steps
            for v in variants:
                implied[v] += steps * step_s[v]
            rows.append({"pack": name, "runs": len(cfgs), "steps": steps, "step_s": step_s})
            print(f"{name:<44} {len(cfgs):>4} {steps:>6} " + " ".join(f"{1e3 * step_s[v]:>14.2f}" for v in variants), flush=True)
    print("the packs' steps take: " + ", ".join(f"{v} {implied[v]:.1f} s" for v in variants)
          + "".join(f"; {v}: {implied['this'] / implied[v]:.2f}x this tree's speed" for v in variants if v != "this"))
    record = {"root": str(args.root), "environment": numerics_environment(jax.devices()[0]), "load": os.getloadavg()[0],
              "rounds": args.rounds, "steps": args.steps, "rows": rows, "implied_training_s": implied, "left_out": left_out}
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
