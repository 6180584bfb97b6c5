"""A finished (or checkpointed) run's trained model, read back from its folder for analysis: the
config it trained with, its data source, the model and the parameters of its latest checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from lib.config import ConfigError, MeshConfig, RunConfig, resolve_model_input
from lib.data import make_source, resolve_vocab
from lib.parallel import sharding
from lib.store.checkpoint import Checkpointer
from lib.store.runstore import RunDir
from lib.store.storage import default_data_root
from lib.train.step import build_steps, run_model


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    cfg: RunConfig  # as trained: vocab and model input resolved from its data
    source: Any  # its data source (lib.data)
    model: Any  # the flax module (pure: model.apply({"params": params}, x))
    params: Any  # the latest checkpoint's parameters, on `mesh`
    step: int  # that checkpoint's step
    mesh: Any


def load_trained(run_path, devices=None) -> TrainedRun:
    """Read run `run_path`'s config and latest checkpoint onto a mesh over `devices` (default: the
    first device, whatever mesh it trained on: the checkpoint restores onto any layout)."""
    run = RunDir(os.fspath(run_path), writer=False)
    config = run.config()
    if config is None:
        raise ConfigError(f"{run_path}: no config.json; not a run folder")
    cfg = RunConfig.from_dict(config)
    devices = list(devices) if devices is not None else jax.devices()[:1]
    cfg = dataclasses.replace(cfg, mesh=MeshConfig())  # data parallel over `devices`: layout only, not numbers
    source = make_source(cfg.data, data_root=cfg.data.data_root or default_data_root(os.path.abspath(os.fspath(run_path))))
    cfg = resolve_model_input(resolve_vocab(cfg, source))
    mesh = sharding.make_mesh(cfg.mesh, devices)
    with sharding.activate(mesh):
        steps = build_steps(cfg, mesh)
    with Checkpointer(run.checkpoint_dir, 1, read_only=True) as ckpt:
        step = ckpt.latest_step()
        if step is None:
            raise ConfigError(f"{run_path}: no checkpoint to read (it has not saved one yet)")
        state = ckpt.restore(step, steps.abstract_state)
    return TrainedRun(cfg, source, run_model(cfg), state.params, int(step), mesh)
