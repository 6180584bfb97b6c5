"""Device mesh and the one logical-axis rules table.

Mesh axes are ("data", "fsdp", "tensor"). Presets (lib.config.MESH_PRESETS) only choose axis
sizes; the rules below are the same for all of them, and an axis of size 1 shards nothing:
  dp      : data=-1            -> batch split, parameters replicated
  fsdp    : fsdp=-1            -> batch split, parameters (and optimizer state) split on d_model
  fsdp_tp : fsdp=-1, tensor=2  -> as fsdp, plus heads / mlp / vocab split over tensor
Activations use their own logical names so "batch over (data, fsdp)" and "d_model over fsdp"
never map one mesh axis twice in one array.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lib.config import MeshConfig, resolve_axis_sizes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all, across processes) with Auto axes (see JAX_NOTES)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_axis_sizes(cfg, len(devices))
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} does not cover the {len(devices)} devices")
    # Row-major over devices ordered by process then id: data/fsdp (outer) span hosts, tensor
    # (inner, fastest-varying) stays within a host.
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    grid = np.asarray(ordered, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Trace inside this so `nn.with_logical_constraint` takes effect (it needs jax.set_mesh)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


def logical_shardings(abstract_tree, mesh: Mesh):
    """NamedShardings for a tree of (boxed) abstract values from `jax.eval_shape(init)`."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Token batches [B, T+1]: rows split over (data, fsdp), time replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicated_array(value: np.ndarray, mesh: Mesh) -> jax.Array:
    """A small host value every process holds the same copy of, as one replicated global array."""
    return jax.make_array_from_callback(value.shape, replicated(mesh), lambda index: value[index])


def global_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assemble the global batch from this process's rows (every process passes its own)."""
    sharding = batch_sharding(mesh)
    global_shape = (local_rows.shape[0] * jax.process_count(), *local_rows.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local_rows, global_shape)
