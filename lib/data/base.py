"""The contract every data source meets.

`batch(step)` is a pure function of (seed, step, process index/count): resume needs no iterator
state, and every host count sees the same global batch, each host building only its own rows.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Source(Protocol):
    vocab_size: int
    entropy_floor: float | None  # best mean loss (nats/token) over a row of seq_len tokens, when known

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """This process's rows of training batch `step`: int32 [global_batch / process_count, seq_len + 1]."""

    def eval_rows(self, start_row: int, n_rows: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """This process's block of held-out rows start_row .. start_row + n_rows - 1: int32 [n_rows / process_count, seq_len + 1].

        A pure function of the row index (not of the batch size), so runs with different batches
        evaluate on identical rows."""

    def epoch(self, step: int) -> float | None:
        """Passes over the data after `step` steps (None for an infinite source)."""

    def describe(self) -> dict:
        """Provenance for the run summary (source, tokenizer, sizes)."""


def local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous block of global rows (the order make_array_from_process_local_data expects)."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by the {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


class EpochSampler:
    """Which of n stored examples each row of batch `step` reads: epochs of seeded permutations.

    Global row r of step s is sample g = s * B + r; it reads example perm_e[g mod n] of epoch
    e = g // n, perm_e = default_rng([seed, e]).permutation(n): without replacement within an
    epoch, a pure function of (seed, step), each process computing only its own rows."""

    def __init__(self, n: int, global_batch: int, seed: int):
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self._permutations: dict[int, np.ndarray] = {}

    def ids(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        return self.ids_of(self.samples(step, process_index, process_count))

    def samples(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """The global sample numbers g of this process's rows of batch `step`."""
        rows = local_rows(self.global_batch, process_index, process_count)
        return step * self.global_batch + np.arange(rows.start, rows.stop, dtype=np.int64)

    def ids_of(self, samples: np.ndarray) -> np.ndarray:
        epochs, positions = np.divmod(samples, self.n)
        ids = np.empty_like(samples)
        for e in np.unique(epochs):
            where = epochs == e
            ids[where] = self._permutation(int(e))[positions[where]]
        return ids

    def epoch(self, step: int) -> float:
        """Passes over the examples after `step` steps (1.0 = each seen once)."""
        return step * self.global_batch / self.n

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._permutations[epoch] = perm.astype(np.int32) if self.n < 2**31 else perm  # half the memory
        return self._permutations[epoch]


# == configuration: what a data source declares (lib/data/__init__.py registers it; lib/config_rules.py
# runs its rules for whatever data.source names) ======================================================
import dataclasses  # noqa: E402  (the config section sits at the end)
from typing import Callable  # noqa: E402

from lib.config import DataConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    name: str
    task: str  # what its batches are for: "lm" (token rows) or "classify" ({"image", "label"})
    make: Callable[[DataConfig, str | None], Source]  # (data config, data_root) -> the source
    # Its own fields: raise lib.config.ConfigError naming the field and the fix (lib.config.require).
    validate: Callable[[DataConfig], None] = lambda d: None

