"""Indexing with worker processes: same vectors, bounded failure, no orphans, bad input."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.errors import CbirError
from cbir.indexing.run import index_folder
from cbir.compute.work import EmbedderRef, WorkerError
from cbir.cpus import usable_cores
from cbir.progress import Progress
from cbir.retrieval.search import Searcher
from cbir.store.directory import IndexStore
from cbir.store.snapshot_record import vectors_are_current

from conftest import coloured_image, make_collection, write_image


def vectors_by_path(index_folder_path: Path) -> dict[str, np.ndarray]:
    with IndexStore.open(index_folder_path) as store:
        rows = {row.id: row.path for row in store.catalogue.image_rows()}
        found = {}
        for ids, vectors in store.catalogue.iter_vectors(store.dim):
            for image_id, vector in zip(ids, vectors):
                found[rows[int(image_id)]] = vector.copy()
    return found


def assert_same_vectors(first: Path, second: Path, count: int) -> None:
    """Both indexes hold the same ``count`` paths, with bit-identical vectors."""
    found, expected = vectors_by_path(first), vectors_by_path(second)
    assert len(found) == count and sorted(found) == sorted(expected)
    for path in found:
        assert np.array_equal(found[path], expected[path]), path


def test_one_and_two_workers_give_identical_vectors(collection, index_dir):
    index_folder(collection, "one", index_dir, workers=1)
    summary = index_folder(collection, "two", index_dir, workers=2, batch_size=4)
    assert summary.added == 15
    assert_same_vectors(index_dir / "one", index_dir / "two", 15)


def test_one_and_two_workers_give_identical_vectors_after_pca(tmp_path, index_dir):
    """Workers project their own chunks: a PCA index must not depend on how files were grouped."""
    rng = np.random.default_rng(0)
    for folder, count in (("train", 40), ("photos", 70)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            write_image(tmp_path / folder / f"{i:03d}.png", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    for name, workers in (("one", 1), ("two", 2)):
        index_folder(tmp_path / "photos", name, index_dir, options={"pca": 16}, pca_train_folder=tmp_path / "train", workers=workers)
    assert_same_vectors(index_dir / "one", index_dir / "two", 70)


def test_workers_run_the_network_themselves_and_give_the_parents_vectors(collection, index_dir, monkeypatch, tiny_cnn):
    """A converted CNN runs in each worker (one engine per worker): same vectors, no network step in the parent."""
    from cbir.features.pipeline import Embedder

    assert tiny_cnn.engine == "tflite" and tiny_cnn.is_loaded  # converted before the parent's transform step is patched out
    index_folder(collection, "one", index_dir, embedder=Embedder(tiny_cnn), workers=1)

    def not_in_the_parent(self, items):
        raise AssertionError("the parent ran the network; the workers should have")

    embedder = Embedder(tiny_cnn)
    monkeypatch.setattr(Embedder, "transform_prepared", not_in_the_parent)  # workers are spawned: unpatched
    summary = index_folder(collection, "two", index_dir, embedder=embedder, workers=2, batch_size=4)
    assert summary.added == 15
    assert_same_vectors(index_dir / "one", index_dir / "two", 15)


def test_workers_run_the_network_for_the_pca_sample_too(collection, index_dir, monkeypatch, tiny_cnn):
    """A first CNN + PCA build embeds its sample to fit the PCA: that is most of the work, in the workers too."""
    from cbir.features.cnn import CNNExtractor
    from cbir.features.pca import PCAReduction
    from cbir.features.pipeline import Embedder

    assert tiny_cnn.engine == "tflite" and tiny_cnn.is_loaded
    index_folder(collection, "one", index_dir, embedder=Embedder(tiny_cnn, PCAReduction(4)), workers=1)

    def not_in_the_parent(self, items):
        raise AssertionError("the parent ran the network; the workers should have")

    embedder = Embedder(tiny_cnn, PCAReduction(4))
    monkeypatch.setattr(CNNExtractor, "transform_prepared", not_in_the_parent)  # workers are spawned: unpatched
    summary = index_folder(collection, "two", index_dir, embedder=embedder, workers=2)
    assert summary.added == 15
    assert_same_vectors(index_dir / "one", index_dir / "two", 15)


def test_a_worker_that_cannot_build_its_embedder_reports_why(tmp_path, capfd):
    """Not "a worker stopped unexpectedly" and a traceback per worker: the error itself, once."""
    from cbir.errors import IndexCorruptError
    from cbir.features.base import make_extractor
    from cbir.features.pca import PCAReduction
    from cbir.features.pipeline import Embedder
    from cbir.compute.work import PrepareSpec
    from cbir.compute.loader import load_prepared

    rng = np.random.default_rng(0)
    files = [write_image(tmp_path / "photos" / f"{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(40)]
    embedder = Embedder(make_extractor("color"), PCAReduction(8))
    embedder.pca.fit(rng.random((20, embedder.extractor.dim)).astype(np.float32))
    embedder.save(tmp_path / "model")
    (tmp_path / "model" / "pca.npz").write_bytes(b"not an npz")  # damaged after the parent loaded it
    spec = PrepareSpec.for_embedder(embedder, EmbedderRef.for_embedder(embedder, tmp_path / "model", copies=2))
    with pytest.raises(IndexCorruptError, match="cannot read PCA state"):
        list(load_prepared(files, spec, workers=2, processes=True))
    assert "Traceback" not in capfd.readouterr().err


def test_a_keras_runtime_network_stays_in_the_parent():
    """Keras needs TensorFlow in every worker (seconds, hundreds of MB each): that network runs once, in the parent."""
    from cbir.features.autoencoder import AutoencoderExtractor
    from cbir.features.cnn import CNNExtractor

    assert CNNExtractor(runtime="tflite").embeds_in_workers and AutoencoderExtractor().embeds_in_workers
    assert not CNNExtractor(runtime="keras").embeds_in_workers
    assert not AutoencoderExtractor(runtime="keras").embeds_in_workers


def test_without_litert_the_network_stays_in_the_parent(monkeypatch):
    """LiteRT missing, the interpreter would be TensorFlow's: not something to import in every worker."""
    import importlib.util

    from cbir.features.autoencoder import AutoencoderExtractor
    from cbir.features.cnn import CNNExtractor

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else find_spec(name, *a))
    assert not CNNExtractor(runtime="tflite").embeds_in_workers
    assert not AutoencoderExtractor(runtime="tflite").embeds_in_workers


def test_workers_record_unreadable_files_like_the_parent(collection, index_dir):
    (collection / "red" / "empty.jpg").write_bytes(b"")
    os.mkfifo(collection / "red" / "pipe.jpg")  # would block a plain open() forever
    summary = index_folder(collection, "photos", index_dir, workers=2)
    reasons = dict(summary.skipped_files)
    assert summary.added == 15 and summary.skipped == 2
    assert reasons[str(collection / "red" / "empty.jpg")] == "empty file"
    assert reasons[str(collection / "red" / "pipe.jpg")] == "not a regular file"


class _KillAWorker(Progress):
    """Kills one worker process once ``after`` files were loaded."""

    def __init__(self, after: int):
        self.after, self.seen, self.killed = after, 0, None

    def advance(self, steps: int = 1) -> None:
        self.seen += steps
        if self.killed is None and self.seen >= self.after:
            workers = multiprocessing.active_children()
            assert workers, "no worker processes to kill"
            self.killed = workers[0].pid
            os.kill(self.killed, signal.SIGKILL)


def test_a_killed_worker_gives_one_error_and_keeps_every_committed_batch(tmp_path, index_dir):
    root = tmp_path / "many"
    for n in range(300):
        write_image(root / f"{n:03d}.jpg", coloured_image((40 + n % 200, 90, 160), seed=n, size=(24, 32)))
    progress = _KillAWorker(after=40)
    with pytest.raises(WorkerError, match="worker process stopped unexpectedly"):
        index_folder(root, "many", index_dir, workers=2, batch_size=8, progress=progress)
    assert progress.killed is not None
    with Searcher.open("many", index_dir) as searcher:  # a consistent index with what was committed
        committed = searcher.size
        assert 8 <= committed < 300 and committed % 8 == 0
        assert vectors_are_current(searcher.store)
        assert searcher.query(root / "000.jpg", k=1).results[0].score > 0.99
    summary = index_folder(root, "many", index_dir, workers=2, batch_size=8)
    assert summary.unchanged == committed and summary.total == 300


_CHILDREN_OF = "/proc/{pid}/task/{pid}/children"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(_CHILDREN_OF.format(pid=pid)).read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find worker processes")
@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_no_worker_outlives_its_parent(tmp_path, index_dir, how):
    root = tmp_path / "photos"
    make_collection(root, per_class=5)
    # Enough files that even an idle machine is still indexing when the workers are first seen.
    for n in range(2500):
        write_image(root / "bulk" / f"{n:04d}.jpg", coloured_image((90, 90, 90), seed=n, size=(24, 32)))
    command = [sys.executable, "-m", "cbir", "index", str(root), "--index-dir", str(index_dir), "--workers", "2", "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            workers = _children(parent.pid)
            time.sleep(0.02)
        assert len(workers) >= 2, f"no workers seen (exit {parent.poll()}): {parent.stderr.read() if parent.poll() is not None else ''}"
        time.sleep(0.1)  # let them start reading
        assert parent.poll() is None, "the run finished before it could be interrupted; use more files"
        if how == "sigkill":
            parent.kill()
        else:
            os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "orphan workers"
        if how == "ctrl-c":
            assert parent.returncode == 130
            assert "interrupted" in parent.stderr.read().decode()
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_programming_error_in_prepare_surfaces(collection, index_dir, monkeypatch):
    from cbir.features.color import ColorHistogram

    def broken(self, image):
        raise TypeError("a bug in prepare")

    monkeypatch.setattr(ColorHistogram, "prepare", broken)
    with pytest.raises(TypeError, match="a bug in prepare"):
        index_folder(collection, "photos", index_dir, workers=1)
    assert not (index_dir / "photos").exists()


def test_an_image_opencv_cannot_process_is_skipped(collection, index_dir, monkeypatch):
    import cv2

    from cbir.features.color import ColorHistogram

    original = ColorHistogram.prepare

    def picky(self, image):
        red, green, blue = image.reshape(-1, 3).mean(axis=0)
        if green > max(red, blue):  # the green class
            raise cv2.error("unsupported image")
        return original(self, image)

    monkeypatch.setattr(ColorHistogram, "prepare", picky)
    summary = index_folder(collection, "photos", index_dir, workers=1)
    assert summary.skipped == 5 and summary.added == 10
    assert all(reason.startswith("cannot process:") for _, reason in summary.skipped_files)


def test_usable_cores_respects_the_affinity_mask():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


runner = CliRunner()


@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_bad_worker_counts_are_one_error_line(collection, index_dir, value):
    result = runner.invoke(app, ["index", str(collection), "--index-dir", str(index_dir), "--workers", value])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: --workers must be a whole number of at least 1, got '{value}'"]
    assert not index_dir.exists()


def test_ray_address_where_nothing_listens_fails_fast_and_writes_nothing(collection, index_dir):
    pytest.importorskip("ray")
    started = time.monotonic()
    result = runner.invoke(app, ["index", str(collection), "--index-dir", str(index_dir), "--ray", "127.0.0.1:1"])
    assert result.exit_code == 2 and time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Ray cluster answers at 127.0.0.1:1")
    assert not index_dir.exists()


def test_ray_without_the_extra_names_it(collection, index_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = runner.invoke(app, ["index", str(collection), "--index-dir", str(index_dir), "--ray"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: --ray needs Ray, which is not installed: pip install 'cbir[ray]'"]
    assert not index_dir.exists()


def test_ray_flag_before_the_folder_means_auto(collection, index_dir, monkeypatch):
    seen = {}

    def fake_index_folder(folder, name, index_dir=None, **options):
        seen.update(folder=folder, ray=options["ray"])
        raise CbirError("stop here")

    monkeypatch.setattr("cbir.indexing.run.index_folder", fake_index_folder)
    runner.invoke(app, ["index", "--ray", str(collection), "--index-dir", str(index_dir)])
    assert seen == {"folder": collection, "ray": "auto"}
    runner.invoke(app, ["index", str(collection), "--ray", "ray://head:10001"])
    assert seen["ray"] == "ray://head:10001"


# -- first build, moved folders, training data ------------------------------------


def test_wait_and_queries_while_an_index_is_first_built(collection, index_dir):
    import threading

    from cbir.errors import IndexLockedError
    from cbir.store.directory import WriteLock

    folder = index_dir / "photos"
    folder.mkdir(parents=True)
    builder = WriteLock(folder)  # a first build in progress: locked, no manifest yet
    try:
        with pytest.raises(IndexLockedError, match="is being built by cbir process"):
            Searcher.open("photos", index_dir)
        with pytest.raises(IndexLockedError, match="is being written"):
            index_folder(collection, "photos", index_dir)
        outcome = {}
        waiting = threading.Thread(target=lambda: outcome.update(summary=index_folder(collection, "photos", index_dir, wait=True)))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive(), "--wait did not wait for the first build"
    finally:
        builder.release()
    waiting.join(60)
    assert outcome["summary"].created and outcome["summary"].total == 15


def test_a_moved_folder_reuses_stored_vectors_instead_of_embedding(collection, index_dir, tmp_path, monkeypatch):
    from cbir.features.color import ColorHistogram

    index_folder(collection, "photos", index_dir)
    before = vectors_by_path(index_dir / "photos")
    moved = tmp_path / "moved"
    collection.rename(moved)
    embedded = []
    original = ColorHistogram.transform_prepared
    monkeypatch.setattr(ColorHistogram, "transform_prepared", lambda self, items: embedded.append(len(items)) or original(self, items))
    summary = index_folder(moved, "photos", index_dir, workers=1)
    assert summary.added == 15 and summary.reused == 15 and summary.embedded == 0 and sum(embedded) == 0
    after = vectors_by_path(index_dir / "photos")
    for old_path, vector in before.items():
        assert np.array_equal(after[old_path.replace(str(collection), str(moved), 1)], vector)
    # A new file is still embedded, and the reused rows get their new folder's label.
    write_image(moved / "red" / "new.jpg", coloured_image((0, 0, 255), seed=99))
    assert index_folder(moved, "photos", index_dir, workers=2).embedded == 1
    with Searcher.open("photos", index_dir) as searcher:
        assert searcher.query(moved / "red" / "red-0.jpg", k=2).results[0].label == "red"


def test_autoencoder_training_through_the_indexer_holds_prepared_images_not_photos(tmp_path, index_dir, monkeypatch):
    from cbir.features.autoencoder import AutoencoderExtractor
    from cbir.features.pipeline import Embedder

    make_collection(tmp_path / "big", per_class=4, size=(300, 400))
    seen = {}

    class Stop(Exception):
        pass

    def fit_prepared(self, pixels, **fit_params):
        seen["shape"] = pixels.shape
        raise Stop

    monkeypatch.setattr(AutoencoderExtractor, "fit_prepared", fit_prepared)
    extractor = AutoencoderExtractor(input_size=32, epochs=1)
    with pytest.raises(Stop):
        index_folder(tmp_path / "big", "ae", index_dir, embedder=Embedder(extractor), fit_sample=5, workers=1)
    assert seen["shape"] == (5, 32, 32, 3)


def test_a_script_without_a_main_guard_can_use_workers(collection, index_dir, tmp_path):
    script = tmp_path / "plain_script.py"
    script.write_text(
        "import sys\nfrom cbir import index_folder\n"
        "print(index_folder(sys.argv[1], 'photos', sys.argv[2], workers=2).added)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(script), str(collection), str(index_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["15"]  # run once: the workers did not re-run the script


def test_a_file_only_a_ray_worker_cannot_read_names_the_node_and_the_shared_filesystem(collection):
    from cbir.compute.ray_cluster import _unpack

    readable_here = str(collection / "red" / "red-0.jpg")
    batch = {
        "path": np.array([readable_here], dtype=object),
        "size": np.array([-1]),
        "mtime_ns": np.array([-1]),
        "sha256": np.array([""], dtype=object),  # the worker could not read the bytes
        "error": np.array(["no such file or directory"], dtype=object),
        "unchanged": np.array([False]),
        "reusable": np.array([False]),
        "has_item": np.array([False]),
        "item": np.zeros((1, 4), np.float32),
        "node": np.array(["10.0.0.7"], dtype=object),
    }
    from cbir.compute.work import CODEC_FIELDS, LoadedFile

    defaults = LoadedFile(Path(readable_here), -1, -1, "").fields()  # the codec's other fields, as a worker sends them
    batch.update({name: np.array([value], dtype=object) for name, value in zip(CODEC_FIELDS, defaults) if name not in batch})
    ok, items, without = _unpack(batch)
    assert ok == [] and len(items) == 0
    assert without[0].error == (
        "no such file or directory (on Ray node 10.0.0.7; every node must read the files at the same paths)"
    )


def test_index_help_explains_workers_and_ray():
    result = runner.invoke(app, ["index", "--help"])
    text = " ".join(result.stdout.replace("│", " ").split())  # the words, without rich's boxes
    assert "--workers" in text and "usable CPU cores" in text
    assert "pip install 'cbir[ray]'" in text and "shared filesystem" in text


def test_cli_query_and_wait_during_a_first_build(collection, index_dir):
    import threading

    from cbir.store.directory import WriteLock

    folder = index_dir / "photos"
    folder.mkdir(parents=True)
    builder = WriteLock(folder)  # what a first `cbir index` holds until its manifest is written
    try:
        query = runner.invoke(app, ["query", str(collection / "red" / "red-0.jpg"), "--name", "photos", "--index-dir", str(index_dir)])
        assert query.exit_code != 0
        lines = query.stderr.strip().splitlines()
        assert len(lines) == 1 and "is being built by cbir process" in lines[0] and "never finished" not in lines[0]
        threading.Timer(1.0, builder.release).start()
        started = time.monotonic()
        waited = runner.invoke(app, ["index", str(collection), "--name", "photos", "--index-dir", str(index_dir), "--wait", "--json"])
        assert waited.exit_code == 0, waited.stderr
        assert time.monotonic() - started >= 0.9
        assert '"total": 15' in waited.stdout
    finally:
        builder.release()


def test_waiting_for_a_first_build_that_fails_and_removes_its_folder(collection, index_dir):
    import shutil
    import threading

    from cbir.errors import IndexLockedError
    from cbir.store.directory import WriteLock

    folder = index_dir / "photos"
    folder.mkdir(parents=True)
    builder = WriteLock(folder)

    class SecondWriter(Progress):
        """While the waiting run writes, is the index really locked against others?"""

        refused = None

        def advance(self, steps: int = 1) -> None:
            if self.refused is None:
                try:
                    WriteLock(folder).release()
                    self.refused = False
                except IndexLockedError:
                    self.refused = True

    second = SecondWriter()
    outcome = {}
    waiting = threading.Thread(
        target=lambda: outcome.update(summary=index_folder(collection, "photos", index_dir, wait=True, progress=second))
    )
    waiting.start()
    time.sleep(0.5)
    shutil.rmtree(folder)  # what a failed first build leaves: nothing
    builder.release()
    waiting.join(60)
    assert outcome["summary"].created and outcome["summary"].total == 15
    assert second.refused is True, "the waiting run wrote without holding the index's lock"


def test_a_dead_worker_ends_the_wait_for_a_result_the_pool_never_reports():
    # A worker killed while sending its result leaves a partial message in the
    # pipe: the pool's manager thread blocks reading it and the future never
    # completes (this hung the killed-worker test above once in a full run).
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from cbir.compute.processes import _result

    class DeadWorker:
        exitcode = -signal.SIGKILL

    class Pool:
        _processes = {1: DeadWorker()}

    never_done = Future()
    started = time.monotonic()
    with pytest.raises(BrokenProcessPool):
        _result(Pool(), never_done)
    assert time.monotonic() - started < 5


_HALF_SENT_RESULT = '''
import gc, multiprocessing, os, struct, sys, time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

def die_while_sending():
    from multiprocessing.queues import SimpleQueue
    writer = next(o for o in gc.get_objects() if isinstance(o, SimpleQueue))._writer
    os.write(writer.fileno(), struct.pack("!i", 100000) + b"x" * 10)  # a header and a tenth of a payload
    os._exit(9)

if __name__ == "__main__":
    from cbir.compute.processes import _result, _stop_pool
    pool = ProcessPoolExecutor(2, multiprocessing.get_context("spawn"))
    future = pool.submit(die_while_sending)
    pool.submit(time.sleep, 30)
    try:
        _result(pool, future)
    except BrokenProcessPool:
        print("broken")
    _stop_pool(pool)
'''


def test_a_worker_killed_while_sending_its_result_neither_hangs_the_run_nor_the_exit(tmp_path):
    script = tmp_path / "half_sent.py"
    script.write_text(_HALF_SENT_RESULT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "broken" and done.returncode == 0, done.stderr[-2000:]


def test_worker_processes_give_the_same_loaded_files_as_threads(tmp_path):
    """Every field of each file survives the round trip to a worker (paths go as strings, fields come back)."""
    from cbir.features.base import make_extractor
    from cbir.compute.work import KnownContent, PrepareSpec
    from cbir.compute.loader import load_prepared

    rng = np.random.default_rng(3)
    files = [write_image(tmp_path / f"{i}.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)) for i in range(20)]
    (tmp_path / "empty.png").write_bytes(b"")
    files.append(tmp_path / "empty.png")
    threads = list(load_prepared(files, PrepareSpec(min_side=None), workers=2))
    known_sha256 = {files[0]: threads[0][0].sha256}  # unchanged: not decoded
    known = KnownContent.from_hashes([(7, threads[1][0].sha256)])  # reusable: not decoded either
    for spec in (PrepareSpec(min_side=None), PrepareSpec.for_extractor(make_extractor("color"))):
        in_threads = list(load_prepared(files, spec, workers=2, known_sha256=known_sha256, known=known))
        in_processes = list(load_prepared(files, spec, workers=2, processes=True, known_sha256=known_sha256, known=known))
        assert [loaded.path for loaded, _ in in_processes] == files
        for (a, item_a), (b, item_b) in zip(in_threads, in_processes):
            assert (a.path, a.size, a.mtime_ns, a.sha256, a.error, a.unchanged, a.reusable) == (
                b.path, b.size, b.mtime_ns, b.sha256, b.error, b.unchanged, b.reusable
            )
            assert (a.image is None) == (b.image is None) and (item_a is None) == (item_b is None)
            if item_a is not None:
                np.testing.assert_array_equal(item_a, item_b)
        assert in_processes[0][0].unchanged and in_processes[1][0].reusable and in_processes[-1][0].error == "empty file"
