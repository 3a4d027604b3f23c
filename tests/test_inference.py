"""cifarlab.inference: test-time augmentation written once, for any Keras model and the fast loop alike."""

from __future__ import annotations


import numpy as np
import pytest


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_view_mirrors_then_shifts_with_reflected_border(images):
    from keras import ops

    from cifarlab.inference.tta import view

    out = ops.convert_to_numpy(view(images, 1, 1))
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out[:, 1:, 1:], images[:, :-1, :-1])  # moved down and right by one
    np.testing.assert_array_equal(out[:, 0, 1:], images[:, 1, :-1])  # top row mirrored from row 1
    np.testing.assert_array_equal(ops.convert_to_numpy(view(images, -2, 0))[:, :-2], images[:, 2:])
    mirrored = ops.convert_to_numpy(view(images, 0, -1, flip=True))
    np.testing.assert_array_equal(mirrored[:, :, :-1], images[:, :, ::-1][:, :, 1:])  # mirrored, then left by one
    np.testing.assert_array_equal(ops.convert_to_numpy(view(images)), images)


def test_views_by_mode():
    from cifarlab.inference.tta import views

    assert views("none") == [] and views("flip") == [(0, 0, True)]
    assert len(views("flip_translate")) == 5 and (0, 0, False) not in views("flip_translate")
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        views("rotate")


def test_uncertain_picks_the_least_confident_rows():
    from cifarlab.inference.tta import uncertain

    logits = np.array([[5.0, 0.0, 0.0], [0.1, 0.0, -9.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.5, -9.0],
                       [2.0, 2.0, -9.0]], np.float32)
    # Ties between the top two classes first, then the narrowest margins; a third class does not count.
    np.testing.assert_array_equal(uncertain(logits, 0.5), [1, 3, 5])
    np.testing.assert_array_equal(uncertain(logits, 1.0), np.arange(6))
    assert len(uncertain(logits, 0.01)) == 1 and uncertain(logits, 0.01)[0] in (3, 5)  # at least one row


def test_keras_tta_matches_the_fast_loops_compiled_tta(images):
    """The same views and averaging through the Keras model (any backend) and the TF fast loop's own ops."""
    import keras

    from cifarlab.inference.tta import KerasLogits, tta_predict
    from cifarlab.models.fast import build_quick
    from cifarlab.registry import get_recipe
    from cifarlab.training.fast import FastTrainer

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    model = build_quick()
    recipe = get_recipe("quick").with_overrides(tta="flip_translate", tta_share=0.5, whiten_init_images=40, ema_decay=0.0)
    trainer = FastTrainer(model, recipe, x, np.zeros(40, np.int64))  # sets the whitening layer from x
    ours = tta_predict(KerasLogits(model, batch_size=16), x, recipe.options.tta, recipe.options.tta_share)
    np.testing.assert_allclose(ours, trainer.predict_tta(x), atol=1e-5)
    assert not np.allclose(ours, trainer.predict(x), atol=1e-5)  # the views did change something
    plain = tta_predict(KerasLogits(model), x, "none")
    np.testing.assert_allclose(plain, model.predict(x.astype(np.float32), verbose=0), atol=1e-5)


def test_keras_logits_of_a_model_without_a_logits_layer():
    import keras

    from cifarlab.inference.tta import KerasLogits, tta_predict
    from cifarlab.models.seed import build

    keras.utils.set_random_seed(0)
    model = build(num_classes=10)
    x = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    probs = model.predict(x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(tta_predict(KerasLogits(model), x, "none"), probs, atol=1e-5)
    tta = tta_predict(KerasLogits(model), x, "flip")
    assert tta.shape == (8, 10) and np.allclose(tta.sum(axis=1), 1.0, atol=1e-5)
