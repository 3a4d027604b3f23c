"""Probabilities from a Keras model: whole arrays, or a compiled callable for many small calls."""

from __future__ import annotations

import numpy as np


def predict_arrays(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Probabilities ``(N, K)`` float32 for uint8 or float pixels ``(N, 32, 32, 3)`` in 0-255."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0), dtype=np.float32)


def compiled_predictor(model):
    """A fast callable ``(N, 32, 32, 3) uint8 -> (N, K) float32`` probabilities for repeated small calls.

    ``model.predict`` sets up a data pipeline on every call (milliseconds); the
    HTTP service calls the model hundreds of times a second on a few images, so it
    uses one traced ``tf.function`` with a free batch dimension instead (traced
    once, here, not on the first request).
    """
    import tensorflow as tf

    shape = [None, *model.input_shape[1:]]
    fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)])

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(fn(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    run(np.zeros([1, *shape[1:]], np.float32))
    return run


def softmax(z: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis of logits ``(N, classes)``, computed stably in the input's dtype."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
