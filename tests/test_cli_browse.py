"""The CLI's filters, several examples, what results show, argument forms and gallery order (issue 25)."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cbir.cli import app
from cbir.display import natural_key
from conftest import coloured_image, make_collection, write_image

runner = CliRunner()


def run(*args, expect=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def fails(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), (result.stdout, result.stderr)
    return lines[0]


@pytest.fixture
def albums(tmp_path):
    root = tmp_path / "photos"
    make_collection(root / "2019", per_class=4)
    make_collection(root / "2020", per_class=4)
    run("index", root, "--name", "photos", "--index-dir", tmp_path / "indexes")
    return root, tmp_path / "indexes"


def test_query_filters_by_folder_and_label(albums):
    root, index_dir = albums
    query = root / "2019" / "red" / "red-0.jpg"
    data = json.loads(run("query", query, "-n", "photos", "--index-dir", index_dir, "-k", "5", "--under", root / "2020", "--json").stdout)
    assert len(data["results"]) == 5 and all(r["path"].startswith(str(root / "2020") + "/") for r in data["results"])
    data = json.loads(run("query", query, "-n", "photos", "--index-dir", index_dir, "-k", "20", "--label", "blue", "--json").stdout)
    assert len(data["results"]) == 8 and {r["label"] for r in data["results"]} == {"blue"}  # all 8 blues, no more
    top = data["results"][0]
    assert top["folder"].endswith("/blue") and top["size"] > 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", top["mtime"])
    line = run("query", query, "-n", "photos", "--index-dir", index_dir, "-k", "1").stdout.splitlines()[0]
    assert re.fullmatch(r"\s+1  [01]\.\d{4}  +[0-9.]+ kB  red  \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]  " + re.escape(str(query)), line), line


def test_query_with_several_examples_and_one_to_avoid(albums):
    root, index_dir = albums
    red, green = root / "2019" / "red" / "red-0.jpg", root / "2019" / "green" / "green-0.jpg"
    common = ("-n", "photos", "--index-dir", index_dir, "--json", "--no-expand")
    both = json.loads(run("query", red, f"{green}:2", *common, "-k", "4", "--exclude-self").stdout)
    assert str(red) not in [r["path"] for r in both["results"]] and {r["label"] for r in both["results"]} == {"green"}  # weight 2
    avoided = json.loads(run("query", red, "--not", root / "2020" / "red" / "red-1.jpg", *common, "-k", "3").stdout)
    assert len(avoided["results"]) == 3
    assert "does not exist" in fails("query", red, root / "nope.jpg", "-n", "photos", "--index-dir", index_dir)
    assert "is a folder" in fails("query", red, root / "2019", "-n", "photos", "--index-dir", index_dir)
    assert "weight" in fails("query", f"{red}:0", "-n", "photos", "--index-dir", index_dir)


def test_evaluate_and_duplicates_take_the_index_as_an_argument_or_name(albums):
    root, index_dir = albums
    positional = json.loads(run("evaluate", "photos", "--index-dir", index_dir, "--json").stdout)
    named = json.loads(run("evaluate", "--name", "photos", "--index-dir", index_dir, "--json").stdout)
    assert positional["map"] == named["map"] and positional["n_queries"] == 24
    part = json.loads(run("evaluate", "photos", "--index-dir", index_dir, "--under", root / "2020", "--json").stdout)
    assert part["n_queries"] == 12
    assert run("duplicates", "photos", "--index-dir", index_dir, "-t", "0.999").exit_code == 0
    assert run("duplicates", "--name", "photos", "--index-dir", index_dir, "-t", "0.999").exit_code == 0
    assert "two index names" in fails("duplicates", "photos", "--name", "other", "--index-dir", index_dir)
    assert "which index" in fails("duplicates", "--index-dir", index_dir)
    for command in ("index", "query", "remove", "info", "list", "prune", "delete", "evaluate", "duplicates", "serve", "watch"):
        assert "--name" in run(command, "--help").stdout


def test_duplicates_restricted_to_a_folder(tmp_path):
    root = tmp_path / "photos"
    image = coloured_image((40, 40, 210), seed=1)
    for folder in ("a", "b"):
        write_image(root / folder / "x.png", image)
        write_image(root / folder / "y.png", image)
    write_image(root / "c" / "z.png", coloured_image((200, 90, 30), seed=2))
    run("index", root, "--name", "d", "--index-dir", tmp_path / "i")
    everything = json.loads(run("duplicates", "d", "--index-dir", tmp_path / "i", "--json").stdout)
    assert [g["size"] for g in everything["exact"]] == [4]
    only_a = json.loads(run("duplicates", "d", "--index-dir", tmp_path / "i", "--json", "--under", root / "a").stdout)
    assert [sorted(p.rsplit("/", 2)[-2] for p in g["paths"]) for g in only_a["exact"]] == [["a", "a"]]


def test_galleries_order_queries_naturally(tmp_path):
    root = tmp_path / "photos"
    make_collection(root, per_class=2)
    queries = tmp_path / "queries"
    for n in (150, 250, 50):
        write_image(queries / f"q{n}.jpg", coloured_image((40, 40, 210), seed=n))
    run("index", root, "--name", "p", "--index-dir", tmp_path / "i")
    page = tmp_path / "g.html"
    run("query", queries, "--name", "p", "--index-dir", tmp_path / "i", "-k", "1", "--html", page)
    headings = re.findall(r"<h2>query: [^<]*?(q\d+)\.jpg</h2>", page.read_text())
    assert headings == ["q50", "q150", "q250"]
    assert sorted(["b10", "a2", "b9", "A1"], key=natural_key) == ["A1", "a2", "b9", "b10"]


def test_a_montage_frame_surrounds_the_picture_not_its_tile(tmp_path):
    root = tmp_path / "photos"
    wide = np.full((40, 160, 3), (30, 160, 30), np.uint8)  # 4:1, so its tile has empty bands above and below
    write_image(root / "wide" / "w.png", wide)
    write_image(root / "other" / "o.png", coloured_image((200, 90, 30), seed=3))
    run("index", root, "--name", "m", "--index-dir", tmp_path / "i")
    out = tmp_path / "m.png"
    run("query", root / "wide" / "w.png", "--name", "m", "--index-dir", tmp_path / "i", "-k", "1", "--montage", out)
    grid = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    tile = 192
    query_tile = grid[:tile, :tile].astype(int)
    blue = np.abs(query_tile - np.array([40, 90, 220])).sum(axis=2) < 60
    rows = np.flatnonzero(blue.any(axis=1))
    assert rows.min() > 50 and rows.max() < tile - 50  # the frame hugs the 4:1 picture, mid-tile
    assert blue[rows.min()].sum() > tile * 0.8  # its top edge runs the picture's width
