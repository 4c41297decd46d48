"""Options given for an index resolve to one embedder in the library, the same from the CLI and from Python."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.errors import ConfigMismatchError, UsageError
from cbir.features.pipeline import EmbedderOptions
from cbir.indexing.run import index_folder

RESNET = {"extractor": {"name": "cnn", "params": {"backbone": "resnet50", "weights": "none", "runtime": "openvino"}}, "pca": None}


def test_a_runtime_option_on_an_existing_index_keeps_the_rest_of_its_config():
    embedder = EmbedderOptions.from_mapping({"runtime": "tflite"}).resolve(RESNET)
    assert embedder.extractor.backbone == "resnet50"
    assert embedder.differences(RESNET) == {}
    assert embedder.runtime_overrides(RESNET) == {"runtime": "tflite"}


@pytest.mark.parametrize(
    "options, extractor",
    [({}, None), ({"bins": [4, 4, 2]}, "color"), ({"backbone": "resnet50"}, "cnn"), ({"epochs": 3}, "autoencoder")],
)
def test_a_new_index_uses_the_extractor_its_options_belong_to(options, extractor):
    embedder = EmbedderOptions.from_mapping(options).resolve(None)
    assert (embedder.extractor.name if embedder else None) == extractor


def test_a_weights_file_is_stored_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    embedder = EmbedderOptions.from_mapping({"weights": "w.weights.h5"}).resolve(None)
    assert embedder.extractor.weights == str(tmp_path / "w.weights.h5")


def test_differences_name_each_option_that_would_embed_differently():
    embedder = EmbedderOptions.from_mapping({"extractor": "cnn", "backbone": "mobilenet", "weights": "none", "pca": 8}).resolve(None)
    # RESNET records no scales (an index of before them: one scale, as a new one).
    assert set(embedder.differences(RESNET)) == {"backbone", "pca"}
    multi = EmbedderOptions.from_mapping({"extractor": "cnn", "backbone": "resnet50", "scales": [1, 0.7071, 1.4142]}).resolve(None)
    assert "scales" in multi.differences(RESNET)


def test_pca_whiten_without_pca_is_refused():
    with pytest.raises(UsageError, match="--pca-whiten needs --pca"):
        EmbedderOptions(pca_whiten=True).resolve(None)


def test_python_options_update_an_index_as_the_cli_does(collection, index_dir):
    index_folder(collection, "x", index_dir, options={"bins": [4, 4, 2]})
    # Leaving the options out, or repeating them, updates; another value is refused by name.
    index_folder(collection, "x", index_dir, options={"bins": [4, 4, 2]})
    with pytest.raises(ConfigMismatchError, match=r"bins \[4, 4, 2\] \(asked: \[8, 8, 2\]\)"):
        index_folder(collection, "x", index_dir, options={"bins": [8, 8, 2]})
    with pytest.raises(UsageError, match="not both"):
        index_folder(collection, "x", index_dir, options={"bins": [4, 4, 2]}, embedder=object())


def test_cli_mismatch_is_one_line_naming_the_option(collection, index_dir):
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(collection), "--name", "x", "--index-dir", str(index_dir), "--bins", "4,4,2"]).exit_code == 0
    result = runner.invoke(app, ["index", str(collection), "--name", "x", "--index-dir", str(index_dir), "--bins", "8,8,2"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bins" in lines[0] and "min_side" not in lines[0]
    info = json.loads(runner.invoke(app, ["info", "x", "--index-dir", str(index_dir), "--json"]).stdout)
    assert info["embedder"]["extractor"]["params"]["bins"] == [4, 4, 2]
    assert Path(info["path"]).name == "x"
