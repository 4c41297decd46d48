"""Training the autoencoder: the resumable training loop and its batches.

Training on a folder of image files (which needs the loader) is
:func:`cbir.indexing.train.train_autoencoder`.

Denoising: the input gets Gaussian noise of standard deviation ``noise``
(clipped to [0, 1]) and the target is the clean image. Augmentation
(horizontal flips, shifts of up to 1/8 of the side with reflected borders)
is applied to input and target alike. Both are drawn from generators seeded
by ``(seed, epoch, batch)``, so a run is reproducible and a resumed run sees
the same batches an uninterrupted one would have. A validation split drives
early stopping; the best weights are checkpointed and kept.

A training folder holds ``history.json`` (parameters, the images' digest,
per-epoch losses), ``loss.png`` and ``checkpoints/``. A run resumes only the
training the folder holds: same training parameters, same images.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from cbir.errors import UsageError
from cbir.features._tensorflow import import_keras
from cbir.features.autoencoder.history import HISTORY_FILE, HISTORY_VERSION, LOSS_PLOT_FILE, read_history, write_history
from cbir.features.autoencoder.model import build_autoencoder, save_model
from cbir.fileio import sha256_bytes
from cbir.progress import Progress

if TYPE_CHECKING:
    from cbir.features.autoencoder.extractor import AutoencoderExtractor

logger = logging.getLogger(__name__)

#: The trained autoencoder (encoder and decoder), in Keras' ``.keras`` format.
MODEL_FILE = "model.keras"
#: Sub-folder of a training folder that holds what a resumed run needs.
CHECKPOINT_DIR = "checkpoints"

_LAST_CHECKPOINT = "last.keras"
_BEST_CHECKPOINT = "best.keras"
# Hyperparameters that do not change what training computes: a run may be
# resumed with other values (more epochs, the other embedding, the runtime).
NOT_TRAINING_PARAMS = ("epochs", "embedding", "model_path", "runtime")
# What a training folder may hold; --overwrite removes exactly these.
_TRAINING_FILES = (MODEL_FILE, HISTORY_FILE, LOSS_PLOT_FILE, CHECKPOINT_DIR)


def clear_training(out_dir: Path) -> None:
    """Remove what a training run wrote into ``out_dir`` (and nothing else)."""
    for name in _TRAINING_FILES:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _differences(recorded: dict[str, Any], params: dict[str, Any]) -> str:
    """``"input_size 32 (now 64), ..."`` for the training parameters that differ."""
    recorded, params = _training_subset(recorded), _training_subset(params)
    return ", ".join(
        f"{name} {recorded.get(name)!r} (now {params.get(name)!r})"
        for name in sorted(set(recorded) | set(params))
        if recorded.get(name) != params.get(name)
    )


def _data_digest(pixels: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(pixels).data)


# -- the training loop --------------------------------------------------------


def train(
    extractor: "AutoencoderExtractor",
    pixels: np.ndarray,
    work_dir: Path,
    progress: Progress,
    *,
    source: Path | None = None,
    strict: bool = False,
):
    """Fit (or resume fitting) an autoencoder; returns ``(model with the best weights, record)``.

    ``work_dir`` may hold an interrupted or finished run: it is resumed if it
    trained with the same parameters on the same images. Otherwise, with
    ``strict`` a :class:`UsageError` says why; without, training starts over.
    """
    keras = import_keras()
    checkpoints = work_dir / CHECKPOINT_DIR
    last_path, best_path = checkpoints / _LAST_CHECKPOINT, checkpoints / _BEST_CHECKPOINT

    digest = _data_digest(pixels)
    record = read_history(work_dir / HISTORY_FILE)
    resuming = record is not None and last_path.is_file() and best_path.is_file() and record["epochs"]
    if resuming:
        reason = None
        differences = _differences(record["params"], extractor.get_params())
        if differences:
            reason = f"other options ({differences})"
        elif record.get("data_sha256", digest) != digest:
            reason = f"other images ({record.get('n_train', 0) + record.get('n_validation', 0)} then, {len(pixels)} now)"
        if reason is not None:
            if strict:
                raise UsageError(f"{work_dir} holds a model trained with {reason}; use another --out, or --overwrite to replace it")
            logger.warning("%s holds a training run with %s: starting over", work_dir, reason)
            clear_training(work_dir)
            resuming = False
    checkpoints.mkdir(parents=True, exist_ok=True)
    if not resuming:
        record = {"version": HISTORY_VERSION, "epochs": [], "best_epoch": None, "stopped_early": False}
    # The record keeps every parameter (epochs may have been raised on resume)
    # so that from_pretrained can rebuild the extractor that trained it.
    record["params"] = {k: v for k, v in extractor.get_params().items() if k != "model_path"}
    record["data_sha256"] = digest
    record["source"] = str(source) if source is not None else record.get("source")

    rng = np.random.default_rng(int(extractor.seed))
    order = rng.permutation(len(pixels))
    n_val = 0
    if extractor.validation_split > 0 and len(pixels) >= 2:
        n_val = max(1, round(len(pixels) * extractor.validation_split))
    train_pixels, val_pixels = pixels[order[n_val:]], pixels[order[:n_val]]
    record["n_train"], record["n_validation"] = len(train_pixels), len(val_pixels)
    monitor = "val_loss" if n_val else "loss"

    done = len(record["epochs"])
    if resuming:
        model = keras.saving.load_model(last_path, compile=True, safe_mode=True)
        best = record["epochs"][record["best_epoch"] - 1][monitor]
        patience_left = extractor.patience - (done - record["best_epoch"])
        logger.info("resuming autoencoder training after epoch %d from %s", done, last_path)
    else:
        model = build_autoencoder(**extractor._architecture(), seed=int(extractor.seed))
        model.compile(optimizer=keras.optimizers.Adam(float(extractor.learning_rate)), loss="mse")
        best, patience_left = None, extractor.patience

    progress.start("training autoencoder", int(extractor.epochs), unit="epochs")
    try:
        progress.advance(min(done, int(extractor.epochs)))
        if not record["stopped_early"] and patience_left > 0 and done < extractor.epochs:
            # Keras' callbacks forget their state between fit() calls; seeding
            # them with the record makes a resumed run stop, and keep, exactly
            # what an uninterrupted one would have.
            callbacks = [
                keras.callbacks.EarlyStopping(monitor=monitor, patience=patience_left, baseline=best),
                _recorder(keras, model, record, work_dir, checkpoints, monitor, int(extractor.epochs), progress),
            ]
            validation = None
            if n_val:
                # Fixed noise, no augmentation: the loss is comparable from one epoch to the next.
                rng = np.random.default_rng([int(extractor.seed)])
                validation = _noisy_pair(val_pixels, rng, float(extractor.noise), augment=False)
            model.fit(
                _training_batches(train_pixels, extractor, first_epoch=done),
                steps_per_epoch=_batching(len(train_pixels), int(extractor.batch_size))[1],
                validation_data=validation,
                validation_batch_size=int(extractor.batch_size),
                epochs=int(extractor.epochs),
                initial_epoch=done,
                shuffle=False,  # the generator shuffles, reproducibly
                callbacks=callbacks,
                verbose=0,
            )
            if len(record["epochs"]) < extractor.epochs:
                record["stopped_early"] = True
        write_history(record, work_dir)
    finally:
        progress.stop()
    # Keras' restore_best_weights only knows this fit() call; the checkpoint
    # knows the best epoch across interruptions.
    model.load_weights(best_path)
    return model, record


def _training_subset(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in NOT_TRAINING_PARAMS}


def _recorder(keras, model, record: dict, work_dir: Path, checkpoints: Path, monitor: str, epochs: int, progress: Progress):
    """Callback that, after every epoch, saves the resumable state and reports progress.

    The best and last checkpoints are written before the history, so a
    history never counts an epoch whose weights are not on disk.
    """
    started = [0.0]

    def on_epoch_begin(epoch: int, logs: dict | None = None) -> None:
        started[0] = time.perf_counter()

    def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        entry = {"epoch": epoch + 1, "loss": float(logs["loss"]), "seconds": round(time.perf_counter() - started[0], 3)}
        if "val_loss" in logs:
            entry["val_loss"] = float(logs["val_loss"])
        best_epoch = record["best_epoch"]
        if best_epoch is None or entry[monitor] < record["epochs"][best_epoch - 1][monitor]:
            record["best_epoch"] = epoch + 1
        record["epochs"].append(entry)
        # Atomic writes (Keras' ModelCheckpoint writes in place): a kill
        # mid-save leaves the previous checkpoint, never half of one.
        if record["best_epoch"] == epoch + 1:
            save_model(model, checkpoints / _BEST_CHECKPOINT)
        save_model(model, checkpoints / _LAST_CHECKPOINT)
        write_history(record, work_dir)
        logger.info(
            "autoencoder epoch %d/%d: loss %.5f%s, %.1f s%s",
            epoch + 1,
            epochs,
            entry["loss"],
            f", val_loss {entry['val_loss']:.5f}" if "val_loss" in entry else "",
            entry["seconds"],
            " (best so far)" if record["best_epoch"] == epoch + 1 else "",
        )
        progress.advance(1)

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


def _training_batches(pixels: np.ndarray, extractor: "AutoencoderExtractor", first_epoch: int) -> Iterator:
    """``(noisy input, clean target)`` batches in [0, 1] for epochs ``first_epoch`` to the last.

    One stream for all epochs (fit with ``steps_per_epoch``), in which every
    batch is a pure function of ``(seed, epoch, batch)``: Keras' own epoch
    hooks are called at moments that vary with prefetching, so they cannot
    say which epoch a batch belongs to, and a resumed run must see the very
    batches an uninterrupted one would have. Each epoch is a new shuffle
    without the remainder, so every batch has the same shape.
    """
    seed, noise, augment = int(extractor.seed), float(extractor.noise), bool(extractor.augment)
    size, steps = _batching(len(pixels), int(extractor.batch_size))
    for epoch in range(first_epoch, int(extractor.epochs)):
        order = np.random.default_rng([seed, epoch]).permutation(len(pixels))
        for step in range(steps):
            rng = np.random.default_rng([seed, epoch, step])
            yield _noisy_pair(pixels[order[step * size : (step + 1) * size]], rng, noise, augment)


def _batching(n_images: int, batch_size: int) -> tuple[int, int]:
    """``(batch size, batches per epoch)``: full batches only, at least one."""
    size = min(batch_size, n_images)
    return size, n_images // size


def _noisy_pair(pixels: np.ndarray, rng: np.random.Generator, noise: float, augment: bool):
    clean = pixels.astype(np.float32) / 255.0
    if augment:
        clean = _flip_and_shift(clean, rng)
    if noise == 0:
        return clean, clean
    return np.clip(clean + rng.normal(0.0, noise, clean.shape).astype(np.float32), 0.0, 1.0), clean


def _flip_and_shift(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip about half the images left-right and shift each by up to 1/8 of the side."""
    n, size = batch.shape[0], batch.shape[1]
    flipped = rng.random(n) < 0.5
    batch = batch.copy()
    batch[flipped] = batch[flipped, :, ::-1]
    margin = max(1, size // 8)
    # Reflected borders rather than black ones, which would teach the decoder
    # to draw frames.
    padded = np.pad(batch, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * margin + 1, size=(2, n))
    return np.stack([padded[i, dy[i] : dy[i] + size, dx[i] : dx[i] + size] for i in range(n)])
