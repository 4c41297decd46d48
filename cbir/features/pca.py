"""PCA as a step after any extractor: project, optionally whiten, re-normalise.

Whitening divides each component by its standard deviation. Fitted on a
collection of a thousand images, the small components are mostly noise and
full whitening blows them up; ``shrinkage`` pulls every variance towards
their mean first (``(1 - s) * var + s * mean(var)``: 0 is full whitening, 1
none), the usual regularisation of a covariance estimated from few samples;
``power`` then takes the signed power of each coordinate (Jégou and Chum,
ECCV 2012: power normalisation after PCA-whitening lowers the weight of
co-occurring, bursty components). ``docs/cnn.md`` has the measurements.

Fitted and applied with numpy (an eigendecomposition of the covariance: no
scikit-learn and its SciPy in the core install), stored as plain arrays (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import IndexCorruptError, UsageError
from cbir.features.base import l2_normalize
from cbir.fileio import atomic_path


class PCAReduction:
    """Principal component projection of L2-normalised vectors.

    Parameters
    ----------
    n_components : int
        Output dimension; at most ``min(n_samples, input_dim)`` at fit time.
    whiten : bool
        Divide each component by its standard deviation before re-normalising.
    shrinkage : float in [0, 1]
        With ``whiten``, the variances are first shrunk towards their mean by
        this fraction (0: full whitening, the meaning of ``whiten`` in
        configs that do not record it).
    power : float in (0, 1]
        Signed power of each coordinate after the projection (1: none).
    """

    def __init__(self, n_components: int, whiten: bool = False, shrinkage: float = 0.0, power: float = 1.0):
        self.n_components = n_components
        self.whiten = whiten
        self.shrinkage = shrinkage
        self.power = power

    def get_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"n_components": int(self.n_components), "whiten": bool(self.whiten)}
        # Written only when set, so a config of before they existed reads the same.
        if self.shrinkage:
            params["shrinkage"] = float(self.shrinkage)
        if self.power != 1:
            params["power"] = float(self.power)
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"PCAReduction({args})"

    def check_params(self) -> None:
        if not isinstance(self.n_components, int) or isinstance(self.n_components, bool) or self.n_components < 1:
            raise UsageError(f"PCA needs a positive number of components, got {self.n_components!r}")
        if not _is_number(self.shrinkage) or not 0 <= self.shrinkage <= 1:
            raise UsageError(f"whitening shrinkage must be a number from 0 to 1, got {self.shrinkage!r}")
        if self.shrinkage and not self.whiten:
            raise UsageError("whitening shrinkage needs whitening (--pca-whiten)")
        if not _is_number(self.power) or not 0 < self.power <= 1:
            raise UsageError(f"power normalisation exponent must be above 0 and at most 1, got {self.power!r}")

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "components_")

    @property
    def dim(self) -> int:
        return int(self.n_components)

    def fit(self, vectors: np.ndarray) -> "PCAReduction":
        """Learn the projection from ``(n, d)`` vectors; returns ``self``."""
        self.check_params()
        vectors = np.asarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        if self.n_components > min(n, d):
            raise UsageError(
                f"PCA to {self.n_components} dimensions needs at least that many images and "
                f"input dimensions; have {n} images of dimension {d}"
            )
        mean = vectors.mean(axis=0, dtype=np.float64)
        centred = vectors.astype(np.float64) - mean
        # d x d covariance: d is at most a few thousand, n may be 20,000.
        variances, vectors_ = np.linalg.eigh(centred.T @ centred / max(n - 1, 1))
        order = np.argsort(variances)[::-1][: self.n_components]
        components = vectors_[:, order].T
        # Same sign convention as scikit-learn's svd_flip: the largest entry of each component positive.
        signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1, signs)[:, None]
        self.mean_ = mean.astype(np.float32)
        self.components_ = np.ascontiguousarray(components, dtype=np.float32)
        self.explained_variance_ = np.maximum(variances[order], 0).astype(np.float32)
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Project, whiten if asked, and L2-normalise: ``(n, n_components)`` float32."""
        if not self.is_fitted:
            raise UsageError("PCA is not fitted")
        centred = np.asarray(vectors, dtype=np.float32) - self.mean_
        # One matrix-vector product per row: BLAS blocks a matrix product by
        # its shape, so a row's float32 projection would depend on the rows
        # batched with it; this way --workers 1, --workers N, Ray and a single
        # query give bit-identical vectors (~0.02 ms a row at 1440 -> 256).
        projected = np.empty((len(centred), self.n_components), dtype=np.float32)
        for row, out in zip(centred, projected):
            np.dot(self.components_, row, out=out)
        if self.whiten:
            projected /= self.scales_
        if self.power != 1:
            projected = np.sign(projected) * np.power(np.abs(projected), np.float32(self.power))
        return l2_normalize(projected)

    @property
    def scales_(self) -> np.ndarray:
        """What whitening divides each component by: its (shrunk) standard deviation."""
        variances = self.explained_variance_.astype(np.float64)
        shrunk = (1 - self.shrinkage) * variances + self.shrinkage * variances.mean()
        return np.sqrt(np.maximum(shrunk, 1e-12)).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the learned arrays as one ``.npz`` of plain arrays, atomically."""
        if not self.is_fitted:
            raise UsageError("PCA is not fitted: nothing to save")
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            np.savez(f, mean=self.mean_, components=self.components_, explained_variance=self.explained_variance_)

    def load_state(self, path: Path) -> "PCAReduction":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                self.mean_ = arrays["mean"]
                self.components_ = arrays["components"]
                self.explained_variance_ = arrays["explained_variance"]
        except (OSError, KeyError, ValueError) as exc:
            raise IndexCorruptError(f"cannot read PCA state {path}: {exc}") from exc
        if self.components_.shape[0] != self.n_components:
            raise IndexCorruptError(f"PCA state {path} has {self.components_.shape[0]} components, manifest says {self.n_components}")
        return self


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool) and np.isfinite(value)
