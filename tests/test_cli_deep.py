"""The CNN and autoencoder options of the CLI, end to end on tiny models."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from cbir.cli import app
from conftest import make_collection

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    return result


def test_cnn_index_query_and_runtime_switch(tmp_path):
    photos, indexes = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=4)
    created = invoke("index", photos, "--name", "deep", "--index-dir", indexes, "--backbone", "mobilenet",
                     "--weights", "none", "--input-size", "32", "--json")
    assert created.exit_code == 0, created.stderr
    assert json.loads(created.stdout)["added"] == 12
    manifest = json.loads((indexes / "deep" / "manifest.json").read_text())
    assert manifest["embedder"]["extractor"]["name"] == "cnn"  # implied by --backbone
    assert manifest["embedder"]["extractor"]["params"]["weights"] == "none"

    query = photos / "green" / "green-1.jpg"
    found = json.loads(invoke("query", query, "--name", "deep", "--index-dir", indexes, "-k", "2", "--json").stdout)
    assert found["results"][0]["path"] == str(query)

    # The runtime changes how vectors are computed, not what they are: an update may use another.
    switched = invoke("index", photos, "--name", "deep", "--index-dir", indexes, "--runtime", "keras", "--json")
    assert switched.exit_code == 0, switched.stderr
    assert json.loads(switched.stdout)["unchanged"] == 12
    other = invoke("index", photos, "--name", "deep", "--index-dir", indexes, "--input-size", "64")
    assert other.exit_code != 0 and other.stderr.startswith("error: index 'deep' was built with other options: input_size 32 (asked: 64)")


def test_options_of_another_extractor_are_refused(tmp_path):
    make_collection(tmp_path / "photos", per_class=2)
    result = invoke("index", tmp_path / "photos", "--index-dir", tmp_path / "i", "--extractor", "color", "--backbone", "vgg16")
    assert result.exit_code != 0 and "has no parameter backbone" in result.stderr
    assert not (tmp_path / "i" / "photos").exists()


def test_train_autoencoder_then_index_with_the_model(tmp_path):
    photos, indexes, model = tmp_path / "photos", tmp_path / "indexes", tmp_path / "ae"
    make_collection(photos, per_class=4)
    trained = invoke("train-autoencoder", photos, "--out", model, "--input-size", "16", "--filters", "8,16",
                     "--latent-channels", "4", "--epochs", "2", "--json")
    assert trained.exit_code == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["epochs"] == 2 and (model / "model.keras").is_file() and (model / "loss.png").is_file()
    assert "autoencoder epoch 2/2" in trained.stderr  # one line per epoch

    # Plain vectors and search: a 2-epoch model on 12 near-identical images is too weak for re-ranking
    # to keep each image first; this test is about the model being used the same way everywhere.
    indexed = invoke("index", photos, "--name", "ae", "--index-dir", indexes, "--model", model, "--json", "--no-dba")
    assert indexed.exit_code == 0, indexed.stderr
    manifest = json.loads((indexes / "ae" / "manifest.json").read_text())
    assert manifest["embedder"]["extractor"]["name"] == "autoencoder"
    query = photos / "blue" / "blue-2.jpg"
    found = json.loads(invoke("query", query, "--name", "ae", "--index-dir", indexes, "-k", "1", "--json", "--no-expand").stdout)
    assert found["results"][0]["path"] == str(query)

    # A query in a new process: the converted encoder, no TensorFlow.
    script = f"""
import json, sys
from typer.testing import CliRunner
from cbir.cli import app
result = CliRunner().invoke(app, ["query", {str(query)!r}, "--name", "ae", "--index-dir", {str(indexes)!r}, "-k", "1", "--json", "--no-expand"])
assert result.exit_code == 0, result.output
print(json.dumps({{"top": json.loads(result.stdout)["results"][0]["path"],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))}}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(output.strip().splitlines()[-1]) == {"top": str(query), "loaded": []}

    # Only .keras files: HDF5 models ignore Keras' safe mode.
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    refused = invoke("index", photos, "--name", "h5", "--index-dir", indexes, "--model", h5)
    assert refused.exit_code != 0 and refused.stderr.count("\n") == 1 and ".keras" in refused.stderr


def test_train_autoencoder_into_the_out_folder_of_another_training(tmp_path):
    """It used to "resume" silently and return the model of the other folder."""
    (first, second), out = (tmp_path / "first", tmp_path / "second"), tmp_path / "ae"
    make_collection(first, per_class=2)
    make_collection(second, per_class=3)
    tiny = ("--input-size", "16", "--filters", "8,16", "--latent-channels", "4", "--epochs", "1", "--json")
    assert invoke("train-autoencoder", first, "--out", out, *tiny).exit_code == 0
    history = (out / "history.json").read_text()

    other_folder = invoke("train-autoencoder", second, "--out", out, *tiny)
    assert other_folder.exit_code != 0 and other_folder.stderr.count("\n") == 1
    assert f"trained on {first}" in other_folder.stderr and "--overwrite" in other_folder.stderr
    other_options = invoke("train-autoencoder", first, "--out", out, *tiny, "--noise", "0.2")
    assert other_options.exit_code != 0 and "noise 0.1 (now 0.2)" in other_options.stderr
    assert (out / "history.json").read_text() == history

    same = invoke("train-autoencoder", first, "--out", out, *tiny)
    assert same.exit_code == 0 and (out / "history.json").read_text() == history  # finished: returned as is
    replaced = invoke("train-autoencoder", second, "--out", out, *tiny, "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    assert json.loads((out / "history.json").read_text())["source"] == str(second)


def test_index_trains_an_autoencoder_when_no_model_is_given(tmp_path):
    photos, indexes = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=4)
    result = invoke("index", photos, "--name", "ae", "--index-dir", indexes, "--extractor", "autoencoder",
                    "--input-size", "16", "--epochs", "1", "--grey", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["added"] == 12
    model_dir = indexes / "ae" / "model" / "extractor"
    assert (model_dir / "model.keras").is_file() and (model_dir / "history.json").is_file()
    assert not (indexes / "ae" / "training").exists()


def _mobilenet_h5(path):
    """A Keras .h5 file of random 32 px MobileNet weights (what a user would pass to --weights)."""
    from cbir.features._tensorflow import import_keras

    keras = import_keras()
    keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3)).save(path)
    return path


def _refused(result, indexes, name):
    """One error line, a non-zero exit, and no index left behind."""
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (indexes / name).exists()
    return result.stderr


def test_bad_weights_and_pca_settings_are_one_error_line_and_leave_no_index(tmp_path):
    photos, indexes = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=4)
    cnn = ("index", photos, "--index-dir", indexes, "--input-size", "32")

    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    assert "cannot load" in _refused(invoke(*cnn, "--name", "a", "--backbone", "mobilenet", "--weights", corrupt), indexes, "a")

    mobilenet = _mobilenet_h5(tmp_path / "mobilenet.h5")
    message = _refused(invoke(*cnn, "--name", "b", "--backbone", "resnet50", "--weights", mobilenet), indexes, "b")
    assert "into resnet50" in message

    too_many = _refused(invoke(*cnn, "--name", "c", "--weights", "none", "--pca", "13"), indexes, "c")
    assert "PCA to 13 dimensions" in too_many and "12 images" in too_many
    # Colour histograms with one bin per channel: 5 regions, 5 dimensions.
    too_wide = invoke("index", photos, "--index-dir", indexes, "--name", "d", "--bins", "1,1,1", "--pca", "6")
    assert "dimension 5" in _refused(too_wide, indexes, "d")


def test_a_pca_index_whose_model_changed_is_refused_at_query_time(tmp_path):
    photos, indexes = tmp_path / "photos", tmp_path / "indexes"
    make_collection(photos, per_class=4)
    created = invoke("index", photos, "--name", "p", "--index-dir", indexes, "--backbone", "mobilenet",
                     "--weights", "none", "--input-size", "32", "--pca", "4")
    assert created.exit_code == 0, created.stderr
    query = ("query", photos / "red" / "red-1.jpg", "--name", "p", "--index-dir", indexes)
    assert invoke(*query).exit_code == 0

    model = indexes / "p" / "model" / "extractor" / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    result = invoke(*query)
    assert result.exit_code != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "model.tflite" in result.stderr and result.stdout == ""
