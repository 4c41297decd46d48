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
model call for all).

A network runs on every core by itself (LiteRT, OpenVINO, Keras). Decoding
uploads beside it preempts its threads, which then wait for each other, so
for such an extractor (``transform_uses_every_core``) decoding and the
batch's model call take turns: MobileNet, 8 clients, 0.75-0.79x of the
in-process throughput without, 0.82x with (docs/serve.md).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from cbir.retrieval.results import QueryResult
from cbir.retrieval.search import Searcher
from cbir.timing import measuring, record


@dataclass(eq=False)
class _Waiting:
    searcher: Searcher
    item: Any
    k: int
    name: str
    image_filter: Any = None  # an ImageFilter: searches of one filter are batched together
    done: threading.Event = field(default_factory=threading.Event)
    leads: bool = False  # woken to lead the next batch rather than with a result
    result: QueryResult | None = None
    error: BaseException | None = None
    #: The batch's stage times (:mod:`cbir.timing`): this search waited that long for each.
    stages: dict[str, float] = field(default_factory=dict)


class _CpuGate:
    """Decoding runs beside decoding, never beside a model call that uses every core."""

    def __init__(self):
        self._cond = threading.Condition()
        self._decoding = 0
        self._model = 0  # running or waiting

    @contextmanager
    def decoding(self):
        with self._cond:
            while self._model:
                self._cond.wait()
            self._decoding += 1
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    @contextmanager
    def model(self):
        with self._cond:
            self._model += 1
            while self._decoding:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._model -= 1
                self._cond.notify_all()


class SearchBatcher:
    """Joins the searches that arrive while another batch runs (see the module's docstring)."""

    def __init__(self, max_batch: int = 32):
        self.max_batch = max_batch
        self._gate = _CpuGate()
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._leader = False

    def preparing(self, searcher: Searcher):
        """A context for decoding and preparing an upload: kept apart from network calls that use every core."""
        return self._gate.decoding() if _uses_every_core(searcher) else nullcontext()

    def query(self, searcher: Searcher, item: Any, k: int, name: str, image_filter: Any = None) -> QueryResult:
        """The result of ``searcher.query_prepared([item], k, [name])``, possibly computed in a batch with others."""
        mine = _Waiting(searcher, item, k, name, image_filter)
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
        record(mine.stages)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        try:
            with self._gate.model() if _uses_every_core(batch[0].searcher) else nullcontext():
                _search(batch)
        except BaseException as exc:  # noqa: BLE001 - outside a group's search: the whole batch gets it
            for waiting in batch:
                if waiting.result is None and waiting.error is None:
                    waiting.error = exc
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                self._leader = following is not None
            for waiting in batch:
                waiting.done.set()
            if following is not None:
                following.leads = True
                following.done.set()


def _uses_every_core(searcher: Searcher) -> bool:
    return searcher.embedder.extractor.transform_uses_every_core


def _search(batch: list[_Waiting]) -> None:
    """Search each group of ``batch`` that shares a searcher (an index reloaded meanwhile has two) and a ``k``."""
    groups: dict[tuple, list[_Waiting]] = {}
    for waiting in batch:
        groups.setdefault((id(waiting.searcher), waiting.k, waiting.image_filter), []).append(waiting)
    for group in groups.values():
        try:
            first = group[0]
            options = {} if first.image_filter is None else {"image_filter": first.image_filter}
            with measuring() as clock:
                results = first.searcher.query_prepared([w.item for w in group], first.k, [w.name for w in group], **options)
            for waiting in group:
                waiting.stages = clock.seconds
        except BaseException as exc:  # every request of the group gets the error (the leader re-raises its own)
            for waiting in group:
                waiting.error = exc
            continue
        for waiting, result in zip(group, results):
            waiting.result = result
