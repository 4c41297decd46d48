"""Training an extractor on a folder of images, outside any index (``cbir train-autoencoder``).

The training loop itself is :mod:`cbir.features.autoencoder.training`; this
module adds what needs the loader: decoding a folder (a bounded sample) in
worker threads, and refusing an output folder that holds another training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir.compute.work import PrepareSpec, check_workers
from cbir.compute.loader import load_prepared
from cbir.errors import NoImagesError, UsageError
from cbir.features.autoencoder.extractor import AutoencoderExtractor
from cbir.features.autoencoder.history import HISTORY_FILE, read_history
from cbir.features.autoencoder.training import CHECKPOINT_DIR, MODEL_FILE, _differences, clear_training
from cbir.images.scan import find_images
from cbir.progress import SILENT, Progress

logger = logging.getLogger(__name__)


def train_autoencoder(
    source: str | os.PathLike | Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    **params: Any,
) -> AutoencoderExtractor:
    """Train an autoencoder on a folder (or decoded images) and store it in ``out_dir``.

    ``out_dir`` receives ``model.keras``, ``history.json``, ``loss.png`` and a
    ``checkpoints`` folder. Run again with the same images and training
    parameters after an interruption, it resumes from the last completed
    epoch; run again after training finished, it returns the stored model at
    once (with more ``epochs``, it trains on).

    Parameters
    ----------
    source : path-like or sequence of arrays
        A folder of images (searched recursively; unreadable files are
        skipped with a warning), or decoded RGB uint8 images.
    out_dir : path-like
        Training folder, created if needed.
    progress : cbir.progress.Progress, optional
        Told about decoding (one step per file) and training (one per epoch).
    workers : int, optional
        Decoding threads; defaults to the number of CPUs.
    overwrite : bool
        Replace whatever training ``out_dir`` holds instead of refusing it.
    **params
        :class:`AutoencoderExtractor` parameters (not ``model_path``).

    Returns
    -------
    AutoencoderExtractor
        Trained, with ``model_path`` pointing at ``out_dir/model.keras``, so
        its config rebuilds an extractor that uses this very model.

    Raises
    ------
    UsageError
        ``out_dir`` holds a model trained with other parameters or on other
        images, or a model this function did not write (unless ``overwrite``).
    """
    if "model_path" in params:
        raise UsageError("train_autoencoder trains a new model: model_path is not accepted")
    extractor = AutoencoderExtractor(**params)
    extractor.check_params()
    out_dir = Path(out_dir)
    progress = progress or SILENT
    folder = Path(os.path.abspath(source)) if isinstance(source, (str, os.PathLike)) else None
    if overwrite:
        clear_training(out_dir)
    else:
        _check_same_training(out_dir, extractor, folder)
    if folder is not None:
        pixels = prepare_folder(extractor, folder, workers, progress)
    else:
        if len(source) == 0:
            raise NoImagesError("the autoencoder needs at least one image to train on")
        pixels = np.stack([extractor.prepare(image) for image in source])
    extractor._fit_pixels(pixels, out_dir, progress, source=folder, strict=True)
    extractor.save(out_dir)
    return extractor._trained_copy(out_dir / MODEL_FILE)


def _check_same_training(out_dir: Path, extractor: AutoencoderExtractor, folder: Path | None) -> None:
    """Refuse, before decoding anything, an ``out_dir`` that holds another training."""
    record = read_history(out_dir / HISTORY_FILE)
    hint = "use another --out, or --overwrite to replace it"
    if record is None:
        if (out_dir / MODEL_FILE).exists() or (out_dir / CHECKPOINT_DIR).exists():
            raise UsageError(f"{out_dir} holds a model without its training history; {hint}")
        return
    differences = _differences(record.get("params", {}), extractor.get_params())
    if differences:
        raise UsageError(f"{out_dir} holds a model trained with other options ({differences}); {hint}")
    trained_on = record.get("source")
    if folder is not None and trained_on is not None and trained_on != str(folder):
        raise UsageError(f"{out_dir} holds a model trained on {trained_on}, not {folder}; {hint}")


def prepare_folder(
    extractor: AutoencoderExtractor, folder: Path, workers: int | None, progress: Progress, max_images: int = 20_000
) -> np.ndarray:
    """Decode and prepare images under ``folder`` (a fixed random sample of ``max_images`` at most).

    Through the one loader: each image is prepared (resized to the network's
    input) as it is decoded, so memory holds small inputs, never photos.
    Unreadable files are skipped with a warning.
    """
    paths = find_images(folder)
    if not paths:
        raise NoImagesError(f"no image files under {folder}")
    if len(paths) > max_images:
        chosen = np.random.default_rng(0).choice(len(paths), size=max_images, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    prepared = []
    progress.start("decoding images to train the autoencoder", len(paths))
    try:
        spec = PrepareSpec.for_extractor(extractor)
        for loaded, pixels in load_prepared(paths, spec, workers=check_workers(workers), prepare=extractor.prepare):
            if not loaded.more_frames:  # a video's frames are images to train on; the video counts once
                progress.advance(1)
            if pixels is None:
                logger.warning("skipping %s: %s", loaded.path, loaded.error)
            else:
                prepared.append(pixels)
            if len(prepared) >= max_images:
                break
    finally:
        progress.stop()
    if not prepared:
        raise NoImagesError(f"none of the {len(paths)} image files under {folder} could be read")
    return np.stack(prepared)
