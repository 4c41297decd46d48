"""Fitting a new index's embedder: a learning extractor, then a PCA, on a bounded sample.

Images come through the one loader (:mod:`cbir.compute.loader`) and, where the
extractor can take them so (``fit_prepared``), are held prepared (a 64 px
autoencoder input is 12 KB) rather than as decoded photos, so fitting on the
default 20,000-image sample stays within a few hundred MB.
"""

from __future__ import annotations

import dataclasses

import tempfile
from pathlib import Path

import numpy as np

from cbir.errors import NoImagesError
from cbir.features.pipeline import Embedder
from cbir.compute.work import Batch
from cbir.images.scan import find_images
from cbir.compute.loader import Loader
from cbir.compute.work import PrepareSpec
from cbir.progress import Progress

def fit_new_embedder(
    embedder: Embedder,
    files: list[Path],
    training_dir: Path,
    pca_train_folder,
    loader: Loader,
    fit_sample: int,
    progress: Progress,
    video: dict | None = None,
) -> list[Batch]:
    """Fit what learns (the extractor, then the PCA) on a random sample of images.

    Returns the batches whose raw vectors were computed to fit a PCA on the
    collection itself, so indexing does not run them through the model again.
    A video's frames are images of the sample (``video``: which frames); the
    sample stops at ``fit_sample`` images, so a folder of videos holds no more.
    """
    rng = np.random.default_rng(0)

    def sample(paths: list[Path]) -> list[Path]:
        if len(paths) <= fit_sample:
            return paths
        return [paths[i] for i in sorted(rng.choice(len(paths), size=fit_sample, replace=False))]

    extractor = embedder.extractor
    extractor.build(progress)  # loads a network or a given model before progress starts counting images
    if extractor.requires_fit and not extractor.is_fitted:
        _fit_extractor(extractor, sample(files), training_dir, loader, progress, video, fit_sample)
    if embedder.pca is None or embedder.pca.is_fitted:
        return []
    source = find_images(pca_train_folder) if pca_train_folder is not None else files
    chosen = sample(source)
    progress.start("extracting features to fit the PCA", len(chosen))
    # The extractor's state, saved where worker processes can build their own
    # copy: with a CNN this sample is most of a first build's embedding.
    sample_embedder = Embedder(extractor)
    with tempfile.TemporaryDirectory(prefix="cbir-sample-") as folder:
        state_dir = Path(folder) if loader.embeds_in_workers(len(chosen), sample_embedder) else None
        if state_dir is not None:
            sample_embedder.save(state_dir)
        raw = []
        try:
            for batch in loader.embed_batches(chosen, sample_embedder, progress=progress, state_dir=state_dir, video=video):
                raw.append(batch)
                if sum(len(vectors) for _, vectors, _ in raw) >= fit_sample:
                    break  # enough (frames of videos count each); the files left are embedded with the rest
        finally:
            progress.stop()
    if not any(len(vectors) for _, vectors, _ in raw):
        raise NoImagesError("none of the images could be read to fit the PCA")
    embedder.pca.fit(np.concatenate([vectors for _, vectors, _ in raw]))
    if pca_train_folder is not None:
        return []
    return [Batch(ok, embedder.pca.transform(vectors), failed) for ok, vectors, failed in raw]


def _fit_extractor(
    extractor, chosen: list[Path], training_dir: Path, loader: Loader, progress: Progress, video: dict | None = None, limit: int | None = None
) -> None:
    """Train a learning extractor on ``chosen`` (at most ``limit`` images: a video's frames count each),
    holding them prepared (small) where it can take that."""
    takes_prepared = hasattr(extractor, "fit_prepared")
    spec = PrepareSpec.for_extractor(extractor) if takes_prepared else PrepareSpec(extractor.decode_min_side)
    spec = dataclasses.replace(spec, video=video)
    progress.start("decoding images to train the extractor", len(chosen))
    items = []
    try:
        for loaded, item in loader.load(chosen, spec, prepare=extractor.prepare if takes_prepared else None):
            if not loaded.more_frames:
                progress.advance()
            if item is not None:
                items.append(item)
            if limit is not None and len(items) >= limit:
                break
    finally:
        progress.stop()
    if not items:
        raise NoImagesError("none of the images could be read to train the extractor")
    training_dir.mkdir(parents=True, exist_ok=True)
    if takes_prepared:
        extractor.fit_prepared(np.stack(items), work_dir=training_dir, progress=progress)
    else:
        extractor.fit(items, work_dir=training_dir, progress=progress)
