"""``cbir benchmark SPEC``: one labelled folder, several configurations, one table."""

import json

import cv2

from test_cli import fails, run


def _spec(tmp_path, collection, configs):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"folder": str(collection.relative_to(tmp_path)), "queries": 3, "configs": configs}))
    return spec


def test_benchmark_compares_configurations_in_one_table(collection, tmp_path):
    spec = _spec(
        tmp_path,
        collection,
        [
            {"name": "plain", "dba": None, "expand": None},
            {"name": "coarse-rerank", "bins": [4, 4, 2], "dba": 2, "expand": 2},
            {"name": "hnsw", "index_type": "hnsw"},
            {"name": "diffused", "diffusion": 5},
        ],
    )
    figure = tmp_path / "bench.png"
    keep = tmp_path / "kept"
    result = run("benchmark", spec, "--json", "--plot", figure, "--index-dir", keep)
    data = json.loads(result.stdout)
    rows = {row["name"]: row for row in data["configs"]}
    assert list(rows) == ["plain", "coarse-rerank", "hnsw", "diffused"]
    assert rows["plain"]["map"] > 0.9 and rows["plain"]["n_queries"] == 15
    assert "DBA" not in rows["plain"]["description"] and "αQE" not in rows["plain"]["description"]
    assert "DBA-2" in rows["coarse-rerank"]["description"] and "bins=[4, 4, 2]" in rows["coarse-rerank"]["description"]
    # The choice between re-rankers is shown: diffusion is a search setting of its own, measured like the others.
    assert "diffusion-5" in rows["diffused"]["description"] and "diffusion" not in rows["plain"]["description"]
    assert all(row["query_ms"] > 0 and row["size_mb"] > 0 and row["index_seconds"] > 0 for row in rows.values())
    assert cv2.imread(str(figure)) is not None
    assert sorted(p.name for p in keep.iterdir()) == ["coarse-rerank", "diffused", "hnsw", "plain"]
    text = run("benchmark", spec).stdout.splitlines()
    assert text[0].split()[:3] == ["config", "mAP", "P@10"] and len(text) == 5


def test_bad_specs_are_one_clean_error(collection, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in fails("benchmark", bad)
    assert "two configs are named 'a'" in fails("benchmark", _spec(tmp_path, collection, [{"name": "a"}, {"name": "a"}]))
    assert "needs a \"name\"" in fails("benchmark", _spec(tmp_path, collection, [{"name": "../x"}]))
    assert "lists no configs" in fails("benchmark", _spec(tmp_path, collection, []))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"folder": "nowhere", "configs": [{"name": "a"}]}))
    assert "does not exist" in fails("benchmark", missing)
    assert "unknown" in fails("benchmark", _spec(tmp_path, collection, [{"name": "a", "extractor": "nope"}])).lower()
    assert "diffusion" in fails("benchmark", _spec(tmp_path, collection, [{"name": "a", "diffusion": 0}]))


def test_name_runs_only_the_configs_named(collection, tmp_path):
    spec = _spec(tmp_path, collection, [{"name": "plain", "dba": None, "expand": None}, {"name": "coarse", "bins": [4, 4, 2]}])
    keep = tmp_path / "kept"
    data = json.loads(run("benchmark", spec, "--name", "coarse", "--json", "--index-dir", keep).stdout)
    assert [row["name"] for row in data["configs"]] == ["coarse"]
    assert sorted(p.name for p in keep.iterdir()) == ["coarse"]
    assert "no config named 'nope'; it has plain, coarse" in fails("benchmark", spec, "--name", "nope")
