"""Outliers: images unlike any class (low density among the embeddings), and blank images."""

from __future__ import annotations

import numpy as np

K_NEIGHBOURS = 10
REFERENCE = 10_000  # training images the density is measured against (a random sample, fixed seed)
ROBUST_Z = 6.0  # an outlier's distance lies this many robust standard deviations above the median
BLANK_STD = 3.0  # pixel standard deviation (0-255 levels) under which an image is blank


def blank_images(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (int64) of (nearly) constant images among ``x`` uint8 ``(N, 32, 32, 3)``, and each one's
    score in (0, 1]: 1 for a perfectly constant image, falling to 0 at :data:`BLANK_STD` levels."""
    std = np.empty(len(x), dtype=np.float32)
    for i in range(0, len(x), 4096):
        std[i:i + 4096] = x[i:i + 4096].reshape(min(4096, len(x) - i), -1).astype(np.float32).std(axis=1)
    idx = np.flatnonzero(std < BLANK_STD)
    return idx.astype(np.int64), (1.0 - std[idx] / BLANK_STD).astype(np.float32)


def knn_distance(f: np.ndarray, n_train: int, k: int = K_NEIGHBOURS, reference: int = REFERENCE,
                 seed: int = 0, chunk: int = 2048) -> np.ndarray:
    """float32 ``(N,)``: for each row of ``f`` (unit vectors ``(N, d)``, training images first), one minus the
    mean cosine similarity to its ``k`` nearest among ``reference`` training images (itself excluded)."""
    rng = np.random.default_rng(seed)
    ref = np.sort(rng.choice(n_train, size=min(reference, n_train), replace=False))
    k = min(k, len(ref) - 1)
    fr = f[ref]
    out = np.empty(len(f), dtype=np.float32)
    for start in range(0, len(f), chunk):
        s = f[start:start + chunk] @ fr.T
        rows = np.arange(start, start + len(s))
        self_col = np.searchsorted(ref, rows)
        is_self = (self_col < len(ref)) & (ref[np.minimum(self_col, len(ref) - 1)] == rows)
        s[np.flatnonzero(is_self), self_col[is_self]] = -np.inf
        top = np.partition(s, len(ref) - k, axis=1)[:, len(ref) - k:]
        out[start:start + len(s)] = 1.0 - top.mean(axis=1)
    return out


def outliers(distance: np.ndarray, z: float = ROBUST_Z) -> tuple[np.ndarray, np.ndarray]:
    """Positions (int64) whose ``distance`` lies ``z`` robust standard deviations (1.4826 x the median
    absolute deviation) above the median, most remote first, and their robust z-scores (float32)."""
    med = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - med))) or 1e-6
    score = (distance - med) / spread
    idx = np.flatnonzero(score >= z)
    idx = idx[np.argsort(-score[idx], kind="stable")]
    return idx.astype(np.int64), score[idx].astype(np.float32)
