"""Concurrent searches of one index, run together as one batch.

Each request decodes and prepares its image in its own thread (OpenCV and
the model's pre-processing mostly release the GIL), then hands the prepared
item to :class:`SearchBatcher`. The request that finds no batch running
becomes the *leader*: it embeds and searches every item waiting, in one
model call and one FAISS call, and hands each waiting request its result.
Its own result is among them; if more requests arrived meanwhile, the first
of them leads the next batch. Nobody waits for a timer: a request alone is
searched at once, and under load batches form from whatever queued during
the previous one.

Why: the server's searches share one GIL. Per query, a batch of eight costs
about two thirds of a single search (one catalogue read, one scan, one
model call for all), and a network runs far faster on a batch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from cbir.search import QueryResult, Searcher


@dataclass(eq=False)
class _Waiting:
    searcher: Searcher
    item: Any
    k: int
    name: str
    done: threading.Event = field(default_factory=threading.Event)
    leads: bool = False  # woken to lead the next batch rather than with a result
    result: QueryResult | None = None
    error: BaseException | None = None


class SearchBatcher:
    """Joins the searches that arrive while another batch runs (see the module's docstring)."""

    def __init__(self, max_batch: int = 32):
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._leader = False

    def query(self, searcher: Searcher, item: Any, k: int, name: str) -> QueryResult:
        """The result of ``searcher.query_prepared([item], k, [name])``, possibly computed in a batch with others."""
        mine = _Waiting(searcher, item, k, name)
        with self._lock:
            self._queue.append(mine)
            lead = not self._leader
            self._leader = True
        if not lead:
            mine.done.wait()
            if mine.leads:
                mine.done.clear()
                lead = True
        if lead:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        try:
            _search(batch)
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                self._leader = following is not None
            for waiting in batch:
                waiting.done.set()
            if following is not None:
                following.leads = True
                following.done.set()


def _search(batch: list[_Waiting]) -> None:
    """Search each group of ``batch`` that shares a searcher (an index reloaded meanwhile has two) and a ``k``."""
    groups: dict[tuple[int, int], list[_Waiting]] = {}
    for waiting in batch:
        groups.setdefault((id(waiting.searcher), waiting.k), []).append(waiting)
    for group in groups.values():
        try:
            results = group[0].searcher.query_prepared([w.item for w in group], group[0].k, [w.name for w in group])
        except BaseException as exc:  # every request of the group gets the error (the leader re-raises its own)
            for waiting in group:
                waiting.error = exc
            continue
        for waiting, result in zip(group, results):
            waiting.result = result
