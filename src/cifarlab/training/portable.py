"""The fast recipes' training loop, written once for every Keras backend (TensorFlow, JAX, PyTorch).

Used by ``trainer="fast"`` recipes (``fast``, ``quick``) when the backend is not TensorFlow; on
TensorFlow :class:`cifarlab.training.fast.FastTrainer` (fused bf16 batch norm, a hand-written
conv gradient, ``tf.distribute``) is the faster path behind the same interface
(:func:`make_trainer`). One step, in ``keras.ops`` and Keras layers:

- the training images stay on the device as one uint8 tensor; a step receives the int32
  indices of its batch and, per image, the rows and columns to read (:func:`view_indices`:
  the alternating flip, the reflect-padded translation and the progressive-resizing windows
  as index arithmetic drawn on the host by a seeded numpy generator), and gathers them;
- the model's logits come from ``stateless_call`` on the weights passed in; the loss is
  label-smoothed cross-entropy in float32;
- the update is :class:`cifarlab.training.muon.Muon` (``stateless_apply``), the whitening
  kernel frozen and its bias trained for the first ``whiten_bias_epochs`` only;
- the weight average (``ema_decay``) and the epoch's loss/accuracy sums are part of the state.

Only the gradient and compilation differ per backend (:mod:`cifarlab.backend`):
``jax.jit`` + ``jax.value_and_grad``, ``tf.function`` + ``GradientTape``, PyTorch autograd.
The state is a tuple of lists of backend tensors ``(trained, non_trainable, optimizer, ema,
sums)``; the Keras variables are written from it only for checkpoints, evaluation and the end.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time

import keras
import numpy as np
from keras import ops

from cifarlab.inference.predict import softmax
from cifarlab.inference.tta import EVAL_BATCH, tta_predict
from cifarlab.models.fast import init_whitening, logits_model
from cifarlab.training.loop import FastResult, crop_at, run, total_steps, train_flops

# -- augmentation as index arithmetic (host side) and one gather (in the step) ------------------

def reflect(j: np.ndarray, size: int) -> np.ndarray:
    """Indices ``j`` (any ints, within one image size of the border) reflected into ``0..size-1``
    as TensorFlow's REFLECT padding does (the edge pixel is not repeated)."""
    j = np.abs(j)
    return np.where(j > size - 1, 2 * (size - 1) - j, j)


def view_indices(size: int, flips: np.ndarray, dy: np.ndarray, dx: np.ndarray, window: int = 0):
    """Rows and columns (int32 ``(n, out)`` each) to read of ``n`` images ``size`` x ``size`` for their views.

    ``flips`` bool ``(n,)``: mirror left-right first. Without ``window`` a view is the whole image
    shifted by ``(dy, dx)`` pixels (int ``(n,)``; content moves down/right for positive), reflect-padded;
    with it, the ``window`` x ``window`` window whose corner is at ``(dy, dx)`` (of the flipped image).
    """
    r = np.arange(window or size)
    if window:
        rows, cols = dy[:, None] + r, dx[:, None] + r
    else:
        rows, cols = reflect(r - dy[:, None], size), reflect(r - dx[:, None], size)
    cols = np.where(flips[:, None], size - 1 - cols, cols)
    return rows.astype(np.int32), cols.astype(np.int32)


def gather_views(x, rows, cols):
    """Images ``x`` ``(n, H, W, C)`` read at ``rows`` ``(n, h)`` and ``cols`` ``(n, w)`` -> ``(n, h, w, C)``, same dtype."""
    x = ops.take_along_axis(x, rows[:, :, None, None], axis=1)
    return ops.take_along_axis(x, cols[:, None, :, None], axis=2)


def label_smoothed_loss(logits, y, num_classes: int, eps: float):
    """Mean cross-entropy of float32 logits ``(B, K)`` against int labels ``(B,)`` smoothed by ``eps``."""
    logp = ops.log_softmax(logits, axis=-1)
    target = ops.one_hot(y, num_classes) * (1 - eps) + eps / num_classes
    return -ops.mean(ops.sum(target * logp, axis=1))


class PortableTrainer:
    """Train ``model`` (from :mod:`cifarlab.models.fast`) on uint8 images by ``recipe``, on any backend.

    The interface of :class:`cifarlab.training.fast.FastTrainer`: ``x_train`` uint8
    ``(N, 32, 32, 3)``, ``y_train`` int ``(N,)``; :meth:`fit`, then :meth:`predict` /
    :meth:`predict_tta` for float32 probabilities. ``placement`` (``training.distribute.Placement``)
    of kind ``dataparallel`` (JAX) splits each step's batch over its devices.
    """

    checkpoint_kind = "portable"  # loop.Trainer: the "trainer" of its checkpoints
    agrees_on_stop = False  # one process, whatever its devices, stops on its own signal

    def __init__(self, model: keras.Model, recipe, x_train: np.ndarray, y_train: np.ndarray, seed: int = 0,
                 placement=None):
        from cifarlab.errors import CifarlabError
        from cifarlab.backend import glue

        if recipe.optimizer not in ("sgd", "muon"):
            raise CifarlabError(f"the fast loop trains with 'sgd' or 'muon', not {recipe.optimizer!r}")
        self.glue = glue()
        self.distribution = placement.strategy if placement is not None and placement.kind == "dataparallel" else None
        self.model, self.recipe = model, recipe
        self.net = logits_model(model)
        self.num_classes = int(model.output_shape[-1])
        n = len(y_train)
        self.batch_size = min(recipe.batch_size, n)
        replicas = placement.replicas if self.distribution is not None else 1
        if self.batch_size % replicas:
            raise CifarlabError(f"the batch of {self.batch_size} images does not split evenly over {replicas} "
                                f"devices; choose a --batch-size that is a multiple of {replicas}")
        self.steps_per_epoch = n // self.batch_size
        self.size = x_train.shape[1]
        self.n = n
        self._whiten_images = x_train if recipe.options.whiten_init_images else None
        self._seed(seed)
        self.x, self.y = self.glue.place((x_train, np.asarray(y_train, np.int32)), self.distribution)

        # Parameter groups: the whitening kernel is fixed by its initialisation (not trained at all);
        # the optimizer groups the rest by shape (training.muon).
        tv = self.net.trainable_variables
        self.frozen_at = [i for i, v in enumerate(tv) if v.path.startswith("whiten/") and v.path.endswith("kernel")]
        self.trained_vars = [v for i, v in enumerate(tv) if i not in self.frozen_at]
        self.whiten_bias = {v.path for v in self.trained_vars if v.path.startswith("whiten/")}
        self.stat_vars = list(self.net.non_trainable_variables)  # batch-norm running statistics
        self.optimizer, self._total = None, None  # built by fit(), whose epochs set the schedule
        self.state = None
        self.ema_in_model = False
        self._forward = self.glue.compile_forward(self._eval_logits)

    def _seed(self, seed: int) -> None:
        """The random draws of a run: the same, in the same order, as the TensorFlow loop's
        (whitening sample, then flip bits), and the augmentation's generator."""
        n = self.n
        self.rng = np.random.default_rng(seed)
        if self._whiten_images is not None:
            sample = self.rng.choice(n, min(n, self.recipe.options.whiten_init_images), replace=False)
            init_whitening(self.model, self._whiten_images[np.sort(sample)])
        self.flip_bits = self.rng.integers(0, 2, n).astype(bool)
        self.aug_rng = np.random.default_rng([seed, 1])  # flips (random) and translations / windows

    def restart(self, weights: list[np.ndarray], seed: int) -> None:
        """Start a new run on the same data with ``weights`` (``model.get_weights()`` of a freshly built
        model) and ``seed``, keeping what is compiled: a benchmark times its runs after a warm-up one
        (as airbench does), and a second ``fit`` of the same length compiles nothing."""
        self.model.set_weights(weights)
        self._seed(seed)
        self.state = None

    # -- the step, in keras.ops ---------------------------------------------------------------

    def _all_trainable(self, trained, frozen):
        values = list(trained)
        for i, f in zip(self.frozen_at, frozen):
            values.insert(i, f)
        return values

    def _train_step(self, state, frozen, x, y, idx, rows, cols, whiten_bias_on: bool = True):
        trained, stats, opt, ema, sums = state
        xb = gather_views(ops.take(x, idx, axis=0), rows, cols)
        yb = ops.take(y, idx, axis=0)
        if self.distribution is not None:  # the batch split over the devices along its first axis
            from keras.distribution import distribute_tensor

            xb = distribute_tensor(xb, self.distribution.get_data_layout(xb.shape))
            yb = distribute_tensor(yb, self.distribution.get_data_layout(yb.shape))

        def loss_fn(values):
            logits, new_stats = self.net.stateless_call(self._all_trainable(values, frozen), stats,
                                                        ops.cast(xb, "float32"), training=True)
            logits = ops.cast(logits, "float32")
            return label_smoothed_loss(logits, yb, self.num_classes, self.recipe.options.label_smoothing), (logits, new_stats)

        (loss, (logits, stats)), grads = self.glue.value_and_grad(loss_fn)(trained)
        self.optimizer.frozen = set() if whiten_bias_on else self.whiten_bias  # read as the step is traced
        trained, opt = self.glue.apply(self.optimizer, self.trained_vars, opt, grads, trained)
        if ema:
            t = ops.cast(opt[self._iterations_at], "float32")
            k = ops.minimum(self.recipe.options.ema_decay, (1.0 + t) / (10.0 + t))
            ema = [k * e + (1.0 - k) * ops.cast(v, "float32") for e, v in zip(ema, [*trained, *stats])]
        n = ops.cast(ops.shape(yb)[0], "float32")
        correct = ops.sum(ops.cast(ops.cast(ops.argmax(logits, axis=1), "int32") == ops.cast(yb, "int32"), "float32"))
        sums = sums + ops.stack([loss * n, correct, n])
        return trained, stats, opt, ema, sums

    def _eval_logits(self, trainable, stats, x, rows, cols):
        xb = ops.cast(gather_views(x, rows, cols), "float32")
        return ops.cast(self.net.stateless_call(trainable, stats, xb, training=False)[0], "float32")

    # -- state between the Keras variables and the step -----------------------------------------

    def _build(self, total: int) -> None:
        from cifarlab.training.muon import from_recipe

        if self.optimizer is None or self._total != total:
            self.optimizer, self._total = from_recipe(self.recipe, total), total
            self.optimizer.build(self.trained_vars)
            self._step = self.glue.compile_step(self._train_step)  # traced anew: it reads this optimizer
        else:  # the same schedule, started afresh: step counter and momentum at zero
            for v in self.optimizer.variables:
                v.assign(np.zeros(v.shape, v.dtype))
        self._iterations_at = next(i for i, v in enumerate(self.optimizer.variables)
                                   if v is self.optimizer.iterations)
        self.frozen = self.glue.place([v.value for i, v in enumerate(self.net.trainable_variables)
                                       if i in self.frozen_at], self.distribution)
        self._state_from_variables(ema=None)

    def _state_from_variables(self, ema, sums=(0.0, 0.0, 0.0)) -> None:
        """The step's state from the Keras variables (weights, statistics, optimizer), ``ema`` (arrays or None:
        start the average at the weights) and the epoch's ``sums``."""
        def np_(vs):
            return [keras.ops.convert_to_numpy(v.value) for v in vs]

        trained, stats = np_(self.trained_vars), np_(self.stat_vars)
        if ema is None:
            ema = [a.astype(np.float32) for a in trained + stats] if self.recipe.options.ema_decay else []
        self.state = self.glue.place((trained, stats, np_(self.optimizer.variables), list(ema),
                                      np.asarray(sums, np.float32)), self.distribution)

    def _write_variables(self, averaged: bool = False) -> None:
        """Copy the state into the Keras variables: the weights (the average, with ``averaged``) and the optimizer."""
        trained, stats, opt, ema, _ = self.state
        values = ema if averaged and ema else [*trained, *stats]
        for v, value in zip([*self.trained_vars, *self.stat_vars], values):
            v.assign(ops.cast(value, v.dtype))
        for v, value in zip(self.optimizer.variables, opt):
            v.assign(value)

    def sums(self) -> np.ndarray:
        """float64 ``(3,)``: the epoch's summed loss, correct predictions and images so far (waits for the steps)."""
        return np.asarray(ops.convert_to_numpy(self.state[4]), np.float64)

    # -- host side ----------------------------------------------------------------------------

    def _eval_values(self):
        trained, stats, _, ema, _ = self.state if self.state is not None else (None,) * 5
        if trained is None:  # before fit: what the model holds
            return ([v.value for v in self.net.trainable_variables], [v.value for v in self.stat_vars])
        if ema:
            trained, stats = ema[:len(trained)], ema[len(trained):]
        return self._all_trainable(trained, self.frozen), stats

    def logits(self, x: np.ndarray, dy: int = 0, dx: int = 0, flip: bool = False) -> np.ndarray:
        """float32 ``(N, classes)`` logits of uint8 images ``(N, 32, 32, 3)``, optionally shifted/mirrored
        (with ``recipe.options.ema_decay``, of the averaged weights). Batches are padded to ``EVAL_BATCH`` so that
        one compiled forward pass serves all."""
        trainable, stats = self._eval_values()
        n = len(x)
        rows, cols = view_indices(self.size, np.full(EVAL_BATCH, flip), np.full(EVAL_BATCH, dy),
                                  np.full(EVAL_BATCH, dx))
        rows, cols = ops.convert_to_tensor(rows), ops.convert_to_tensor(cols)
        out = []
        for i in range(0, n, EVAL_BATCH):
            xb = x[i:i + EVAL_BATCH]
            if len(xb) < EVAL_BATCH:
                xb = np.concatenate([xb, np.zeros((EVAL_BATCH - len(xb), *xb.shape[1:]), xb.dtype)])
            got = self._forward(trainable, stats, ops.convert_to_tensor(xb), rows, cols)
            out.append(np.asarray(ops.convert_to_numpy(got))[:n - i])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 probabilities ``(N, classes)``, no test-time augmentation."""
        return softmax(self.logits(x))

    def predict_tta(self, x: np.ndarray) -> np.ndarray:
        """float32 probabilities with test-time augmentation (``recipe.options.tta`` on ``tta_share`` of the images,
        by :func:`cifarlab.inference.tta.tta_predict`)."""
        return tta_predict(self.logits, x, self.recipe.options.tta, self.recipe.options.tta_share)

    def _train_on(self, idx: np.ndarray, epoch: int, window: int, whiten_bias_on: bool) -> None:
        """Queue one step on the training images at ``idx`` (int32 ``(batch,)``), seen as in ``epoch``."""
        rows, cols = self._draw_views(idx, epoch, window)
        self.state = self._step(self.state, self.frozen, self.x, self.y, ops.convert_to_tensor(idx),
                                ops.convert_to_tensor(rows), ops.convert_to_tensor(cols),
                                whiten_bias_on=whiten_bias_on)

    def timed_step(self, idx, wait: bool = True) -> None:
        """One first-epoch training step on the images at ``idx`` (int32 ``(batch,)``), for benchmarks that
        time steps rather than train; as ``FastTrainer.timed_step``. Call it after :meth:`fit` (which
        compiles the step and builds its state): it trains the model on. With ``wait`` it returns once the
        step has run; without, as soon as it is queued."""
        self._train_on(np.asarray(idx, np.int32), 0, 0, True)
        if wait:
            self.sums()

    def train_flops(self, stop: int, start: int = 0, total: int | None = None) -> int:
        return train_flops(self.model, self.recipe, self.batch_size, stop, start, total, self.size)

    def _draw_views(self, idx: np.ndarray, epoch: int, window: int):
        r, n = self.recipe, len(idx)
        if r.options.flip == "alternating":  # each image mirrored in every other epoch
            flips = self.flip_bits[idx] ^ bool(epoch % 2)
        elif r.options.flip == "random":
            flips = self.aug_rng.integers(0, 2, n).astype(bool)
        else:
            flips = np.zeros(n, bool)
        if window:
            dy, dx = self.aug_rng.integers(0, self.size - window + 1, (2, n))
        elif r.options.translate:
            dy, dx = self.aug_rng.integers(-r.options.translate, r.options.translate + 1, (2, n))
        else:
            dy = dx = np.zeros(n, np.int64)
        return view_indices(self.size, flips, dy, dx, window)

    def fit(self, epochs: float, x_val=None, y_val=None, **options) -> FastResult:
        """Train ``epochs`` epochs (fractions allowed) by :func:`cifarlab.training.loop.run`; the arguments and
        result of ``FastTrainer.fit``. With ``recipe.options.ema_decay`` evaluations use the weight average,
        and the model holds it when ``fit`` returns.
        """
        total = total_steps(epochs, self.steps_per_epoch)
        self._build(total)
        self.ema_in_model = False
        result = run(self, total, x_val, y_val, **options)
        self._write_variables(averaged=True)  # the run's result is the averaged model, if any
        self.ema_in_model = bool(self.recipe.options.ema_decay)
        return result

    # -- what loop.run asks of a trainer (loop.Trainer) ------------------------------------------

    def train_step(self, idx: np.ndarray, epoch: int, step: int, total: int, stop_asked: bool = False) -> bool:
        """Queue step ``step`` of ``total`` on the training images at ``idx`` (int32 ``(batch,)``), seen as in
        ``epoch`` (the optimizer follows the schedule by its own step counter); returns ``stop_asked``."""
        self._train_on(idx, epoch, crop_at(self.recipe, step, total), epoch < self.recipe.options.whiten_bias_epochs)
        return stop_asked

    def reset_sums(self) -> None:
        self.state = (*self.state[:4], self.glue.place(np.zeros(3, np.float32), self.distribution))

    def save_checkpoint(self, run_dir, state: dict, previous: dict | None) -> dict:
        """Checkpoint into ``run_dir``: the loop's JSON ``state`` plus the backend and the augmentation generator
        (as the last step left it), beside the model (the step's state written into its variables first) and
        :meth:`_arrays`; return that JSON state."""
        from cifarlab.training import checkpoint

        self._write_variables()
        state = {**state, "backend": keras.backend.backend(), "augment_rng": self.aug_rng.bit_generator.state}
        checkpoint.write(run_dir, self.model, state, self._arrays(), previous=previous)
        return state

    # -- checkpoint state ---------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        """The optimizer's variables (step counter, momentum buffers) and the weight average."""
        _, _, opt, ema, _ = self.state
        arrays = {f"optimizer_{i:03d}": np.asarray(ops.convert_to_numpy(v)) for i, v in enumerate(opt)}
        arrays.update({f"ema_{i:03d}": np.asarray(ops.convert_to_numpy(e)) for i, e in enumerate(ema)})
        return arrays

    def restore_checkpoint(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """Optimizer, weight average, the epoch's sums and augmentation generator from a checkpoint's JSON
        ``state`` and ``arrays``, as the step's state (the loop has loaded the weights and sets the shuffle
        generator)."""
        for i, v in enumerate(self.optimizer.variables):
            v.assign(arrays[f"optimizer_{i:03d}"])
        ema = [arrays[f"ema_{i:03d}"] for i in range(len(self.state[3]))]
        self._state_from_variables(ema, state["sums"])
        self.aug_rng.bit_generator.state = state["augment_rng"]


def make_trainer(model, recipe, x_train, y_train, seed: int = 0, placement=None, portable: bool | None = None):
    """The fast-recipe trainer for the current backend: TensorFlow's hand-written loop on TensorFlow
    (unless ``portable``), else :class:`PortableTrainer`."""
    if portable is None:
        portable = keras.backend.backend() != "tensorflow"
    if portable:
        return PortableTrainer(model, recipe, x_train, y_train, seed=seed, placement=placement)
    from cifarlab.training.fast import FastTrainer

    return FastTrainer(model, recipe, x_train, y_train, seed=seed, placement=placement)


def _whole_or_round(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 2)


def train_in(out, cfg, recipe, spec, data, precision: str, config: dict, placement=None, on_epoch=None,
             portable: bool | None = None):
    """Train a ``trainer="fast"`` recipe and write the rest of the run directory (called by ``training.train``).

    ``metrics.json`` holds two accuracies: ``test_accuracy``/``test_loss`` are the
    saved model's own predictions (what ``cifarlab evaluate`` reproduces), and
    ``tta_test_accuracy``/``tta_test_loss`` those with test-time augmentation
    (``recipe.options.tta``), the figure the fast recipe is judged by.
    """
    import pandas as pd

    from cifarlab.evaluation.metrics import classification_metrics
    from cifarlab.training import distribute
    from cifarlab.training.rundir import Run, write_run
    from cifarlab.training.signals import StopRequest

    distributed = placement is not None and placement.kind != "default"
    with placement.scope() if distributed else contextlib.nullcontext():  # one device: no strategy at all
        model = spec.build(num_classes=data.num_classes)
    trainer = make_trainer(model, recipe, data.x_train, data.y_train, seed=cfg.seed, placement=placement,
                           portable=portable)
    chief = placement is None or placement.is_chief
    quiet = cfg.quiet or not chief  # the chief reports for all workers

    def report(row):
        if not quiet:
            val = f", val_loss {row['val_loss']:.4f}, val_accuracy {row['val_accuracy']:.4f}" if "val_loss" in row else ""
            # The epoch's time, scaled by the work left: epochs on smaller windows (recipe.options.crops) cost less.
            spe, total = trainer.steps_per_epoch, total_steps(recipe.epochs, trainer.steps_per_epoch)
            end = min(row["epoch"] * spe, total)
            done = trainer.train_flops(end, (row["epoch"] - 1) * spe, total)
            left = row["seconds"] * trainer.train_flops(total, end, total) / done if done else 0.0
            eta = f", about {left / 60:.1f} min to go" if left else ""
            last = math.ceil(recipe.epochs)
            part = f" ({recipe.epochs - row['epoch'] + 1:.2g} of an epoch)" if row["epoch"] > recipe.epochs else ""
            print(f"epoch {row['epoch']}/{last}{part}: loss {row['loss']:.4f}, accuracy {row['accuracy']:.4f}"
                  f"{val} ({row['seconds']:.1f} s{eta})", flush=True)
        if on_epoch is not None:  # the caller's hook (training.train's on_epoch), after the checkpoint
            on_epoch(dict(row))

    with StopRequest() as stop:
        result = trainer.fit(recipe.epochs, data.x_val, data.y_val, on_epoch=report, run_dir=out, stop=stop,
                             progress=not quiet and sys.stdout.isatty(), checkpoint_every=cfg.checkpoint_every)
    history = pd.DataFrame(result.history)
    if not chief:  # the chief evaluates and writes the run directory
        return Run(out, model, history, {}, config)
    t0 = time.perf_counter()
    probs = trainer.predict(data.x_test)
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    tta_probs = trainer.predict_tta(data.x_test)
    tta_seconds = time.perf_counter() - t0
    metrics = classification_metrics(data.y_test, probs, data.class_names)
    tta = classification_metrics(data.y_test, tta_probs, data.class_names)
    metrics.update(
        accuracy_note="test_accuracy/test_loss: the saved model on the plain test images; "
                      f"tta_test_accuracy/tta_test_loss: with test-time augmentation ({recipe.options.tta})",
        tta=recipe.options.tta, tta_test_accuracy=tta["test_accuracy"], tta_test_loss=tta["test_loss"],
        epochs=_whole_or_round(result.steps / trainer.steps_per_epoch), train_seconds=round(result.train_seconds, 2),
        eval_seconds=round(eval_seconds, 2), tta_eval_seconds=round(tta_seconds, 2),
        train_images_per_second=round(result.images / max(result.train_seconds, 1e-9), 1),
        precision=precision)
    if distributed:  # multi-worker: saved from a plain copy of the weights, as the fit path does
        model = distribute.local_model_for_eval(model, placement, lambda: spec.build(num_classes=data.num_classes))
    return write_run(out, model, config, history, metrics, data.x_test, data.y_test, probs)
