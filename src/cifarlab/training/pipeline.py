"""Input pipelines: uint8 arrays in memory -> shuffled batches for ``Model.fit``.

Why not hand ``fit`` the numpy arrays? Keras 3's array adapter, once a global seed
is set (``keras.utils.set_random_seed``, which every run does), shuffles into the
*same* order every epoch (checked directly: identical first batches in epochs 1
and 2), which cost the seed recipe 1.6 points (benchmarks/RESULTS.md). Both pipelines
here draw a new order each epoch that is still the same from run to run: ``tf.data``
on TensorFlow, a :class:`keras.utils.PyDataset` on the other backends.
"""

from __future__ import annotations

import keras
import numpy as np


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Batches of ``(uint8 (B, 32, 32, 3), int64 (B,))``; a fresh seeded order every epoch when ``shuffle``.

    The whole split is shuffled, so each epoch is a uniformly random permutation; the
    last batch may be smaller.
    """
    if keras.backend.backend() != "tensorflow":
        return _Batches(x, y, batch_size, shuffle, seed)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size, shuffle, seed):
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        return self.x[idx], self.y[idx]

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))
