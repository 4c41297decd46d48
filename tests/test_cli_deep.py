"""The CNN and autoencoder options of the CLI, end to end on tiny models."""

import json

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
    other = invoke("index", photos, "--name", "deep", "--index-dir", indexes, "--input-size", "48")
    assert other.exit_code != 0 and other.stderr.startswith("error: index 'deep' was built with cnn(")


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

    indexed = invoke("index", photos, "--name", "ae", "--index-dir", indexes, "--model", model, "--json")
    assert indexed.exit_code == 0, indexed.stderr
    manifest = json.loads((indexes / "ae" / "manifest.json").read_text())
    assert manifest["embedder"]["extractor"]["name"] == "autoencoder"
    query = photos / "blue" / "blue-2.jpg"
    found = json.loads(invoke("query", query, "--name", "ae", "--index-dir", indexes, "-k", "1", "--json").stdout)
    assert found["results"][0]["path"] == str(query)


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
