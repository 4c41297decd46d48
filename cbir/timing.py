"""How long each stage of a search took, for a caller that asks (``cbir serve``'s ``/metrics``).

Library code marks its stages (``with stage("embed"): ...``); nothing is
measured unless the caller has started a :class:`StageClock` in its own
context (:func:`measuring`), so a plain ``Searcher.query`` pays one context
variable look-up per stage. The clock lives in a :class:`contextvars.ContextVar`:
per thread and per task, never process-wide, so concurrent requests keep
their own figures.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

#: The stages a search reports: the upload decoded, the vector computed, FAISS, the catalogue rows read.
STAGES = ("decode", "embed", "search", "catalogue")


class StageClock:
    """Seconds spent per stage, summed over every time a stage ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def merge(self, other: dict[str, float]) -> None:
        for name, seconds in other.items():
            self.add(name, seconds)


_current: ContextVar[StageClock | None] = ContextVar("cbir_stage_clock", default=None)


@contextmanager
def measuring(clock: StageClock | None = None) -> Iterator[StageClock]:
    """Stages run in this context (this thread or task) from now on add to ``clock`` (a new one by default)."""
    clock = clock if clock is not None else StageClock()
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name``, if this context is measuring; a stage inside another counts for both."""
    clock = _current.get()
    if clock is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        clock.add(name, time.perf_counter() - started)


def record(seconds: dict[str, float]) -> None:
    """Add stage times measured elsewhere (in a batch another thread ran, say) to this context's clock, if any."""
    clock = _current.get()
    if clock is not None:
        clock.merge(seconds)
