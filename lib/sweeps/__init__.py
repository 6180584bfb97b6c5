"""Sweeps: `plans.py` (Grid, IsoFlop, TokensPerParam expand to named run configs), `executors.py`
(in-process, --worker i/n, worker processes; what to skip, resume or retry), `ray.py` (one Ray
task per run).

May import: everything below it in lib (config, flops, models, data, parallel, train, store).
"""
