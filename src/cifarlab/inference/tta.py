"""Test-time augmentation: which views, for which images, averaged how.

Written once for every trainer and backend. A *logits function* is any callable
``logits(x, dy=0, dx=0, flip=False) -> float32 (N, classes)`` on uint8 images
``(N, 32, 32, 3)``, computing the logits of each image mirrored (``flip``) and then
shifted by ``(dy, dx)`` pixels (:func:`view`). :class:`KerasLogits` is one for any Keras
model on any backend, in ``keras.ops``; the TensorFlow fast loop passes its own compiled
one (``FastTrainer.logits``). :func:`tta_logits` averages the views.
"""

from __future__ import annotations

import numpy as np

from cifarlab.inference.predict import softmax
from cifarlab.recipes import TTA_MODES as MODES
EVAL_BATCH = 1000  # images per model call


def views(mode: str) -> list[tuple[int, int, bool]]:
    """The ``(dy, dx, flip)`` views averaged with the plain image under ``mode``, in averaging order.

    ``"flip"``: the mirror. ``"flip_translate"``: the mirror, and the shifts by one pixel up-left
    and down-right, each also mirrored (6 views with the plain one).
    """
    if mode not in MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(MODES)}")
    if mode == "none":
        return []
    if mode == "flip":
        return [(0, 0, True)]
    return [(0, 0, True)] + [(d, d, f) for d in (-1, 1) for f in (False, True)]


def view(x, dy: int = 0, dx: int = 0, flip: bool = False):
    """Images ``(B, H, W, C)`` (any dtype, a backend tensor or numpy) mirrored left-right if ``flip``,
    then shifted by ``(dy, dx)`` pixels (content moves down/right for positive), reflect-padded; same
    shape and dtype, as a backend tensor."""
    from keras import ops

    x = ops.convert_to_tensor(x)
    if flip:
        x = ops.flip(x, axis=2)
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    b, h, w, c = ops.shape(x)
    x = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
    return ops.slice(x, [0, p - dy, p - dx, 0], [b, h, w, c])


def tta_logits(logits, x: np.ndarray, mode: str, share: float = 1.0) -> np.ndarray:
    """float32 ``(N, classes)`` logits of uint8 images ``x`` ``(N, 32, 32, 3)`` with test-time augmentation.

    ``logits``: a logits function (see the module docstring). Each image's logits are the mean of
    its views' (:func:`views`), with equal weights (airbench weights the unshifted pair by half;
    equal weights scored a little higher: benchmarks/RESULTS.md, 2026-11-29).
    With ``share`` below 1 only that share of the images, the least confident by the plain pass
    (:func:`uncertain`), gets the other views; the rest keep their plain logits.
    """
    extra = views(mode)
    plain = logits(x)
    if not extra:
        return plain
    idx = uncertain(plain, share)
    xs = x[idx]
    plain[idx] = np.mean([plain[idx]] + [logits(xs, dy, dx, f) for dy, dx, f in extra], axis=0)
    return plain


def tta_predict(logits, x: np.ndarray, mode: str, share: float = 1.0) -> np.ndarray:
    """float32 probabilities ``(N, classes)``: the softmax of :func:`tta_logits`."""
    return softmax(tta_logits(logits, x, mode, share))


class KerasLogits:
    """The logits function of a Keras model ``(B, 32, 32, 3)`` float32 0-255 -> probabilities, on any backend.

    A model with a layer named ``logits`` (the fast nets) is read there, before its softmax; any
    other model gives the log of its probabilities (the same logits up to a constant per image,
    which averaging views shifts by a constant: the same ranking of classes).
    """

    def __init__(self, model, batch_size: int = EVAL_BATCH):
        import keras

        names = {layer.name for layer in model.layers}
        self.from_probs = "logits" not in names
        self.net = model if self.from_probs else keras.Model(model.inputs, model.get_layer("logits").output)
        self.batch_size = batch_size

    def __call__(self, x: np.ndarray, dy: int = 0, dx: int = 0, flip: bool = False) -> np.ndarray:
        from keras import ops

        out = []
        for i in range(0, len(x), self.batch_size):
            xb = ops.cast(view(x[i:i + self.batch_size], dy, dx, flip), "float32")
            out.append(ops.convert_to_numpy(ops.cast(self.net(xb, training=False), "float32")))
        z = np.concatenate(out) if out else np.zeros((0, int(self.net.output_shape[-1])), np.float32)
        return np.log(np.maximum(z, 1e-12)).astype(np.float32) if self.from_probs else z


def uncertain(logits: np.ndarray, share: float) -> np.ndarray:
    """Sorted int indices of the ``round(share * N)`` rows (at least one) of ``logits`` ``(N, classes)``
    whose two most probable classes are closest in softmax probability; all rows for ``share >= 1``.

    The margin picks the images whose prediction augmented views can flip (by the top probability
    instead, the same share scored lower: benchmarks/RESULTS.md, 2026-11-29).
    """
    n = len(logits)
    k = min(n, max(1, round(share * n)))
    if k >= n:
        return np.arange(n)
    p = np.sort(softmax(logits), axis=1)
    margin = p[:, -1] - p[:, -2]
    return np.sort(np.argpartition(margin, k - 1)[:k])
