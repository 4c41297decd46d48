"""Library code leaves process-wide state alone; only the ``cbir`` command settles its own process.

Environment variables, other libraries' log levels, Typer's classes, the
global random generators and file descriptor 2 belong to whoever embeds
cbir (a notebook, a web app, the test runner).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import make_collection

#: Imports and uses the library in a fresh process; prints what process state it changed.
LIBRARY_USER = r"""
import json, logging, os, sys
def state():
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger) and not name.startswith("cbir")}
    fd = os.fstat(2)
    return dict(os.environ), levels, (fd.st_dev, fd.st_ino)
import typer.core, typer.rich_utils
typer_before = (typer.core.TyperOption.display_type_rich, typer.rich_utils.DEFAULT_STRING)
import numpy, faiss, cv2  # their own import-time settings (cv2: LD_LIBRARY_PATH) are theirs, not cbir's
env, levels, fd = state()

import cbir.cli, cbir.features.cnn, cbir.features.autoencoder, cbir.retrieval.duplicates
from cbir.images.decode import read_image
from cbir.indexing.run import index_folder
from cbir.retrieval.search import Searcher
folder, index_dir = sys.argv[1], sys.argv[2]
index_folder(folder, "photos", index_dir)
with Searcher.open("photos", index_dir) as searcher:
    searcher.query(read_image(os.path.join(folder, "red", "red-0.jpg")), k=3)
from typer.testing import CliRunner
CliRunner().invoke(cbir.cli.app, ["query", "--help"])

env_after, levels_after, fd_after = state()
print(json.dumps({
    "environ": sorted(set(env_after.items()) ^ set(env.items())),
    "levels": {n: l for n, l in levels_after.items() if levels.get(n, 0) != l},
    "stderr_moved": fd_after != fd,
    "typer_patched": (typer.core.TyperOption.display_type_rich, typer.rich_utils.DEFAULT_STRING) != typer_before,
}))
"""


def test_importing_and_using_the_library_leaves_process_state_alone(tmp_path):
    """decode.py set OPENCV_IO_MAX_IMAGE_PIXELS at import; importing cbir.cli patched Typer's classes."""
    make_collection(tmp_path / "photos")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENCV_IO_MAX_IMAGE_PIXELS", "TF_CPP_MIN_LOG_LEVEL", "CBIR_QUIET_ENGINES")}
    out = subprocess.run(
        [sys.executable, "-c", LIBRARY_USER, str(tmp_path / "photos"), str(tmp_path / "indexes")],
        capture_output=True, text=True, check=True, env=env,
    ).stdout
    changed = json.loads(out.strip().splitlines()[-1])
    assert changed == {"environ": [], "levels": {}, "stderr_moved": False, "typer_patched": False}


def test_the_command_sets_openCVs_cap_to_the_librarys():
    from cbir.images.decode import MAX_IMAGE_PIXELS

    code = "import os, cbir.cli as c; c._settle_process(); print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert int(out) == MAX_IMAGE_PIXELS


@pytest.mark.parametrize("suffix", [".bmp", ".gif", ".webp", ".png", ".jpg"])
def test_oversized_images_are_refused_from_the_header_without_opencvs_cap(suffix, monkeypatch):
    """Without the environment variable, OpenCV's own cap is 2**30 pixels: the header check is what holds."""
    import cbir.images.decode as decode
    from cbir.errors import ImageError

    ok, encoded = cv2.imencode(suffix, np.zeros((37, 53, 3), np.uint8))
    assert ok
    assert decode.image_size(encoded.tobytes()) == (53, 37)
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(decode.cv2, "imdecode", lambda *a: pytest.fail("decoded despite its header"))
    with pytest.raises(ImageError, match="53x37 pixels"):
        decode.decode_image(encoded.tobytes())


needs_tensorflow = pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorflow") is None, reason="TensorFlow is not installed"
)


@needs_tensorflow
def test_importing_tensorflow_through_cbir_sets_no_environment_or_log_levels(monkeypatch):
    from cbir.features._tensorflow import import_tensorflow

    # TensorFlow's own import sets variables of its own (KMP_..., HDF5_...): those are its business.
    written = []
    setdefault, setitem = type(os.environ).setdefault, type(os.environ).__setitem__
    monkeypatch.setattr(type(os.environ), "setdefault", lambda self, k, v=None: (written.append(k), setdefault(self, k, v))[1])
    monkeypatch.setattr(type(os.environ), "__setitem__", lambda self, k, v: (written.append(k), setitem(self, k, v))[1])
    for name in ("tensorflow", "absl"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    import_tensorflow()
    assert not {"TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND"} & set(written)
    assert [logging.getLogger(n).level for n in ("tensorflow", "absl")] == [logging.NOTSET, logging.NOTSET]


@needs_tensorflow
def test_training_an_autoencoder_leaves_the_global_random_generators_alone(tmp_path):
    """keras.utils.set_random_seed reseeded Python's, NumPy's and TensorFlow's generators."""
    from cbir.indexing.train import train_autoencoder

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(8)]
    random.seed(1234)
    np.random.seed(1234)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    params = dict(input_size=16, filters=(4,), latent_channels=2, batch_size=4, epochs=1, seed=3)
    first = train_autoencoder(images, tmp_path / "a", **params)
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    again = train_autoencoder(images, tmp_path / "b", **params)  # still reproducible from the seed alone
    np.testing.assert_array_equal(first.transform(images), again.transform(images))
