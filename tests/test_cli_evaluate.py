"""``cbir evaluate`` protocols, plots and comparisons, and re-ranking options, through the CLI."""

import json
import os

import cv2
import pytest

from conftest import coloured_image, write_image
from test_cli import fails, run


@pytest.fixture
def two_indexes(collection, index_dir):
    run("index", collection, "--name", "fine", "--index-dir", index_dir)
    run("index", collection, "--name", "coarse", "--index-dir", index_dir, "--bins", "4,4,2", "--no-dba")
    return collection


def test_several_indexes_one_table_one_figure(two_indexes, index_dir, tmp_path):
    figure = tmp_path / "pr.png"
    result = run("evaluate", "--name", "fine", "--name", "coarse", "--index-dir", index_dir, "--plot", figure)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["index", "queries", "mAP"]
    assert [line.split()[0] for line in lines[1:3]] == ["fine", "coarse"]
    image = cv2.imread(str(figure))
    assert image is not None and image.shape[1] > image.shape[0]  # curves and bars side by side
    data = json.loads(run("evaluate", "--name", "fine", "--name", "coarse", "--index-dir", index_dir, "--json").stdout)
    assert [entry["name"] for entry in data["indexes"]] == ["fine", "coarse"]
    assert len(data["indexes"][0]["pr_curve"]["precision"]) == len(data["indexes"][0]["pr_curve"]["recall"])


def test_indexes_with_different_images_are_each_evaluated_with_a_warning(collection, index_dir):
    run("index", collection, "--name", "all", "--index-dir", index_dir)
    run("index", collection / "red", "--name", "part", "--index-dir", index_dir, "--labels", _labels(collection / "red"))
    result = run("evaluate", "--name", "all", "--name", "part", "--index-dir", index_dir)
    assert "hold different images" in result.stderr and result.stderr.startswith("warning: ")
    assert len(result.stdout.splitlines()) == 3


def _labels(folder):
    csv = folder.parent / "part-labels.csv"
    files = sorted(folder.glob("*.jpg"))
    csv.write_text("path,label\n" + "".join(f"{f.parent.name}/{f.name},{'a' if n % 2 else 'b'}\n" for n, f in enumerate(files)))
    return csv


def test_plot_to_an_unwritable_path_fails_before_evaluating(two_indexes, index_dir, tmp_path):
    assert "does not exist" in fails("evaluate", "--name", "fine", "--index-dir", index_dir, "--plot", tmp_path / "no" / "pr.png")
    assert "ending in" in fails("evaluate", "--name", "fine", "--index-dir", index_dir, "--plot", tmp_path / "pr.txt")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anyway
            assert "permission denied" in fails("evaluate", "--name", "fine", "--index-dir", index_dir, "--plot", locked / "pr.png")
    finally:
        os.chmod(locked, 0o700)


def test_expand_zero_and_contradictions_are_one_clean_error(two_indexes, index_dir):
    query = two_indexes / "red" / "red-1.jpg"
    assert "--expand must be at least 1" in fails("query", query, "--name", "fine", "--index-dir", index_dir, "--expand", "0")
    assert "--expand must be at least 1" in fails("evaluate", "--name", "fine", "--index-dir", index_dir, "--expand", "0")
    assert "contradict" in fails("query", query, "--name", "fine", "--index-dir", index_dir, "--expand", "2", "--no-expand")
    assert "--alpha" in fails("query", query, "--name", "fine", "--index-dir", index_dir, "--alpha", "-1")


def test_dba_options_through_the_cli(collection, index_dir):
    assert "--dba 15 needs more than 15 images" in fails("index", collection, "--name", "x", "--index-dir", index_dir, "--dba", "15")
    assert not (index_dir / "x").exists()
    assert "--dba must be at least 1" in fails("index", collection, "--name", "x", "--index-dir", index_dir, "--dba", "0")
    run("index", collection, "--name", "x", "--index-dir", index_dir, "--dba", "3")
    manifest = json.loads((index_dir / "x" / "manifest.json").read_text())
    assert manifest["dba"] == {"k": 3, "alpha": 3.0}
    run("index", collection, "--name", "x", "--index-dir", index_dir, "--no-dba")
    assert json.loads((index_dir / "x" / "manifest.json").read_text())["dba"] is None
    plain = json.loads(run("query", collection / "red" / "red-1.jpg", "--name", "x", "--index-dir", index_dir, "--no-expand", "--json").stdout)
    assert plain["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_ground_truth_protocol_through_the_cli(two_indexes, index_dir, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    outside = write_image(tmp_path / "q.jpg", coloured_image((200, 90, 30), seed=77))
    csv = tmp_path / "truth.csv"
    rows = [f"{outside},{p}" for p in sorted((two_indexes / "blue").glob("*.jpg"))]
    rows += [f"{broken},{two_indexes / 'red' / 'red-0.jpg'}", f"{outside},{tmp_path / 'not-indexed.jpg'},good"]
    csv.write_text("\n".join(rows) + "\n")
    result = run("evaluate", "--name", "fine", "--index-dir", index_dir, "--ground-truth", csv, "--json")
    data = json.loads(result.stdout)
    assert data["protocol"] == "ground-truth" and data["n_queries"] == 1 and data["map"] == pytest.approx(1.0)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert any("1 image(s) named in the ground truth are not in the index" in w for w in warnings)
    assert any("broken.jpg" in w for w in warnings)


def test_first_of_group_protocol_and_query_folder(two_indexes, index_dir, tmp_path):
    text = run("evaluate", "--name", "fine", "--index-dir", index_dir, "--protocol", "first-of-group").stdout
    assert text.startswith("index 'fine': 3 queries, first-of-group")
    write_image(tmp_path / "qs" / "green" / "q.jpg", coloured_image((50, 180, 60), seed=5))
    data = json.loads(run("evaluate", "--name", "fine", "--index-dir", index_dir, "--query-folder", tmp_path / "qs", "--json").stdout)
    assert data["protocol"] == "query-folder" and data["n_queries"] == 1 and data["precision"]["1"] == 1.0
    assert "unknown protocol" in fails("evaluate", "--name", "fine", "--index-dir", index_dir, "--protocol", "nope")
