"""What every extractor promises (cbir/features/base.py), checked over the whole registry.

Each registered extractor, and the PCA step and the Embedder that chain
them, is held to the same scikit-learn-like interface: parameters stored
unchanged and round-tripped through the config, ``fit`` returning ``self``,
learned attributes ending in ``_``, L2-normalised float32 rows, empty input,
and save/load giving identical vectors. Configurations are tiny so the file
stays fast; the deep extractors need TensorFlow to be built.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.features.base import EXTRACTORS, Extractor, extractor_class, extractor_from_config, make_extractor
from cbir.features.pca import PCAReduction
from cbir.features.pipeline import Embedder

#: Small, fast parameters of every registered extractor.
TINY = {
    "color": {"bins": [4, 4, 2], "min_side": 16},
    "cnn": {"backbone": "mobilenet", "weights": "none", "input_size": 32, "batch_size": 4},
    "autoencoder": {"input_size": 16, "filters": [4, 8], "latent_channels": 2, "epochs": 1, "batch_size": 4},
}
#: Every case the contract runs over: each extractor's tiny config, and the
#: options that change how an extractor embeds (multi-scale input, R-MAC).
CASES = {
    **{name: (name, params) for name, params in TINY.items()},
    # R-MAC needs a 3 x 3 feature map: 96 px at the smallest scale.
    "cnn-multiscale-rmac": ("cnn", {**TINY["cnn"], "input_size": 96, "scales": [1.0, 1.34], "pooling": "rmac"}),
}
DEEP = {"cnn", "autoencoder"}
needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")


def test_every_registered_extractor_has_a_tiny_config():
    assert set(TINY) == set(EXTRACTORS)


def _images(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(20, 48)), int(rng.integers(20, 48)), 3), dtype=np.uint8) for _ in range(n)]


def _params():
    return [pytest.param(case, marks=needs_tensorflow if CASES[case][0] in DEEP else ()) for case in sorted(CASES)]


def _learned(obj) -> set[str]:
    return {k for k in vars(obj) if k.endswith("_") and not k.startswith("_")}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fitted extractor per name, and the folder its state was saved to."""
    made: dict[str, tuple[Extractor, Path]] = {}

    def get(case: str) -> tuple[Extractor, Path]:
        name, params = CASES[case]
        if case not in made:
            extractor = make_extractor(name, **params)
            assert extractor.fit(_images()) is extractor
            extractor.build()
            directory = tmp_path_factory.mktemp(case)
            extractor.save(directory)
            made[case] = extractor, directory
        return made[case]

    return get


# -- configuration, without building anything ----------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_init_stores_parameters_unchanged_and_the_config_round_trips(case):
    name, params = CASES[case]
    extractor = make_extractor(name, **params)
    for key, value in params.items():
        assert getattr(extractor, key) is value  # stored as given: no copy, no conversion
    config = json.loads(json.dumps(extractor.get_config()))
    assert config["name"] == name == extractor_class(name).name
    rebuilt = extractor_from_config(config)
    assert type(rebuilt) is type(extractor) and rebuilt.get_params() == extractor.get_params()
    assert set(extractor.get_params()) == set(extractor_class(name)._param_names())
    assert set(extractor.runtime_params) <= set(extractor.get_params())
    assert _learned(extractor) == set()  # __init__ learns and loads nothing


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_images_give_an_empty_float32_array_without_loading_anything(case):
    name, params = CASES[case]
    extractor = make_extractor(name, **params)
    for empty in (extractor.transform([]), extractor.transform_prepared([])):
        assert empty.shape == (0, extractor.dim) and empty.dtype == np.float32
    assert _learned(extractor) == set()


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_weights_files_are_paths(name):
    files = make_extractor(name, **TINY[name]).weights_files()
    assert isinstance(files, list) and all(isinstance(f, Path) for f in files)


def test_every_extractor_reports_the_outside_files_it_embeds_with(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"")
    assert make_extractor("cnn", weights=str(weights)).weights_files() == [weights]
    model = tmp_path / "ae" / "model.keras"
    assert make_extractor("autoencoder", model_path=str(model)).weights_files() == [model]
    assert make_extractor("color").weights_files() == []


@pytest.mark.parametrize("name", [n for n in sorted(EXTRACTORS) if not extractor_class(n).requires_fit])
def test_fit_of_an_extractor_that_learns_nothing_is_a_no_op(name):
    """fit([]) used to mean "load the network" for the CNN."""
    extractor = make_extractor(name, **TINY[name])
    assert extractor.fit([]) is extractor and extractor.is_fitted
    assert _learned(extractor) == set()


def test_colour_never_imports_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "from cbir.features.base import make_extractor\n"
        "images = [np.zeros((20, 30, 3), np.uint8)]\n"
        "e = make_extractor('color').fit(images).build()\n"
        "e.transform(images)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- fitted --------------------------------------------------------------------


@pytest.mark.parametrize("case", _params())
def test_vectors_are_l2_normalised_float32_rows_in_input_order(case, fitted):
    extractor, _ = fitted(case)
    images = _images(5, seed=1)
    vectors = extractor.transform(images)
    assert vectors.shape == (5, extractor.dim) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(extractor.transform(images[::-1]), vectors[::-1], atol=1e-6)
    prepared = [extractor.prepare(image) for image in images]
    np.testing.assert_allclose(extractor.transform_prepared(prepared), vectors, atol=1e-6)
    empty = extractor.transform([])
    assert empty.shape == (0, extractor.dim) and empty.dtype == np.float32


@pytest.mark.parametrize("case", _params())
def test_learned_attributes_end_in_an_underscore(case, fitted):
    extractor, _ = fitted(case)
    params = set(extractor.get_params())
    public = {k for k in vars(extractor) if not k.startswith("_")}
    assert public - params == _learned(extractor)
    assert extractor.is_fitted and (not extractor.requires_fit or _learned(extractor))


@pytest.mark.parametrize("case", _params())
def test_saved_state_gives_identical_vectors(case, fitted):
    extractor, directory = fitted(case)
    # Through JSON, as a manifest stores the config.
    loaded = extractor_from_config(json.loads(json.dumps(extractor.get_config()))).load_state(directory)
    images = _images(4, seed=2)
    np.testing.assert_array_equal(loaded.transform(images), extractor.transform(images))


# -- the PCA step and the Embedder -----------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"n_components": 3, "whiten": True},
        {"n_components": 3, "whiten": True, "shrinkage": 0.5, "power": 0.5},
    ],
)
def test_pca_keeps_the_same_promises(tmp_path, params):
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    pca = PCAReduction(**params)
    assert PCAReduction(**json.loads(json.dumps(pca.get_params()))).get_params() == pca.get_params() == params
    assert _learned(pca) == set()
    assert pca.fit(vectors) is pca and _learned(pca) == {"mean_", "components_", "explained_variance_"}
    reduced = pca.transform(vectors)
    assert reduced.shape == (20, 3) and reduced.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, rtol=1e-5)
    assert pca.transform(np.zeros((0, 8), np.float32)).shape == (0, 3)
    pca.save(tmp_path / "pca.npz")
    loaded = PCAReduction(**pca.get_params()).load_state(tmp_path / "pca.npz")
    np.testing.assert_array_equal(loaded.transform(vectors), reduced)


def test_a_pca_projection_does_not_depend_on_the_rows_batched_with_it():
    """Workers, Ray actors and queries project different batches: each row must come out bit-identical."""
    rng = np.random.default_rng(1)
    pca = PCAReduction(64).fit(rng.normal(size=(300, 1440)).astype(np.float32))
    vectors = rng.normal(size=(70, 1440)).astype(np.float32)
    whole = pca.transform(vectors)
    for size in (1, 4, 16, 33):
        in_slices = np.concatenate([pca.transform(vectors[i : i + size]) for i in range(0, len(vectors), size)])
        assert np.array_equal(in_slices, whole), size


def test_embedder_keeps_the_same_promises(tmp_path):
    images = _images(8)
    embedder = Embedder(make_extractor("color", **TINY["color"]), PCAReduction(4))
    config = json.loads(json.dumps(embedder.get_config()))
    assert Embedder.from_config(config).get_config() == embedder.get_config()
    assert embedder.transform([]).shape == (0, 4) and not embedder.is_fitted
    assert embedder.fit(images) is embedder and embedder.is_fitted
    vectors = embedder.transform(images)
    assert vectors.shape == (8, 4) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    embedder.save(tmp_path)
    np.testing.assert_array_equal(Embedder.from_config(config).load_state(tmp_path).transform(images), vectors)
