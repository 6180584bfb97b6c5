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
