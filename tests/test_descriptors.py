"""Descriptors past one global pooling: R-MAC, multi-scale input, whitening with shrinkage.

The pooling maths is checked on hand-made activation maps (no network); the
multi-scale extractor on a random 32 px MobileNet; options end to end
through ``cbir index`` / ``cbir query`` on a tiny collection.
"""

import importlib.util
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.errors import UsageError
from cbir.features.base import extractor_from_config, make_extractor
from cbir.features.cnn import MULTI_SCALES, CNNExtractor
from cbir.features.pca import PCAReduction
from cbir.features.pipeline import Embedder, EmbedderOptions
from cbir.features.pooling import check_rmac_map, combine_scales, global_pool, rmac, rmac_regions
from conftest import make_collection

needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
runner = CliRunner()


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# -- pooling maths -------------------------------------------------------------


def test_rmac_regions_of_a_square_map_are_cirtorchs_grid():
    # 4 x 4: the whole map, then 2 x 2 regions of side 2, then 3 x 3 of side 2 (stride 1).
    assert rmac_regions(4, 4) == [
        (0, 0, 4),
        (0, 0, 2), (0, 2, 2), (2, 0, 2), (2, 2, 2),
        (0, 0, 2), (0, 1, 2), (0, 2, 2), (1, 0, 2), (1, 1, 2), (1, 2, 2), (2, 0, 2), (2, 1, 2), (2, 2, 2),
    ]


def test_rmac_regions_of_a_wide_map_cover_it_edge_to_edge():
    regions = rmac_regions(5, 9)
    assert all(top + side <= 5 and left + side <= 9 for top, left, side in regions)
    assert max(left + side for _top, left, side in regions) == 9  # the right edge is covered
    # The longer side gets more regions than the shorter at every level.
    assert len({left for _t, left, side in regions if side == 5}) > len({top for top, _l, side in regions if side == 5})


def test_rmac_sums_normalised_region_maxima_on_a_hand_made_map():
    # Channel 0 fires everywhere, channel 1 only in the top-left cell: a region's
    # max is (1, 1) if it holds that cell, else (1, 0). Of the 4 x 4 grid's 14
    # regions plus the global max, 4 hold the cell (global, whole map, one per
    # finer level) and 11 do not.
    feature_map = np.zeros((1, 4, 4, 2), np.float32)
    feature_map[..., 0] = 1.0
    feature_map[0, 0, 0, 1] = 1.0
    expected = 4 * np.array([1, 1]) / math.sqrt(2) + 11 * np.array([1, 0])
    np.testing.assert_allclose(rmac(feature_map)[0], expected, rtol=1e-6)
    np.testing.assert_allclose(global_pool(feature_map, "rmac"), rmac(feature_map))


def test_rmac_refuses_a_map_too_small_for_its_levels():
    check_rmac_map(3, 3)
    with pytest.raises(UsageError, match="at least 3 x 3"):
        check_rmac_map(2, 5)
    with pytest.raises(UsageError, match="at least 3 x 3"):
        rmac(np.ones((1, 2, 2, 4), np.float32))


def test_multi_scale_is_the_mean_of_each_scales_normalised_vector():
    small, large = np.array([[3.0, 4.0]]), np.array([[0.0, 10.0]])
    np.testing.assert_allclose(combine_scales([small, large]), [[0.3, 0.9]])
    np.testing.assert_array_equal(combine_scales([small]), small)  # one scale: untouched


# -- PCA whitening with shrinkage and power normalisation ------------------------


def _anisotropic(n=200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.array([10, 5, 2, 1, 0.5, 0.1])[:d]).astype(np.float32)


def test_shrinkage_goes_from_full_whitening_to_none():
    vectors = _anisotropic()
    full = PCAReduction(4, whiten=True).fit(vectors)
    none = PCAReduction(4).fit(vectors)
    np.testing.assert_allclose(PCAReduction(4, whiten=True, shrinkage=0.0).fit(vectors).transform(vectors), full.transform(vectors), atol=1e-6)
    np.testing.assert_allclose(PCAReduction(4, whiten=True, shrinkage=1.0).fit(vectors).transform(vectors), none.transform(vectors), atol=1e-6)
    half = PCAReduction(4, whiten=True, shrinkage=0.5).fit(vectors)
    variances = full.explained_variance_
    np.testing.assert_allclose(half.scales_, np.sqrt(0.5 * variances + 0.5 * variances.mean()), rtol=1e-5)


def test_power_normalisation_takes_the_signed_power_before_normalising():
    vectors = _anisotropic()
    plain = PCAReduction(3).fit(vectors)
    powered = PCAReduction(3, power=0.5).fit(vectors)
    centred = (vectors - plain.mean_) @ plain.components_.T
    expected = _unit(np.sign(centred) * np.sqrt(np.abs(centred)))
    np.testing.assert_allclose(powered.transform(vectors), expected, atol=1e-5)


def test_whitening_options_round_trip_through_save_and_load(tmp_path):
    vectors = _anisotropic()
    pca = PCAReduction(4, whiten=True, shrinkage=0.3, power=0.7).fit(vectors)
    pca.save(tmp_path / "pca.npz")
    with np.load(tmp_path / "pca.npz", allow_pickle=False) as arrays:
        assert set(arrays.files) == {"mean", "components", "explained_variance"}  # plain arrays, as before
    loaded = PCAReduction(**json.loads(json.dumps(pca.get_params()))).load_state(tmp_path / "pca.npz")
    np.testing.assert_array_equal(loaded.transform(vectors), pca.transform(vectors))


def test_a_pca_config_of_before_the_options_means_what_it_meant():
    vectors = _anisotropic()
    old = {"n_components": 4, "whiten": True}
    pca = PCAReduction(**old).fit(vectors)
    assert pca.get_params() == old  # unset options are not written either
    np.testing.assert_allclose(pca.scales_, np.sqrt(pca.explained_variance_), rtol=1e-6)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"whiten": True, "shrinkage": 1.5}, "shrinkage must be a number from 0 to 1"),
        ({"shrinkage": 0.5}, "needs whitening"),
        ({"power": 0}, "power normalisation exponent"),
        ({"power": 2}, "power normalisation exponent"),
    ],
)
def test_bad_whitening_options_are_refused(params, message):
    with pytest.raises(UsageError, match=message):
        PCAReduction(4, **params).fit(_anisotropic())


# -- the CNN extractor's options -------------------------------------------------


def test_scales_round_trip_through_the_config_and_set_the_decoded_side():
    extractor = make_extractor("cnn", input_size=224, scales=[1.0, 0.7071, 1.4142], pooling="rmac")
    config = json.loads(json.dumps(extractor.get_config()))
    rebuilt = extractor_from_config(config)
    # Rounded to multiples of the stride, 32 (see CNNExtractor.input_sides).
    assert rebuilt.get_params() == extractor.get_params() and rebuilt.input_sides == [224, 160, 320]
    assert rebuilt.decode_min_side == 320  # decoded large enough for the largest scale


def test_new_indexes_are_one_scale_and_a_config_of_before_scales_means_one_scale_too():
    assert make_extractor("cnn").input_sides == [224]  # the default for a new index
    assert make_extractor("cnn", scales=list(MULTI_SCALES)).input_sides == [224, 160, 320]
    old = make_extractor("cnn", weights="none").get_config()
    del old["params"]["scales"]
    extractor = extractor_from_config(old)
    assert extractor.input_sides == [224] and extractor.pooling == "avg"
    embedder = Embedder(make_extractor("cnn", weights="none", scales=[1.0]))
    assert embedder.differences({"extractor": old, "pca": None}) == {}
    # Asking an old index for several scales is a difference (it would need re-embedding).
    multi = Embedder(make_extractor("cnn", weights="none", scales=list(MULTI_SCALES)))
    assert set(multi.differences({"extractor": old, "pca": None})) == {"scales"}


def test_scales_that_round_to_one_side_run_it_once():
    assert make_extractor("cnn", input_size=32).input_sides == [32]
    assert make_extractor("cnn", input_size=64, scales=[1, 1.05, 2]).input_sides == [64, 128]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"scales": []}, "scales must be a list of positive numbers"),
        ({"scales": [1, -0.5]}, "scales must be a list of positive numbers"),
        ({"scales": "1,2"}, "scales must be a list of positive numbers"),
        ({"scales": [1, 0.05]}, "each must be from 32 to 2048"),
        ({"scales": [1, 10]}, "each must be from 32 to 2048"),
        ({"scales": [1, 2], "input_size": 200}, "need an input size that is a multiple of 32"),
        ({"input_size": 200, "scales": list(MULTI_SCALES)}, "got 200; or use --scales 1"),
        ({"scales": [1, 2, 3, 4, 5, 6]}, "at most 5 scales"),
        ({"pooling": "rmac", "input_size": 64, "scales": [1]}, "rmac pooling needs a feature map of at least 3 x 3: mobilenet gives 2 x 2 at input side 64"),
        ({"pooling": "rmac", "input_size": 128, "scales": [1, 0.5]}, "at input side 64"),
    ],
)
def test_bad_scales_and_unusable_rmac_are_refused_before_building(params, message):
    with pytest.raises(UsageError, match=message):
        make_extractor("cnn", weights="none", **params)


@needs_tensorflow
def test_multi_scale_gives_the_normalised_mean_of_the_single_scale_vectors():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (70, 50), (64, 64)]]
    # One converted model (at 32 px) runs at 64 px too; each single scale is converted at its own side.
    multi = CNNExtractor(weights="none", input_size=32, scales=[1.0, 2.0]).transform(images)
    singles = [CNNExtractor(weights="none", input_size=side, scales=[1]).transform(images) for side in (32, 64)]
    np.testing.assert_allclose(multi, _unit(np.mean(singles, axis=0)), atol=2e-5)
    keras = CNNExtractor(weights="none", input_size=32, scales=[1.0, 2.0], runtime="keras").transform(images)
    assert (multi * keras).sum(axis=1).min() > 0.9999


# -- through the CLI -----------------------------------------------------------


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    return result


@needs_tensorflow
def test_index_options_are_stored_and_a_query_is_embedded_the_same_way(tmp_path):
    photos, indexes = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=4)
    created = _invoke(
        "index", photos, "--name", "ms", "--index-dir", indexes, "--backbone", "mobilenet", "--weights", "none",
        "--input-size", "96", "--scales", "1,1.34", "--pooling", "rmac",
        "--pca", "8", "--pca-whiten", "--pca-shrinkage", "0.5", "--pca-power", "0.5", "--no-dba", "--json",
    )
    assert created.exit_code == 0, created.stderr
    embedder = json.loads((indexes / "ms" / "manifest.json").read_text())["embedder"]
    assert embedder["extractor"]["params"]["scales"] == [1.0, 1.34] and embedder["extractor"]["params"]["pooling"] == "rmac"
    assert embedder["pca"] == {"n_components": 8, "whiten": True, "shrinkage": 0.5, "power": 0.5}
    # An indexed image, queried from its file, finds itself with a cosine of 1: embedded exactly as indexed.
    query = photos / "green" / "green-1.jpg"
    found = json.loads(_invoke("query", query, "--name", "ms", "--index-dir", indexes, "-k", "1", "--no-expand", "--json").stdout)
    assert found["results"][0]["path"] == str(query) and found["results"][0]["score"] > 0.9999


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scales", "1,x"], "error: --scales must be numbers separated by commas"),
        (["--scales", "1,0"], "error: scales must be a list of positive numbers"),
        (["--pooling", "rmac", "--input-size", "64", "--scales", "1"], "error: rmac pooling needs a feature map of at least 3 x 3"),
        (["--pca-shrinkage", "0.5"], "error: --pca-shrinkage needs --pca"),
        (["--pca", "4", "--pca-shrinkage", "0.5"], "error: whitening shrinkage needs whitening (--pca-whiten)"),
        (["--pca", "4", "--pca-power", "3"], "error: power normalisation exponent must be above 0 and at most 1"),
    ],
)
def test_bad_descriptor_options_are_one_error_line_and_leave_no_index(tmp_path, args, message):
    make_collection(tmp_path / "photos", per_class=1)
    result = _invoke("index", tmp_path / "photos", "--index-dir", tmp_path / "i", "--backbone", "mobilenet", "--weights", "none", *args)
    assert result.exit_code != 0 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "i" / "photos").exists()


def test_options_for_an_existing_index_change_only_what_they_name():
    stored = {"extractor": make_extractor("cnn", weights="none").get_config(), "pca": {"n_components": 8, "whiten": True}}
    resolved = EmbedderOptions.from_mapping({"pca_shrinkage": 0.5}).resolve(stored)
    assert resolved.get_config()["pca"] == {"n_components": 8, "whiten": True, "shrinkage": 0.5}
    assert resolved.differences(stored) == {"pca": ("8 whitened", "8 whitened (shrinkage 0.5)")}


@needs_tensorflow
def test_an_index_built_before_scales_existed_still_queries_as_it_did(tmp_path):
    """A manifest without ``scales`` (every index built before them) means one scale, at query and update time."""
    photos, indexes = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=3)
    built = _invoke("index", photos, "--name", "old", "--index-dir", indexes, "--backbone", "mobilenet", "--weights", "none",
                    "--input-size", "32", "--no-dba")
    assert built.exit_code == 0, built.stderr
    query = photos / "red" / "red-1.jpg"
    before = json.loads(_invoke("query", query, "--name", "old", "--index-dir", indexes, "-k", "3", "--json").stdout)
    manifest_path = indexes / "old" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["embedder"]["extractor"]["params"]["scales"]
    manifest_path.write_text(json.dumps(manifest))
    after = json.loads(_invoke("query", query, "--name", "old", "--index-dir", indexes, "-k", "3", "--json").stdout)
    assert after["results"] == before["results"]
    updated = _invoke("index", photos, "--name", "old", "--index-dir", indexes, "--json")
    assert updated.exit_code == 0 and json.loads(updated.stdout)["unchanged"] == 9, updated.stderr
