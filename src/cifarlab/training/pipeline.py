"""Input pipelines: uint8 arrays in memory -> shuffled batches for ``Model.fit``.

Why not hand ``fit`` the numpy arrays? Keras 3's array adapter, once a global seed
is set (``keras.utils.set_random_seed``, which every run does), shuffles into the
*same* order every epoch (checked directly: identical first batches in epochs 1
and 2). On the seed recipe, test set as validation, that cost accuracy: 64.0 %
mean over seeds 0-2 against 65.6 % for the notebook's unseeded code in the same
benchmark run; seed 0 went from 64.4 % (7 epochs) to 66.1 % (9 epochs) with this
module. ``tf.data``'s shuffle with a seed and ``reshuffle_each_iteration`` gives a
new order each epoch that is still the same from run to run.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Batches of ``(uint8 (B, 32, 32, 3), int64 (B,))``; a fresh seeded order every epoch when ``shuffle``.

    The whole split is shuffled (buffer = its length), so each epoch is a
    uniformly random permutation; the last batch may be smaller.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
