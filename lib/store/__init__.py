"""Where results live: `storage.py` (local paths and gs:// behind atomic reads/writes/listings),
`runstore.py` (one folder per run: config, status, metrics, summary), `checkpoint.py` (orbax
CheckpointManager, restore onto the current mesh), `tracking.py` (run store + wandb + console).

May import: lib.config. Only process 0 writes run-store files; every process writes checkpoints.
"""
