"""Training one run: `step.py` (TrainState and the pure, jitted init/train/eval steps),
`optim.py` (optax chains and schedules as traced functions), `loop.py` (the `train(cfg, workdir)`
loop: setup, resume, log, eval, checkpoint, preemption, summary).

May import: lib.config, lib.flops, lib.models, lib.data, lib.parallel, lib.store.
"""
