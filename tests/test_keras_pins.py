"""What cifarlab relies on in Keras where Keras has no public API for it; a Keras upgrade that moves it fails here.

- ``keras.src.random.seed_generator.global_seed_generator``: the generator unseeded ``keras.random``
  calls draw from; a checkpoint saves and restores its state (``training.checkpoint._rng_state``).
- ``keras.src.backend.tensorflow.trainer.reduce_per_replica`` and ``_collective_all_reduce_multi_worker``:
  ``training.distribute`` replaces the first to work around keras-team/keras#20585 (scalar metrics
  averaged along axis 0 under MultiWorkerMirroredStrategy).
"""

from __future__ import annotations

import numpy as np


def test_a_checkpoint_restores_the_global_keras_seed_generator():
    import keras

    from cifarlab.training import checkpoint

    keras.utils.set_random_seed(3)
    keras.random.uniform((2,))
    state = checkpoint._rng_state()
    assert "keras" in state  # the private generator was found (without it the state silently lacks it)
    first = keras.ops.convert_to_numpy(keras.random.uniform((4,)))
    keras.random.uniform((7,))
    checkpoint._set_rng_state(state)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.random.uniform((4,))), first)


def test_the_multiworker_metric_patch_still_finds_what_it_replaces():
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from cifarlab.training import distribute

    original = tf_trainer.reduce_per_replica
    assert callable(original) and callable(tf_trainer._collective_all_reduce_multi_worker)
    try:
        distribute._patch_keras_for_multiworker()
        patched = tf_trainer.reduce_per_replica
        assert patched is not original and patched._cifarlab_patched
        distribute._patch_keras_for_multiworker()  # idempotent
        assert tf_trainer.reduce_per_replica is patched
        # Outside a multi-worker strategy it is Keras' own function.
        strategy = tf.distribute.get_strategy()
        assert not tf_trainer._collective_all_reduce_multi_worker(strategy)
        value = tf.constant(2.5)
        assert float(patched(value, strategy, "auto")) == float(original(value, strategy, "auto")) == 2.5
    finally:
        tf_trainer.reduce_per_replica = original


def test_fit_resumes_at_the_checkpoints_epoch_through_the_public_initial_epoch(tmp_path):
    import keras

    from cifarlab.models.seed import build
    from cifarlab.training import checkpoint
    from cifarlab.training.signals import StopRequest

    model = build(num_classes=10)
    ckpt = checkpoint.Checkpointer(tmp_path, StopRequest())
    assert ckpt.initial_epoch(5) == 0  # no checkpoint: from the start
    checkpoint.write(tmp_path, model, {"epoch": 2, "step": 3, "stopped_early": False, "history": []})
    assert ckpt.initial_epoch(5) == 2  # the third epoch starts over
    checkpoint.write(tmp_path, model, {"epoch": 2, "step": 0, "stopped_early": True, "history": []})
    assert ckpt.initial_epoch(5) == 5  # early stopping had ended it
    # Keras' fit takes initial_epoch as the first epoch it runs.
    seen = []
    tiny = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    tiny.compile(optimizer="sgd", loss="mse")
    tiny.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=4, initial_epoch=2, verbose=0,
             callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))])
    assert seen == [2, 3]


def test_the_command_lines_tensorflow_start_up_skips_jax_and_leaves_it_importable():
    """TensorFlow imports JAX where it is installed (``tensorflow.lite.python.util`` tries ``from jax import
    jit``); cifarlab's quiet import refuses it for the duration (``cifarlab._tf``). A TensorFlow upgrade that
    stops trying fails the first check, and the refusal may go."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "from cifarlab._tf import import_quietly\n"
            "import_quietly()\n"
            "import keras\n"
            "assert keras.backend.backend() == 'tensorflow'\n"
            "util = sys.modules['tensorflow.lite.python.util']\n"
            "assert util._jit is None and 'jax' not in sys.modules  # TensorFlow tried, and was refused\n"
            "import jax\n"
            "assert jax.numpy.add(1, 2) == 3  # importable again afterwards\n")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
