"""Spatial verification as array maths: match local descriptors, count RANSAC inliers, fuse with the global score.

Pure functions over arrays (keypoint coordinates normalised by the image's
longer side, descriptors as :func:`cbir.features.local.descriptors_for_matching`
gives them), so each rule is tested on plain values. The retrieval layer
(:mod:`cbir.retrieval.verified`) loads the stored features and calls these.

* Matching: each query descriptor's two nearest candidate descriptors, kept
  when the nearest is clearly nearer than the second (Lowe's ratio test).
* Geometry: a 6-degree-of-freedom affine transform fitted with RANSAC
  (``cv2.estimateAffine2D``); its inliers are matches that agree on one
  placement of the query in the candidate (rotation, scale, crop, shear).
* Fusion: a candidate with at least :data:`MIN_INLIERS` inliers is
  *verified*; its score is the global one plus a bonus that grows with the
  inliers (up to :data:`FULL_INLIERS`), so verified candidates move ahead of
  unverified ones and among themselves the global score still counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import cv2

#: Lowe's ratio: the nearest descriptor must be this much nearer than the second nearest.
RATIO = 0.8
#: Fewer inliers than this is not a verification (random pairs of photos reach 4-8).
MIN_INLIERS = 12
#: The bonus stops growing at this many inliers.
FULL_INLIERS = 60
#: Largest bonus, added to a cosine similarity (so a verified match outranks any unverified one).
BONUS = 1.0
#: RANSAC's reprojection threshold, as a fraction of the longer image side (about 5 px at 512).
RANSAC_THRESHOLD = 0.01
#: The default shortlist: this many global results are verified.
DEFAULT_VERIFY = 100


@dataclass(frozen=True)
class Verification:
    """One candidate's check: inliers, and the inlier correspondences (query xy, candidate xy) for drawing."""

    inliers: int
    query_xy: np.ndarray
    candidate_xy: np.ndarray

    @property
    def verified(self) -> bool:
        return self.inliers >= MIN_INLIERS


NOT_VERIFIED = Verification(0, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))


def check_verify(verify) -> int | None:
    """``verify`` checked: ``None`` (off) or a shortlist length of at least 1."""
    if verify is None:
        return None
    if isinstance(verify, bool) or not isinstance(verify, (int, np.integer)):
        raise TypeError(f"verify must be an integer number of candidates, got {type(verify).__name__}")
    if verify < 1:
        from cbir.errors import UsageError

        raise UsageError(f"--verify (the candidates to verify) must be at least 1, got {verify}")
    return int(verify)


def tentative_matches(query: np.ndarray, candidate: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(query indices, candidate indices)`` of descriptor pairs that pass the ratio test, one per candidate keypoint."""
    if len(query) < 2 or len(candidate) < 2:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    if binary:
        nearest, d1, d2 = _two_nearest_hamming(query, candidate)
        return _one_per_candidate(nearest, d1, d1 < RATIO * d2)
    # Unit vectors: squared distance 2 - 2 cos.
    return _ratio_matches(np.maximum(2.0 - 2.0 * (query @ candidate.T), 0.0))


def _ratio_matches(squared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ratio test on a (query, candidate) matrix of squared distances."""
    if squared.shape[1] < 2:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    two = np.argpartition(squared, 1, axis=1)[:, :2]
    d = np.take_along_axis(squared, two, axis=1)
    nearest = np.where(d[:, 0] <= d[:, 1], two[:, 0], two[:, 1])
    d1, d2 = d.min(axis=1), d.max(axis=1)
    return _one_per_candidate(nearest, d1, d1 < RATIO**2 * d2)


def _one_per_candidate(nearest: np.ndarray, d1: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matches that passed, one per candidate keypoint: the nearest claim wins."""
    rows = np.flatnonzero(keep)
    cols = nearest[rows]
    order = np.argsort(d1[rows], kind="stable")
    _, first = np.unique(cols[order], return_index=True)
    chosen = order[first]
    return rows[chosen], cols[chosen]


def _two_nearest_hamming(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row of ``a``'s nearest row of ``b`` and the two smallest Hamming distances (OpenCV's matcher)."""
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a, b, k=2)
    nearest = np.zeros(len(a), np.intp)
    d1 = np.full(len(a), np.inf, np.float32)
    d2 = np.full(len(a), np.inf, np.float32)
    for row, found in enumerate(pairs):
        if len(found) == 2:
            nearest[row], d1[row], d2[row] = found[0].trainIdx, found[0].distance, found[1].distance
    return nearest, d1, d2


def verify_candidates(
    query_xy: np.ndarray, query_desc: np.ndarray, candidates: list[tuple[np.ndarray, np.ndarray] | None], binary: bool
) -> list[Verification]:
    """:func:`verify_pair` for each ``(xy, descriptors)`` candidate (``None``: no features, not verified).

    Float descriptors are compared with every candidate's in one matrix
    product (one BLAS call instead of a hundred small ones).
    """
    if binary or len(query_desc) < 2:
        return [NOT_VERIFIED if c is None else verify_pair(query_xy, query_desc, c[0], c[1], binary) for c in candidates]
    present = [i for i, c in enumerate(candidates) if c is not None and len(c[1]) >= 2]
    out = [NOT_VERIFIED] * len(candidates)
    if not present:
        return out
    width = max(len(candidates[i][1]) for i in present)
    stacked = np.zeros((len(present), width, query_desc.shape[1]), np.float32)
    for row, i in enumerate(present):
        stacked[row, : len(candidates[i][1])] = candidates[i][1]
    similarity = (query_desc @ stacked.reshape(-1, query_desc.shape[1]).T).reshape(len(query_desc), len(present), width)
    # Top two similarities per (query keypoint, candidate): two passes, no full sort. Padding
    # rows are zero vectors (similarity 0, below any real RootSIFT pair, which is non-negative).
    nearest = similarity.argmax(axis=2)
    s1 = np.take_along_axis(similarity, nearest[..., None], axis=2)[..., 0]
    np.put_along_axis(similarity, nearest[..., None], -1.0, axis=2)
    s2 = similarity.max(axis=2)
    d1, d2 = np.maximum(2.0 - 2.0 * s1, 0.0), np.maximum(2.0 - 2.0 * s2, 0.0)  # squared distances
    sizes = np.array([len(candidates[i][1]) for i in present])
    keep = (d1 < RATIO**2 * d2) & (nearest < sizes[None, :])
    counts = keep.sum(axis=0)
    for row, i in enumerate(present):
        if counts[row] >= MIN_INLIERS:
            matches = _one_per_candidate(nearest[:, row], d1[:, row], keep[:, row])
            out[i] = _geometry(query_xy, candidates[i][0], *matches)
    return out


def verify_pair(query_xy: np.ndarray, query_desc: np.ndarray, cand_xy: np.ndarray, cand_desc: np.ndarray, binary: bool) -> Verification:
    """RANSAC inliers of the affine transform from the query's keypoints to the candidate's."""
    return _geometry(query_xy, cand_xy, *tentative_matches(query_desc, cand_desc, binary))


def _geometry(query_xy: np.ndarray, cand_xy: np.ndarray, qi: np.ndarray, ci: np.ndarray) -> Verification:
    if len(qi) < MIN_INLIERS:
        return NOT_VERIFIED  # not enough matches to verify anything: RANSAC would only cost time
    src, dst = query_xy[qi].astype(np.float32), cand_xy[ci].astype(np.float32)
    model, mask = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_THRESHOLD, maxIters=500, confidence=0.99, refineIters=5
    )
    if model is None or mask is None or not _plausible(model):
        return NOT_VERIFIED
    inlier = mask.ravel().astype(bool)
    return Verification(int(inlier.sum()), src[inlier], dst[inlier])


def _plausible(model: np.ndarray) -> bool:
    """An affine map a photo of the same thing could take: no collapse, no mirror, scale within 1/8..8."""
    det = float(np.linalg.det(model[:, :2]))
    return 1 / 64 < det < 64


def fused_scores(scores: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """The global scores plus the verification bonus where a candidate is verified."""
    inliers = np.asarray(inliers, dtype=np.float32)
    bonus = BONUS * np.minimum(inliers, FULL_INLIERS) / FULL_INLIERS
    return np.where(inliers >= MIN_INLIERS, np.asarray(scores, np.float32) + BONUS + bonus, scores)


def rerank_order(scores: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """Positions of the candidates best first by :func:`fused_scores` (ties keep the global order)."""
    return np.argsort(-fused_scores(scores, inliers), kind="stable")
