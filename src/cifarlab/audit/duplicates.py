"""Exact and near-duplicate pairs, within train, within test and across them (leaks).

Two stages, so that 60,000 x 60,000 comparisons stay cheap and within a few hundred MB:

1. **Candidates**: every image gets a short vector, half the fold nets' penultimate-layer embedding
   (reduced to :data:`EMB_DIMS` by PCA), half a pixel vector (grey levels averaged to 8 x 8,
   centred, unit length); all pairs whose cosine similarity reaches :data:`CANDIDATE` are found by
   a matrix product taken :data:`CHUNK` rows at a time.
2. **Check**: each candidate pair is compared pixel by pixel, allowing shifts of up to
   :data:`MAX_SHIFT` pixels and a mirror image, each colour channel normalised to zero mean and
   unit variance (so a recoloured copy still matches); a pair is a near-duplicate when that
   correlation and the nets' mean cosine similarity both clear their thresholds, and an exact
   duplicate when the pixels differ by at most :data:`EXACT_LEVELS` levels on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMB_DIMS = 64
PIXEL_SIDE = 8
CHUNK = 1024  # rows per matrix product: 1,024 x 60,000 float32 similarities are 245 MB
CANDIDATE = 0.80  # combined cosine similarity for a pair to be checked
MAX_PER_ROW = 20  # candidates kept per image (a cluster of many copies keeps its closest)
MAX_SHIFT = 2
PIXEL_MATCH = 0.90  # normalised pixel correlation of a near-duplicate
EMB_MATCH = 0.90  # mean cosine similarity of the fold nets' embeddings of a near-duplicate
EXACT_LEVELS = 2.0  # mean absolute difference (0-255 levels) of an exact duplicate
EXACT_EMB = 0.8  # nets' similarity below which a pair is not even checked for an exact copy


def pixel_vectors(x: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    """float32 ``(N, side * side)``: uint8 images ``(N, 32, 32, 3)`` in grey, block-averaged to
    ``side`` x ``side``, centred and scaled to unit length (a constant image gives zeros)."""
    n, h, w, _ = x.shape
    out = np.empty((n, side * side), dtype=np.float32)
    for i in range(0, n, 4096):  # in slices: a float copy of 60,000 images would be 700 MB
        g = x[i:i + 4096].astype(np.float32).mean(axis=3)
        g = g.reshape(len(g), side, h // side, side, w // side).mean(axis=(2, 4)).reshape(len(g), -1)
        g -= g.mean(axis=1, keepdims=True)
        out[i:i + 4096] = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-6)
    return out


def reduce_embeddings(emb: np.ndarray, dims: int = EMB_DIMS, seed: int = 0) -> np.ndarray:
    """float32 ``(N, min(dims, d))`` unit vectors: ``emb`` ``(N, d)`` centred and projected by PCA."""
    from sklearn.decomposition import PCA

    dims = min(dims, emb.shape[1], len(emb))
    z = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit_transform(emb).astype(np.float32)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-6)


def candidate_pairs(f: np.ndarray, threshold: float = CANDIDATE, chunk: int = CHUNK,
                    per_row: int = MAX_PER_ROW) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j`` (int64 arrays), of rows of ``f`` float32 ``(N, d)`` (unit vectors)
    with cosine similarity at least ``threshold``, at most ``per_row`` most similar per row."""
    rows, cols = [], []
    for start in range(0, len(f), chunk):
        s = f[start:start + chunk] @ f.T
        r = np.arange(len(s))
        s[r, start + r] = -1.0  # not the image itself
        s[:, :start] = -1.0  # each pair once: j > i (rows before this chunk were done)
        hit = s >= threshold
        many = np.flatnonzero(hit.sum(axis=1) > per_row)
        for i in many:
            keep = np.argpartition(-s[i], per_row)[:per_row]
            hit[i] = False
            hit[i, keep] = s[i, keep] >= threshold
        i, j = np.nonzero(hit)
        later = j > i + start  # within the chunk, each pair once
        rows.append(i[later] + start)
        cols.append(j[later])
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def _standardised(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a -= a.mean(axis=(1, 2), keepdims=True)
    return a / np.maximum(a.std(axis=(1, 2), keepdims=True), 1.0)


def pixel_match(x: np.ndarray, i: np.ndarray, j: np.ndarray, shift: int = MAX_SHIFT, batch: int = 2048):
    """For pairs of images ``x[i]``, ``x[j]``: (best correlation float32 ``(P,)`` over shifts up to
    ``shift`` pixels and a mirror, each channel standardised; mean absolute difference in levels,
    unshifted, float32 ``(P,)``; the best shift as int ``(P, 3)``: dy, dx, mirrored)."""
    best = np.full(len(i), -1.0, dtype=np.float32)
    how = np.zeros((len(i), 3), dtype=np.int64)
    mad = np.empty(len(i), dtype=np.float32)
    s, side = shift, x.shape[1]
    for b in range(0, len(i), batch):
        xa, xb = x[i[b:b + batch]], x[j[b:b + batch]]
        mad[b:b + batch] = np.abs(xa.astype(np.int16) - xb.astype(np.int16)).mean(axis=(1, 2, 3))
        # Pairs on the last axis, so a shifted window is a slice of whole rows (20x faster than
        # pairs first), and each image standardised once rather than per window (they cover 80 % of it).
        a = np.ascontiguousarray(_standardised(xa).transpose(1, 2, 3, 0)[s:side - s, s:side - s])
        sb = _standardised(xb).transpose(1, 2, 3, 0)
        for mirror in (0, 1):
            xm = np.ascontiguousarray(sb[:, ::-1] if mirror else sb)
            for dy in range(-s, s + 1):
                for dx in range(-s, s + 1):
                    corr = np.einsum("hwcp,hwcp->p", a, xm[s + dy:side - s + dy, s + dx:side - s + dx]) / a[..., 0].size
                    better = corr > best[b:b + batch]
                    best[b:b + batch][better] = corr[better]
                    how[b:b + batch][better] = (dy, dx, mirror)
    return np.minimum(best, 1.0), mad, how


@dataclass
class Pairs:
    """Duplicate pairs among the images stacked train first, then test: positions ``i < j`` (int64
    ``(P,)``) into that stack, ``pixel`` correlation, ``embedding`` similarity, ``exact`` bool,
    ``how`` int ``(P, 3)`` (dy, dx, mirrored) of the best pixel match."""

    i: np.ndarray
    j: np.ndarray
    pixel: np.ndarray
    embedding: np.ndarray
    exact: np.ndarray
    how: np.ndarray
    candidates: int

    @property
    def score(self) -> np.ndarray:
        """float32 ``(P,)`` in [0, 1]: the weaker of the two similarities (1 for exact copies)."""
        return np.where(self.exact, 1.0, np.minimum(self.pixel, self.embedding)).astype(np.float32)


def find_duplicates(x: np.ndarray, emb: np.ndarray, reduced: np.ndarray, n_folds: int,
                    candidate: float = CANDIDATE, pixel_min: float = PIXEL_MATCH, emb_min: float = EMB_MATCH) -> Pairs:
    """Duplicate pairs among ``x`` uint8 ``(N, 32, 32, 3)`` (train and test stacked), with ``emb`` float32
    ``(N, n_folds * d)`` the fold nets' unit embeddings side by side and ``reduced`` (N, EMB_DIMS) their
    PCA (see the module docstring)."""
    f = np.concatenate([reduced, pixel_vectors(x)], axis=1) * np.float32(np.sqrt(0.5))
    i, j = candidate_pairs(f, candidate)
    del f
    sim = np.empty(len(i), dtype=np.float32)
    for b in range(0, len(i), 65536):
        sim[b:b + 65536] = (emb[i[b:b + 65536]] * emb[j[b:b + 65536]]).sum(axis=1) / n_folds
    # An exact copy has the same embedding too, so only pairs the nets find alike are compared pixel by pixel.
    close = sim >= min(emb_min, EXACT_EMB)
    i, j, sim, n_candidates = i[close], j[close], sim[close], len(i)
    pixel, mad, how = pixel_match(x, i, j)
    exact = mad <= EXACT_LEVELS
    keep = exact | ((pixel >= pixel_min) & (sim >= emb_min))
    return Pairs(i[keep], j[keep], pixel[keep], sim[keep], exact[keep], how[keep], candidates=n_candidates)
