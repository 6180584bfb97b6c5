"""Where a train step's time goes: the XLA ops of the exact jitted step `scaling train` runs, by time.

Builds the transformer's step (lib.train.step.build_steps) at one of train_throughput.py's sizes,
as that benchmark configures it (`step_config`: float32 on CPU, bfloat16 on accelerators), runs it under
jax.profiler for --steps steps, reads the trace's events and prints the ops with the most time
per step, then the same summed by kind (an op's name without its number: `copy_bitcast_fusion`,
`ynn_fusion`, `dot`, ...). Writes JSON to benchmarks/results/step_profile.json.

    python benchmarks/step_profile.py                                           # the quickstart's d64-L3
    python benchmarks/step_profile.py --size d64-L2 --seq-len 256 --batch 8 --vocab 256
    python benchmarks/step_profile.py ... --hlo /tmp/step.txt                   # and the optimised HLO, to look an op up

XLA:CPU runs independent ops of a step concurrently on its thread pool, so per-op times overlap
and their sum exceeds the step; the ranking, not the sum, is what this is for. The op names are
those of the compiled program (`--hlo` writes it): a `copy`/`transpose` fusion between a dense
layer's gradient and its weight-gradient dot is a layout change the model's code can avoid
(docs/speed.md).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_json  # noqa: E402
from benchmarks.train_throughput import SIZES, step_config  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lib.parallel import sharding  # noqa: E402
from lib.train.step import build_steps  # noqa: E402

# Trace events that are not ops of the program: the host's calls and the executor's own spans.
_NOT_AN_OP = re.compile(r"^\$|Thunk|Pjit|Slinky|PjRt|ParseArguments|ExecuteHelper")


def profile(args) -> dict:
    devices = jax.devices()[:1]
    cfg = step_config(args.size, args, devices)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rng = np.random.default_rng(0)
    with sharding.activate(mesh):
        batches = [sharding.global_batch(rng.integers(0, args.vocab, (args.batch, args.seq_len + 1), dtype=np.int32), mesh)
                   for _ in range(2)]
        steps = build_steps(cfg, mesh)
        state = steps.init(jax.random.key(0))
        step = steps.train_step.lower(state, batches[0], steps.horizon).compile()
        if args.hlo:
            Path(args.hlo).write_text(step.as_text())
        for i in range(3):  # warm-up
            state, m = step(state, batches[i % 2], steps.horizon)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, m = step(state, batches[i % 2], steps.horizon)
        jax.block_until_ready(m)
        step_s = (time.perf_counter() - t0) / args.steps
        trace_dir = tempfile.mkdtemp(prefix="step_profile_")
        with jax.profiler.trace(trace_dir):
            for i in range(args.steps):
                state, m = step(state, batches[i % 2], steps.horizon)
            jax.block_until_ready(m)
    (trace,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    per_op = collections.Counter()
    for e in json.load(gzip.open(trace))["traceEvents"]:
        if e.get("ph") == "X" and not _NOT_AN_OP.search(e.get("name", "")):
            per_op[e["name"]] += e["dur"] * 1e-6 / args.steps
    per_kind = collections.Counter()
    for name, s in per_op.items():
        per_kind[name.rsplit(".", 1)[0] if re.search(r"\.\d+$", name) else name] += s
    return {"shape": vars(args), "step_time_s": step_s, "ops_s": dict(per_op.most_common()), "kinds_s": dict(per_kind.most_common())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="d64-L3", choices=list(SIZES), help="a shape of train_throughput.py's SIZES")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps profiled (and timed before, without the profiler)")
    p.add_argument("--top", type=int, default=25, help="ops printed")
    p.add_argument("--hlo", help="also write the compiled step's optimised HLO here")
    p.set_defaults(mlp="gelu", attention=None, scan=False, remat=False, mesh="dp")  # train_throughput's defaults, one device
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_profile.json"))
    args = p.parse_args()
    result = profile(args)
    print(f"{args.size} seq {args.seq_len} batch {args.batch} vocab {args.vocab}: "
          f"step {result['step_time_s'] * 1e3:.2f} ms ({jax.devices()[0].device_kind})")
    print(f"{'ms/step':>9}  op")
    for name, s in list(result["ops_s"].items())[: args.top]:
        print(f"{s * 1e3:>9.3f}  {name}")
    print(f"\n{'ms/step':>9}  kind (ops summed)")
    for name, s in list(result["kinds_s"].items())[:12]:
        print(f"{s * 1e3:>9.3f}  {name}")
    print("wrote", write_json(args.out, result))


if __name__ == "__main__":
    main()
