"""Pipeline parallelism: step time against the number of microbatches M for S stages, and the
schedule's idle fraction measured next to its theoretical bubble (S-1)/(M+S-1).

For each (S, M), with mesh.stage = S (the other devices on `data`) and train.microbatches = M:
  step     the exact jitted train step `scaling train` runs (lib.train.step.build_steps);
  stack    the layer stack alone as the pipeline schedule (lib.parallel.pipeline.run), forward and
           backward, with the model's real layer and parameters;
  ideal    the same stages and microbatches with no schedule to wait on: every stage applies its
           layers to all M microbatches at once, no fill, no drain, no stage-to-stage traffic.
The measured idle fraction is 1 - ideal / stack: the share of the schedule's time its stages are not
doing the work a perfect pipeline would (the bubble, plus the ppermute traffic and the final psum).

    python benchmarks/pipeline.py                       # 8 forced CPU devices, S = 2 and 4
    python benchmarks/pipeline.py --no-force-devices --d-model 1024 --layers 16 --seq-len 1024   # accelerators

Each microbatch keeps the same rows per replica (--rows) whatever M, so the work per tick is fixed
and the batch grows with M. On CPU the 8 forced devices share the host's cores, so stages do not
really run at once: the bubble shows as the work idle stages still do on stale values (the schedule
computes, and discards, on every stage at every tick), which `ideal` does not do. On accelerators
each stage is its own chip and the bubble is idle time. Writes JSON to benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if "--no-force-devices" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_io import write_json  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lib.config import DataConfig, MeshConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig  # noqa: E402
from lib.config_rules import validate  # noqa: E402
from lib.models.transformer import one_layer  # noqa: E402
from lib.parallel import pipeline, sharding  # noqa: E402
from lib.train.step import build_steps  # noqa: E402


def no_bubble(layer_fn, layers, x_B, microbatches: int):
    """`pipeline.run` without the schedule: each stage runs its layers over every microbatch back to
    back (all stages busy all the time, nothing sent between them). The numbers are not the model's
    (each stage reads the input, not its neighbour's output); the work per stage is the pipeline's."""
    S = pipeline.stage_count()

    def per_stage(stage_layers, x_Mb):
        apply_stage = lambda x_b: jax.lax.scan(lambda h, p: (layer_fn(p, h), None), x_b, stage_layers)[0]  # noqa: E731
        y_Mb = jax.lax.map(apply_stage, jax.lax.pcast(x_Mb, (pipeline.STAGE_AXIS,), to="varying"))
        return jax.lax.psum(y_Mb, pipeline.STAGE_AXIS) / S

    staged = jax.shard_map(per_stage, in_specs=(P(pipeline.STAGE_AXIS), P()), out_specs=P(), axis_names={pipeline.STAGE_AXIS})
    return pipeline.from_microbatches(staged(layers, pipeline.to_microbatches(x_B, microbatches)))


def fastest(calls: dict, repeats: int) -> dict:
    """{name: the fastest of `repeats` timed calls}, the calls interleaved (warmed up first). The
    minimum, not the median: on a host shared with other jobs, noise only ever adds time, and
    interleaving puts the two programs under the same conditions."""
    for fn in calls.values():
        jax.block_until_ready(fn())
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def measure(args, devices, stages: int, microbatches: int) -> dict:
    """Train-step, pipelined-stack and no-bubble-stack times for S stages and M microbatches."""
    data = len(devices) // stages
    batch = microbatches * args.rows * data
    on_accel = devices[0].platform != "cpu"
    cfg = validate(RunConfig(
        model=ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                          scan_layers=True, compute_dtype="bfloat16" if on_accel else "float32"),
        data=DataConfig(seq_len=args.seq_len, global_batch=batch),
        optimizer=OptimizerConfig(name="adamw", lr=1e-4, warmup_steps=0),
        train=TrainConfig(steps=args.steps + 2, microbatches=microbatches, eval_tokens=batch * args.seq_len),
        mesh=MeshConfig(stage=stages, data=data),
    ), len(devices))
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rng = np.random.default_rng(0)
    with sharding.activate(mesh):
        steps = build_steps(cfg, mesh)
        state = steps.init(jax.random.key(0))
        tokens = sharding.global_batch(rng.integers(0, args.vocab, (batch, args.seq_len + 1), dtype=np.int32), mesh)
        t0 = time.perf_counter()
        step = steps.train_step.lower(state, tokens, steps.horizon).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for i in range(args.steps + 1):  # the state is donated: thread it through; the first call warms up
            t0 = time.perf_counter()
            state, metrics = step(state, tokens, steps.horizon)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        step_s = min(times[1:])

        layer_and_sown = one_layer(cfg.model, deterministic=True)
        layer = lambda p, x: layer_and_sown(p, x)[0]  # noqa: E731  (the dense layer sows nothing)
        x_BTD = sharding.global_batch(rng.standard_normal((batch, args.seq_len, args.d_model), dtype=np.float32), mesh)
        calls = {}
        for name, stack in (("stack", pipeline.run), ("ideal", no_bubble)):
            fwd_bwd = jax.jit(jax.grad(lambda w, x, stack=stack: jnp.sum(stack(layer, w, x, microbatches) ** 2), argnums=(0, 1)))
            calls[name] = lambda fwd_bwd=fwd_bwd: fwd_bwd(state.params["layers"], x_BTD)
        stack_times = fastest(calls, args.steps)
    return {"stages": stages, "microbatches": microbatches, "data": data, "global_batch": batch, "step_time_s": step_s,
            "compile_time_s": compile_s, "stack_time_s": stack_times["stack"], "ideal_time_s": stack_times["ideal"],
            "idle_measured": 1 - stack_times["ideal"] / stack_times["stack"],
            "bubble_theory": pipeline.bubble_fraction(stages, microbatches)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4, 8], help="M = multiple x S")
    p.add_argument("--rows", type=int, default=2, help="rows per replica in each microbatch (fixed: a tick costs the same at every M)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--steps", type=int, default=9, help="timed repeats of each program (the fastest counts)")
    p.add_argument("--no-force-devices", action="store_true", help="use the real devices (accelerators), not 8 forced CPU ones")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipeline.json"))
    args = p.parse_args()
    devices = jax.devices()

    rows = [measure(args, devices, S, k * S) for S in args.stages for k in args.multiples]

    print(f"device: {len(devices)} x {devices[0].device_kind}  d_model {args.d_model}  layers {args.layers}  seq {args.seq_len}  "
          f"{args.rows} rows per replica per microbatch")
    print(f"{'S':>3} {'M':>4} {'data':>5} {'batch':>6} {'step s':>9} {'step s/row':>11} {'stack s':>9} {'ideal s':>9} "
          f"{'idle measured':>14} {'bubble theory':>14}")
    for r in rows:
        print(f"{r['stages']:>3} {r['microbatches']:>4} {r['data']:>5} {r['global_batch']:>6} {r['step_time_s']:>9.4f} "
              f"{r['step_time_s'] / r['global_batch']:>11.5f} {r['stack_time_s']:>9.4f} {r['ideal_time_s']:>9.4f} "
              f"{r['idle_measured']:>14.3f} {r['bubble_theory']:>14.3f}")
    out = write_json(args.out, {"device_kind": devices[0].device_kind, "n_devices": len(devices), "args": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
