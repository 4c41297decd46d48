import numpy as np
import pytest

from cbir.evaluation.metrics import average_precision, evaluate_rankings, precision_at_k, recall_at_k
from cbir.evaluation.protocols import evaluate_vectors, leave_one_out

# Ranking R N R N N R with 4 relevant items in the collection (one never retrieved).
RANKING = [True, False, True, False, False, True]


def test_precision_at_k_by_hand():
    assert precision_at_k(RANKING, 1) == 1.0
    assert precision_at_k(RANKING, 2) == 0.5
    assert precision_at_k(RANKING, 3) == pytest.approx(2 / 3)
    assert precision_at_k(RANKING, 6) == 0.5
    # Fewer results than k still divides by k.
    assert precision_at_k(RANKING, 10) == 0.3


def test_recall_at_k_by_hand():
    assert recall_at_k(RANKING, 1, 4) == 0.25
    assert recall_at_k(RANKING, 5, 4) == 0.5
    assert recall_at_k(RANKING, 6, 4) == 0.75


def test_average_precision_by_hand():
    # hits at ranks 1, 3, 6: (1/1 + 2/3 + 3/6) / 4 relevant
    assert average_precision(RANKING, 4) == pytest.approx((1 + 2 / 3 + 0.5) / 4)
    assert average_precision([True, True], 2) == 1.0
    assert average_precision([False, False, True], 1) == pytest.approx(1 / 3)


def test_undefined_cases_are_refused():
    with pytest.raises(ValueError):
        average_precision([False], 0)
    with pytest.raises(ValueError):
        recall_at_k([False], 1, 0)
    with pytest.raises(ValueError):
        precision_at_k([True], 0)


def test_vectorised_rankings_match_the_single_query_functions():
    rng = np.random.default_rng(0)
    labels = np.array(list("aaabbbbcc"))
    n = len(labels)
    rankings, query_rows = [], np.arange(n)
    for q in query_rows:
        others = np.array([i for i in range(n) if i != q])
        rankings.append(rng.permutation(others))
    rankings = np.array(rankings)
    report = evaluate_rankings(rankings, labels, ks=(1, 3, 5))
    aps, p3 = [], []
    for q, ranking in zip(query_rows, rankings):
        relevant = [labels[i] == labels[q] for i in ranking]
        n_relevant = int((labels == labels[q]).sum()) - 1
        aps.append(average_precision(relevant, n_relevant))
        p3.append(precision_at_k(relevant, 3))
    assert report.map == pytest.approx(np.mean(aps))
    assert report.precision[3] == pytest.approx(np.mean(p3))
    assert report.n_queries == n


def test_leave_one_out_removes_the_query_from_its_own_ranking():
    labels = ["x", "x", "y", "y"]

    def search(query_rows):  # ranks the query itself first, then the right neighbour
        return np.array([[q, q ^ 1, *sorted({0, 1, 2, 3} - {q, q ^ 1})] for q in query_rows])

    report = leave_one_out(search, 4, labels, ks=(1, 3))
    assert report.precision[1] == 1.0
    assert report.map == 1.0
    assert report.precision[3] == pytest.approx(1 / 3)


def test_padding_and_classes_of_one_are_spelled_out():
    labels = ["a", "a", "lonely"]
    rankings = np.array([[1, -1], [0, -1], [0, 1]])
    report = evaluate_rankings(rankings, labels, ks=(1, 2))
    assert report.queries_without_relevant == 1
    assert report.n_queries == 2
    assert report.precision == {1: 1.0, 2: 0.5}
    assert report.recall[1] == 1.0


def test_per_class_precision_and_json_shape():
    vectors = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    report = evaluate_vectors(vectors, ["h", "h", "v", "v"])
    data = report.to_dict()
    assert data["map"] == 1.0
    assert set(data["precision"]) == {"1", "5", "10", "20", "50"}
    assert set(data["recall"]) == set(data["precision"])
    assert data["per_class"]["h"]["precision@10"] == pytest.approx(0.1)
    assert data["per_class"]["v"]["n"] == 2
