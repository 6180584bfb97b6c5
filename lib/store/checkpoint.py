"""Checkpoints through orbax's CheckpointManager: async saves, keep-last-N, restore onto the
current mesh's shardings (so a run may resume on a different device layout).

Orbax writes each step into a temporary folder and renames it when complete, so a kill mid-save
leaves the previous checkpoint as the latest; `latest_step()` never sees a partial one. On gs://
(no atomic rename) it writes the step folder in place and marks it complete with a
commit_success.txt last; unmarked folders are ignored, and replaced when that step is saved again.
Array data goes through tensorstore, which talks to GCS itself; the rest through etils.epath.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

from lib.store import storage


class Checkpointer:
    def __init__(self, directory, keep: int, use_async: bool = True, keep_steps=(), read_only: bool = False):
        """`keep`: the last N checkpoints kept; `keep_steps`: steps kept besides them, whatever N
        (a trunk's branch points, lib/sweeps/cooldowns.py)."""
        if storage.is_url(directory):
            storage.filesystem(directory)  # fail now, naming the package, if gs:// is not installed
        else:  # orbax refuses a relative path ("Checkpoint path should be absolute"); a root may be given as one
            directory = os.path.abspath(os.fspath(directory))
        quiet = logging.getLogger("absl")  # read-only (a trunk read by its branch): orbax warns about every option it turns off
        level = quiet.level
        if read_only:
            quiet.setLevel(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(directory, options=_options(keep, use_async, keep_steps, read_only))
        finally:
            quiet.setLevel(level)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, force: bool = False) -> None:
        """Start an async save of `state` (a pytree of jax.Arrays) labelled `step`."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, step: int, abstract_state):
        """`abstract_state`: jax.ShapeDtypeStruct leaves carrying the target shardings."""
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def abstract_with_shardings(abstract_tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def _options(keep: int, use_async: bool, keep_steps, read_only: bool):
    """Keep the last `keep` checkpoints, and every step in `keep_steps` besides."""
    if keep_steps:
        from orbax.checkpoint import checkpoint_managers as cm

        policy = cm.AnyPreservationPolicy([cm.LatestN(keep), cm.CustomSteps(sorted(set(keep_steps)))])
        return ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=use_async, create=not read_only,
                                            read_only=read_only)
    return ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=use_async, create=not read_only, read_only=read_only)
