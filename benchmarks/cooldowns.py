"""Trunks + cooldown branches vs separate cosine runs for the same (N, D) points.

    python benchmarks/cooldowns.py                     # compute accounting only (planning, seconds)
    python benchmarks/cooldowns.py --train runs/bench  # also train both, time them, fit both

Accounting, for two grids of points:
  quickstart   the first quickstart's 15 points (experiments/quickstart_wsd.py: 1-3 token counts per size);
  4-per-size   every one of those sizes at 4 token counts, D = C / flops_per_token(N) for
               C in 3e10, 1e11, 3e11, 1e12 (the issue's benchmark grid).
Spent = each trunk once + every branch's tail; from scratch = each point trained alone (the
branches' recorded flops). With --train (the quickstart grid, one lr 2e-2 for both, the first
quickstart's single lr, so no tune stage): wall time of each, then `scaling fit`
of each root, and Chinchilla's alpha, beta (approach 3) and a (approaches 1 and 3) with intervals.
Writes benchmarks/results/cooldowns.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results_io import RESULTS, write_json  # noqa: E402
from experiments import quickstart, quickstart_wsd  # noqa: E402
from lib import flops as flops_lib  # noqa: E402
from lib.sweeps.cooldowns import Cooldowns, accounting  # noqa: E402

FOUR = [3e10, 1e11, 3e11, 1e12]


def four_per_size() -> Cooldowns:
    T, B = quickstart.BASE.data.seq_len, quickstart.BASE.data.global_batch

    def tokens(model):
        model = dataclasses.replace(model, vocab_size=quickstart.BASE.data.synth_vocab)
        fpt = flops_lib.flops_per_token(model, T, quickstart.BASE.train.flops_convention)
        return [int(round(c / fpt / (B * T))) * B * T for c in FOUR]

    return Cooldowns(quickstart_wsd.SIZES, tokens=tokens, decay_frac=quickstart_wsd.DECAY_FRAC, decay_shape=quickstart_wsd.DECAY_SHAPE,
                     base=quickstart.BASE, name="wsd4")


def _fit(root: str) -> dict:
    out = os.path.join(root, "fit")
    subprocess.run([sys.executable, "-m", "experiments.cli", "fit", root, "--out", out, "--no-figures"], check=True)
    with open(os.path.join(out, "fit.json")) as f:
        record = json.load(f)
    fits, got = record.get("fits", {}), {}
    for name in ("approach1", "approach3"):
        e = fits.get(name)
        if not e:
            continue
        got[name] = {k: e["params"][k] for k in ("alpha", "beta") if k in e.get("params", {})}
        if "a" in e:
            got[name]["a"] = e["a"]
    got["branches"] = (record.get("branches") or {}).get("n")
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", metavar="ROOT", help="train cosine and wsd quickstart grids under ROOT, time and fit them")
    args = ap.parse_args(argv)
    result = {"accounting": {}}
    for label, sweep in (("quickstart", quickstart_wsd.sweep(lr_rule=None)), ("4-per-size", four_per_size())):
        acc = accounting(sweep.plan())
        result["accounting"][label] = acc
        print(f"{label:<11} {acc['trunks']} trunks + {acc['branches']:>2} branches: spent {acc['spent']:.3g} FLOPs, "
              f"from scratch {acc['from_scratch']:.3g} -> {acc['ratio']:.1%} (floor for these points, a zero-length "
              f"cooldown: {acc['floor_ratio']:.1%})")
    if args.train:
        from lib.sweeps.executors import enable_compile_cache, run_local

        enable_compile_cache(os.path.join(args.train, ".jax_cache"))
        sweeps = {"cosine": dataclasses.replace(quickstart.sweep(), lr_rule=None), "wsd": quickstart_wsd.sweep(lr_rule=None)}
        result["train"] = {}
        for label, sweep in sweeps.items():
            root = os.path.join(args.train, label)
            plan = sweep.plan({"tracking.console": False})
            t0 = time.perf_counter()
            report = run_local(plan, root)
            wall = time.perf_counter() - t0
            spent = accounting(plan)["spent"] if label == "wsd" else sum(r.flops for r in plan.runs)
            result["train"][label] = {"wall_s": wall, "flops_spent": spent, "runs": len(plan.runs),
                                      "failed": [o.run_id for o in report.outcomes if o.result == "failed"], "fit": _fit(root)}
            print(f"{label}: {len(plan.runs)} runs, {spent:.3g} FLOPs, {wall:.0f}s; fit {json.dumps(result['train'][label]['fit'])}", flush=True)
    path = RESULTS / "cooldowns.json"
    if "train" not in result and path.exists():  # accounting only: keep the last trained comparison
        result["train"] = json.loads(path.read_text()).get("train")
    write_json(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
