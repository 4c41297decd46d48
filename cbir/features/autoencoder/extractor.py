"""The autoencoder extractor: the encoder of a convolutional denoising autoencoder trained on the collection.

No pretrained weights are needed: a small convolutional autoencoder
(:mod:`~cbir.features.autoencoder.model`) is trained on the user's own
images (:mod:`~cbir.features.autoencoder.training`) and its encoder becomes
the feature extractor.

Embedding
    ``"pool"`` (default): the mean and the max over the spatial positions of
    every encoder block, each part L2-normalised, concatenated, L2-normalised
    again. ``"flatten"``: the bottleneck map flattened. The pooled multi-scale
    descriptor ranks better on photos, the flattened map on centred, aligned
    objects, where layout matters: see ``docs/autoencoder.md``.
Runtimes
    Like the CNN, the encoder is converted once to a TFLite flatbuffer, run
    by LiteRT or OpenVINO and cached in the index (``model.tflite``), so a
    query on an autoencoder index never imports TensorFlow. ``keras`` runs
    ``predict_on_batch``, the reference; all give the same vectors.

Everything is stored in Keras' own ``.keras`` format and loaded in safe mode,
with JSON for the training history: no pickle anywhere. TensorFlow is
imported only inside the functions that need it.

At ~450 lines a little over the usual size: the extractor's three states
(untrained, trained in memory, loaded from an index with a converted
encoder) share one set of parameters and checks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from cbir.errors import IndexCorruptError, NoImagesError, UsageError, WeightsError
from cbir.features.autoencoder import model as networks
from cbir.features.autoencoder.params import EMBEDDINGS, RUNTIMES, check_params
from cbir.features.autoencoder.history import HISTORY_FILE, read_history, write_history
from cbir.features.autoencoder.training import MODEL_FILE, NOT_TRAINING_PARAMS, train
from cbir.features.base import Extractor, Param, l2_normalize
from cbir.features.runtimes import NETWORKS, KerasNetwork, convert_to_tflite, runs_without_tensorflow
from cbir.fileio import write_bytes_atomic
from cbir.images.decode import resize_image
from cbir.progress import SILENT, Progress


_TFLITE_FILE = "model.tflite"
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
        A ``.keras`` file from :func:`train_autoencoder`, used instead of
        training: :meth:`build` loads it (``fit`` does not train it again).
        Its architecture must match the parameters above; :meth:`from_pretrained`
        reads them from the model.
    runtime : {"auto", "tflite", "openvino", "keras"}, default "auto"
        What runs the encoder (see the module docstring); same vectors.

    Attributes
    ----------
    model_ : keras.Model
        The trained autoencoder, when trained or loaded with Keras (an index
        queried with a converted runtime does without it).
    network_ : callable
        Runs the embedding network on uint8 images: the converted model with
        LiteRT or OpenVINO, or the Keras model.
    tflite_model_ : bytes
        The converted embedding network (what :meth:`save` caches), unless the
        runtime is Keras.
    history_ : dict or None
        The training record (parameters, per-epoch losses), as in ``history.json``.
    """

    name = "autoencoder"
    title = "Autoencoder"
    requires_fit = True
    runtime_params = ("runtime",)
    transform_uses_every_core = True
    parameters = (
        Param("input_size", int, 64, "Images are resized to this square side; divisible by 2 ** len(filters).", option=True),
        Param("channels", int, 3, "Train on greyscale images.", (3, 1), option=True, flag=("--grey", 1)),
        Param("filters", list, (32, 64, 128, 256), "Filters of the encoder blocks, each halving the size."),
        Param("latent_channels", int, 64, "Channels of the bottleneck."),
        Param("batch_norm", bool, True, "Batch normalisation after each convolution."),
        Param("noise", float, 0.1, "Gaussian noise on training inputs, in [0, 1] (0: a plain autoencoder)."),
        Param("augment", bool, True, "Random flips and small shifts while training."),
        Param("epochs", int, 40, "Most training epochs (early stopping usually ends sooner).", option=True),
        Param("batch_size", int, 32, "Images per training step."),
        Param("validation_split", float, 0.1, "Share of images held out to monitor the loss."),
        Param("patience", int, 5, "Epochs without improvement before stopping."),
        Param("learning_rate", float, 1e-3, "Adam's learning rate."),
        Param("seed", int, 0, "Seed of weights, split, noise and augmentation.", option=True),
        Param(
            "embedding", str, "pool",
            "pool: multi-scale pooled encoder activations; flatten: the bottleneck, for centred, aligned objects.",
            EMBEDDINGS, option=True,
        ),
        Param("model_path", str, None, "A trained .keras model instead of training (see --model).", path=True),
        Param("runtime", str, "auto", "What runs the encoder, same vectors: auto is tflite (LiteRT).", RUNTIMES, option=True),
    )

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
        runtime: str = "auto",
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
        self.runtime = runtime

    # -- configuration -----------------------------------------------------
    def check_params(self) -> None:
        check_params(self.get_params())

    def _architecture(self) -> dict[str, Any]:
        return {
            "input_size": int(self.input_size),
            "channels": int(self.channels),
            "filters": [int(f) for f in self.filters],
            "latent_channels": int(self.latent_channels),
            "batch_norm": bool(self.batch_norm),
        }

    # -- properties --------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "model_") or hasattr(self, "network_")

    @property
    def decode_min_side(self) -> int:
        return int(self.input_size)

    @property
    def dim(self) -> int:
        if self.embedding == "pool":
            return 2 * sum(int(f) for f in self.filters)
        side = int(self.input_size) // 2 ** len(self.filters)
        return side * side * int(self.latent_channels)

    @property
    def embeds_in_workers(self) -> bool:
        # A cached converted encoder loads in ~0.1 s with LiteRT or OpenVINO; the
        # Keras runtime, TensorFlow's own interpreter (no LiteRT installed) or a
        # state without a converted encoder need TensorFlow.
        return runs_without_tensorflow(self.engine) and not getattr(self, "_converted_on_load", False)

    @property
    def engine(self) -> str:
        """The runtime that actually runs: ``auto`` resolved."""
        return "tflite" if self.runtime == "auto" else self.runtime

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
        model = networks.load_model(model_file)
        params: dict[str, Any] = {}
        record = read_history(model_file.parent / HISTORY_FILE)
        if record is not None:
            params.update({k: v for k, v in record.get("params", {}).items() if k in names and k != "runtime"})
        params.update(networks.architecture_of(model))
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
        """Train the autoencoder on decoded RGB images.

        Parameters
        ----------
        images : sequence of (h, w, 3) uint8 arrays
            Any sizes; each is resized to ``input_size``.
        work_dir : path-like, optional
            Where checkpoints, ``history.json`` and ``loss.png`` are written
            as training goes. If it holds an interrupted run with the same
            training parameters and images, training resumes after its last
            completed epoch; a run of other parameters or images is replaced.
            Without it, a temporary folder is used and nothing resumes.
        progress : cbir.progress.Progress, optional
            Receives one step per epoch. Losses are logged at INFO level.

        Returns
        -------
        self

        Notes
        -----
        With ``model_path`` there is nothing to learn: the given model is
        used as it is (:meth:`build`), ``images`` are ignored.

        The initial weights come from ``seed`` and the batches from generators
        seeded by it, with no global random state set or used: on CPU the
        same images and parameters give the same model, bit for bit.
        """
        self.check_params()
        if self.model_path is not None:
            return self.build(progress)
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
        if self.model_path is not None:
            return self.build(progress)
        return self._fit_pixels(pixels, work_dir, progress)

    def _fit_pixels(
        self,
        pixels: np.ndarray,
        work_dir: str | os.PathLike | None,
        progress: Progress | None,
        *,
        source: Path | None = None,
        strict: bool = False,
    ) -> "AutoencoderExtractor":
        """Train on prepared ``(n, size, size, channels)`` uint8 images."""
        if work_dir is None:
            with tempfile.TemporaryDirectory(prefix="cbir-autoencoder-") as tmp:
                model, record = train(self, pixels, Path(tmp), progress or SILENT)
        else:
            model, record = train(self, pixels, Path(work_dir), progress or SILENT, source=source, strict=strict)
        self._set_model(model, UsageError)
        self.history_ = record
        return self

    def _trained_copy(self, model_file: Path) -> "AutoencoderExtractor":
        """This extractor with ``model_path`` set to where its model was saved."""
        trained = type(self)(**{**self.get_params(), "model_path": str(model_file)})
        trained._set_model(self.model_, UsageError)
        trained.history_ = self.history_
        return trained

    def build(self, progress: Progress | None = None) -> "AutoencoderExtractor":
        """Load ``model_path`` if given, and get the runtime ready (converting
        the encoder for LiteRT/OpenVINO); returns ``self``.

        An extractor without a model (neither trained nor given) is left as
        it is: :meth:`fit` trains one.
        """
        self.check_params()
        if not self.is_fitted and self.model_path is not None:
            if progress is not None:
                progress.status("loading the autoencoder model (TensorFlow import takes a few seconds)")
            self._set_model(networks.load_model(Path(self.model_path)), UsageError)
            self.history_ = read_history(Path(self.model_path).parent / HISTORY_FILE)
        if self.is_fitted and not hasattr(self, "network_"):
            if progress is not None:
                progress.status(f"converting the autoencoder's encoder for the {self.engine} runtime")
            self._ensure_network()
        return self

    def _set_model(self, model: Any, error: type[Exception]) -> None:
        """Adopt a trained autoencoder after checking it is the one the parameters describe."""
        found, expected = networks.architecture_of(model), self._architecture()
        if found != expected:
            differences = ", ".join(f"{k}={found[k]!r} (expected {expected[k]!r})" for k in expected if found[k] != expected[k])
            raise error(f"the autoencoder model does not match the extractor's parameters: {differences}")
        self.model_ = model
        for stale in ("network_", "tflite_model_"):
            self.__dict__.pop(stale, None)

    def _ensure_network(self) -> None:
        if hasattr(self, "network_"):
            return
        network = networks.embedding_network(self.model_, self.embedding)
        if self.engine == "keras":
            self.network_ = KerasNetwork(network)
        else:
            self._set_converted_model(convert_to_tflite(network))

    def _set_converted_model(self, model_bytes: bytes) -> None:
        self.network_ = NETWORKS[self.engine](model_bytes, int(self.input_size), channels=int(self.channels))
        self.tflite_model_ = model_bytes

    # -- embedding ---------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize one RGB uint8 image to ``(input_size, input_size, channels)`` uint8."""
        if self.channels == 1:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, np.newaxis]
        return resize_image(image, int(self.input_size), "squash")

    def _transform_prepared(self, items: Sequence[np.ndarray]) -> np.ndarray:
        if not self.is_fitted:
            raise UsageError("the autoencoder is not trained: call fit(), build() or load_state() first")
        self._ensure_network()
        pixels = np.stack(items)
        vectors = np.concatenate([self.network_(pixels[i : i + _PREDICT_BATCH]) for i in range(0, len(pixels), _PREDICT_BATCH)])
        vectors = vectors.reshape(len(pixels), -1)
        if vectors.shape[1] != self.dim:
            raise IndexCorruptError(f"the autoencoder model gives vectors of {vectors.shape[1]} dimensions, its parameters say {self.dim}")
        return l2_normalize(vectors)

    # -- persistence -------------------------------------------------------
    def weights_files(self) -> list[Path]:
        """The given model file, if any (a trained one is saved with the index)."""
        return [Path(self.model_path)] if self.model_path is not None else []

    def save(self, directory: Path) -> None:
        """Write ``model.keras`` (without optimizer state), the converted
        ``model.tflite`` unless the runtime is Keras, and the history and
        loss plot if known."""
        if not hasattr(self, "model_"):
            raise UsageError("the autoencoder has no Keras model to save: train it, or build() it from model_path")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # A model built afresh is uncompiled, so the stored file carries no
        # optimizer state (keras.models.clone_model copies the optimizer).
        clean = networks.build_autoencoder(**self._architecture())
        clean.set_weights(self.model_.get_weights())
        networks.save_model(clean, directory / MODEL_FILE)
        if self.engine != "keras":
            self._ensure_network()
            write_bytes_atomic(directory / _TFLITE_FILE, self.tflite_model_)
        if self.history_ is not None:
            write_history(self.history_, directory)

    def load_state(self, directory: Path) -> "AutoencoderExtractor":
        """Load what :meth:`save` wrote: the converted model if the runtime
        can run it (no TensorFlow), else ``model.keras`` (safe mode)."""
        self.check_params()
        directory = Path(directory)
        self.history_ = read_history(directory / HISTORY_FILE)
        converted = directory / _TFLITE_FILE
        if self.engine != "keras" and converted.is_file():
            try:
                self._set_converted_model(converted.read_bytes())
            except (OSError, ValueError, RuntimeError) as exc:
                raise IndexCorruptError(f"cannot load the converted autoencoder {converted}: {exc}") from exc
            self._converted_on_load = False
            return self
        try:
            model = networks.load_model(directory / MODEL_FILE)
        except WeightsError as exc:
            raise IndexCorruptError(str(exc)) from None
        self._set_model(model, IndexCorruptError)
        self._converted_on_load = self.engine != "keras"
        return self


def _training_subset(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in NOT_TRAINING_PARAMS}
