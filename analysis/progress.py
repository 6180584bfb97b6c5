"""Which stage a fit is in, for whoever shows progress (`scaling fit`: a tqdm line on a terminal).

The fitting code calls `stage("approach 3: ...")` as each long stage starts; nothing happens
unless a caller listens with `reporting(callback)`. A context variable, not a global: fits in
other threads report to their own listener, or to none.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

_listener: ContextVar[Callable[[str], None] | None] = ContextVar("fit_progress", default=None)


def stage(what: str) -> None:
    """A stage of the fit starts (the previous one, if any, is done)."""
    listener = _listener.get()
    if listener is not None:
        listener(what)


@contextmanager
def reporting(callback: Callable[[str], None]) -> Iterator[None]:
    """Call `callback(what)` at each stage started inside the block."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)
