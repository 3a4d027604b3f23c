"""The fast and quick recipes: models, augmentation, the compiled loop, precision, run directories."""

import json
import zipfile

import numpy as np
import pytest

from builders import cifar10_binary


def _has_bf16_flags() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "").split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


# --- augmentation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_flip_where_mirrors_only_the_masked_images(images):
    import tensorflow as tf

    from cifarlab.training.augment import flip_where

    mask = np.array([True, False, True, False, False, True])
    out = flip_where(tf.constant(images), tf.constant(mask)).numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out[mask], images[mask][:, :, ::-1])
    np.testing.assert_array_equal(out[~mask], images[~mask])


def test_random_translate_gives_shifted_crops_within_the_pad(images):
    import tensorflow as tf

    from cifarlab.training.augment import pad_reflect, random_translate

    gen = tf.random.Generator.from_seed(1)
    x = np.repeat(images[:1], 64, axis=0)
    out = random_translate(tf.constant(x), 2, gen).numpy()
    assert out.dtype == np.uint8 and out.shape == x.shape
    padded = pad_reflect(tf.constant(images[:1]), 2).numpy()[0]
    seen = set()
    for img in out:  # every output is one of the 25 crops of the padded image
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(img, padded[dy:dy + 32, dx:dx + 32])]
        assert match
        seen.add(match[0])
    assert len(seen) > 5  # and they vary


def test_alternating_flip_inverts_every_other_epoch():
    import tensorflow as tf

    from cifarlab.training.augment import alternating_flip

    bits = tf.constant([True, False, True])
    np.testing.assert_array_equal(alternating_flip(bits, 0).numpy(), [True, False, True])
    np.testing.assert_array_equal(alternating_flip(bits, 1).numpy(), [False, True, False])
    np.testing.assert_array_equal(alternating_flip(bits, 4).numpy(), [True, False, True])


# --- precision ------------------------------------------------------------------------------


def test_auto_precision_resolves_by_cpu_flags(monkeypatch):
    import tensorflow as tf

    from cifarlab.training import precision

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU decides auto precision here")
    assert precision.resolve("auto") == ("bf16" if _has_bf16_flags() else "fp32")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve("auto") == "fp32"


def test_auto_is_bf16_on_this_cpu():
    from cifarlab.training import precision

    if not _has_bf16_flags():
        pytest.skip("this CPU has neither AMX nor AVX512-BF16")
    assert precision.resolve("auto") == "bf16"


# --- recipes and models ---------------------------------------------------------------------


def test_fast_is_the_default_recipe_and_seed_is_unchanged():
    from cifarlab.cli import build_parser
    from cifarlab.registry import get_recipe
    from cifarlab.recipes import FitOptions
    from cifarlab.training.train import TrainConfig

    assert TrainConfig().recipe == "fast"
    assert build_parser().parse_args(["train"]).recipe == "fast"
    seed = get_recipe("seed")
    assert (seed.trainer, seed.optimizer, seed.learning_rate, seed.batch_size, seed.epochs, seed.precision) == (
        "fit", "adam", 1e-3, 32, 15, "fp32")
    assert seed.options == FitOptions(early_stopping_patience=2, monitor="val_loss", restore_best_weights=False)
    for name in ("fast", "quick"):
        r = get_recipe(name)
        assert r.trainer == "fast" and r.precision == "auto" and r.options.flip == "alternating"
        assert r.options.tta != "none"


@pytest.mark.parametrize("name", ["fast", "quick"])
def test_models_build_without_lambda_and_output_probabilities(name):
    import keras

    from cifarlab.registry import get_model

    model = get_model(name).build(num_classes=10)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    probs = model.predict(np.full((2, 32, 32, 3), 128.0, np.float32), verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_whitening_init_decorrelates_patches(small_archive):
    from cifarlab.data import load_dataset
    from cifarlab.models.fast import build_quick, init_whitening, patches

    x = load_dataset(str(small_archive), validate_on="test", limit=1000, quiet=True).x_train
    model = build_quick()
    init_whitening(model, x)
    layer = model.get_layer("whiten")
    w = np.asarray(layer.kernel).reshape(12, 24)
    out = patches(x) @ w + np.asarray(layer.bias)
    cov = np.cov(out[:, :12], rowvar=False)
    var = np.diag(cov)  # eigenvalue / (eigenvalue + eps): 1 for strong components, less for the faintest
    assert var.max() <= 1.0 + 1e-6 and np.sort(var)[6:].min() > 0.95
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.02  # and decorrelated


@pytest.fixture(scope="module")
def slice_data(small_archive):
    from cifarlab.data import load_dataset

    # 512 training images; x_val/x_test are the slice's 500 test images (evaluated every epoch).
    return load_dataset(str(small_archive), validate_on="test", limit=512, quiet=True)


@pytest.mark.parametrize("name", ["fast", "quick"])
def test_a_few_steps_lower_the_loss(name, slice_data):
    import keras

    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision
    from cifarlab.training.fast import FastTrainer

    precision.apply(precision.resolve("auto"))
    try:
        keras.utils.set_random_seed(0)
        recipe = get_recipe(name).with_overrides(batch_size=128, learning_rate=0.2, whiten_init_images=512)
        model = get_model(recipe.model).build(num_classes=10)
        trainer = FastTrainer(model, recipe, slice_data.x_train, slice_data.y_train)
        res = trainer.fit(2)  # 2 epochs of 4 steps: the second epoch's mean loss is already below the first's
        losses = [row["loss"] for row in res.history]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]
        assert res.steps == 2 * 4 and res.images == 8 * 128
        # The loop's own forward pass and the Keras model agree on the trained weights.
        x = slice_data.x_test[:64]
        ours, keras_probs = trainer.predict(x), model.predict(x.astype(np.float32), verbose=0)
        assert (ours.argmax(1) == keras_probs.argmax(1)).mean() >= 0.95
        np.testing.assert_allclose(ours, keras_probs, atol=0.05)
        tta = trainer.predict_tta(x)
        assert tta.shape == (64, 10)
        np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
        # With a share, the least confident quarter gets exactly the full TTA, the rest the plain pass.
        trainer.recipe = recipe.with_overrides(tta_share=0.25)
        part = trainer.predict_tta(x)
        top2 = np.sort(ours, axis=1)[:, -2:]
        low = np.argsort(top2[:, 1] - top2[:, 0])[:16]
        rest = np.setdiff1d(np.arange(64), low)
        np.testing.assert_allclose(part[low], tta[low], atol=1e-6)
        np.testing.assert_allclose(part[rest], ours[rest], atol=1e-6)
    finally:
        precision.apply("fp32")


def test_quick_run_directory_records_precision_and_tta(tmp_path):
    from cifarlab.models.io import load_model
    from cifarlab.training.train import train

    archive, _ = cifar10_binary(tmp_path / "tiny.tar.gz", n_per_batch=40, n_test=30)
    out = tmp_path / "run"
    run = train(recipe="quick", data=str(archive), epochs=2, batch_size=50, validate_on="test", out=str(out),
                quiet=True)
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == ("bf16" if _has_bf16_flags() else config["precision"])
    assert config["recipe"]["name"] == "quick" and config["recipe"]["trainer"] == "fast"
    metrics = json.loads((out / "metrics.json").read_text())
    # the headline is the figure the recipe is defined by: TTA, with the plain one beside it
    assert metrics["summary"] == {"test_accuracy": metrics["tta_test_accuracy"], "evaluation": "tta",
                                  "plain_test_accuracy": metrics["test_accuracy"]}
    from cifarlab.evaluation.report import build_report

    header = build_report(out).read_text().split("</header>")[0]
    assert f"{metrics['tta_test_accuracy']:.2%} with test-time augmentation".replace("%", " %") in header
    assert f"({metrics['test_accuracy']:.2%} plain)".replace("%", " %") in header
    for key in ("test_accuracy", "test_loss", "tta_test_accuracy", "tta_test_loss", "accuracy_note",
                "per_class", "confusion_matrix", "precision"):
        assert key in metrics
    assert len(metrics["confusion_matrix"]) == 10
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(history) == 3
    for png in ("accuracy.png", "loss.png", "confusion.png", "predictions.png"):
        assert (out / png).stat().st_size > 0
    with zipfile.ZipFile(out / "model.keras") as z:
        assert "cifarlab.json" in z.namelist()
    model, meta = load_model(out)  # safe mode: no Lambda layers inside
    assert meta["recipe"] == "quick" and len(meta["class_names"]) == 10
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert run.metrics["test_accuracy"] == metrics["test_accuracy"]
    # The same run-directory writer as Keras' fit path: the report reads these instead of predicting again.
    from cifarlab.evaluation.report import load_predictions

    y, saved = load_predictions(out / "test_predictions.npz")
    assert saved.shape == (30, 10) and float((saved.argmax(1) == y).mean()) == metrics["test_accuracy"]
    assert {p.name for p in out.iterdir()} >= set(
        ["config.json", "model.keras", "history.csv", "metrics.json", "accuracy.png", "loss.png", "confusion.png",
         "predictions.png", "test_predictions.npz", "report.html"])


def test_dirac_init_passes_input_channels_through():
    from cifarlab.models.fast import build_quick

    k = np.asarray(build_quick(dirac=True).get_layer("block2_conv1").kernel)  # (3, 3, 32, 64)
    np.testing.assert_array_equal(k[1, 1, :, :32], np.eye(32))
    assert not k[0, :, :, :32].any() and k[:, :, :, 32:].any()


# --- the optimiser's parts ------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fused", "native"])
@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_activation_variants_match_tensorflow_value_and_gradient(name, variant, monkeypatch):
    """Whichever variant the autotuner picks computes TensorFlow's activation, in the input's dtype."""
    import tensorflow as tf

    from cifarlab.training import autotune, ops

    monkeypatch.setattr(autotune, "choose", lambda key, candidates, default, reps=3: variant)
    ref = {"gelu": lambda v: tf.nn.gelu(v, approximate=False), "silu": tf.nn.silu}[name]
    x = tf.constant(np.linspace(-6, 6, 997), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = ops.activation(name, x), ref(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(theirs, x), atol=1e-6)
    xb = tf.cast(x, tf.bfloat16)  # bfloat16 in, bfloat16 out and back
    with tf.GradientTape() as tape:
        tape.watch(xb)
        y = ops.activation(name, xb)
    assert y.dtype == tf.bfloat16 and tape.gradient(y, xb).dtype == tf.bfloat16


@pytest.mark.parametrize("method", ["onednn", "matmul"])
@pytest.mark.parametrize("size, channels", [(3, 8), (7, 256), (15, 16)])
def test_conv_kernel_gradient_methods_match_tensorflows(size, channels, method, monkeypatch):
    """Both kernel-gradient methods of the 3x3 convolutions give TensorFlow's values and dtypes."""
    import tensorflow as tf

    from cifarlab.training import autotune
    from cifarlab.training.ops import conv2d

    asked = []
    monkeypatch.setattr(autotune, "choose", lambda key, candidates, default, reps=3: asked.append(key) or method)
    x = tf.random.stateless_normal([5, size, size, channels], seed=[1, 2])
    k = tf.random.stateless_normal([3, 3, channels, 6], seed=[3, 4])
    dy = tf.random.stateless_normal([5, size, size, 6], seed=[5, 6])  # a loss that weights every output
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, k])
        ours, theirs = conv2d(x, k, (1, 1), "SAME"), tf.nn.conv2d(x, k, 1, "SAME")
        loss_ours, loss_theirs = tf.reduce_sum(ours * dy), tf.reduce_sum(theirs * dy)
    assert not asked  # a forward pass measures nothing
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss_ours, [x, k]), tape.gradient(loss_theirs, [x, k])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert asked == [f"conv3x3_kernel_grad/float32/5x{size}x{size}x{channels}->6"]
    xb, kb = tf.cast(x, tf.bfloat16), tf.cast(k, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch([xb, kb])
        y = conv2d(xb, kb, (1, 1), "SAME")
    assert [g.dtype for g in tape.gradient(y, [xb, kb])] == [tf.bfloat16, tf.bfloat16]


def _trainer(slice_data, **changes):
    import keras

    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training.fast import FastTrainer

    keras.utils.set_random_seed(0)
    recipe = get_recipe("quick").with_overrides(batch_size=128, whiten_init_images=512, **changes)
    return FastTrainer(get_model("quick").build(num_classes=10), recipe, slice_data.x_train, slice_data.y_train)


def test_muon_steps_are_orthogonal_and_keep_the_kernel_norm(slice_data):
    import tensorflow as tf

    trainer = _trainer(slice_data, optimizer="muon", muon_lr=0.1, muon_momentum=0.0)
    i = next(i for i, v in enumerate(trainer.vars) if v.path == "block2_conv1/kernel")  # (3, 3, 32, 64)
    v, buf = trainer.vars[i], trainer.bufs[i]
    assert trainer.is_muon[i] and not any(m for m, w in zip(trainer.is_muon, trainer.vars) if len(w.shape) < 4)
    before = np.array(v)
    g = tf.random.stateless_normal(v.shape, seed=[1, 2]) * tf.linspace(0.1, 10.0, 64)  # badly conditioned
    trainer._muon_update(v, g, buf, tf.constant(0.1))
    c_out = v.shape[-1]
    normalised = before * np.sqrt(c_out) / np.linalg.norm(before)
    update = (normalised - np.array(v)) / 0.1
    s = np.linalg.svd(update.reshape(-1, c_out), compute_uv=False)
    # 3 Newton-Schulz steps: the update's singular values land in about [0.5, 1.5] except for
    # directions in which the gradient was nearly nil, whatever the gradient's own spread.
    s_grad = np.linalg.svd(np.array(g).reshape(-1, c_out), compute_uv=False)
    assert s_grad.max() / np.percentile(s_grad, 10) > 10
    assert np.percentile(s, 10) > 0.3 and s.max() < 1.7
    # The step moves along the gradient: update . g > 0.
    assert float(np.sum(update * np.array(g))) > 0


def test_the_whitening_bias_trains_for_its_epochs_then_stays_put(slice_data):
    """After ``whiten_bias_epochs`` the step no longer asks for that bias' gradient; the rest still trains."""
    trainer = _trainer(slice_data, whiten_bias_epochs=1)
    bias, kernel = trainer.model.get_layer("whiten").bias, trainer.model.get_layer("block1_conv1").kernel
    start = np.array(bias)
    seen = []
    trainer.fit(2, on_epoch=lambda row: seen.append((np.array(bias), np.array(kernel))))
    (bias1, kernel1), (bias2, kernel2) = seen
    assert np.abs(bias1 - start).max() > 0  # trained in epoch 1 ...
    np.testing.assert_array_equal(bias2, bias1)  # ... frozen in epoch 2
    assert np.abs(kernel2 - kernel1).max() > 0


def test_a_fractional_number_of_epochs_stops_part_way_through_the_last(slice_data):
    trainer = _trainer(slice_data)
    spe = trainer.steps_per_epoch
    res = trainer.fit(1.5)
    assert res.steps == round(1.5 * spe) and len(res.history) == 2
    assert res.images == res.steps * trainer.batch_size


def test_progressive_resizing_trains_small_windows_first_then_whole_images(slice_data):
    """``crops``: the first part of a run trains on random windows of the images, growing, the rest on whole
    (translated) images; the Keras model, 32x32 in, predicts as before."""
    import tensorflow as tf

    from cifarlab.models.fast import model_flops

    trainer = _trainer(slice_data, crops=((24, 0.25), (28, 0.5)))
    spe = trainer.steps_per_epoch
    q, half = round(0.25 * spe), round(0.5 * spe)
    assert [trainer._crop_at(s, spe) for s in (0, q - 1, q, half - 1, half, spe - 1)] == [24, 24, 28, 28, 0, 0]
    assert [trainer._crop_at(s, 4 * spe) for s in (spe - 1, spe)] == [24, 28]  # fractions of the run, however long
    flops = [model_flops(trainer.model, size) for size in (24, 28, 32)]
    assert flops[0] < flops[1] < flops[2]
    assert trainer.train_flops(spe) == 3 * 128 * (q * flops[0] + (half - q) * flops[1] + (spe - half) * flops[2])
    assert trainer.train_flops(half, q, spe) == 3 * 128 * (half - q) * flops[1]  # a stretch of the run
    x = slice_data.x_train[:16]
    flips, corners = trainer._draws(16, 24)
    out = trainer._augment(tf.constant(x), tf.zeros([16], tf.bool), 0, (flips, corners), 24).numpy()
    corners = corners.numpy()
    assert out.shape == (16, 24, 24, 3) and corners.min() >= 0 and corners.max() <= 8
    assert len({tuple(c) for c in corners.T}) > 1  # the windows move
    for i, (dy, dx) in enumerate(corners.T):
        np.testing.assert_array_equal(out[i], x[i, dy:dy + 24, dx:dx + 24])
    whole = trainer._augment(tf.constant(x), tf.zeros([16], tf.bool), 0, trainer._draws(16))
    assert whole.shape == (16, 32, 32, 3)
    res = trainer.fit(1, slice_data.x_val, slice_data.y_val)
    assert np.isfinite(res.history[0]["loss"]) and res.steps == trainer.steps_per_epoch
    assert trainer._step.experimental_get_tracing_count() == 3  # one step per size
    assert trainer.predict(slice_data.x_val).shape == (len(slice_data.y_val), 10)


def test_a_timed_step_trains_the_images_it_is_given(slice_data):
    """The benchmarks' single step: it trains (weights and whitening bias move) on exactly its batch."""
    trainer = _trainer(slice_data)
    bias, kernel = trainer.model.get_layer("whiten").bias, trainer.model.get_layer("block1_conv1").kernel
    before = np.array(bias), np.array(kernel)
    trainer.timed_step(np.arange(128))
    assert float(trainer.seen.numpy()) == 128
    trainer.timed_step(np.arange(128, 256), wait=False)
    assert float(trainer.seen.numpy()) == 256  # reading it waits for the queued step
    assert np.abs(np.array(bias) - before[0]).max() > 0 and np.abs(np.array(kernel) - before[1]).max() > 0


def test_keras_fit_recipes_refuse_a_fractional_number_of_epochs():
    from cifarlab.registry import get_recipe

    with pytest.raises(ValueError, match="whole epochs"):
        get_recipe("seed").with_overrides(epochs=2.5)
    assert get_recipe("fast").with_overrides(epochs=8.5).epochs == 8.5


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_recipes_refuse_a_tta_share_outside_0_1(share):
    from cifarlab.registry import get_recipe

    with pytest.raises(ValueError, match="tta_share"):
        get_recipe("fast").with_overrides(tta_share=share)


def test_weight_averaging_evaluates_the_average_and_leaves_it_in_the_model(slice_data):
    import tensorflow as tf

    trainer = _trainer(slice_data, ema_decay=0.9)
    head = trainer.model.get_layer("head").kernel
    i = next(i for i, v in enumerate(trainer.averaged) if v is head)
    during = []

    def look(row):  # after the epoch's evaluation (and a TTA pass): the model holds the trained weights again
        raw = np.array(head)
        trainer.predict_tta(slice_data.x_val[:64])
        np.testing.assert_array_equal(np.array(head), raw)
        assert not trainer.ema_in_model
        during.append((raw, np.array(trainer.ema[i])))

    trainer.fit(2, slice_data.x_val, slice_data.y_val, on_epoch=look)
    for raw, avg in during:
        assert np.abs(raw - avg).max() > 0  # averaging changed something
    np.testing.assert_allclose(np.array(head), np.array(trainer.ema[i]))  # the result is the average
    probs = trainer.predict(slice_data.x_val)  # evaluating now swaps nothing
    np.testing.assert_allclose(np.array(head), np.array(trainer.ema[i]))
    assert probs.shape == (len(slice_data.y_val), 10)
    assert float(trainer.ema_count.numpy()) == 2 * trainer.steps_per_epoch
    assert isinstance(trainer.ema[i], tf.Variable)
