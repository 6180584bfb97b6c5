"""Parallelism: `sharding.py` (the mesh over axes stage/data/fsdp/expert/tensor, the ONE logical-axis
rules table, presets, batch and replicated shardings), `pipeline.py` (the layer stack as a
microbatched GPipe schedule over the `stage` axis) and `distributed.py` (jax.distributed start-up
for multi-host runs).

May import: lib.config.
"""
