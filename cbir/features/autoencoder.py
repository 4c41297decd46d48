"""Convolutional denoising autoencoder: features learned from the collection itself.

No pretrained weights are needed: a small convolutional autoencoder is trained
on the user's own images and its encoder becomes the feature extractor.

Model
    Encoder: ``len(filters)`` blocks of a stride-2 3x3 convolution, optional
    batch normalisation and ReLU, then a 1x1 convolution to
    ``latent_channels`` (the bottleneck, ``input_size / 2**len(filters)``
    pixels square). Decoder: the mirror image with stride-2 transposed
    convolutions, ending in a sigmoid on inputs scaled to [0, 1].
Training
    Denoising: the input gets Gaussian noise of standard deviation ``noise``
    (clipped to [0, 1]) and the target is the clean image. Augmentation
    (horizontal flips, shifts of up to 1/8 of the side with reflected borders)
    is applied to input and target alike. Both are drawn from generators
    seeded by ``(seed, epoch, batch)``, so a run is reproducible and a resumed
    run sees the same batches an uninterrupted one would have. A validation
    split drives early stopping; the best weights are checkpointed and kept.
Embedding
    ``"pool"`` (default): the mean and the max over the spatial positions of
    every encoder block, each part L2-normalised, concatenated, L2-normalised
    again. ``"flatten"``: the bottleneck map flattened. The pooled multi-scale
    descriptor ranks better on photos (Corel-1k P@10 0.62 vs 0.54), the
    flattened map on centred, aligned objects (Fashion-MNIST 0.78 vs 0.69),
    where layout matters: see ``docs/autoencoder.md``.

Everything is stored with Keras' own ``.keras`` format and loaded in safe
mode, with JSON for the training history: no pickle anywhere. TensorFlow is
imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from cbir.errors import IndexCorruptError, NoImagesError, UsageError, WeightsError
from cbir.features.base import Extractor, l2_normalize
from cbir.progress import SILENT, Progress

logger = logging.getLogger(__name__)

#: The trained autoencoder (encoder and decoder), in Keras' ``.keras`` format.
MODEL_FILE = "model.keras"
#: Parameters and per-epoch losses of the training run.
HISTORY_FILE = "history.json"
#: Training and validation loss curves.
LOSS_PLOT_FILE = "loss.png"
#: Sub-folder of a training folder that holds what a resumed run needs.
CHECKPOINT_DIR = "checkpoints"
#: Accepted values of ``embedding``.
EMBEDDINGS = ("pool", "flatten")

_LAST_CHECKPOINT = "last.keras"
_BEST_CHECKPOINT = "best.keras"
_HISTORY_VERSION = 1
# Hyperparameters that do not change what training computes: a run may be
# resumed with other values (more epochs, the other embedding).
_NOT_TRAINING_PARAMS = ("epochs", "embedding", "model_path")
# Images per encoder call at embedding time: bounds memory, not results.
_PREDICT_BATCH = 256


class AutoencoderExtractor(Extractor):
    """Encoder of a convolutional denoising autoencoder trained on the collection.

    Parameters
    ----------
    input_size : int, default 64
        Images are resized (aspect ratio not kept) to ``input_size`` square.
        Must be divisible by ``2 ** len(filters)``.
    channels : {3, 1}, default 3
        3 for RGB, 1 for greyscale (images are converted before resizing).
    filters : sequence of int, default (32, 64, 128, 256)
        Filters of the encoder blocks; each block halves the resolution.
    latent_channels : int, default 64
        Channels of the bottleneck map (a 1x1 convolution after the last block).
    batch_norm : bool, default True
        Batch normalisation after every convolution but the bottleneck and output.
    noise : float, default 0.1
        Standard deviation of the Gaussian noise added to training inputs in
        [0, 1]; 0 trains a plain autoencoder.
    augment : bool, default True
        Random horizontal flips and shifts of the training images.
    epochs : int, default 40
        Upper bound on training epochs; early stopping usually ends sooner.
    batch_size : int, default 32
    validation_split : float, default 0.1
        Fraction of the images held out to monitor the loss (at least one
        image when positive). With 0, the training loss is monitored.
    patience : int, default 5
        Epochs without improvement of the monitored loss before stopping.
    learning_rate : float, default 1e-3
        Adam's learning rate.
    seed : int, default 0
        Seeds weights, split, noise and augmentation.
    embedding : {"pool", "flatten"}, default "pool"
        What the vectors are made of (see the module docstring): ``"pool"``
        for photos, ``"flatten"`` for centred, aligned objects.
    model_path : str or None, default None
        A ``.keras`` file from :func:`train_autoencoder`: ``fit`` loads it
        instead of training. Its architecture must match the parameters above;
        :meth:`from_pretrained` reads them from the model.

    Attributes
    ----------
    model_ : keras.Model
        The trained autoencoder.
    encoder_ : keras.Model
        Its encoder, with every block's output and the bottleneck as outputs.
    history_ : dict or None
        The training record (parameters, per-epoch losses), as in ``history.json``.
    """

    name = "autoencoder"
    requires_fit = True

    def __init__(
        self,
        input_size: int = 64,
        channels: int = 3,
        filters: Sequence[int] = (32, 64, 128, 256),
        latent_channels: int = 64,
        batch_norm: bool = True,
        noise: float = 0.1,
        augment: bool = True,
        epochs: int = 40,
        batch_size: int = 32,
        validation_split: float = 0.1,
        patience: int = 5,
        learning_rate: float = 1e-3,
        seed: int = 0,
        embedding: str = "pool",
        model_path: str | None = None,
    ):
        self.input_size = input_size
        self.channels = channels
        self.filters = filters
        self.latent_channels = latent_channels
        self.batch_norm = batch_norm
        self.noise = noise
        self.augment = augment
        self.epochs = epochs
        self.batch_size = batch_size
        self.validation_split = validation_split
        self.patience = patience
        self.learning_rate = learning_rate
        self.seed = seed
        self.embedding = embedding
        self.model_path = model_path

    # -- configuration -----------------------------------------------------
    def check_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise UsageError(f"autoencoder {name} must be a positive integer, got {value!r}")

        for name in ("input_size", "latent_channels", "epochs", "batch_size", "patience"):
            positive_int(name)
        if self.channels not in (1, 3):
            raise UsageError(f"autoencoder channels must be 3 (colour) or 1 (greyscale), got {self.channels!r}")
        filters = self.filters
        if isinstance(filters, (str, bytes)) or not isinstance(filters, Sequence) or not filters:
            raise UsageError(f"autoencoder filters must be a non-empty list of positive integers, got {filters!r}")
        if not all(_is_int(f) and f >= 1 for f in filters):
            raise UsageError(f"autoencoder filters must be positive integers, got {list(filters)!r}")
        step = 2 ** len(filters)
        if self.input_size % step:
            raise UsageError(
                f"autoencoder input_size {self.input_size} must be divisible by 2**{len(filters)} = {step} "
                f"({len(filters)} blocks each halve the resolution)"
            )
        if not isinstance(self.noise, (int, float)) or isinstance(self.noise, bool) or not 0 <= self.noise <= 1:
            raise UsageError(f"autoencoder noise must be between 0 and 1, got {self.noise!r}")
        for name in ("augment", "batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"autoencoder {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.validation_split, (int, float)) or not 0 <= self.validation_split < 1:
            raise UsageError(f"autoencoder validation_split must be in [0, 1), got {self.validation_split!r}")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise UsageError(f"autoencoder learning_rate must be positive, got {self.learning_rate!r}")
        if not _is_int(self.seed):
            raise UsageError(f"autoencoder seed must be an integer, got {self.seed!r}")
        if self.embedding not in EMBEDDINGS:
            raise UsageError(f"autoencoder embedding must be one of {', '.join(EMBEDDINGS)}, got {self.embedding!r}")
        if self.model_path is not None and not isinstance(self.model_path, (str, os.PathLike)):
            raise UsageError(f"autoencoder model_path must be a path, got {self.model_path!r}")

    def _architecture(self) -> dict[str, Any]:
        return {
            "input_size": int(self.input_size),
            "channels": int(self.channels),
            "filters": [int(f) for f in self.filters],
            "latent_channels": int(self.latent_channels),
            "batch_norm": bool(self.batch_norm),
        }

    def _training_params(self) -> dict[str, Any]:
        return _training_subset(self.get_params())

    # -- properties --------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "encoder_")

    @property
    def decode_min_side(self) -> int:
        return int(self.input_size)

    @property
    def dim(self) -> int:
        if self.embedding == "pool":
            return 2 * sum(int(f) for f in self.filters)
        side = int(self.input_size) // 2 ** len(self.filters)
        return side * side * int(self.latent_channels)

    # -- learning ----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "AutoencoderExtractor":
        """An extractor that uses the model :func:`train_autoencoder` wrote, without training.

        Parameters
        ----------
        path : path-like
            The ``model.keras`` file, or the folder holding it.
        **overrides
            Parameters to set (typically ``embedding``). The architecture is
            read from the model itself and the training parameters from the
            ``history.json`` beside it, if any, for the record.

        Raises
        ------
        WeightsError
            If the model cannot be found or loaded.
        UsageError
            If an override is unknown or contradicts the model's architecture.
        """
        names = set(cls._param_names())
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UsageError(f"autoencoder has no parameter {', '.join(unknown)}; it takes: {', '.join(sorted(names))}")
        path = Path(path).absolute()
        model_file = path / MODEL_FILE if path.is_dir() else path
        model = _load_model(model_file)
        params: dict[str, Any] = {}
        record = _read_history(model_file.parent / HISTORY_FILE)
        if record is not None:
            params.update({k: v for k, v in record.get("params", {}).items() if k in names})
        params.update(_architecture_of(model))
        params.update(overrides)
        params["model_path"] = str(model_file)
        extractor = cls(**params)
        extractor.check_params()
        extractor._set_model(model, UsageError)
        extractor.history_ = record
        return extractor

    def fit(
        self,
        images: Sequence[np.ndarray],
        *,
        work_dir: str | os.PathLike | None = None,
        progress: Progress | None = None,
    ) -> "AutoencoderExtractor":
        """Train the autoencoder on decoded RGB images (or load ``model_path``).

        Parameters
        ----------
        images : sequence of (h, w, 3) uint8 arrays
            Any sizes; each is resized to ``input_size``.
        work_dir : path-like, optional
            Where checkpoints, ``history.json`` and ``loss.png`` are written
            as training goes. If it holds an interrupted run with the same
            training parameters, training resumes after its last completed
            epoch. Without it, a temporary folder is used and nothing resumes.
        progress : cbir.progress.Progress, optional
            Receives one step per epoch. Losses are logged at INFO level.

        Returns
        -------
        self

        Notes
        -----
        Training calls ``keras.utils.set_random_seed(seed)``, which also seeds
        Python's and NumPy's global generators: on CPU the same images and
        parameters then give the same model, bit for bit.
        """
        self.check_params()
        if self.model_path is not None:
            self._set_model(_load_model(Path(self.model_path)), UsageError)
            self.history_ = _read_history(Path(self.model_path).parent / HISTORY_FILE)
            return self
        if len(images) == 0:
            raise NoImagesError("the autoencoder needs at least one image to train on")
        pixels = np.stack([self.prepare(image) for image in images])
        return self._fit_pixels(pixels, work_dir, progress)

    def fit_prepared(
        self, pixels: np.ndarray, *, work_dir: str | os.PathLike | None = None, progress: Progress | None = None
    ) -> "AutoencoderExtractor":
        """:meth:`fit` on images already through :meth:`prepare` (``(n, size, size, channels)`` uint8).

        The indexer's loader prepares images as it decodes them, so training
        data stays small (12 KB an image at 64 px) instead of whole photos.
        """
        self.check_params()
        return self._fit_pixels(pixels, work_dir, progress)

    def _fit_pixels(
        self, pixels: np.ndarray, work_dir: str | os.PathLike | None, progress: Progress | None
    ) -> "AutoencoderExtractor":
        """Train on prepared ``(n, size, size, channels)`` uint8 images."""
        if work_dir is None:
            with tempfile.TemporaryDirectory(prefix="cbir-autoencoder-") as tmp:
                model, record = _train(self, pixels, Path(tmp), progress or SILENT)
        else:
            model, record = _train(self, pixels, Path(work_dir), progress or SILENT)
        self._set_model(model, UsageError)
        self.history_ = record
        return self

    def _set_model(self, model: Any, error: type[Exception]) -> None:
        """Adopt a trained autoencoder after checking it is the one the parameters describe."""
        found, expected = _architecture_of(model), self._architecture()
        if found != expected:
            differences = ", ".join(f"{k}={found[k]!r} (expected {expected[k]!r})" for k in expected if found[k] != expected[k])
            raise error(f"the autoencoder model does not match the extractor's parameters: {differences}")
        keras = _import_keras()
        outputs = [model.get_layer(_block_name(i)).output for i in range(len(expected["filters"]))]
        outputs.append(model.get_layer("latent").output)
        self.model_ = model
        self.encoder_ = keras.Model(model.inputs, outputs, name="encoder")

    # -- embedding ---------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize one RGB uint8 image to ``(input_size, input_size, channels)`` uint8."""
        if self.channels == 1:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        size = int(self.input_size)
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return resized.reshape(size, size, int(self.channels))

    def transform_prepared(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Encode prepared images into L2-normalised ``(n, dim)`` float32 vectors."""
        if not self.is_fitted:
            raise UsageError("the autoencoder is not trained: call fit() or load_state() first")
        pixels = np.stack(items)
        vectors = [self._embed(pixels[i : i + _PREDICT_BATCH]) for i in range(0, len(pixels), _PREDICT_BATCH)]
        return l2_normalize(np.concatenate(vectors))

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        *blocks, latent = self.encoder_.predict_on_batch(pixels.astype(np.float32) / 255.0)
        if self.embedding == "flatten":
            return np.asarray(latent).reshape(len(pixels), -1)
        # Each part is normalised on its own so that no block (the wide deep
        # ones have larger activations) drowns out the others.
        parts = []
        for block in blocks:
            block = np.asarray(block)
            parts.append(l2_normalize(block.mean(axis=(1, 2))))
            parts.append(l2_normalize(block.max(axis=(1, 2))))
        return np.concatenate(parts, axis=1)

    # -- persistence -------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write ``model.keras`` (without optimizer state), and the history and loss plot if known."""
        if not self.is_fitted:
            raise UsageError("the autoencoder is not trained: nothing to save")
        keras = _import_keras()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # A model built afresh is uncompiled, so the stored file carries no
        # optimizer state (keras.models.clone_model copies the optimizer).
        clean = _build_autoencoder(keras, **self._architecture())
        clean.set_weights(self.model_.get_weights())
        _save_model(clean, directory / MODEL_FILE)
        if self.history_ is not None:
            _write_history(self.history_, directory)

    def load_state(self, directory: Path) -> "AutoencoderExtractor":
        """Load ``model.keras`` from ``directory`` (safe mode) and the history beside it."""
        directory = Path(directory)
        try:
            model = _load_model(directory / MODEL_FILE)
        except WeightsError as exc:
            raise IndexCorruptError(str(exc)) from None
        self._set_model(model, IndexCorruptError)
        self.history_ = _read_history(directory / HISTORY_FILE)
        return self


def train_autoencoder(
    source: str | os.PathLike | Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    **params: Any,
) -> AutoencoderExtractor:
    """Train an autoencoder on a folder (or decoded images) and store it in ``out_dir``.

    ``out_dir`` receives ``model.keras``, ``history.json``, ``loss.png`` and a
    ``checkpoints`` folder. Run again with the same parameters after an
    interruption, it resumes from the last completed epoch; run again after
    training finished, it returns the stored model at once.

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
    **params
        :class:`AutoencoderExtractor` parameters (not ``model_path``).

    Returns
    -------
    AutoencoderExtractor
        Trained, with ``model_path`` pointing at ``out_dir/model.keras``, so
        its config rebuilds an extractor that uses this very model.
    """
    if "model_path" in params:
        raise UsageError("train_autoencoder trains a new model: model_path is not accepted")
    extractor = AutoencoderExtractor(**params)
    extractor.check_params()
    out_dir = Path(out_dir)
    progress = progress or SILENT
    if isinstance(source, (str, os.PathLike)):
        pixels = _prepare_folder(extractor, Path(source), workers, progress)
    else:
        if len(source) == 0:
            raise NoImagesError("the autoencoder needs at least one image to train on")
        pixels = np.stack([extractor.prepare(image) for image in source])
    extractor._fit_pixels(pixels, out_dir, progress)
    extractor.save(out_dir)
    trained = AutoencoderExtractor(**{**extractor.get_params(), "model_path": str(out_dir / MODEL_FILE)})
    trained._set_model(extractor.model_, UsageError)
    trained.history_ = extractor.history_
    return trained


# -- training ---------------------------------------------------------------


def _train(extractor: AutoencoderExtractor, pixels: np.ndarray, work_dir: Path, progress: Progress):
    """Fit (or resume fitting) an autoencoder; returns ``(model with the best weights, record)``."""
    keras = _import_keras()
    checkpoints = work_dir / CHECKPOINT_DIR
    checkpoints.mkdir(parents=True, exist_ok=True)
    last_path, best_path = checkpoints / _LAST_CHECKPOINT, checkpoints / _BEST_CHECKPOINT

    record = _read_history(work_dir / HISTORY_FILE)
    resuming = record is not None and last_path.is_file() and best_path.is_file() and record["epochs"]
    if resuming and _training_subset(record["params"]) != extractor._training_params():
        raise UsageError(
            f"{work_dir} holds a training run with other parameters ({record['params']}); "
            "train into another folder, or delete it to start over"
        )
    if not resuming:
        record = {"version": _HISTORY_VERSION, "epochs": [], "best_epoch": None, "stopped_early": False}
    # The record keeps every parameter (epochs may have been raised on resume)
    # so that from_pretrained can rebuild the extractor that trained it.
    record["params"] = {k: v for k, v in extractor.get_params().items() if k != "model_path"}

    keras.utils.set_random_seed(int(extractor.seed))
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
        model = _build_autoencoder(keras, **extractor._architecture())
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
                keras.callbacks.ModelCheckpoint(
                    best_path, monitor=monitor, save_best_only=True, initial_value_threshold=best
                ),
                keras.callbacks.EarlyStopping(monitor=monitor, patience=patience_left, baseline=best),
                _recorder(keras, model, record, work_dir, last_path, monitor, int(extractor.epochs), progress),
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
        _write_history(record, work_dir)
    finally:
        progress.stop()
    # Keras' restore_best_weights only knows this fit() call; the checkpoint
    # knows the best epoch across interruptions.
    model.load_weights(best_path)
    return model, record


def _training_subset(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in _NOT_TRAINING_PARAMS}


def _recorder(keras, model, record: dict, work_dir: Path, last_path: Path, monitor: str, epochs: int, progress: Progress):
    """Callback that, after every epoch, saves the resumable state and reports progress.

    The last checkpoint is written before the history, so a history never
    counts an epoch whose weights are not on disk.
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
        _save_model(model, last_path)
        _write_history(record, work_dir)
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


def _training_batches(pixels: np.ndarray, extractor: AutoencoderExtractor, first_epoch: int) -> Iterator:
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


def _block_name(index: int) -> str:
    return f"encoder_block{index + 1}"


def _build_autoencoder(keras, *, input_size: int, channels: int, filters: list[int], latent_channels: int, batch_norm: bool):
    """The autoencoder as one functional model; see the module docstring for the layout."""
    layers = keras.layers
    inputs = keras.Input((input_size, input_size, channels), name="image")
    x = inputs
    for i, n_filters in enumerate(filters):
        # Without BatchNorm the convolution needs its bias; with it, BN's beta replaces it.
        x = layers.Conv2D(n_filters, 3, strides=2, padding="same", use_bias=not batch_norm, name=f"encoder_conv{i + 1}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"encoder_bn{i + 1}")(x)
        x = layers.ReLU(name=_block_name(i))(x)
    x = layers.Conv2D(latent_channels, 1, name="latent")(x)
    for i, n_filters in enumerate(reversed(filters[:-1])):
        x = layers.Conv2DTranspose(n_filters, 3, strides=2, padding="same", use_bias=not batch_norm, name=f"decoder_conv{i + 1}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"decoder_bn{i + 1}")(x)
        x = layers.ReLU(name=f"decoder_block{i + 1}")(x)
    outputs = layers.Conv2DTranspose(channels, 3, strides=2, padding="same", activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="autoencoder")


def _architecture_of(model: Any) -> dict[str, Any]:
    """The architecture parameters of a model built by :func:`_build_autoencoder`.

    Raises
    ------
    WeightsError
        If the model was not built by this module.
    """
    names = {layer.name: layer for layer in model.layers}
    try:
        _, height, width, channels = model.inputs[0].shape
        filters = []
        while f"encoder_conv{len(filters) + 1}" in names:
            filters.append(int(names[f"encoder_conv{len(filters) + 1}"].filters))
        latent_channels = int(names["latent"].filters)
    except (KeyError, ValueError, AttributeError, IndexError):
        raise WeightsError(f"model {model.name!r} is not a cbir autoencoder") from None
    if not filters or height != width:
        raise WeightsError(f"model {model.name!r} is not a cbir autoencoder")
    return {
        "input_size": int(height),
        "channels": int(channels),
        "filters": filters,
        "latent_channels": latent_channels,
        "batch_norm": "encoder_bn1" in names,
    }


def _load_model(path: Path) -> Any:
    """Load a ``.keras`` file in safe mode, uncompiled.

    Raises
    ------
    WeightsError
        If the file is missing or is not a loadable Keras model.
    """
    if not path.is_file():
        raise WeightsError(f"no autoencoder model at {path}")
    keras = _import_keras()
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile and h5py errors alike
        raise WeightsError(f"cannot load autoencoder model {path}: {exc}") from exc


def _save_model(model: Any, path: Path) -> None:
    """Write a ``.keras`` file so that readers only ever see a complete one."""
    partial = path.with_name(path.stem + ".partial.keras")
    model.save(partial)
    os.replace(partial, path)


def _read_history(path: Path) -> dict | None:
    """The training record at ``path``, or ``None`` if there is none (or it is unreadable)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable training history %s: %s", path, exc)
        return None
    if not isinstance(record, dict) or record.get("version") != _HISTORY_VERSION:
        logger.warning("ignoring training history %s of an unknown version", path)
        return None
    return record


def _write_history(record: dict, directory: Path) -> None:
    """Write ``history.json`` atomically and redraw ``loss.png``."""
    path = directory / HISTORY_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)
    if record["epochs"]:
        image = plot_losses(record["epochs"])
        png = directory / LOSS_PLOT_FILE
        partial_png = png.with_name("loss.partial.png")
        if not cv2.imwrite(str(partial_png), image):
            raise OSError(f"cannot write {partial_png}")
        os.replace(partial_png, png)


def plot_losses(epochs: Sequence[dict], width: int = 640, height: int = 400) -> np.ndarray:
    """Draw training and validation loss per epoch, log scale, as a BGR image.

    Parameters
    ----------
    epochs : sequence of dict
        Entries of a history's ``"epochs"``: ``epoch``, ``loss`` and
        optionally ``val_loss``.

    Returns
    -------
    (height, width, 3) uint8 array, ready for ``cv2.imwrite``.
    """
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 50
    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (180, 180, 180), (0, 0, 0)
    series = [("training", "loss", (200, 90, 30)), ("validation", "val_loss", (30, 120, 240))]
    series = [(label, key, colour) for label, key, colour in series if any(key in e for e in epochs)]
    values = np.array([e[key] for _, key, _ in series for e in epochs if key in e], dtype=np.float64)
    low, high = np.log10(max(values.min(), 1e-12)), np.log10(max(values.max(), 1e-12))
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    first, last = epochs[0]["epoch"], epochs[-1]["epoch"]
    span = max(last - first, 1)

    def point(epoch: int, value: float) -> tuple[int, int]:
        x = left + (epoch - first) / span * (width - left - right)
        y = top + (high - np.log10(max(value, 1e-12))) / (high - low) * (height - top - bottom)
        return int(round(x)), int(round(y))

    for fraction in np.linspace(0, 1, 5):
        level = high - fraction * (high - low)
        y = int(round(top + fraction * (height - top - bottom)))
        cv2.line(image, (left, y), (width - right, y), grey, 1)
        cv2.putText(image, f"{10 ** level:.2g}", (5, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    for epoch in sorted({first, last, *range(first, last + 1, max(1, span // 8))}):
        x = point(epoch, 10**high)[0]
        cv2.putText(image, str(epoch), (x - 6, height - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), black, 1)
    cv2.putText(image, "epoch", (width // 2 - 20, height - 10), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(image, "autoencoder loss (MSE, log scale)", (left, 25), font, 0.55, black, 1, cv2.LINE_AA)
    for i, (label, key, colour) in enumerate(series):
        points = np.array([point(e["epoch"], e[key]) for e in epochs if key in e], np.int32)
        cv2.polylines(image, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        for x, y in points:
            cv2.circle(image, (int(x), int(y)), 3, colour, -1, cv2.LINE_AA)
        legend_y = top + 20 + 20 * i
        cv2.line(image, (width - right - 150, legend_y - 4), (width - right - 125, legend_y - 4), colour, 2)
        cv2.putText(image, label, (width - right - 118, legend_y), font, 0.45, black, 1, cv2.LINE_AA)
    return image


def _prepare_folder(
    extractor: AutoencoderExtractor, folder: Path, workers: int | None, progress: Progress, max_images: int = 20_000
) -> np.ndarray:
    """Decode and prepare images under ``folder`` (a random sample of ``max_images`` at most), skipping unreadable ones."""
    from cbir.images import find_images
    from cbir.loading import PrepareSpec, check_workers, load_prepared

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
            progress.advance(1)
            if pixels is None:
                logger.warning("skipping %s: %s", loaded.path, loaded.error)
            else:
                prepared.append(pixels)
    finally:
        progress.stop()
    if not prepared:
        raise NoImagesError(f"none of the {len(paths)} image files under {folder} could be read")
    return np.stack(prepared)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _import_keras():
    from cbir.features._tensorflow import import_keras

    return import_keras()
