"""Pure, jit-compiled pieces of one run: the train state, the loss, `train_step`, `eval_step`, `init`.

Everything here is a pure function traced by jax; `build_steps` compiles them for a mesh (with the
shardings from the one rules table) and is what the loop and the throughput benchmark both call.
`build_pack` compiles the same `train_step` for K runs at once (a pack): `jax.vmap` over a leading
run axis of the whole state, the numbers the runs differ in traced per run (`pack_hparams`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.config import ConfigError, RunConfig
from lib import models
from lib.models import make_model
from lib import tasks
from lib.parallel import pipeline, sharding
from lib.store.checkpoint import abstract_with_shardings
from lib.train.optim import learning_rate, make_run_direction


@dataclasses.dataclass(frozen=True)
class TrainState:
    """A run's state. `model_state`: the model's mutable collections besides its parameters (batch
    norm's running averages, "batch_stats"); {} for every LM family, and then left out of the pytree,
    so an LM state flattens -- and checkpoints, and restores old checkpoints -- exactly as before it
    existed."""

    step: jax.Array  # number of updates applied
    params: Any
    opt_state: Any
    model_state: Any = dataclasses.field(default_factory=dict)


def _flatten_state(s: TrainState):
    names = ("step", "params", "opt_state") + (("model_state",) if s.model_state else ())
    return [(jax.tree_util.GetAttrKey(n), getattr(s, n)) for n in names], bool(s.model_state)


def _unflatten_state(has_model_state: bool, children) -> TrainState:
    return TrainState(*children) if has_model_state else TrainState(*children, model_state={})


jax.tree_util.register_pytree_with_keys(TrainState, _flatten_state, _unflatten_state)


def lm_loss(params, model: nn.Module, tokens_BT1, dropout_rng=None):
    """Mean next-token cross-entropy in nats over a [B, T+1] token batch (lib.tasks.lm)."""
    return tasks.lm.lm_loss(params, model, tokens_BT1, dropout_rng)


# ---- a run's traced numbers -----------------------------------------------------------------------
# Optimizer fields that runs of one pack may set differently: where they do, each becomes a traced
# per-run value (see pack_hparams). Fields that steer Python (optimizer, schedule, clipping on or
# off, an exponential schedule's rate) stay constants that a pack's runs share (see pack_key).
TRACEABLE_OPTIMIZER_FIELDS = ("lr", "b1", "b2", "eps", "momentum", "weight_decay", "clip_norm", "final_lr_frac",
                              "decay_every", "decay_factor", "decay_rate", "wsd_decay_frac")
_INT_FIELDS = ("decay_every", "seed")


def horizon(cfg: RunConfig) -> dict[str, int]:
    """The schedule's run-specific numbers, always traced: runs of one shape share a compiled step."""
    return {"total_steps": cfg.train.steps, "warmup_steps": cfg.optimizer.warmup_steps}


def traceable_fields(cfg: RunConfig) -> tuple[str, ...]:
    """What a pack of runs like `cfg` may trace: optimizer fields (by name), and with dropout on
    "seed" (train.seed: the dropout masks) and "dropout" (model.dropout, the rate)."""
    o = cfg.optimizer
    skip = {"final_lr_frac", "decay_rate"} if o.schedule == "exponential" else set()  # `rate or max(...)`: Python
    if not o.clip_norm > 0:
        skip.add("clip_norm")  # off is a different chain, not a value
    fields = tuple(f for f in TRACEABLE_OPTIMIZER_FIELDS if f not in skip)
    return fields + (("seed", "dropout") if cfg.model.dropout > 0 else ())


def _field_value(cfg: RunConfig, name: str):
    return cfg.train.seed if name == "seed" else cfg.model.dropout if name == "dropout" else getattr(cfg.optimizer, name)


def with_traced(cfg: RunConfig, traced: tuple[str, ...], hp) -> RunConfig:
    """`cfg` with each traced field replaced by this run's value in `hp` (a tracer inside the step)."""
    if not traced:
        return cfg
    opt = dataclasses.replace(cfg.optimizer, **{k: hp[k] for k in traced if k not in ("seed", "dropout")})
    train = dataclasses.replace(cfg.train, seed=hp["seed"]) if "seed" in traced else cfg.train
    model = dataclasses.replace(cfg.model, dropout=hp["dropout"]) if "dropout" in traced else cfg.model
    return dataclasses.replace(cfg, optimizer=opt, train=train, model=model)


def make_train_step(model, cfg: RunConfig, traced: tuple[str, ...] = ()):
    """`train_step(state, batch, hp) -> (state, metrics)`: one update of one run.

    `batch` is the task's (lib.tasks): token rows [B, T+1], or {"image", "label"} rows. `hp` holds
    the run's traced numbers: "total_steps" and "warmup_steps" always (so runs of one shape share a
    compiled step whatever their lengths), and each field named in `traced` (see `pack_hparams`:
    what the runs of a pack set differently). Every other number is `cfg`'s, baked into the
    program as it always was.
    """
    accum, use_dropout, task = cfg.train.grad_accum, cfg.model.dropout > 0, tasks.task_of(cfg)

    def loss_and_grad(model, params, model_state, batch, rng):  # -> ((logged, model_state), grads)
        (_, out), grads = jax.value_and_grad(task.train_loss, has_aux=True)(params, model_state, model, batch, rng if use_dropout else None)
        return out, grads

    def train_step(state: TrainState, batch, hp):
        run_cfg = with_traced(cfg, traced, hp)
        direction = make_run_direction(run_cfg)  # the same chain init() built, with this run's numbers
        this_model = model.clone(cfg=run_cfg.model) if "dropout" in traced else model  # this run's dropout rate
        rng = jax.random.fold_in(jax.random.key(run_cfg.train.seed), state.step)
        if accum == 1:
            (logged, model_state), grads = loss_and_grad(this_model, state.params, state.model_state, batch, rng)
        else:
            # Microbatch j takes rows j, j+accum, ...: every device keeps an equal share of each
            # microbatch, so no data moves between devices. Batch norm: each microbatch normalises
            # by its own statistics and updates the running averages in turn.
            def split(x):
                micro = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                return nn.with_logical_constraint(micro, (None, "act_batch") + (None,) * (x.ndim - 1))

            micro = jax.tree.map(split, batch)

            def one(carry, xs):
                logged_sum, grad_sum, model_state = carry
                rows, j = xs
                (logged, model_state), grads = loss_and_grad(this_model, state.params, model_state, rows, jax.random.fold_in(rng, j))
                return (jax.tree.map(jnp.add, logged_sum, logged), jax.tree.map(jnp.add, grad_sum, grads), model_state), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(functools.partial(loss_and_grad, this_model), state.params, state.model_state, first, rng)[0][0]
            no_logs = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (logged, grads, model_state), _ = jax.lax.scan(one, (no_logs, zeros, state.model_state), (micro, jnp.arange(accum)))
            logged, grads = jax.tree.map(lambda v: v / accum, logged), jax.tree.map(lambda g: g / accum, grads)
        lr = learning_rate(run_cfg.optimizer, state.step, hp["total_steps"], hp["warmup_steps"])
        direction_updates, opt_state = direction.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), direction_updates)
        params = optax.apply_updates(state.params, updates)
        metrics = {**logged, "grad_norm": optax.tree.norm(grads), "lr": lr}  # train_loss: the task's loss
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), metrics

    return train_step


def make_eval_step(model, cfg: RunConfig):
    """`eval_step(state, batch) -> {"eval_loss", ...}`: the task's metrics, means over the batch's rows."""
    task = tasks.task_of(cfg)

    def eval_step(state: TrainState, batch):
        return task.eval_metrics(state.params, state.model_state, model, batch)

    return eval_step


def make_init(model, direction, cfg: RunConfig, boxed: bool):
    """`init(rng) -> TrainState`. `boxed=True` keeps flax's logical-axis boxes (only for eval_shape)."""
    dummy = tasks.task_of(cfg).dummy(cfg)

    def init(rng):
        params, model_state = tasks.split_variables(model.init(rng, dummy))
        if not boxed:
            params, model_state = nn.unbox(params), nn.unbox(model_state)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=direction.init(params), model_state=model_state)

    return init


def batch_spec(cfg: RunConfig, mesh, pack: "Pack | None" = None):
    """The task's global batch as ShapeDtypeStructs with their shardings; a pack's has [K, ...] first."""
    spec = tasks.task_of(cfg).batch_spec(cfg, cfg.data.global_batch)
    if pack is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.ndim)), spec)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((pack.size, *x.shape), x.dtype,
                                                       sharding=sharding.pack_batch_sharding(mesh, pack.rules, x.ndim + 1)), spec)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The jitted pieces of one run on one mesh (trace inside `sharding.activate(mesh)`)."""

    init: Any  # rng -> TrainState, born sharded
    train_step: Any  # (state, batch, horizon) -> (state, metrics); state donated
    eval_step: Any  # (state, batch) -> {"eval_loss", ...} means over the batch
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the shardings, for checkpoint restore
    horizon: Any  # {"total_steps", "warmup_steps"}, replicated: the schedule's run-specific numbers


def run_model(cfg: RunConfig):
    """The model a run trains: its layer stack as the pipeline schedule when train.microbatches > 0."""
    return make_model(cfg.model, layer_stack=pipeline.layer_stack(cfg.train.microbatches))


def build_steps(cfg: RunConfig, mesh) -> Steps:
    """Model, optimizer and shardings -> jitted init/train/eval (the benchmark times these too).
    A later run of the same program (`program_key`) on the same mesh gets the same jitted functions,
    traced and compiled once in this process; only its horizon is its own. Init and eval are shared
    more widely, by every run of one pack key (`_state_programs`): another lr is another train step,
    not another init or eval."""
    programs = _cached(("steps", program_key(cfg), _module_of(cfg), mesh), lambda: _build_steps(cfg, mesh))
    return dataclasses.replace(programs, horizon={k: sharding.replicated_array(np.asarray(v, np.int32), mesh) for k, v in horizon(cfg).items()})


def _build_steps(cfg: RunConfig, mesh) -> Steps:
    state = _cached(("state", pack_key(cfg), _module_of(cfg), mesh), lambda: _state_programs(cfg, mesh))
    model = run_model(cfg)
    batch_sharding = jax.tree.map(lambda x: x.sharding, batch_spec(cfg, mesh))
    replicated = sharding.replicated(mesh)
    return dataclasses.replace(state, train_step=jax.jit(
        make_train_step(model, cfg),
        in_shardings=(state.state_shardings, batch_sharding, replicated),
        out_shardings=(state.state_shardings, replicated),
        donate_argnums=0,
    ))


def _state_programs(cfg: RunConfig, mesh) -> Steps:
    """A run's init and eval with its state's layout (train_step None): the same for every run of one
    pack key, whatever its traced numbers (lr, betas, decay, seed, dropout rate: the init builds the
    optimizer's state, zeros and a count, never reading them, and takes the seed as its argument; eval
    runs the model without dropout). A pack relies on this already: all its runs start from one init."""
    model = run_model(cfg)
    direction = make_run_direction(cfg)  # the optimizer, with muP per-layer scales if asked
    # Shardings come from the logical axis names on the boxed parameters; the state itself is unboxed.
    abstract_boxed = jax.eval_shape(make_init(model, direction, cfg, boxed=True), jax.random.key(0))
    state_shardings = sharding.logical_shardings(abstract_boxed, mesh)
    abstract = jax.eval_shape(make_init(model, direction, cfg, boxed=False), jax.random.key(0))
    batch_sharding = jax.tree.map(lambda x: x.sharding, batch_spec(cfg, mesh))
    return Steps(
        init=jax.jit(make_init(model, direction, cfg, boxed=False), out_shardings=state_shardings),
        train_step=None,  # per program: _build_steps sets it
        eval_step=jax.jit(make_eval_step(model, cfg), in_shardings=(state_shardings, batch_sharding), out_shardings=sharding.replicated(mesh)),
        state_shardings=state_shardings,
        abstract_state=abstract_with_shardings(abstract, state_shardings),
        horizon=None,  # per run: build_steps sets it
    )


# ---- compiled programs, kept for the next run of the same program --------------------------------
# A sweep trains run after run of a few shapes in one process. Tracing, lowering and compiling a
# run's steps (init, train, eval: seconds at the quickstart's sizes, as long as a short run's
# training) is done once per program: the jitted functions are kept, and with them jax's caches of
# their traces and executables (`jit(f).lower(args).compile()` again is a cache hit). Bounded: a long sweep of many shapes keeps the latest few.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_MAX_PROGRAMS = 16


def program_key(cfg: RunConfig, traced: tuple[str, ...] = ()) -> str:
    """What a run's compiled steps are made of: what a pack shares (`pack_key`), plus the values of
    the traceable fields this program keeps as constants (every one for a lone run) and the seed
    (its dropout masks' key). Runs with equal keys compile to the same program: they differ only in
    bookkeeping, their data and the numbers traced per run."""
    constants = {f: _field_value(cfg, f) for f in (*traceable_fields(cfg), *TRACEABLE_OPTIMIZER_FIELDS, "seed") if f not in traced}
    return pack_key(cfg) + json.dumps(constants, sort_keys=True, separators=(",", ":"))


def _module_of(cfg: RunConfig):
    """The family's module class now (a benchmark may swap it for an older revision's)."""
    return models.family(cfg.model).module


def _cached(key, build):
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    _PROGRAMS[key] = value = build()
    while len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return value


# ================================================================================================
# Packs: K runs of one shape trained as one program, vmapped over a leading run axis
# ================================================================================================
# What each run of a pack keeps for itself: host-side bookkeeping, its data seed (its own source),
# its length and warmup (traced, see horizon) and the traceable fields. Everything else -- model,
# data shape, batch, optimizer and schedule kind, mesh, eval set size -- makes the program and must
# be shared; a config field added later is shared unless listed here, which is the safe default.
_PER_RUN_TOP = ("name", "sweep", "budget", "tracking")
_PER_RUN_TRAIN = ("steps", "seed", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "flops_convention",
                  "keep_steps", "trunk", "branch_start")  # a branch's trunk and start: per run (its state is its own)


def pack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train in one pack (one compiled step for all of them)."""
    d = cfg.to_dict()
    for k in _PER_RUN_TOP:
        d.pop(k)
    for k in _PER_RUN_TRAIN:
        d["train"].pop(k)
    d["data"].pop("seed")
    d["optimizer"].pop("warmup_steps")
    d["optimizer"].pop("lr_factor")  # bookkeeping of an lr grid (lr itself is traced per run)
    for k in traceable_fields(cfg):
        d["optimizer"].pop(k, None)
    d["optimizer"]["clips"] = cfg.optimizer.clip_norm > 0
    d["model"]["dropout"] = cfg.model.dropout > 0  # on or off is the program; the rate is traced per run
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def pack_hparams(cfgs: Sequence[RunConfig]) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(the fields a pack of `cfgs` traces, {name: per-run values [K]}).

    Length and warmup are always traced; a traceable field only where the runs differ in it, so a
    value they share stays a constant of the program -- a pack of one compiles exactly a lone
    run's step, and packs that differ only in a traced field's values share one compiled program.
    """
    hp = {k: np.array([horizon(c)[k] for c in cfgs], np.int32) for k in ("total_steps", "warmup_steps")}
    traced = []
    for name in traceable_fields(cfgs[0]):
        values = [_field_value(c, name) for c in cfgs]
        if len(set(values)) > 1:
            traced.append(name)
            hp[name] = np.array(values, np.int32 if name in _INT_FIELDS else np.float32)
    return tuple(traced), hp


def over_runs(fn, size: int, spmd_axis: str | None = None, chunk: int | None = None):
    """`fn` mapped over a leading run axis of every argument and result: `jax.vmap` over all runs
    (chunk None), or over `chunk` runs at a time with the chunks in sequence inside the program
    (`jax.lax.map`; chunk 1: each run's own unbatched step in turn). One run calls `fn` on the
    squeezed arrays -- exactly a lone run's program (bit for bit)."""
    if size > 1 and (chunk is None or chunk >= size):
        return jax.vmap(fn, spmd_axis_name=spmd_axis)
    if size > 1:
        return lambda *args: jax.lax.map(lambda xs: fn(*xs), args, batch_size=chunk if chunk > 1 else None)

    def one(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return one


@dataclasses.dataclass(frozen=True)
class Pack:
    """The jitted steps of `size` runs trained together; every state array has a leading run axis.

    Nothing in the program mixes runs: loss, gradients, global-norm clipping and norms, the update
    and the schedule are each run's own, so a run's numbers are its own (equal to a lone run's up to
    the float rounding of batched kernels). `train_step` applies a run's update only where
    `advance` is set and its loss is finite: a diverged run keeps its last finite state, a run
    ahead of the others (resumed from a later checkpoint) waits for them.
    """

    size: int
    spread: bool  # the run axis on the mesh's data axis (whole models per device), else replicated
    chunk: int | None  # runs computed at once (vmapped); None: all (see over_runs)
    traced: tuple[str, ...]  # the fields the runs differ in, traced (besides length and warmup)
    train_step: Any  # (state, advance[K] bool, batch [K, B, ...], hp) -> (state, metrics {name: [K]}); state donated
    eval_step: Any  # (state, batch [K, n, ...]) -> {"eval_loss", ...: [K] means}
    stack: Any  # (state of run 0, state of run 1, ...) -> pack state
    take: Any  # (pack state, i) -> run i's state, laid out as a lone run's (its checkpoint)
    hparams: Any  # {name: [K]}, replicated
    rules: Any  # the rules table the pack's arrays follow (sharding.pack_rules)

    def batch(self, local_KB, mesh):
        """This process's rows of every run's batch ([K, B / processes, ...] leaves) -> the global pack batch."""
        return sharding.pack_global_batch(local_KB, mesh, self.rules)


def build_pack(cfgs: Sequence[RunConfig], mesh, spread: bool = False, chunk: int | None | str = "auto") -> Pack:
    """The jitted pack of `cfgs` (runs with one pack_key) on `mesh`; spread puts run i on data slice i.

    chunk: how many runs the program computes at once (`over_runs`). "auto": all of them (one
    vmap) on accelerators and whenever spread; on CPU one at a time: a CPU step is compute-bound
    (its time is proportional to its tokens; dispatch is ~5%), so batching gains little there,
    and the vmapped step's K-times larger temporaries are mapped fresh each step (a page fault
    per 4 KB page, about half its time), while the map's loop reuses its body's buffers -- the
    runs in turn measure 1.0-1.6x the speed of the runs in sequence, the vmap 0.5-0.9x for
    d_model >= 24 (benchmarks/packed_throughput.py; docs/design.md, "How a pack computes its runs").
    """
    cfg, size = cfgs[0], len(cfgs)
    if chunk == "auto" or spread:  # a spread pack is one vmap: each device computes its own runs
        chunk = 1 if mesh.devices.flat[0].platform == "cpu" and not spread else None
    if len({pack_key(c) for c in cfgs}) > 1:
        raise ValueError("a pack's runs must share the model, data shape, optimizer kind and mesh (lib.train.step.pack_key)")
    if spread and size % mesh.shape[sharding.RUN_MESH_AXIS]:
        raise ValueError(f"a spread pack needs a multiple of the {mesh.shape[sharding.RUN_MESH_AXIS]} data devices, got {size} runs")
    if size > 1 and cfg.train.microbatches:
        raise ConfigError(f"train.microbatches: a pipelined run trains alone, not in a pack of {size}; "
                          "train these runs one at a time (a pack of one)")
    traced, hp = pack_hparams(cfgs)
    program = _cached(("pack", program_key(cfg, traced), _module_of(cfg), size, spread, chunk, mesh),
                      lambda: _build_pack(cfg, size, mesh, spread, chunk, traced))
    return dataclasses.replace(program, hparams={k: sharding.replicated_array(v, mesh) for k, v in hp.items()})


def _build_pack(cfg: RunConfig, size: int, mesh, spread: bool, chunk: int | None, traced: tuple[str, ...]) -> Pack:
    model = run_model(cfg)
    direction = make_run_direction(cfg)
    rules = sharding.pack_rules(spread)
    spmd_axis = sharding.RUN_MESH_AXIS if spread else None
    abstract_boxed = jax.eval_shape(make_init(model, direction, cfg, boxed=True), jax.random.key(0))
    state_shardings = nn.logical_to_mesh_sharding(sharding.with_run_axis(nn.get_partition_spec(abstract_boxed)), mesh, rules)
    lone_shardings = sharding.logical_shardings(abstract_boxed, mesh)
    spec = tasks.task_of(cfg).batch_spec(cfg, cfg.data.global_batch)
    batch_sharding = jax.tree.map(lambda x: sharding.pack_batch_sharding(mesh, rules, x.ndim + 1), spec)
    replicated = sharding.replicated(mesh)
    train_step = make_train_step(model, cfg, traced)

    def run_step(state, advance, batch, hp):
        new, metrics = train_step(state, batch, hp)
        keep = advance & jnp.isfinite(metrics["train_loss"])
        return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state), metrics

    def under_rules(fn):  # trace with the pack's rules (activation constraints inside each run)
        def traced_fn(*args):
            with nn.logical_axis_rules(rules):
                return fn(*args)

        return traced_fn

    return Pack(
        size=size,
        spread=spread,
        chunk=chunk,
        traced=traced,
        train_step=jax.jit(
            under_rules(over_runs(run_step, size, spmd_axis, chunk)),
            in_shardings=(state_shardings, replicated, batch_sharding, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        ),
        eval_step=jax.jit(
            under_rules(over_runs(make_eval_step(model, cfg), size, spmd_axis, chunk)),
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=replicated,
        ),
        stack=jax.jit(lambda *states: jax.tree.map(lambda *xs: jnp.stack(xs), *states), out_shardings=state_shardings),
        take=jax.jit(lambda state, i: jax.tree.map(lambda x: x[i], state), out_shardings=lone_shardings),
        hparams=None,  # per pack: build_pack sets it
        rules=rules,
    )


def step_memory_bytes(cfg: RunConfig, mesh) -> int:
    """Bytes per device that one run's compiled train step needs: arguments + outputs - what the
    donated state aliases + temporaries (XLA's memory analysis). A pack of K needs about K times it."""
    steps = build_steps(cfg, mesh)
    m = steps.train_step.lower(steps.abstract_state, batch_spec(cfg, mesh), steps.horizon).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
