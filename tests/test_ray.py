"""Indexing on a Ray cluster: a local cluster of 2 CPUs, started once for the module."""

from __future__ import annotations

import logging

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'cbir[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'cbir[ray]')")

from cbir.images.decode import read_image  # noqa: E402
from cbir.indexing.run import index_folder  # noqa: E402

from test_parallel import vectors_by_path  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 1024 * 1024,  # Ray's minimum is 75 MiB
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_ray_gives_the_local_vectors_and_records_what_a_worker_cannot_read(ray_cluster, collection, index_dir):
    (collection / "red" / "gone.jpg").symlink_to(collection / "nowhere.jpg")  # listed, unreadable everywhere
    (collection / "red" / "empty.jpg").write_bytes(b"")
    local = index_folder(collection, "local", index_dir, workers=1)
    distributed = index_folder(collection, "ray", index_dir, ray=True, batch_size=4)
    assert (distributed.added, distributed.skipped) == (local.added, local.skipped) == (15, 2)
    assert dict(distributed.skipped_files) == dict(local.skipped_files)
    assert "no such file" in dict(distributed.skipped_files)[str(collection / "red" / "gone.jpg")]
    expected, found = vectors_by_path(index_dir / "local"), vectors_by_path(index_dir / "ray")
    assert sorted(found) == sorted(expected)
    for path in expected:
        assert np.array_equal(found[path], expected[path]), path
    # An update through Ray embeds only what changed, like the local path.
    (collection / "red" / "empty.jpg").unlink()
    again = index_folder(collection, "ray", index_dir, ray=True)
    assert (again.added, again.unchanged, again.total) == (0, 15, 15)


def test_calls_are_as_large_as_balance_allows():
    from cbir.compute.ray_cluster import CALLS_PER_ACTOR, MAX_RAY_BATCH, RayRunner

    runner = RayRunner(actors=2)
    assert runner.batch_size(8000, 64) == 1000  # 4 calls per actor
    assert runner.batch_size(100_000, 64) == MAX_RAY_BATCH
    assert runner.batch_size(100, 32) == 32  # never below the model's batch
    assert runner.batch_size(1000, 32) * 2 * CALLS_PER_ACTOR >= 1000


def test_an_actor_runs_its_engine_on_its_share_of_the_cores(ray_cluster, tiny_cnn, collection, tmp_path):
    """A real actor of the class ``RayRunner.embed`` maps with, given what the loader gives it, embeds one file."""
    import os

    from cbir.compute.ray_cluster import RayRunner, _RayWorker
    from cbir.compute.work import EmbedderRef, PrepareSpec
    from cbir.features.pipeline import Embedder

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU here: an actor limited to one thread looks like one that is not")
    runner = RayRunner.connect()  # the module's cluster of 2 CPUs: one actor per CPU, one thread each
    assert (runner.actors, runner.threads) == (2, 1)
    embedder = Embedder(tiny_cnn)
    embedder.save(tmp_path)
    ref = EmbedderRef.for_embedder(embedder, tmp_path, copies=1, cores=runner.threads)  # as cbir.compute.loader does
    actor = ray.remote(num_cpus=1)(_RayWorker).remote(PrepareSpec.for_embedder(embedder, ref), None)
    photo = collection / "red" / "red-0.jpg"

    def embed_and_report(self, path):
        import os

        from cbir.features import runtimes

        out = self({"path": np.array([path], dtype=object), "known": np.array([""], dtype=object)})
        return out["item"][0], self.embedder.extractor.network_.threads, runtimes.cpu_count(), len(os.sched_getaffinity(0))

    vector, engine_threads, usable, node_cpus = ray.get(actor.__ray_call__.remote(embed_and_report, str(photo)))
    assert node_cpus >= 2 and engine_threads == usable == 1  # not every core of the node
    np.testing.assert_allclose(vector, embedder.transform([read_image(photo, embedder.decode_min_side)])[0], atol=1e-6)
    ray.kill(actor)
