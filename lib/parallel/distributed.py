"""Joining JAX's multi-controller runtime: every host runs the same program, process 0 writes.

`initialize(...)` calls `jax.distributed.initialize` when the command line or environment says
this is one of several processes: an explicit coordinator (`--coordinator host:port
--num-processes n --process-id i`, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID), or a multi-host Cloud TPU slice (auto-detected by JAX from TPU_WORKER_HOSTNAMES).
A single process does nothing.
"""

from __future__ import annotations

import os

import jax


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout_s: int | None = None,
) -> None:
    """Join the multi-controller runtime if this is one of several processes; else do nothing.

    `heartbeat_timeout_s`: how soon a dead peer is noticed (the survivors then stop with an
    error instead of waiting in a collective); JAX's default is 100 s.
    """
    if jax.distributed.is_initialized():  # `scaling run` joins once, before its first stage
        return
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    multi_host_tpu = len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if not coordinator and not multi_host_tpu:
        return
    if coordinator and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes and --process-id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    timeouts = {"heartbeat_timeout_seconds": heartbeat_timeout_s} if heartbeat_timeout_s else {}
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id, **timeouts
        )
    else:
        jax.distributed.initialize(**timeouts)  # TPU VM: JAX reads the slice's worker list itself


def process_index() -> int:
    """This process's index among the JAX processes (0 on one host): process 0 writes and reports."""
    return jax.process_index()


def process_count() -> int:
    """How many JAX processes take part (1 unless joined by `initialize`)."""
    return jax.process_count()

