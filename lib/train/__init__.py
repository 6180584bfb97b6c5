"""Training one run: `step.py` (TrainState and the pure, jitted init/train/eval steps),
`optim.py` (optax chains and schedules as traced functions), `runtime.py` (the pack runtime: state,
resume or init_from, the lockstep tick, re-forming), `loop.py` (`train(cfg, workdir)`: setup, claims,
and a short loop with hooks: eval, log, checkpoint, finish, preemption), `summary.py` (RunSummary).

May import: lib.config, lib.flops, lib.models, lib.data, lib.parallel, lib.store.
"""
