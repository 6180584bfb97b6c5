"""Parallelism: `sharding.py` (the mesh over axes data/fsdp/tensor, the ONE logical-axis rules
table, presets, batch and replicated shardings) and `distributed.py` (jax.distributed start-up
for multi-host runs).

May import: lib.config.
"""
