"""The pretrained-CNN extractor: resizing, pooling, both runtimes, weights, state.

Networks are random (``weights="none"``) or hand-made weights files, at 32 px,
so no test needs a download; the network is blocked where a test proves it.
"""

import importlib.util
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

import cbir.features.cnn as cnn
from cbir.errors import IndexCorruptError, UsageError, WeightsError
from cbir.features.base import make_extractor
from cbir.features.cnn import PAD_RGB, CNNExtractor
from cbir.fileio import file_sha256
from cbir.images.decode import resize_image

needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
#: The engines that run the converted model, each where it is installed.
CONVERTED_RUNTIMES = [
    "tflite",
    pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")),
]

SIZE = 32


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    shapes = [(40, 60), (60, 40), (32, 32), (90, 50), (45, 45), (33, 80), (70, 70)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


@pytest.fixture
def extractor(tiny_cnn):
    """Random MobileNet on TFLite, batches of 4 so 7 images need two sizes (built once per run)."""
    assert (tiny_cnn.input_size, tiny_cnn.batch_size) == (SIZE, 4)
    return tiny_cnn


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _cosines(a, b):
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- without TensorFlow ------------------------------------------------------
def test_importing_the_module_does_not_import_tensorflow():
    code = "import sys, cbir.features.cnn; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (1, 200), (300, 2), (10, 10), (224, 224)])
def test_every_resize_mode_gives_a_square_uint8_image(mode, shape):
    image = np.full((*shape, 3), 77, dtype=np.uint8)
    out = resize_image(image, 64, mode)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def _banded(width=90, height=30):
    """Red left third, green middle, blue right third."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 3] = (255, 0, 0)
    image[:, width // 3 : 2 * width // 3] = (0, 255, 0)
    image[:, 2 * width // 3 :] = (0, 0, 255)
    return image


def test_squash_keeps_everything_crop_keeps_the_centre_pad_adds_mean_borders():
    squashed = resize_image(_banded(), 30, "squash")
    assert squashed[15, 2].tolist() == [255, 0, 0] and squashed[15, 27].tolist() == [0, 0, 255]

    cropped = resize_image(_banded(), 30, "crop")
    assert (cropped == (0, 255, 0)).all()

    padded = resize_image(_banded(), 30, "pad", fill=PAD_RGB)
    assert (padded[:9] == PAD_RGB).all() and (padded[-9:] == PAD_RGB).all()
    assert padded[15, 15].tolist() == [0, 255, 0]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"backbone": "alexnet"}, "unknown backbone"),
        ({"pooling": "sum"}, "unknown pooling"),
        ({"resize": "stretch"}, "unknown resize"),
        ({"runtime": "onnx"}, "unknown runtime"),
        ({"input_size": 16}, "at least 32"),
        ({"batch_size": 0}, "positive integer"),
        ({"gem_p": 0}, "GeM exponent"),
        ({"weights": "model.pt"}, r"\.h5"),
        ({"weights": None}, "imagenet"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(UsageError, match=message):
        make_extractor("cnn", **params)


def test_config_and_dims_come_without_building_a_network():
    extractor = make_extractor("cnn", backbone="resnet50", input_size=160)
    assert extractor.get_config() == {
        "name": "cnn",
        "params": {
            "backbone": "resnet50",
            "weights": "imagenet",
            "pooling": "avg",
            "gem_p": 3.0,
            "input_size": 160,
            "scales": [1.0],
            "resize": "squash",
            "runtime": "auto",
            "batch_size": 32,
            "seed": 0,
        },
    }
    # One scale by default: decoded for its 160 px; with scales, for the largest side.
    assert extractor.dim == 2048 and extractor.decode_min_side == 160 and not extractor.is_loaded
    assert make_extractor("cnn", backbone="resnet50", input_size=160, scales=[1, 0.7071, 1.4142]).decode_min_side == 224
    assert extractor.fit([]) is extractor and not extractor.is_loaded  # fit learns nothing and loads nothing


def test_build_says_what_takes_time_before_loading(monkeypatch):
    """Indexing with a CNN used to be silent for seconds before the first progress bar."""
    from cbir.progress import Progress

    class Recorder(Progress):
        messages = []

        def status(self, message):
            self.messages.append(message)

    extractor = make_extractor("cnn", backbone="resnet50", weights="none")
    monkeypatch.setattr(extractor, "_ensure_loaded", lambda: None)
    extractor.build(Recorder())
    assert Recorder.messages and "TensorFlow" in Recorder.messages[0] and "resnet50" in Recorder.messages[0]


# -- with TensorFlow -----------------------------------------------------------
@needs_tensorflow
def test_vectors_are_normalised_float32_rows_in_input_order(extractor, images):
    vectors = extractor.transform(images)
    assert vectors.shape == (len(images), 1024) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([extractor.transform([image]) for image in images[::-1]])[::-1]
    np.testing.assert_allclose(one_by_one, vectors, atol=1e-6)
    assert extractor.transform([]).shape == (0, 1024)


@needs_tensorflow
def test_batches_that_do_not_fill_the_last_invocation_give_the_same_vectors(extractor, images, tmp_path):
    # 7 images in one batch: an invocation of 4, then 3 padded to 4.
    extractor.save(tmp_path)
    seven = CNNExtractor(weights="none", input_size=SIZE, batch_size=7).load_state(tmp_path)
    np.testing.assert_allclose(seven.transform(images), extractor.transform(images), atol=1e-6)
    np.testing.assert_allclose(seven.transform(images[:2]), extractor.transform(images[:2]), atol=1e-6)


@needs_tensorflow
@pytest.mark.parametrize("runtime", CONVERTED_RUNTIMES)
def test_converted_runtimes_give_the_keras_vectors(runtime, images):
    fast = CNNExtractor(weights="none", input_size=SIZE, runtime=runtime, batch_size=5)
    keras_vectors = CNNExtractor(weights="none", input_size=SIZE, runtime="keras").transform(images)
    assert _cosines(fast.transform(images), keras_vectors).min() >= 0.9999
    assert _cosines(fast.transform(images[:1]), keras_vectors[:1]).min() >= 0.9999  # a query re-plans


def test_auto_runtime_is_the_faster_engine_for_the_backbone(monkeypatch):
    monkeypatch.setattr(cnn, "openvino_available", lambda: True)
    assert CNNExtractor(backbone="resnet50").engine == "openvino"
    assert CNNExtractor(backbone="mobilenet").engine == "tflite"
    assert CNNExtractor(backbone="resnet50", runtime="keras").engine == "keras"
    monkeypatch.setattr(cnn, "openvino_available", lambda: False)
    assert CNNExtractor(backbone="resnet50").engine == "tflite"
    with pytest.raises(UsageError, match="needs the openvino package"):
        make_extractor("cnn", runtime="openvino")


@needs_tensorflow
def test_caffe_style_backbone_agrees_across_runtimes(images):
    # VGG preprocessing flips RGB to BGR (a strided view) and subtracts means.
    small = images[:3]
    tflite = CNNExtractor(backbone="vgg16", weights="none", input_size=SIZE).transform(small)
    keras = CNNExtractor(backbone="vgg16", weights="none", input_size=SIZE, runtime="keras").transform(small)
    assert _cosines(tflite, keras).min() >= 0.9999


@needs_tensorflow
def test_poolings_differ_are_normalised_and_gem_spans_avg_to_max(images):
    # 96 px gives a 3x3 feature map (32 px would give 1x1, where all poolings agree).
    extractor = CNNExtractor(weights="none", input_size=96, runtime="keras").build()
    results = {}
    for pooling, p in [("avg", 3.0), ("max", 3.0), ("gem", 3.0), ("gem", 1.0), ("gem", 200.0)]:
        # Pooling follows the network, so one loaded network serves them all.
        extractor.pooling, extractor.gem_p = pooling, p
        results[pooling, p] = extractor.transform(images)
    for vectors in results.values():
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(results["avg", 3.0], results["max", 3.0], atol=1e-3)
    assert not np.allclose(results["avg", 3.0], results["gem", 3.0], atol=1e-3)
    np.testing.assert_allclose(results["gem", 1.0], results["avg", 3.0], atol=1e-4)
    assert _cosines(results["gem", 200.0], results["max", 3.0]).min() > 0.99


@needs_tensorflow
def test_random_weights_depend_on_the_seed_only():
    def digest(seed):
        return CNNExtractor(weights="none", input_size=SIZE, runtime="keras", seed=seed).build().weights_sha256_

    assert digest(0) == digest(0) != digest(1)


@needs_tensorflow
@pytest.mark.parametrize("asked", [True, False])
def test_only_the_first_plan_in_a_process_redirects_stderr_and_only_where_the_application_asks(extractor, monkeypatch, asked):
    """Every plan (and every network's creation) used to take fd 2 from the whole process; then every
    first plan did, in any program using the library; now only where the application asks (the ``cbir`` command)."""
    import cbir.features._tensorflow as quieting
    from cbir.features.runtimes import LiteRTNetwork

    if asked:
        monkeypatch.setenv(quieting.QUIET_ENGINES_ENV, "1")
    else:
        monkeypatch.delenv(quieting.QUIET_ENGINES_ENV, raising=False)
    redirections = []

    class Counted(quieting.captured_stderr):
        def __enter__(self):
            redirections.append(1)
            return super().__enter__()

    monkeypatch.setattr(quieting, "captured_stderr", Counted)
    monkeypatch.setattr(LiteRTNetwork, "_announced", False)
    for chunk in (4, 1, 4):
        LiteRTNetwork(extractor.tflite_model_, SIZE).plan(chunk)
    assert len(redirections) == (1 if asked else 0)


#: Batch sizes as the server's batcher makes them: whatever queued during the previous batch.
SERVER_BATCH_SIZES = [1, 3, 2, 1, 4, 7, 2, 3, 5, 1, 6, 2]


@needs_tensorflow
@pytest.mark.parametrize("runtime", CONVERTED_RUNTIMES)
def test_mixed_small_batches_plan_each_shape_once_where_planning_costs(extractor, runtime, monkeypatch):
    """Each change of batch size below 4 used to plan the network again (OpenVINO: a compile, 0.1-0.2 s for ResNet50)."""
    from cbir.features.runtimes import NETWORKS

    engine = NETWORKS[runtime]
    plans = []
    plan = engine._plan
    monkeypatch.setattr(engine, "_plan", lambda self, chunk: (plans.append(chunk), plan(self, chunk))[1])
    network = engine(extractor.tflite_model_, SIZE)
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8) for n in SERVER_BATCH_SIZES]
    maps = [network(batch) for batch in batches]
    alone = network(np.concatenate(batches))
    np.testing.assert_allclose(np.concatenate(maps), alone, rtol=1e-4, atol=1e-4)  # padding changes nothing
    if runtime == "openvino":  # each shape compiled once, and few of them: batches of 3 are padded to 4
        assert sorted(plans) == [1, 2, 4]
    else:  # LiteRT reshapes its XNNPACK runtime in well under a millisecond (docs/cnn.md): exact sizes, no padding
        assert set(plans) == {1, 2, 3, 4}


@needs_tensorflow
def test_saved_state_gives_identical_vectors_without_reconverting(extractor, images, tmp_path, monkeypatch):
    extractor.save(tmp_path)
    record = json.loads((tmp_path / "cnn.json").read_text())
    assert record["backbone"] == "mobilenet" and record["input_size"] == SIZE and record["weights"] == "none"
    assert record["weights_sha256"] == extractor.weights_sha256_

    def no_conversion(model):
        raise AssertionError("the cached model should be loaded, not reconverted")

    monkeypatch.setattr(cnn, "convert_to_tflite", no_conversion)
    loaded = CNNExtractor(weights="none", input_size=SIZE, batch_size=4).load_state(tmp_path)
    assert not hasattr(loaded, "model_")
    np.testing.assert_array_equal(loaded.transform(images), extractor.transform(images))

    reference = CNNExtractor(weights="none", input_size=SIZE, runtime="keras").load_state(tmp_path)
    assert _cosines(reference.transform(images), extractor.transform(images)).min() >= 0.9999
    if importlib.util.find_spec("openvino") is not None:
        other_engine = CNNExtractor(weights="none", input_size=SIZE, runtime="openvino").load_state(tmp_path)
        assert _cosines(other_engine.transform(images), extractor.transform(images)).min() >= 0.9999


@needs_tensorflow
def test_state_of_another_model_is_refused(extractor, tmp_path):
    extractor.save(tmp_path)
    with pytest.raises(IndexCorruptError, match="input_size"):
        CNNExtractor(weights="none", input_size=64).load_state(tmp_path)
    with pytest.raises(WeightsError, match="random initialisation differs"):
        CNNExtractor(weights="none", input_size=SIZE, runtime="keras", seed=1).load_state(tmp_path)
    # A tampered model.tflite is the index's to catch: tests/test_cli_deep.py.
    with pytest.raises(IndexCorruptError, match="cannot read"):
        CNNExtractor(weights="none", input_size=SIZE).load_state(tmp_path / "missing")


def _legacy_h5_weights(path):
    """A Keras-layout .h5 file of (random) MobileNet weights, as Keras caches them."""
    from cbir.features._tensorflow import import_keras

    keras = import_keras()
    model = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)  # the legacy whole-model .h5, which load_weights reads
    return path


@needs_tensorflow
def test_imagenet_weights_load_from_the_keras_cache_without_network(tmp_path, monkeypatch, no_network, images):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cached = _legacy_h5_weights(tmp_path / "keras" / "models" / "mobilenet_1_0_224_tf_no_top.h5")
    from_cache = CNNExtractor(weights="imagenet", input_size=SIZE, runtime="keras")
    vectors = from_cache.transform(images)
    assert from_cache.weights_files() == [cached]
    assert from_cache.weights_sha256_ == file_sha256(cached)
    from_path = CNNExtractor(weights=str(cached), input_size=SIZE, runtime="keras")
    np.testing.assert_allclose(from_path.transform(images), vectors, atol=1e-6)


@needs_tensorflow
def test_failed_download_is_one_clear_weights_error(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WeightsError) as raised:
        CNNExtractor(backbone="vgg16", weights="imagenet", input_size=SIZE).build()
    message = str(raised.value)
    assert "\n" not in message and "--weights FILE" in message
    assert str(tmp_path / "keras" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") in message


@needs_tensorflow
def test_unusable_weights_files_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        CNNExtractor(weights=str(tmp_path / "missing.h5"), input_size=SIZE).build()
    (tmp_path / "text.h5").write_text("not HDF5\n")
    with pytest.raises(WeightsError, match="cannot load"):
        CNNExtractor(weights=str(tmp_path / "text.h5"), input_size=SIZE).build()
    other = _legacy_h5_weights(tmp_path / "mobilenet.h5")
    with pytest.raises(WeightsError, match="into resnet50") as raised:
        CNNExtractor(backbone="resnet50", weights=str(other), input_size=SIZE, runtime="keras").build()
    assert "\n" not in str(raised.value) and str(raised.value).endswith("(weights of another network, or a damaged file?)")
    assert "Example error message" not in str(raised.value)


@needs_tensorflow
@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="LiteRT is not installed")
@pytest.mark.parametrize("runtime", CONVERTED_RUNTIMES)
def test_querying_a_converted_index_does_not_import_tensorflow(runtime, collection, index_dir):
    from cbir.features.pipeline import Embedder
    from cbir.indexing.run import index_folder

    extractor = make_extractor("cnn", weights="none", input_size=SIZE, runtime=runtime)
    index_folder(collection, "cnn", index_dir, embedder=Embedder(extractor))
    query = collection / "red" / "red-2.jpg"
    script = f"""
import json, sys
from typer.testing import CliRunner
from cbir.cli import app
result = CliRunner().invoke(app, ["query", {str(query)!r}, "--name", "cnn", "--index-dir", {str(index_dir)!r}, "-k", "2", "--json"])
assert result.exit_code == 0, result.output
print(json.dumps({{"top": json.loads(result.stdout)["results"][0]["path"],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))}}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    report = json.loads(output.strip().splitlines()[-1])
    assert report == {"top": str(query), "loaded": []}


@needs_tensorflow
def test_index_and_query_through_the_library_quietly_where_the_application_asks(collection, index_dir, capfd, monkeypatch):
    from cbir.features._tensorflow import QUIET_ENGINES_ENV
    from cbir.features.pipeline import Embedder

    monkeypatch.setenv(QUIET_ENGINES_ENV, "1")  # as the cbir command does
    from cbir.indexing.run import index_folder
    from cbir.retrieval.search import Searcher

    embedder = Embedder(make_extractor("cnn", weights="none", input_size=SIZE))
    summary = index_folder(collection, "cnn", index_dir, embedder=embedder, dba=None)  # plain: exact self score
    assert summary.added == 15
    query = collection / "blue" / "blue-3.jpg"
    with Searcher.open("cnn", index_dir, expand=None) as searcher:
        top = searcher.query(query, k=3).results[0]
    assert top.path == str(query) and top.score == pytest.approx(1.0, abs=1e-4)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_workers_embed_only_from_a_cached_converted_model(tmp_path):
    """An index built with the Keras runtime has no converted model: used with LiteRT, each
    worker would need TensorFlow to convert it, so the network stays in the parent."""
    keras_built = tmp_path / "keras"
    CNNExtractor(weights="none", input_size=SIZE, runtime="keras").build().save(keras_built)
    converted_here = CNNExtractor(weights="none", input_size=SIZE, runtime="tflite").load_state(keras_built)
    assert not converted_here.embeds_in_workers
    cached = tmp_path / "tflite"
    converted_here.save(cached)
    assert CNNExtractor(weights="none", input_size=SIZE, runtime="tflite").load_state(cached).embeds_in_workers
