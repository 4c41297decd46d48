"""Diffusion re-ranking (cbir.ann.diffusion): the graph, the closed form, and what it ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.ann.diffusion import diffuse, knn_graph, query_seeds
from cbir.ann.rerank import search_nearest_neighbours


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_conjugate_gradient_gives_the_dense_closed_form_on_a_tiny_graph():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(30, 8)))
    rows, scores = search_nearest_neighbours(vectors, 6)
    graph = knn_graph(rows, scores, gamma=3.0)
    S = graph.dense()
    assert np.allclose(S, S.T)  # mutual neighbours only: symmetric
    assert np.abs(np.linalg.eigvalsh(S)).max() <= 1 + 1e-9  # normalised: I - alpha S is positive definite
    # The dense S is the formula applied to the dense mutual affinity.
    A = np.zeros((30, 30))
    for i in range(30):
        for j, s in zip(rows[i], scores[i]):
            if i in rows[j]:
                A[i, j] = max(s, 0) ** 3
    d = A.sum(axis=1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    assert np.allclose(S, inv[:, None] * A * inv[None, :])
    query = unit(rng.normal(size=(2, 8)))
    sims = query @ vectors.T
    top = np.argsort(-sims, axis=1)[:, :5]
    y = query_seeds(top, np.take_along_axis(sims, top, axis=1), 30)
    assert y.shape == (30, 2) and np.count_nonzero(y[:, 0]) == 5
    f = diffuse(graph, y, alpha=0.9, iterations=200, tolerance=1e-12)
    closed = np.linalg.solve(np.eye(30) - 0.9 * S, y)
    assert np.allclose(f, closed, atol=1e-8)


def test_diffusion_follows_a_chain_that_a_plain_similarity_misses():
    # Points along an arc: the far end is dissimilar to the query but linked to it through neighbours.
    angles = np.linspace(0, np.pi * 0.9, 40)
    arc = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
    off = unit(np.array([[0.55, 0.55, 0.63]] * 3) + np.random.default_rng(1).normal(scale=0.01, size=(3, 3)))
    vectors = unit(np.concatenate([arc, off]))
    rows, scores = search_nearest_neighbours(vectors, 4)
    graph = knn_graph(rows, scores)
    sims = vectors[:1] @ vectors.T
    sims[0, 0] = -1  # the query is the arc's first point, left out
    top = np.argsort(-sims, axis=1)[:, :3]
    f = diffuse(graph, query_seeds(top, np.take_along_axis(sims, top, axis=1), len(vectors)), iterations=100)[:, 0]
    far_end, off_arc = 39, [40, 41, 42]
    assert sims[0, far_end] < sims[0, off_arc].min()  # plainly, the off-arc cluster is nearer
    assert f[far_end] > f[off_arc].max()  # diffused, the arc's far end ranks above it


def test_alpha_must_keep_the_system_positive_definite():
    graph = knn_graph(np.array([[1], [0]]), np.array([[0.9], [0.9]]))
    with pytest.raises(ValueError, match="alpha"):
        diffuse(graph, np.ones((2, 1)), alpha=1.0)


def arc_and_cluster():
    angles = np.linspace(0, np.pi * 0.9, 40)
    arc = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
    off = unit(np.array([[0.55, 0.55, 0.63]] * 3) + np.random.default_rng(1).normal(scale=0.01, size=(3, 3)))
    return unit(np.concatenate([arc, off]))


def test_a_diffused_ranking_puts_reached_images_first_then_the_rest_by_similarity():
    from cbir.retrieval.diffused import DiffusionGraph

    vectors = arc_and_cluster()
    ids = np.arange(100, 143)  # catalogue ids, not rows
    graph = DiffusionGraph(ids, vectors, 4)
    query = vectors[:1]
    sims = (query @ vectors.T)[0]
    seeds = np.argsort(-sims)[1:4]  # the query's own entry (row 0) left out
    scores, found = graph.rank(query, sims[seeds][None], ids[seeds][None], 43)
    assert sorted(found[0].tolist()) == ids.tolist()
    assert list(found[0]).index(139) < min(list(found[0]).index(i) for i in (140, 141, 142))
    assert np.allclose(scores[0], sims[found[0] - 100], atol=1e-6)  # scores stay the plain similarities
    # A filter restricts the ranking; what it leaves out never comes back.
    scores, found = graph.rank(query, sims[seeds][None], ids[seeds][None], 43, allowed=np.array([105, 139, 141]))
    assert found[0, :3].tolist() == [105, 139, 141] and (found[0, 3:] == -1).all()


def test_diffusion_through_the_cli_and_its_bad_values(tmp_path):
    import cv2
    from typer.testing import CliRunner

    from cbir.cli import app
    from cbir.indexing.run import index_folder

    runner = CliRunner()
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for group, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 40, 200)]):
        (root / f"g{group}").mkdir(parents=True)
        for n in range(5):
            image = np.clip(np.array(colour) + rng.integers(-40, 40, (60, 80, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"g{group}" / f"{n}.png"), image)
    index_dir = tmp_path / "indexes"
    index_folder(root, "p", index_dir, workers=1)
    query = root / "g0" / "0.png"
    base = ["query", str(query), "--name", "p", "--index-dir", str(index_dir), "-k", "5", "--json", "--exclude-self"]
    result = runner.invoke(app, [*base, "--diffusion"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["results"]
    assert len(found) == 5 and all(m["label"] == "g0" for m in found[:4]) and not any(m["path"] == str(query) for m in found)
    # Without --exclude-self the query's own entry comes first, as it does without diffusion.
    result = runner.invoke(app, [*base[:-1], "--diffusion"])
    assert json.loads(result.stdout)["results"][0]["path"] == str(query), result.output
    # A filter keeps its images: diffused results come from the label asked for (once an empty answer).
    result = runner.invoke(app, [*base, "--diffusion", "--label", "g1"])
    found = json.loads(result.stdout)["results"]
    assert len(found) == 5 and all(m["label"] == "g1" for m in found), result.output
    result = runner.invoke(app, ["evaluate", "--name", "p", "--index-dir", str(index_dir), "--diffusion", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["map"] > 0.9
    for bad in ("1", "0"):
        result = runner.invoke(app, [*base, "--diffusion", bad])
        assert result.exit_code != 0 and result.output.strip().splitlines() == [
            f"error: --diffusion (the graph's neighbours a vector) must be at least 2, got {bad}"
        ], result.output
