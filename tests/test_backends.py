"""One backend protocol: the same files through this process, threads, worker processes and Ray give identical batches.

Every :class:`~cbir.compute.work.LoadedFile` field is compared (a new field
is compared without editing this test), with readable, broken, unchanged
and reusable files in one run, where the workers prepare only and where
they embed too.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from cbir.compute.loader import Loader
from cbir.compute.work import CODEC_FIELDS, Batch, KnownContent, LoadedFile, load_file
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder

from conftest import make_collection
from photo_files import exif_bytes, write_jpeg


@pytest.fixture(scope="module")
def ray_backend():
    ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'cbir[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed")
    from cbir.compute.ray_cluster import RayRunner

    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield RayRunner.connect()
    ray.shutdown()


@pytest.fixture()
def files(tmp_path):
    paths = sorted(p for group in make_collection(tmp_path / "photos", per_class=4).values() for p in group)
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    # Metadata travels through every codec too: a date, a camera, a location.
    exif = exif_bytes(make="Nikon", model="Z 6", taken="2022:02:02 08:00:00", gps=(-33.86, 151.21))
    shot = write_jpeg(tmp_path / "photos" / "shot.jpg", np.full((48, 64, 3), 90, np.uint8), exif=exif)
    return [*paths, broken, shot]


def _loaders(ray_runner=None) -> dict[str, Loader]:
    loaders = {
        "this process": Loader(1, explicit=True, batch_size=5),
        "threads": Loader(2, explicit=False, batch_size=5),  # few files: threads, not processes
        "processes": Loader(2, explicit=True, batch_size=5),
    }
    if ray_runner is not None:
        loaders["ray"] = Loader(2, explicit=True, batch_size=5, ray=ray_runner)
    return loaders


def _as_records(batches: list[Batch]) -> dict[str, tuple]:
    """Every file's codec fields, whether it was embedded, and its vector, by path."""
    records = {}
    for batch in batches:
        assert isinstance(batch, Batch) and batch.vectors.dtype == np.float32
        assert len(batch.embedded) == len(batch.vectors)
        for loaded, vector in zip(batch.embedded, batch.vectors):
            records[str(loaded.path)] = (loaded.fields(), True, vector.tobytes())
        for loaded in batch.not_embedded:
            assert loaded.image is None
            records[str(loaded.path)] = (loaded.fields(), False, None)
    return records


@pytest.mark.parametrize("workers_embed", [False, True], ids=["workers prepare", "workers embed"])
def test_every_backend_gives_the_same_batches(files, tmp_path, workers_embed, request):
    ray_runner = None
    try:
        ray_runner = request.getfixturevalue("ray_backend")
    except pytest.skip.Exception:
        pass
    embedder = Embedder(make_extractor("color", bins=[4, 4, 2]))
    state_dir = None
    if workers_embed:
        state_dir = tmp_path / "state"
        embedder.save(state_dir)
    unchanged, reusable = files[0], files[1]
    known_sha256 = {unchanged: load_file(unchanged).sha256}  # its stored hash: not decoded again
    known = KnownContent.from_hashes([(7, load_file(reusable).sha256)])  # content the index holds already
    results = {}
    for name, loader in _loaders(ray_runner).items():
        batches = list(loader.embed_batches(files, embedder, known_sha256, known, state_dir=state_dir))
        results[name] = _as_records(batches)
    reference = results["this process"]
    assert reference[str(unchanged)][0][CODEC_FIELDS.index("unchanged")] is True
    assert reference[str(reusable)][0][CODEC_FIELDS.index("reusable")] is True
    assert reference[str(files[-2])][0][CODEC_FIELDS.index("error")]  # the broken file says why
    assert reference[str(files[-1])][0][CODEC_FIELDS.index("camera_model")] == "Z 6"
    assert sum(embedded for _, embedded, _ in reference.values()) == len(files) - 3
    for name, records in results.items():
        assert records == reference, name


def test_the_codec_carries_every_field_but_path_and_image(tmp_path):
    names = {f.name for f in dataclasses.fields(LoadedFile)}
    assert set(CODEC_FIELDS) == names - {"path", "image"}
    original = LoadedFile(tmp_path / "a.jpg", 10, 20, "ab" * 32, None, "broken", False, True)
    assert LoadedFile.from_fields(original.path, original.fields()) == original
    assert LoadedFile.from_fields(original.path, original.fields(), image=np.zeros(1)).image is not None
