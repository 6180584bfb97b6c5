"""The library: everything a run and a sweep need, layered so that imports point down only.

    config.py   the run description (frozen dataclasses, validate, overrides, content hash)
    store/      where results live: storage (local | gs://), run store, checkpoints, tracking
    models/     one file per model family (flax.linen modules)
    data/       token sources behind one interface (synthetic language, HF datasets)
    flops.py    the one place N and C are counted (parameters, FLOPs per token, MFU)
    parallel/   the device mesh, the one logical-axis rules table, multi-host start-up
    train/      pure jitted steps, optimizers and schedules, the training loop
    sweeps/     plans that expand to run configs, and the executors that train them

The allowed imports between these are written down in `tests/test_layout.py` (LAYERS), which
fails when a lower layer reaches up. `lib` never imports `analysis` or `experiments`.
"""
