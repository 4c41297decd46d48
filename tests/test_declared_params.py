"""An extractor parameter is declared once (``parameters``) and reaches every place that offers it.

A toy extractor registered by the test stands for "someone adds an
extractor, or a parameter to one": nothing but its declaration is written,
and EmbedderOptions, the benchmark spec and ``cbir index`` take it.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cbir.errors import UsageError
from cbir.evaluation.benchmark import check_spec
from cbir.features import base
from cbir.features.base import EXTRACTORS, Extractor, Param, extractor_class, l2_normalize, make_extractor
from cbir.features.pipeline import EmbedderOptions


class ToyExtractor(Extractor):
    """Grey-level histogram and mean colour: small enough to index a folder in a test."""

    name = "toy"
    title = "Toy"
    parameters = (
        Param("levels", int, 4, "Grey levels of the toy histogram.", option=True),
        Param("gain", float, 1.0, "Weight of the mean colour."),
        Param("shade", str, "plain", "How the toy looks.", ("plain", "dotted"), option=True),
        Param("scales", list, (1.0,), "Scales the toy looks at.", option=True, item=float),
    )

    def __init__(self, levels: int = 4, gain: float = 1.0, shade: str = "plain", scales=(1.0,)):
        self.levels = levels
        self.gain = gain
        self.shade = shade
        self.scales = scales

    @property
    def dim(self) -> int:
        return self.levels + 3

    def prepare(self, image: np.ndarray) -> np.ndarray:
        grey = image.mean(axis=2)
        histogram = np.histogram(grey, bins=self.levels, range=(0, 256))[0] / grey.size
        return np.concatenate([histogram, self.gain * image.reshape(-1, 3).mean(axis=0) / 255]).astype(np.float32)

    def _transform_prepared(self, items):
        return l2_normalize(np.stack(items))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(EXTRACTORS, "toy", ToyExtractor)
    return ToyExtractor


def _toy_cli() -> typer.Typer:
    """``cbir index`` as the CLI builds it, now that the toy is registered."""
    from cbir.cli.index import IndexCommand, index_command

    app = typer.Typer()
    app.command("index", cls=IndexCommand)(index_command())
    app.command("unused")(lambda: None)  # a second command keeps "index" a subcommand
    return app


def _stored_params(index_dir, name):
    return json.loads((index_dir / name / "manifest.json").read_text())["embedder"]["extractor"]


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_declarations_are_the_init_parameters_in_order_with_their_defaults(name):
    cls = extractor_class(name)
    signature = inspect.signature(cls.__init__)
    init = [(p.name, p.default) for p in signature.parameters.values() if p.name != "self"]
    assert [(p.name, p.default) for p in cls.parameters] == init
    assert cls.title and all(p.help for p in cls.parameters)


def test_a_declared_parameter_reaches_embedder_options(toy):
    assert {"levels", "gain", "shade"} <= set(EmbedderOptions.keys())
    embedder = EmbedderOptions.from_mapping({"levels": 6, "gain": 0.5}).resolve(None)
    assert isinstance(embedder.extractor, ToyExtractor)  # the extractor the parameters belong to
    assert embedder.extractor.get_params() == {"levels": 6, "gain": 0.5, "shade": "plain", "scales": [1.0]}
    with pytest.raises(UsageError, match=r"unknown option 'levles'; options are .*levels"):
        EmbedderOptions.from_mapping({"levles": 6})


def test_declared_types_and_choices_are_checked_without_code_of_the_extractor(toy):
    with pytest.raises(UsageError, match="toy levels must be a whole number, got 'many'"):
        make_extractor("toy", levels="many")
    with pytest.raises(UsageError, match="toy shade must be one of plain, dotted, got 'loud'"):
        make_extractor("toy", shade="loud")


def test_a_declared_parameter_is_a_benchmark_spec_key(toy, tmp_path):
    spec = {"folder": str(tmp_path), "configs": [{"name": "t", "levels": 6, "gain": 2.0, "dba": None}]}
    assert check_spec(spec)["configs"][0]["levels"] == 6
    spec["configs"][0]["levles"] = 6
    with pytest.raises(UsageError, match=r"config 't': unknown key\(s\) levles; a config takes .*levels"):
        check_spec(spec)


def test_a_declared_parameter_is_an_option_of_cbir_index(toy, collection, index_dir):
    runner = CliRunner()
    app = _toy_cli()
    help_text = runner.invoke(app, ["index", "--help"], env={"COLUMNS": "200"}).stdout
    assert "Toy (--extractor toy)" in help_text
    assert "--levels" in help_text and "Grey levels of the toy histogram. (default: 4)" in help_text
    assert "One of: plain or dotted." in help_text
    assert "toy: gain" in help_text  # listed under --param, having no option of its own

    result = runner.invoke(app, ["index", str(collection), "--name", "a", "--index-dir", str(index_dir), "--levels", "6",
                                 "--param", "gain=0.5", "--shade", "dotted", "--scales", "1,0.5"])
    assert result.exit_code == 0, result.stderr
    stored = {"levels": 6, "gain": 0.5, "shade": "dotted", "scales": [1.0, 0.5]}
    assert _stored_params(index_dir, "a") == {"name": "toy", "params": stored}

    result = runner.invoke(app, ["index", str(collection), "--name", "b", "--index-dir", str(index_dir), "--param", "levels=lots"])
    assert result.exit_code != 0 and result.stderr.strip() == "error: --param levels must be a whole number, got 'lots'"
    result = runner.invoke(app, ["index", str(collection), "--name", "b", "--index-dir", str(index_dir), "--levels", "3",
                                 "--param", "levels=5"])
    assert result.exit_code != 0 and "levels is given twice" in result.stderr


def test_every_declared_option_of_the_registry_is_in_index_help():
    from cbir.cli import app

    help_text = CliRunner().invoke(app, ["index", "--help"], env={"COLUMNS": "400"}).stdout
    for owners in base.declared_parameters().values():
        for owner, param in owners:
            if param.option:
                assert param.option_name in help_text and param.help in help_text, (owner, param.name)
            else:
                assert param.name in help_text, (owner, param.name)  # named under --param


def test_param_sets_a_parameter_without_an_option(collection, index_dir):
    from cbir.cli import app

    result = CliRunner().invoke(app, ["index", str(collection), "--name", "c", "--index-dir", str(index_dir),
                                      "--bins", "4,4,2", "--param", "min-side=32"])
    assert result.exit_code == 0, result.stderr
    assert _stored_params(index_dir, "c")["params"] == {"bins": [4, 4, 2], "min_side": 32}
    result = CliRunner().invoke(app, ["index", str(collection), "--name", "d", "--index-dir", str(index_dir), "--param", "bogus=1"])
    assert result.exit_code != 0 and result.stderr.startswith("error: --param bogus: no extractor has this parameter")


def test_a_name_shared_by_extractors_must_have_one_type(monkeypatch):
    class Clash(ToyExtractor):
        name = "clash"
        parameters = (Param("input_size", str, "big", "A size, in words."),)

    monkeypatch.setitem(EXTRACTORS, "clash", Clash)
    with pytest.raises(TypeError, match="'input_size' has different types"):
        base.declared_parameters()
