"""Exact and near-duplicate pairs, within train, within test and across them (leaks).

Two stages, so that 60,000 x 60,000 comparisons stay cheap and within a few hundred MB:

1. **Candidates**: every image gets a short vector, mostly (:data:`EMB_WEIGHT`) the fold nets'
   penultimate-layer embedding (reduced to :data:`EMB_DIMS` by PCA, so centred), the rest a pixel
   vector (grey levels averaged to 8 x 8, centred, unit length); all pairs whose cosine similarity reaches :data:`CANDIDATE` are found by
   a matrix product taken :data:`CHUNK` rows at a time.
2. **Check**: each candidate pair is compared pixel by pixel, allowing shifts of up to
   :data:`MAX_SHIFT` pixels and a mirror image, on high-pass images (each pixel minus its
   neighbourhood's mean) with each colour channel normalised to zero mean and unit variance (so a
   recoloured copy still matches): first at half size, then at full size for the pairs that pass;
   a pair is a near-duplicate when the full-size correlation reaches :data:`PIXEL_MATCH`, and an
   exact duplicate when the pixels differ by at most :data:`EXACT_LEVELS` levels on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMB_DIMS = 64
PIXEL_SIDE = 8
CHUNK = 1024  # rows per matrix product: 1,024 x 60,000 float32 similarities are 245 MB
EMB_WEIGHT = 0.9  # share of the embedding in the candidates' similarity (the rest: the 8 x 8 pixel vector)
CANDIDATE = 0.85  # combined cosine similarity for a pair to be checked
MAX_PER_ROW = 20  # candidates kept per image (a cluster of many copies keeps its closest)
MAX_SHIFT = 2
# The check runs twice: on all candidates at half size (shifts of 1 there, 3 x 3 high-pass), which
# is 20x cheaper, then at full size on the pairs that reach QUICK_MATCH there.
QUICK_MATCH = 0.5
# Chosen by eye on CIFAR-10 (docs/audit.md): at a full-size high-pass correlation of 0.7-0.8 most
# pairs were one photo, at 0.5-0.6 fewer than half (different ships on the same calm sea, mostly).
PIXEL_MATCH = 0.70
EXACT_LEVELS = 2.0  # mean absolute difference (0-255 levels) of an exact duplicate


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
        # Only the images from this chunk on: each pair once (j > i), and half the products in all.
        s = f[start:start + chunk] @ f[start:].T
        s[:, :len(s)][np.tri(len(s), dtype=bool)] = -1.0  # the image itself and the chunk's earlier ones
        i, j = np.nonzero(s >= threshold)
        # Each row keeps its per_row most similar: sorted by row, most similar first, ranked within the row.
        order = np.lexsort((-s[i, j], i))
        i, j = i[order], j[order]
        rank = np.arange(len(i)) - np.searchsorted(i, i)
        i, j = i[rank < per_row], j[rank < per_row]
        rows.append(i + start)
        cols.append(j + start)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def _standardised(a: np.ndarray, box: int = 5) -> np.ndarray:
    """float32 high-pass images ``(N, H, W, C)``: each pixel minus its ``box`` x ``box`` neighbourhood's mean,
    then each channel to zero mean and unit variance. Without the high-pass, two different ships on the
    same calm sea correlate as well as two copies of one photo: the smooth background dominates."""
    a = a.astype(np.float32)
    r = box // 2
    p = np.pad(a, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge").cumsum(axis=1).cumsum(axis=2)
    p = np.pad(p, ((0, 0), (1, 0), (1, 0), (0, 0)))
    h, w = a.shape[1:3]
    a -= (p[:, box:box + h, box:box + w] - p[:, :h, box:box + w] - p[:, box:box + h, :w] + p[:, :h, :w]) / box ** 2
    a -= a.mean(axis=(1, 2), keepdims=True)
    return a / np.maximum(a.std(axis=(1, 2), keepdims=True), 1.0)


def half_size_standardised(x: np.ndarray) -> np.ndarray:
    """float32 ``(N, 16, 16, 3)``: uint8 images ``(N, 32, 32, 3)`` averaged 2 x 2, then :func:`_standardised`
    with a 3 x 3 high-pass; once per image, since each image is in many candidate pairs."""
    out = np.empty((len(x), x.shape[1] // 2, x.shape[2] // 2, x.shape[3]), dtype=np.float32)
    for i in range(0, len(x), 4096):
        xb = x[i:i + 4096].astype(np.float32)
        half = xb.reshape(len(xb), out.shape[1], 2, out.shape[2], 2, x.shape[3]).mean(axis=(2, 4))
        out[i:i + 4096] = _standardised(half, box=3)
    return out


def _correlate(sa: np.ndarray, sb: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation float32 ``(P,)`` of standardised images ``sa``, ``sb`` ``(P, H, W, C)`` over shifts
    of ``sb`` up to ``shift`` pixels and its mirror image, and the best (dy, dx, mirrored) int ``(P, 3)``."""
    s, side = shift, sa.shape[1]
    best = np.full(len(sa), -1.0, dtype=np.float32)
    how = np.zeros((len(sa), 3), dtype=np.int64)
    # Pairs on the last axis, so a shifted window is a slice of whole rows (20x faster than pairs first),
    # and each image standardised once rather than per window (the windows cover 80 % of it).
    a = np.ascontiguousarray(sa.transpose(1, 2, 3, 0)[s:side - s, s:side - s])
    tb = sb.transpose(1, 2, 3, 0)
    for mirror in (0, 1):
        xm = np.ascontiguousarray(tb[:, ::-1] if mirror else tb)
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                corr = np.einsum("hwcp,hwcp->p", a, xm[s + dy:side - s + dy, s + dx:side - s + dx]) / a[..., 0].size
                better = corr > best
                best[better] = corr[better]
                how[better] = (dy, dx, mirror)
    return np.minimum(best, 1.0), how


def pixel_match(x: np.ndarray, i: np.ndarray, j: np.ndarray, shift: int = MAX_SHIFT, batch: int = 2048):
    """For pairs of images ``x[i]``, ``x[j]`` (uint8 ``(N, 32, 32, 3)``): (best correlation float32 ``(P,)`` of
    their high-pass images (:func:`_standardised`) over shifts up to ``shift`` pixels and a mirror; mean
    absolute difference in levels, unshifted, float32 ``(P,)``; the best shift as int ``(P, 3)``: dy, dx,
    mirrored)."""
    best = np.empty(len(i), dtype=np.float32)
    how = np.zeros((len(i), 3), dtype=np.int64)
    mad = np.empty(len(i), dtype=np.float32)
    for b in range(0, len(i), batch):
        xa, xb = x[i[b:b + batch]], x[j[b:b + batch]]
        mad[b:b + batch] = np.abs(xa.astype(np.int16) - xb.astype(np.int16)).mean(axis=(1, 2, 3))
        best[b:b + batch], how[b:b + batch] = _correlate(_standardised(xa), _standardised(xb), shift)
    return best, mad, how


def half_match(h: np.ndarray, i: np.ndarray, j: np.ndarray, shift: int = 1, batch: int = 4096) -> np.ndarray:
    """float32 ``(P,)``: :func:`_correlate` of the pairs ``h[i]``, ``h[j]`` of :func:`half_size_standardised` images."""
    best = np.empty(len(i), dtype=np.float32)
    for b in range(0, len(i), batch):
        best[b:b + batch] = _correlate(h[i[b:b + batch]], h[j[b:b + batch]], shift)[0]
    return best


@dataclass
class Pairs:
    """Duplicate pairs among the images stacked train first, then test: positions ``i < j`` (int64
    ``(P,)``) into that stack, ``pixel`` correlation, ``embedding`` cosine similarity (of the PCA of
    the nets' embeddings), ``exact`` bool, ``how`` int ``(P, 3)`` (dy, dx, mirrored) of the best match."""

    i: np.ndarray
    j: np.ndarray
    pixel: np.ndarray
    embedding: np.ndarray
    exact: np.ndarray
    how: np.ndarray
    candidates: int
    checked: int  # candidates that passed the half-size check and were compared at full size

    @property
    def score(self) -> np.ndarray:
        """float32 ``(P,)`` in [0, 1]: the pixel correlation (1 for exact copies)."""
        return np.where(self.exact, 1.0, self.pixel).astype(np.float32)


def find_duplicates(x: np.ndarray, reduced: np.ndarray, candidate: float = CANDIDATE,
                    pixel_min: float = PIXEL_MATCH) -> Pairs:
    """Duplicate pairs among ``x`` uint8 ``(N, 32, 32, 3)`` (train and test stacked), with ``reduced``
    float32 ``(N, EMB_DIMS)`` the unit PCA vectors of the fold nets' embeddings (see the module docstring)."""
    w = np.float32(EMB_WEIGHT)
    f = np.concatenate([reduced * np.sqrt(w), pixel_vectors(x) * np.sqrt(1 - w)], axis=1)
    i, j = candidate_pairs(f, candidate)
    del f
    n_candidates = len(i)
    quick = half_match(half_size_standardised(x), i, j)
    close = quick >= QUICK_MATCH
    i, j = i[close], j[close]
    pixel, mad, how = pixel_match(x, i, j)
    exact = mad <= EXACT_LEVELS
    keep = exact | (pixel >= pixel_min)
    i, j = i[keep], j[keep]
    sim = (reduced[i] * reduced[j]).sum(axis=1)
    return Pairs(i, j, pixel[keep], sim, exact[keep], how[keep], candidates=n_candidates, checked=len(close.nonzero()[0]))
