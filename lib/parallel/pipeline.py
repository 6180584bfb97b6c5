"""Pipeline parallelism: the scanned layer stack split into stages over the mesh's `stage` axis, run
as a microbatched GPipe schedule (Huang et al. 2019). Pure functions; nothing here knows the model.

The stack's parameters are stacked [L, ...] (flax nn.scan) and their leading axis is sharded over
`stage` by the one rules table ("layers" -> stage), so stage s holds layers s*L/S .. (s+1)*L/S - 1 and
the checkpoint layout is the same for every S. `run` splits a batch into M microbatches and, inside
`jax.shard_map` that is manual over `stage` only (data/fsdp/expert/tensor stay automatic, so each
stage's layers are sharded inside the stage exactly as without a pipeline), ticks M + S - 1 times:

    tick t:  stage 0 takes microbatch t (while t < M), every other stage what its left neighbour
             sent at tick t-1; each stage applies its L/S layers; the last stage has finished
             microbatch t - (S-1); every stage sends its result one stage right (ppermute).

Stage s does useful work at ticks s .. s+M-1 and computes on stale values otherwise (never used):
the bubble, (S-1)/(M+S-1) of every stage's time. The backward pass is the autodiff of this loop:
all forward ticks, then all backward ticks in reverse (ppermute transposes to a send to the left),
which is GPipe's schedule; a 1F1B schedule would need the backward written by hand and is left out.
The last stage's outputs reach every stage by a masked psum, so what follows the stack (final norm,
head, loss) runs replicated over stages, as does the embedding before it.

Microbatch m takes rows m, m+M, m+2M, ... of the batch, so each data-parallel device keeps an equal
share of every microbatch and no rows move between devices (lib/train/step.py's grad_accum does the
same); lib/config.py checks that M divides every replica's rows.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

STAGE_AXIS = "stage"
SCHEDULE = "gpipe"  # recorded in the run summary with the bubble fraction


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The share of each stage's ticks spent idle in the schedule: (S-1) / (M+S-1)."""
    return (stages - 1) / (microbatches + stages - 1) if microbatches else 0.0


def to_microbatches(x_B, microbatches: int):
    """[B, ...] -> [M, B/M, ...]; microbatch m holds rows m, m+M, ... (stays local to each device)."""
    B = x_B.shape[0]
    return x_B.reshape(B // microbatches, microbatches, *x_B.shape[1:]).swapaxes(0, 1)


def from_microbatches(x_Mb):
    """The inverse of to_microbatches: [M, B/M, ...] -> [B, ...]."""
    return x_Mb.swapaxes(0, 1).reshape(-1, *x_Mb.shape[2:])


def stage_count() -> int:
    """The size of the context mesh's stage axis (set by lib.parallel.sharding.activate)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or STAGE_AXIS not in mesh.axis_names:
        raise ValueError("the pipeline runs under a mesh with a 'stage' axis: trace inside lib.parallel.sharding.activate(mesh)")
    return mesh.shape[STAGE_AXIS]


def run(layer_fn: Callable[[Any, jax.Array], Any], layers, x_B, microbatches: int):
    """The stacked layers applied in order to x_B ([B, ...]), as the pipeline schedule.

    layer_fn(params of one layer, x [b, ...]) -> x, or -> (x, aux) where aux is a pytree of values
    the layer reports (moe's routing stats); `layers`: a pytree of [L, ...] arrays whose leading
    axis is sharded over the mesh's `stage` axis. Returns x_B, equal to
    `lax.scan(lambda x, p: (layer_fn(p, x), None), x_B, layers)[0]` up to float rounding; with aux,
    (x_B, aux stacked [L, ...] per layer, each the mean over the microbatches of that layer's value),
    which is what `train.grad_accum` = M microbatches would average.
    """
    S = stage_count()
    L = jax.tree.leaves(layers)[0].shape[0]
    if L % S or microbatches < S or x_B.shape[0] % microbatches:
        raise ValueError(f"pipeline: {L} layers over {S} stages with {microbatches} microbatches of a batch of "
                         f"{x_B.shape[0]} rows (lib/config.py validates this: S | L, M >= S, M | rows)")
    x_Mb = to_microbatches(x_B, microbatches)
    first = jax.eval_shape(layer_fn, jax.tree.map(lambda w: w[0], layers), x_Mb[0])
    with_aux = isinstance(first, tuple)
    step = layer_fn if with_aux else (lambda p, x: (layer_fn(p, x), {}))
    schedule = functools.partial(_schedule, step, S, microbatches)
    staged = jax.shard_map(schedule, in_specs=(P(STAGE_AXIS), P()), out_specs=(P(), P(STAGE_AXIS)), axis_names={STAGE_AXIS})
    y_Mb, aux_L = staged(layers, x_Mb)
    return (from_microbatches(y_Mb), aux_L) if with_aux else from_microbatches(y_Mb)


def _schedule(layer_fn, S: int, M: int, stage_layers, x_Mb):
    """Per stage (manual over `stage`): stage_layers [L/S, ...] this stage's layers, x_Mb [M, b, ...]
    every microbatch (used by stage 0). Returns the last stage's outputs [M, b, ...] on every stage,
    and this stage's layers' aux [L/S, ...] summed over the ticks it did real work at, / M."""
    s = jax.lax.axis_index(STAGE_AXIS)
    to_next = [(i, (i + 1) % S) for i in range(S)]

    def apply_stage(x_b):
        return jax.lax.scan(lambda h, p: layer_fn(p, h), x_b, stage_layers)

    def tick(carry, t):
        received_b, aux_sum = carry
        x_b = jnp.where(s == 0, x_Mb[jnp.minimum(t, M - 1)], received_b)
        y_b, aux = apply_stage(x_b)
        busy = (t >= s) & (t < s + M)  # stage s works on microbatch t - s; the rest is the bubble
        aux_sum = jax.tree.map(lambda a, v: a + jnp.where(busy, v, jnp.zeros_like(v)), aux_sum, aux)
        return ((jax.lax.ppermute(y_b, STAGE_AXIS, to_next) if S > 1 else y_b), aux_sum), y_b

    start_b = jax.lax.pcast(jnp.zeros_like(x_Mb[0]), (STAGE_AXIS,), to="varying")  # the carry differs per stage
    aux_shape = jax.eval_shape(apply_stage, start_b)[1]
    no_aux = jax.tree.map(lambda v: jax.lax.pcast(jnp.zeros(v.shape, v.dtype), (STAGE_AXIS,), to="varying"), aux_shape)
    (_, aux_sum), y_Tb = jax.lax.scan(tick, (start_b, no_aux), jnp.arange(M + S - 1))
    finished_Mb = y_Tb[S - 1:]  # on the last stage: microbatch m finished at tick m + S - 1
    y_Mb = jax.lax.psum(jnp.where(s == S - 1, finished_Mb, jnp.zeros_like(finished_Mb)), STAGE_AXIS)
    return y_Mb, jax.tree.map(lambda a: a / M, aux_sum)


def layer_stack(microbatches: int):
    """What a model runs its scanned layer stack with (lib.models.make_model's `layer_stack`;
    its layer_fn returns (x, aux), and so does the stack):
    None (its own nn.scan) when there is no schedule, else `run` with M microbatches."""
    return functools.partial(run, microbatches=microbatches) if microbatches else None
