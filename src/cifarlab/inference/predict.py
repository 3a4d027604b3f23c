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
    uses one compiled forward pass with a free batch dimension instead, built here, not
    on the first request: a traced ``tf.function`` on TensorFlow, ``jax.jit`` over
    ``stateless_call`` on JAX (batches padded to a power of two, so a few sizes compile),
    the eager model under ``torch.no_grad`` on PyTorch.
    """
    import keras

    shape = [None, *model.input_shape[1:]]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)])
    elif backend == "jax":
        import jax

        values = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        jitted = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])

        def fn(x):
            n = len(x)
            size = 1 << max(n - 1, 0).bit_length()
            padded = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)]) if size > n else x
            return np.asarray(jitted(*values, padded))[:n]
    else:
        import torch

        def fn(x):
            with torch.no_grad():
                return keras.ops.convert_to_numpy(model(x, training=False))

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(fn(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    run(np.zeros([1, *shape[1:]], np.float32))
    return run


def softmax(z: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis of logits ``(N, classes)``, computed stably in the input's dtype."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
