"""Evaluation protocols and metrics beyond leave-one-out: N-S, PR curves, ground truth, query folders, plots."""

import json

import numpy as np
import pytest

from cbir.errors import LabelsError, UsageError
from cbir.evaluation.protocols import evaluate_index, evaluate_indexes, first_of_group
from cbir.evaluation.groundtruth import read_ground_truth
from cbir.indexing.run import index_folder
from cbir.evaluation.metrics import RECALL_LEVELS, Accumulator, interpolated_precision, ns_score
from conftest import coloured_image, write_image


def test_ns_score_by_hand():
    # query in the collection counts itself: 1 + hits in the top 3
    assert ns_score([True, False, True, True], query_in_collection=True) == 3.0
    # query from outside: hits in the top 4
    assert ns_score([True, False, True, True], query_in_collection=False) == 3.0
    assert ns_score([False, False, False, True], query_in_collection=True) == 1.0


def test_interpolated_precision_by_hand():
    # R N R with 2 relevant: precision 1, 1/2, 2/3 at recall 0.5, 0.5, 1
    curve = interpolated_precision([True, False, True], 2, levels=[0.0, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve, [1.0, 1.0, 2 / 3, 2 / 3])
    # a level never reached has precision 0
    np.testing.assert_allclose(interpolated_precision([True, False], 2, levels=[0.5, 1.0]), [1.0, 0.0])


def test_accumulator_matches_the_single_query_functions_and_ns_applies_to_groups_of_four():
    accumulator = Accumulator(ks=(1, 3))
    relevant = np.array([[True, False, True, True], [False, True, False, False]])
    accumulator.add(relevant, np.array([3, 3]), ["a", "b"], query_in_collection=True)
    accumulator.add(np.zeros((1, 4), bool), np.array([0]), ["c"], query_in_collection=True)
    report = accumulator.report()
    assert report.n_queries == 2 and report.queries_without_relevant == 1
    assert report.ns_score == pytest.approx((3 + 2) / 2)
    assert report.recall[3] == pytest.approx((2 / 3 + 1 / 3) / 2)
    expected_curve = (interpolated_precision(relevant[0], 3) + interpolated_precision(relevant[1], 3)) / 2
    np.testing.assert_allclose(report.pr_curve, expected_curve, atol=1e-6)
    assert len(report.pr_curve) == len(RECALL_LEVELS)
    other = Accumulator(ks=(1,))
    other.add(relevant, np.array([4, 3]), ["a", "b"], query_in_collection=True)  # a group of 5: no N-S
    assert other.report().ns_score is None


def test_first_of_group_picks_the_first_path_of_each_label():
    paths = ["b/2.jpg", "a/9.jpg", "b/1.jpg", "a/1.jpg", "c/1.jpg"]
    labels = ["b", "a", "b", "a", "c"]
    assert first_of_group(paths, labels).tolist() == [2, 3, 4]


@pytest.fixture
def groups_of_four(tmp_path):
    """6 groups of 4 noisy copies of one colour each: an instance-level collection."""
    root = tmp_path / "groups"
    colours = [(40, 40, 210), (50, 180, 60), (200, 90, 30), (30, 200, 200), (200, 40, 200), (120, 120, 120)]
    for g, colour in enumerate(colours):
        for copy in range(4):
            write_image(root / f"g{g}" / f"{copy}.jpg", coloured_image(colour, seed=10 * g + copy))
    return root


def test_leave_one_out_and_first_of_group_report_ns_on_groups_of_four(groups_of_four, index_dir):
    index_folder(groups_of_four, "groups", index_dir)
    everyone = evaluate_index("groups", index_dir)
    designated = evaluate_index("groups", index_dir, protocol="first-of-group")
    assert everyone.n_queries == 24 and designated.n_queries == 6
    assert designated.protocol == "first-of-group"
    assert everyone.ns_score == pytest.approx(4.0) and designated.ns_score == pytest.approx(4.0)
    assert everyone.map == pytest.approx(1.0)


def test_query_folder_from_outside_the_collection(groups_of_four, index_dir, tmp_path):
    index_folder(groups_of_four, "groups", index_dir)
    outside = tmp_path / "queries"
    write_image(outside / "g0" / "q.jpg", coloured_image((40, 40, 210), seed=999))
    write_image(outside / "g3" / "q.jpg", coloured_image((30, 200, 200), seed=998))
    (outside / "g3" / "broken.jpg").write_bytes(b"not an image")
    write_image(outside / "nowhere" / "q.jpg", coloured_image((0, 0, 0), seed=997))  # label not in the index
    report = evaluate_index("groups", index_dir, query_folder=outside)
    assert report.protocol == "query-folder"
    assert report.n_queries == 2 and report.queries_without_relevant == 1
    assert report.map == pytest.approx(1.0) and report.precision[1] == 1.0
    assert any("broken.jpg" in note for note in report.notes)


def test_ground_truth_with_junk_missing_images_and_outside_queries(groups_of_four, index_dir, tmp_path, caplog):
    index_folder(groups_of_four, "groups", index_dir, dba=None)
    outside = write_image(tmp_path / "outside.jpg", coloured_image((50, 180, 60), seed=500))
    csv = groups_of_four / "truth.csv"
    rows = ["query,relevant,kind"]
    rows += [f"g0/0.jpg,g0/{n}.jpg,good" for n in (1, 2)] + ["g0/0.jpg,g0/3.jpg,junk"]
    rows += ["g0/0.jpg,gone/missing.jpg,ok"]
    rows += [f"{outside},g1/{n}.jpg" for n in range(4)]  # kind defaults to good
    csv.write_text("\n".join(rows) + "\n")
    truth = read_ground_truth(csv)
    assert truth.junk[str(groups_of_four / "g0" / "0.jpg")] == {str(groups_of_four / "g0" / "3.jpg")}
    with caplog.at_level("WARNING"):
        report = evaluate_index("groups", index_dir, ground_truth=csv, expand=None)
    assert report.protocol == "ground-truth" and report.n_queries == 2
    # g0/3 is junk (not counted either way): g0/1 and g0/2 come first -> AP 1
    assert report.per_class["0"]["map"] == pytest.approx(1.0)
    assert report.per_class["outside"]["map"] == pytest.approx(1.0)
    warnings = [r.getMessage() for r in caplog.records if "not in the index" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("1 image(s)")


def test_ground_truth_bad_rows_are_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,b.jpg,maybe\n")
    with pytest.raises(LabelsError, match="line 1: kind 'maybe'"):
        read_ground_truth(bad)
    bad.write_text("query,relevant\nonly-one-field\n")
    with pytest.raises(LabelsError, match="line 2"):
        read_ground_truth(bad)


def test_labels_with_one_image_per_class_is_one_clear_error(collection, index_dir):
    index_folder(collection, "photos", index_dir)
    unique = {str(p): p.stem for p in collection.rglob("*.jpg")}
    with pytest.raises(LabelsError, match="no label has two images"):
        evaluate_index("photos", index_dir, labels=unique)


def test_two_indexes_with_other_extractors_and_images(collection, index_dir, caplog):
    from cbir.features.base import make_extractor
    from cbir.features.pipeline import Embedder

    index_folder(collection, "colour", index_dir)
    index_folder(collection / "red", "small", index_dir, embedder=Embedder(make_extractor("color", bins=[4, 4, 2])), labels=None)
    with caplog.at_level("WARNING"):
        with pytest.raises(LabelsError):  # 'small' holds one label only
            evaluate_indexes(["colour", "small"], index_dir)
    assert any("hold different images" in r.getMessage() for r in caplog.records)
    index_folder(collection, "coarse", index_dir, embedder=Embedder(make_extractor("color", bins=[4, 4, 2])))
    reports, notes = evaluate_indexes(["colour", "coarse"], index_dir)
    assert set(reports) == {"colour", "coarse"} and notes == []
    with pytest.raises(UsageError, match="twice"):
        evaluate_indexes(["colour", "colour"], index_dir)
