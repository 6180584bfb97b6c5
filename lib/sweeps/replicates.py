"""Seed replicates of a sweep's points (`Sweep.seeds`): each point trained again at its rule's lr
(x1 of its lr grid) with another `train.seed` -- another initialisation, the same data -- so a fit
can say how far the exponents move with the seed alone (fit.json `seed_sensitivity`), beside how
far they move with the learning-rate policy (`lr_sensitivity`).

A replicate run of sweep S at seed k belongs to the sweep named "S-seed<k>" and is named
"<point>-seed<k>": its own sweep keeps it out of its point's lr grid and out of the main fit
(analysis/data.py sets replicates aside, fits each seed's points on their own). It trains in its
point's pack (same shape and length; the seed is per run). Pure naming, no jax: analysis imports it.
"""

from __future__ import annotations

import re

SEED_TAG = "-seed"
_REPLICATE = re.compile(r"^(?P<sweep>.+)-seed(?P<seed>\d+)$")


def replicate_sweep(sweep: str, seed: int) -> str:
    """The sweep name of `sweep`'s replicates at `seed`."""
    return f"{sweep}{SEED_TAG}{int(seed)}"


def parse_replicate_sweep(name) -> tuple[str, int] | None:
    """(main sweep, seed) when `name` has the shape of a replicate sweep's name, else None. Only a
    shape: the loader also checks that the main sweep exists and that the run's seed is that seed."""
    m = _REPLICATE.match(name) if isinstance(name, str) else None
    return (m["sweep"], int(m["seed"])) if m else None
