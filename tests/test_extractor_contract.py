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
from conftest import TINY_AUTOENCODER, TINY_CNN, rectangle_images

#: Small, fast parameters of every registered extractor (the deep ones built once per run: tests/conftest.py).
TINY = {"color": {"bins": [4, 4, 2], "min_side": 16}, "cnn": TINY_CNN, "autoencoder": TINY_AUTOENCODER}
#: Options that change how an extractor embeds, held to the same contract:
#: case -> (extractor, parameters). R-MAC needs a 3 x 3 feature map: 96 px.
VARIANTS = {"cnn-multiscale-rmac": ("cnn", {**TINY_CNN, "input_size": 96, "scales": [1.0, 1.34], "pooling": "rmac"})}
CASES = {**{name: (name, params) for name, params in TINY.items()}, **VARIANTS}
DEEP = {"cnn", "autoencoder"}
needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")


def test_every_registered_extractor_has_a_tiny_config():
    assert set(TINY) == set(EXTRACTORS)


def _images(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(20, 48)), int(rng.integers(20, 48)), 3), dtype=np.uint8) for _ in range(n)]


def _params():
    return [pytest.param(name, marks=needs_tensorflow if CASES[name][0] in DEEP else ()) for name in sorted(CASES)]


def _make(case: str):
    name, params = CASES[case]
    return make_extractor(name, **params)


def _learned(obj) -> set[str]:
    return {k for k in vars(obj) if k.endswith("_") and not k.startswith("_")}


@pytest.fixture(scope="module")
def _fitted_by_name() -> dict[str, tuple[Extractor, Path]]:
    return {}


@pytest.fixture
def fitted(name, request, _fitted_by_name, tmp_path_factory) -> tuple[Extractor, Path]:
    """The fitted extractor ``name`` (the test's parameter), and the folder its state was saved to.

    The deep ones are the tiny models of the whole test run (tests/conftest.py),
    trained and built once, in a fixture so their cost shows as setup; ``fit``
    returning ``self`` is checked for them where it is cheap (test_fit_returns_self).
    """
    if name not in _fitted_by_name:
        if name == "cnn":
            extractor = request.getfixturevalue("tiny_cnn")
        elif name == "autoencoder":
            extractor = request.getfixturevalue("tiny_autoencoder")[0]
        else:
            extractor = _make(name)
            assert extractor.fit(_images()) is extractor
        expected = _make(name).get_params()
        given = extractor.get_params()
        assert {k: given[k] for k in expected if k != "model_path"} == {k: v for k, v in expected.items() if k != "model_path"}
        extractor.build()
        directory = tmp_path_factory.mktemp(name)
        extractor.save(directory)
        _fitted_by_name[name] = extractor, directory
    return _fitted_by_name[name]


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
    extractor = _make(case)
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


@pytest.mark.parametrize("name", _params())
def test_vectors_are_l2_normalised_float32_rows_in_input_order(name, fitted):
    extractor, _ = fitted
    images = _images(5, seed=1)
    vectors = extractor.transform(images)
    assert vectors.shape == (5, extractor.dim) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(extractor.transform(images[::-1]), vectors[::-1], atol=1e-6)
    prepared = [extractor.prepare(image) for image in images]
    np.testing.assert_allclose(extractor.transform_prepared(prepared), vectors, atol=1e-6)
    empty = extractor.transform([])
    assert empty.shape == (0, extractor.dim) and empty.dtype == np.float32


@pytest.mark.parametrize("name", _params())
def test_fit_returns_self(name, fitted, request):
    """Without training again: the autoencoder is given the model it already trained (``model_path``)."""
    extractor, _ = fitted
    if name == "autoencoder":
        model = request.getfixturevalue("tiny_autoencoder")[1] / "model.keras"
        extractor = make_extractor(name, **{**TINY[name], "model_path": str(model)})
    elif CASES[name][0] == "cnn":
        extractor = _make(name)  # fit learns nothing: it builds nothing either
    assert extractor.fit(rectangle_images(4)) is extractor and extractor.is_fitted


@pytest.mark.parametrize("name", _params())
def test_learned_attributes_end_in_an_underscore(name, fitted):
    extractor, _ = fitted
    params = set(extractor.get_params())
    public = {k for k in vars(extractor) if not k.startswith("_")}
    assert public - params == _learned(extractor)
    assert extractor.is_fitted and (not extractor.requires_fit or _learned(extractor))


@pytest.mark.parametrize("name", _params())
def test_saved_state_gives_identical_vectors(name, fitted):
    extractor, directory = fitted
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
