"""Worker processes for the loader: every core, bounded memory, no orphans, no hangs.

:func:`in_processes` runs the loader's per-file work (:func:`cbir.compute.loader.load_and_embed`)
in spawned processes, in chunks of :data:`CHUNK_SIZE` files, with a few
chunks per worker in flight. Each worker builds what it runs from a
:class:`cbir.compute.loader.PrepareSpec`. Workers ignore Ctrl-C (the parent decides
what to keep), die with the parent even when it is SIGKILLed, and a worker
that dies becomes one :class:`cbir.compute.loader.WorkerError`, never a hang.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cbir.compute.work import LoadedFile
from cbir.compute.work import KnownContent, PrepareSpec, WorkerError, load_and_embed

#: Files per task sent to a worker process: large enough to amortise the pipe, small enough to stay responsive.
CHUNK_SIZE = 16

_worker_state: dict[str, Any] = {}


def in_processes(
    files: Sequence[Path],
    spec: PrepareSpec,
    workers: int,
    known_sha256: dict[Path, str],
    known: KnownContent | None,
    lookahead: int,
) -> Iterator[tuple[LoadedFile, Any]]:
    """``(loaded file, item)`` for every file, in order, from ``workers`` processes (see the module docstring)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: the parent may hold TensorFlow's threads or SQLite handles.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(spec, known, os.getpid()))
    in_flight: deque[tuple[list[Path], Future]] = deque()
    limit = max(2 * workers, lookahead // CHUNK_SIZE + workers)
    finished = False
    chunk: list[Path] = []
    try:
        for start in range(0, len(files), CHUNK_SIZE):
            chunk = list(files[start : start + CHUNK_SIZE])
            # The first submissions start the workers (before anything is yielded).
            with _main_script_hidden() if start < workers * CHUNK_SIZE else contextlib.nullcontext():
                job = pool.submit(_work_chunk, [os.fspath(p) for p in chunk], [known_sha256.get(p) for p in chunk])
                in_flight.append((chunk, job))
            if len(in_flight) >= limit:
                chunk, future = in_flight.popleft()
                yield from _loaded_files(chunk, _result(pool, future))
        while in_flight:
            chunk, future = in_flight.popleft()
            yield from _loaded_files(chunk, _result(pool, future))
        finished = True
    except BrokenProcessPool:
        raise WorkerError(
            f"a worker process stopped unexpectedly (killed, or out of memory?) while reading {chunk[0]} "
            f"or one of the {len(chunk) - 1} files after it; work committed so far is kept, "
            "run the same command again to continue"
        ) from None
    finally:
        for _, future in in_flight:
            future.cancel()
        if finished:
            pool.shutdown(wait=True)
        else:
            _stop_pool(pool)


def _result(pool, future: Future) -> Any:
    """``future.result()``, but a dead worker ends the wait even where the pool would not notice.

    A worker killed while sending its result leaves a partial message in the
    result pipe: the pool's manager thread then blocks reading it, and never
    marks the pool broken (CPython's ProcessPoolExecutor, 3.11).
    """
    from concurrent.futures.process import BrokenProcessPool

    while True:
        try:
            return future.result(timeout=0.5)
        except TimeoutError:
            if any(process.exitcode is not None for process in list(getattr(pool, "_processes", {}).values())):
                raise BrokenProcessPool("a worker process died") from None


@contextlib.contextmanager
def _main_script_hidden():
    """Start spawned workers without re-running the caller's ``__main__`` script.

    Spawn re-imports the main script in every child unless it is guarded by
    ``if __name__ == "__main__"``; workers only need :mod:`cbir.compute.loader`, so a
    script calling :func:`cbir.index_folder` at top level works too.
    """
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file is None or getattr(getattr(main, "__spec__", None), "name", None):
        yield  # no script (REPL, -c), or run as a module (-m): nothing is re-run
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = main_file


def _stop_pool(pool) -> None:
    """Stop workers now (interrupted run or error): in-flight chunks are dropped, not finished."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public way to terminate
    # shutdown() drops the pool's references to these; keep them for _unblock_manager.
    manager = getattr(pool, "_executor_manager_thread", None)
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
    pool.shutdown(wait=False, cancel_futures=True)
    # Python 3.11's manager thread then sets a "broken pool" error on every pending future,
    # cancelled ones too, and dies with InvalidStateError printed on the terminal (fixed in
    # later versions): nothing waits on these futures any more, so it is given none.
    getattr(pool, "_pending_work_items", {}).clear()
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1)
    _unblock_manager(manager, writer)


def _unblock_manager(manager: threading.Thread | None, writer) -> None:
    """Let the pool's manager thread finish (interpreter exit waits for it).

    One stuck reading a half-sent result (see :func:`_result`) waits for
    bytes no worker will send; zeros complete the message, which then fails
    to unpickle, and the thread marks the pool broken and stops.
    """
    if manager is None or writer is None or writer.closed:
        return
    manager.join(0.2)
    if not manager.is_alive():
        return
    os.set_blocking(writer.fileno(), False)
    deadline = time.monotonic() + 10
    while manager.is_alive() and time.monotonic() < deadline:
        try:
            os.write(writer.fileno(), bytes(65536))
        except BlockingIOError:
            pass
        except OSError:
            return
        manager.join(0.05)


def _init_worker(spec: PrepareSpec, known: KnownContent | None, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent handles it
    _die_with_parent(parent_pid)
    try:
        embedder = spec.build_embedder()
    except Exception as exc:
        # Raised from an initializer, it would only break the pool ("a worker
        # stopped unexpectedly") and print a traceback per worker; raised from
        # the first chunk, it reaches the parent as itself (one error: line).
        _worker_state.update(failed=exc)
        return
    if embedder is None:
        _worker_state.update(min_side=spec.min_side, prepare=spec.build(), embed=None, known=known)
    else:
        _worker_state.update(min_side=spec.min_side, prepare=embedder.prepare, embed=embedder.transform_prepared, known=known)
    _worker_state.update(local=spec.build_local(), video=spec.build_video())


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the parent does, however it died."""
    try:  # Linux: the kernel sends SIGKILL when the parent exits
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere (and as a backstop): notice being re-parented
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="cbir-parent-watch", daemon=True).start()


def _work_chunk(paths: list[str], known_sha256s: list[str | None]) -> tuple[list[tuple], Any]:
    """Each entry's :class:`LoadedFile` fields but its path (the number of its file in the chunk instead:
    a video is several entries), and the chunk's items (see :func:`_loaded_files`)."""
    state = _worker_state
    if "failed" in state:
        raise state["failed"]
    files = [Path(p) for p in paths]
    loaded = load_and_embed(
        files, known_sha256s, state["min_side"], state["prepare"], state["embed"], state["known"], state["local"], state["video"]
    )
    number = {path: n for n, path in enumerate(files)}
    # ``image`` is the item itself where there is no extractor: a flag, not a second copy.
    fields = [(f.fields(), f.image is not None, number[f.path]) for f, _ in loaded]
    return fields, _pack_items([item for _, item in loaded])


def _pack_items(items: list[Any]) -> Any:
    """Items of one shape and dtype (vectors, prepared inputs) as one array: one pickle, not one per file.

    Returns ``(array, mask of the files that have an item)``, or the list itself
    where items differ (or there are none).
    """
    present = [item for item in items if item is not None]
    if not present or not all(isinstance(item, np.ndarray) for item in present):
        return items
    first = present[0]
    if any(item.shape != first.shape or item.dtype != first.dtype for item in present):
        return items
    return np.stack(present), np.array([item is not None for item in items], dtype=bool)


def _unpack_items(packed: Any, count: int) -> list[Any]:
    if isinstance(packed, list):
        return packed
    array, mask = packed
    rows = iter(array)
    return [next(rows) if has else None for has in mask.tolist()]


def _loaded_files(paths: list[Path], result: tuple[list[tuple], Any]) -> list[tuple[LoadedFile, Any]]:
    """``(loaded file, item)`` pairs of a chunk, with the parent's own path objects.

    Paths travel as strings and come back as nothing: a pickled ``Path``
    costs the parent, the only writer, ~10 us to rebuild, a tenth of its
    work per colour image.
    """
    fields, packed = result
    items = _unpack_items(packed, len(fields))
    return [
        (LoadedFile.from_fields(paths[number], values, item if image else None), item)
        for (values, image, number), item in zip(fields, items)
    ]
