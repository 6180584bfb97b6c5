"""Device mesh and the one logical-axis rules table.

Mesh axes are ("stage", "data", "fsdp", "expert", "tensor"). Presets (lib.config.MESH_PRESETS) only
choose axis sizes; the rules below are the same for all of them, and an axis of size 1 shards nothing:
  dp      : data=-1            -> batch split, parameters replicated
  fsdp    : fsdp=-1            -> batch split, parameters (and optimizer state) split on d_model
  fsdp_tp : fsdp=-1, tensor=2  -> as fsdp, plus heads / mlp / vocab split over tensor
  ep      : expert=-1          -> batch split, a moe model's experts split over the same devices
  fsdp_ep : fsdp=-1, expert=2  -> as fsdp, plus the experts split 2 ways
Activations use their own logical names so "batch over (data, fsdp, expert)" and "d_model over
fsdp" never map one mesh axis twice in one array.

Expert parallelism: the batch is split over `expert` like any data axis (attention and the dense
parts stay data-parallel there), and the experts' weights [experts, ...] are split over `expert`.
A moe layer dispatches tokens [groups, slots, d] -> [experts, groups, capacity, d] with an einsum;
the constraint `act_experts` -> expert on its output (with `act_group` -> (data, fsdp)) makes the
compiler move each token to its expert's device: an all-to-all over `expert`, and back on combine.
Every family's logical names (lib.models.Family.logical_axes) must have a rule here.

Pipeline stages (mesh.stage = S, lib/parallel/pipeline.py): the scanned layer stack [L, ...] carries
the logical name "layers", which maps to `stage`, so stage s holds layers s*L/S .. (s+1)*L/S - 1 --
and a checkpoint keeps the plain [L, ...] layout whatever S was. Activations, the embedding and the
head name no stage axis: outside the pipeline they are replicated over stages.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lib.config import MESH_AXES, MeshConfig, resolve_axis_sizes

# MESH_AXES (from lib.config) = ("stage", "data", "fsdp", "expert", "tensor"): stage outermost (the
# slowest links carry only activations between stages), tensor innermost (fastest-varying).
BATCH_AXES = ("data", "fsdp", "expert")
GROUP_AXES = ("data", "fsdp")  # the batch's split once `expert` carries the experts (moe dispatch)

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # a pack's leading run axis (lib/train/step.py): replicated here; pack_rules(spread=True) puts it on data
    ("run", None),
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", "stage"),  # contiguous groups of scanned layers, one per pipeline stage
    ("experts", "expert"),  # moe: the leading [n_experts] dim of the experts' weights
    # activations
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_experts", "expert"),  # moe dispatched tokens [experts, groups, capacity, d]
    ("act_group", GROUP_AXES),
    ("act_capacity", None),
)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all, across processes) with Auto axes (see JAX_NOTES)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_axis_sizes(cfg, len(devices))
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} does not cover the {len(devices)} devices")
    # Row-major over devices ordered by process then id: stage/data/fsdp (outer) span hosts (and
    # slices), tensor (inner, fastest-varying) stays within a host.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    grid = np.asarray(ordered, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Trace inside this so `nn.with_logical_constraint` takes effect (it needs jax.set_mesh)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


def logical_shardings(abstract_tree, mesh: Mesh, rules=RULES):
    """NamedShardings for a tree of (boxed) abstract values from `jax.eval_shape(init)`."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch rows (token rows [B, T+1], images [B, H, W, C], labels [B]): rows split over the batch
    axes, every other dimension replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *(None,) * (ndim - 1)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicated_array(value: np.ndarray, mesh: Mesh) -> jax.Array:
    """A small host value every process holds the same copy of, as one replicated global array."""
    return jax.make_array_from_callback(value.shape, replicated(mesh), lambda index: value[index])


def global_batch(local_rows, mesh: Mesh):
    """Assemble the global batch from this process's rows (every process passes its own); a pytree
    of row arrays (an image task's {"image", "label"}) is assembled leaf by leaf."""
    def one(rows: np.ndarray) -> jax.Array:
        global_shape = (rows.shape[0] * jax.process_count(), *rows.shape[1:])
        return jax.make_array_from_process_local_data(batch_sharding(mesh, rows.ndim), rows, global_shape)

    return jax.tree.map(one, local_rows)


# ---- packs: K runs trained as one program, with a leading "run" axis (lib/train/step.py) ----------
RUN_MESH_AXIS = "data"  # where a spread pack puts its run axis


def pack_rules(spread: bool):
    """The rules for a pack's arrays, derived from the one table.

    Replicated (spread=False): the table as it is; the run axis is on no mesh axis, so every device
    holds every run and data/fsdp/tensor shard inside each run as they would for a lone run.
    Spread: the run axis takes `data` -- each data-parallel device trains whole models, with no
    collective between runs -- and every other rule drops `data`, which no other dimension of the
    same array may then use (the batch inside a run is split over the remaining batch axes).
    """
    if not spread:
        return RULES

    def without_data(axes):
        if isinstance(axes, tuple):
            rest = tuple(a for a in axes if a != RUN_MESH_AXIS)
            return rest or None
        return None if axes == RUN_MESH_AXIS else axes

    return tuple((name, RUN_MESH_AXIS if name == "run" else without_data(axes)) for name, axes in RULES)


def with_run_axis(specs):
    """Logical PartitionSpecs of one run's arrays -> those of a pack's (a leading "run" dimension)."""
    return jax.tree.map(lambda spec: P("run", *spec), specs, is_leaf=lambda x: isinstance(x, P))


def pack_batch_sharding(mesh: Mesh, rules, ndim: int = 3) -> NamedSharding:
    """A pack's batches [K, B, ...]: the run axis as `rules` place it, rows as act_batch."""
    return nn.logical_to_mesh_sharding(P("run", "act_batch", *(None,) * (ndim - 2)), mesh, rules)


def pack_global_batch(local_KB, mesh: Mesh, rules):
    """Assemble a pack's global batch from this process's rows of every run ([K, B / processes, ...]
    leaves of a pytree, as global_batch)."""
    def one(rows: np.ndarray) -> jax.Array:
        global_shape = (rows.shape[0], rows.shape[1] * jax.process_count(), *rows.shape[2:])
        return jax.make_array_from_process_local_data(pack_batch_sharding(mesh, rules, rows.ndim), rows, global_shape)

    return jax.tree.map(one, local_KB)
