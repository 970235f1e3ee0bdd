"""Sample-quality metrics on feature vectors: Fréchet distance (FID) and k-NN precision / recall.

Both work on float feature arrays ``[N, D]`` (from :func:`dpbench.evaluation.features.extract_features`);
they are pure numpy / scipy and never look at labels. :func:`image_quality` chains extraction and both
metrics for two image tensors.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "frechet_distance",
    "frechet_distance_from_stats",
    "feature_statistics",
    "precision_recall",
    "image_quality",
]


def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] feature array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (``ddof=1``, as pytorch-fid / torch-fidelity)."""
    feats = _as_features(feats, "feats")
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``. The trace term is computed
    as ``sum(sqrt(eig(A sigma2 A)))`` with ``A = sigma1^{1/2}`` — a symmetric PSD matrix whose eigenvalues
    are those of ``sigma1 sigma2`` — so there are no complex parts and singular covariances (fewer samples
    than dimensions) are fine; tiny negative eigenvalues from rounding are clipped to 0. If an
    eigendecomposition does not converge, ``eps * I`` is added to both covariances, as pytorch-fid does.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    try:
        root1 = _sqrt_psd(sigma1)
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ sigma2 @ root1), 0.0, None)).sum()
    except np.linalg.LinAlgError:
        offset = np.eye(sigma1.shape[0]) * eps
        root1 = _sqrt_psd(sigma1 + offset)
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ (sigma2 + offset) @ root1), 0.0, None)).sum()
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(fd, 0.0)  # rounding can make identical sets a hair negative


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """FID-style Fréchet distance between Gaussians fitted to two feature sets ``[N_a, D]``, ``[N_b, D]``."""
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_from_stats(*feature_statistics(a), *feature_statistics(b), eps=eps)


# --------------------------------------------------------------------------------------------------------
# Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019)
# --------------------------------------------------------------------------------------------------------

_CHUNK_ELEMENTS = 1 << 24  # 16M float64 distances (128 MiB) per block


def _row_chunks(n_rows: int, n_cols: int, chunk_size: Optional[int]):
    step = chunk_size or max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _sq_dists(x: np.ndarray, x_sq: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    d = x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0, out=d)


def _knn_radii_sq(x: np.ndarray, k: int, chunk_size: Optional[int]) -> np.ndarray:
    """Squared distance from each row of ``x`` to its k-th nearest *other* row."""
    x_sq = np.einsum("ij,ij->i", x, x)
    radii = np.empty(x.shape[0])
    for rows in _row_chunks(x.shape[0], x.shape[0], chunk_size):
        d = _sq_dists(x[rows], x_sq[rows], x, x_sq)
        d[np.arange(d.shape[0]), np.arange(rows.start, rows.stop)] = 0.0  # self, exactly
        radii[rows] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def _coverage(manifold: np.ndarray, radii_sq: np.ndarray, queries: np.ndarray, chunk_size: Optional[int]) -> float:
    """Fraction of ``queries`` inside at least one ball (``manifold[i]``, ``radii[i]``)."""
    m_sq = np.einsum("ij,ij->i", manifold, manifold)
    q_sq = np.einsum("ij,ij->i", queries, queries)
    inside = 0
    for rows in _row_chunks(queries.shape[0], manifold.shape[0], chunk_size):
        d = _sq_dists(queries[rows], q_sq[rows], manifold, m_sq)
        inside += int((d <= radii_sq[None, :]).any(axis=1).sum())
    return inside / queries.shape[0]


def precision_recall(real_feats, fake_feats, k: int = 3, chunk_size: Optional[int] = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake_feats`` w.r.t. ``real_feats``.

    Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
    neighbour within the set. Precision = fraction of fake points inside the real manifold (fidelity);
    recall = fraction of real points inside the fake manifold (coverage). Distances are computed in row
    blocks of ~16M entries (``chunk_size`` rows if given), so 10k x 10k sets never materialise a full
    matrix. Use equally sized sets: both numbers depend on the set sizes through the k-NN radii.
    """
    real, fake = _as_features(real_feats, "real_feats"), _as_features(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1 or k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must be in [1, min set size - 1], got k={k} for sets of {real.shape[0]} and {fake.shape[0]}")
    precision = _coverage(real, _knn_radii_sq(real, k, chunk_size), fake, chunk_size)
    recall = _coverage(fake, _knn_radii_sq(fake, k, chunk_size), real, chunk_size)
    return precision, recall


def image_quality(
    real_images,
    fake_images,
    backbone: str = "random_cnn",
    k: int = 3,
    device="cpu",
    batch_size: int = 256,
) -> dict:
    """``{"fid", "precision", "recall", "backbone"}`` of ``fake_images`` against ``real_images`` ([-1, 1] NCHW)."""
    from dpbench.evaluation.features import extract_features

    real = extract_features(backbone, real_images, device=device, batch_size=batch_size)
    fake = extract_features(backbone, fake_images, device=device, batch_size=batch_size)
    precision, recall = precision_recall(real, fake, k=k)
    return {"fid": frechet_distance(real, fake), "precision": precision, "recall": recall, "backbone": backbone}
