"""The convolutional denoising autoencoder extractor: training, persistence, resuming.

Models here are tiny (16 px inputs, two blocks, a couple of epochs on a few
dozen generated images) so the whole file runs in seconds after TensorFlow's
import; what they check does not depend on the model being any good.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

from cbir.errors import IndexCorruptError, UsageError, WeightsError
from cbir.features.autoencoder import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    LOSS_PLOT_FILE,
    MODEL_FILE,
    AutoencoderExtractor,
    plot_losses,
)
from cbir.indexing.train import train_autoencoder
from cbir.features.base import make_extractor
from cbir.features.pipeline import Embedder
from cbir.progress import Progress

from conftest import TINY_AUTOENCODER as TINY
from conftest import rectangle_images as _images


class _Interrupt(Progress):
    """Raises KeyboardInterrupt once ``epochs`` epochs are done, like Ctrl-C between epochs."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.done = 0

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.done >= self.epochs:
            raise KeyboardInterrupt


class _Count(Progress):
    def __init__(self):
        self.steps = []

    def advance(self, steps: int = 1) -> None:
        self.steps.append(steps)


@pytest.fixture
def trained(tiny_autoencoder):
    """Trained once per test run (tests/conftest.py)."""
    return tiny_autoencoder


# -- without TensorFlow --------------------------------------------------------


def test_import_does_not_import_tensorflow():
    code = "import sys, cbir.features.autoencoder; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_registered_and_unfitted():
    extractor = make_extractor("autoencoder")
    assert isinstance(extractor, AutoencoderExtractor)
    assert extractor.requires_fit and not extractor.is_fitted
    assert extractor.decode_min_side == 64
    with pytest.raises(UsageError, match="not trained"):
        extractor.transform(_images(1))


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(input_size=60), "divisible"),
        (dict(channels=2), "channels"),
        (dict(filters=[]), "filters"),
        (dict(filters=[8, 0]), "filters"),
        (dict(noise=-0.1), "noise"),
        (dict(validation_split=1.0), "validation_split"),
        (dict(embedding="max"), "embedding"),
        (dict(epochs=0), "epochs"),
        (dict(augment="yes"), "augment"),
        (dict(learning_rate=0), "learning_rate"),
    ],
)
def test_check_params_refuses(params, message):
    with pytest.raises(UsageError, match=message):
        make_extractor("autoencoder", **params)


def test_dim_follows_embedding():
    assert AutoencoderExtractor(**TINY).dim == 2 * (8 + 16)
    assert AutoencoderExtractor(**TINY, embedding="flatten").dim == 4 * 4 * 4


@pytest.mark.parametrize("channels", [3, 1])
def test_prepare_resizes_and_converts(channels):
    extractor = AutoencoderExtractor(**TINY, channels=channels)
    prepared = extractor.prepare(_images(1)[0])
    assert prepared.shape == (16, 16, channels) and prepared.dtype == np.uint8


def test_plot_losses_draws_both_curves():
    figure = plot_losses([{"epoch": 1, "loss": 0.1, "val_loss": 0.2}, {"epoch": 2, "loss": 0.05, "val_loss": 0.1}])
    (axes,) = figure.axes
    assert [line.get_label() for line in axes.get_lines()] == ["training", "validation"]
    assert axes.get_yscale() == "log" and list(axes.get_lines()[1].get_ydata()) == [0.2, 0.1]


# -- trained ---------------------------------------------------------------------


@pytest.mark.parametrize("embedding", ["pool", "flatten"])
def test_vectors_are_unit_float32_of_dim(trained, embedding):
    extractor = AutoencoderExtractor.from_pretrained(trained[1], embedding=embedding)
    vectors = extractor.transform(_images(5, seed=1))
    assert vectors.shape == (5, extractor.dim) and vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_training_folder_holds_model_history_and_plot(trained):
    extractor, out = trained
    assert extractor.model_path == str(out / MODEL_FILE)
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert all(e["val_loss"] > 0 and e["loss"] > 0 for e in history["epochs"])
    assert history["params"]["filters"] == [8, 16] and history["params"]["epochs"] == 2
    assert history["best_epoch"] in (1, 2)
    plot = cv2.imread(str(out / LOSS_PLOT_FILE))
    assert plot is not None and plot.shape == (400, 640, 3)
    assert (out / CHECKPOINT_DIR / "last.keras").is_file()


def test_saved_model_reloads_with_identical_embeddings(trained, tmp_path):
    extractor, _ = trained
    images = _images(6, seed=2)
    embedder = Embedder(extractor)
    embedder.save(tmp_path)
    # What a query does: rebuild from the stored config, then load the state.
    reloaded = Embedder.from_config(embedder.get_config()).load_state(tmp_path)
    np.testing.assert_array_equal(reloaded.transform(images), embedder.transform(images))
    assert _weight_groups(tmp_path / "extractor" / MODEL_FILE) == ["layers", "vars"]  # no optimizer state
    assert "optimizer" in _weight_groups(trained[1] / CHECKPOINT_DIR / "last.keras")  # resuming needs it


def _weight_groups(path) -> list[str]:
    """Top-level groups of the weights inside a ``.keras`` file."""
    h5py = pytest.importorskip("h5py")
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
        return sorted(weights.keys())


def test_load_state_without_model_is_corrupt(tmp_path):
    with pytest.raises(IndexCorruptError, match="no autoencoder model"):
        AutoencoderExtractor(**TINY).load_state(tmp_path)


def test_model_path_skips_training_and_must_match(trained):
    extractor, out = trained
    images = _images(4, seed=3)
    reused = AutoencoderExtractor(**{**TINY, "model_path": str(out / MODEL_FILE)}).fit([])
    np.testing.assert_array_equal(reused.transform(images), extractor.transform(images))
    with pytest.raises(UsageError, match="input_size=16 \\(expected 32\\)"):
        AutoencoderExtractor(**{**TINY, "input_size": 32, "model_path": str(out / MODEL_FILE)}).fit([])
    with pytest.raises(WeightsError, match="no autoencoder model"):
        AutoencoderExtractor.from_pretrained(out / "missing.keras")
    with pytest.raises(UsageError, match="no parameter pooling"):
        AutoencoderExtractor.from_pretrained(out, pooling="max")
    with pytest.raises(UsageError, match="channels=3 \\(expected 1\\)"):
        AutoencoderExtractor.from_pretrained(out, channels=1)


def test_finished_training_is_not_repeated(trained):
    _, out = trained
    before = (out / HISTORY_FILE).read_text()
    progress = _Count()
    again = train_autoencoder(_images(24), out, progress=progress, **TINY)
    assert (out / HISTORY_FILE).read_text() == before
    assert progress.steps == [2]  # both epochs reported done at once, none run
    assert again.is_fitted


def test_resume_continues_from_checkpoint(tmp_path):
    images = _images(24, seed=4)
    params = dict(TINY, channels=1)
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(images, tmp_path / "run", progress=_Interrupt(epochs=1), **params)
    interrupted = json.loads((tmp_path / "run" / HISTORY_FILE).read_text())
    assert [e["epoch"] for e in interrupted["epochs"]] == [1]

    progress = _Count()
    resumed = train_autoencoder(images, tmp_path / "run", progress=progress, **params)
    history = resumed.history_
    assert progress.steps == [1, 1]  # epoch 1 restored, only epoch 2 trained
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["epochs"][0] == interrupted["epochs"][0]

    # Weights, optimizer state and data order all carry over: the resumed run
    # ends where an uninterrupted one does.
    straight = train_autoencoder(images, tmp_path / "straight", **params)
    for resumed_epoch, straight_epoch in zip(history["epochs"], straight.history_["epochs"]):
        assert resumed_epoch["loss"] == pytest.approx(straight_epoch["loss"], rel=1e-4)
        assert resumed_epoch["val_loss"] == pytest.approx(straight_epoch["val_loss"], rel=1e-4)
    np.testing.assert_allclose(resumed.transform(images), straight.transform(images), atol=1e-5)
    assert resumed.transform(images[:1]).shape == (1, resumed.dim)


def test_resume_refuses_other_parameters(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(_images(12), tmp_path, progress=_Interrupt(epochs=1), **TINY)
    with pytest.raises(UsageError, match=r"other options \(noise 0.1 \(now 0.3\)\)"):
        train_autoencoder(_images(12), tmp_path, **{**TINY, "noise": 0.3})


def test_a_training_on_other_images_is_refused_not_resumed(tmp_path):
    """It used to "resume", i.e. return the model of the other images."""
    one_epoch = {**TINY, "epochs": 1}
    first = train_autoencoder(_images(12), tmp_path, **one_epoch)
    with pytest.raises(UsageError, match=r"other images \(12 then, 12 now\).*--overwrite"):
        train_autoencoder(_images(12, seed=9), tmp_path, **one_epoch)
    replaced = train_autoencoder(_images(12, seed=9), tmp_path, overwrite=True, **one_epoch)
    assert replaced.history_["data_sha256"] != first.history_["data_sha256"]
    assert not np.array_equal(replaced.transform(_images(2)), first.transform(_images(2)))


def test_a_model_without_history_is_not_overwritten(trained, tmp_path):
    _, out = trained
    (tmp_path / MODEL_FILE).write_bytes((out / MODEL_FILE).read_bytes())
    with pytest.raises(UsageError, match="without its training history"):
        train_autoencoder(_images(12), tmp_path, **TINY)


def test_fit_replaces_a_work_dir_of_another_training(tmp_path, caplog):
    """The indexer's own training folder: other images restart training (with a warning)."""
    one_epoch = {**TINY, "epochs": 1}
    AutoencoderExtractor(**one_epoch).fit(_images(12), work_dir=tmp_path)
    again = AutoencoderExtractor(**one_epoch).fit(_images(12, seed=9), work_dir=tmp_path)
    assert "starting over" in caplog.text and again.history_["data_sha256"] == json.loads((tmp_path / HISTORY_FILE).read_text())["data_sha256"]


def test_train_from_folder_skips_unreadable_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images(10, seed=5)):
        cv2.imwrite(str(folder / f"{i}.png"), image[:, :, ::-1])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    extractor = train_autoencoder(folder, tmp_path / "out", **{**TINY, "epochs": 1})
    assert extractor.history_["n_train"] + extractor.history_["n_validation"] == 10
