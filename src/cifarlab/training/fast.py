"""The fast training loop: one compiled step per batch, no host round trips.

Used by recipes with ``trainer="fast"`` (``fast``, ``quick``). Where Keras'
``fit`` spends time per step on callbacks, metric objects, data adapters and
host syncs, this loop keeps everything on the device:

- the training images stay in memory as one uint8 tensor; a step receives only
  the int32 indices of its batch and gathers, flips and translates them inside
  the compiled step (:mod:`cifarlab.training.augment`);
- the update is hand-written Nesterov SGD (a few fused multiply-adds per
  variable), with one learning rate for weights and a larger one for biases;
- loss and accuracy are summed into variables and read once per epoch.

The model is an ordinary Keras model ending in softmax; training uses the
``logits`` layer before it (a view sharing the weights), so the loss is computed
in float32 from logits.
"""

from __future__ import annotations

import contextlib
import functools
import math

import keras
import numpy as np
import tensorflow as tf

from cifarlab.inference.predict import softmax
from cifarlab.inference.tta import EVAL_BATCH, tta_predict, view
from cifarlab.models.fast import init_whitening, logits_model
from cifarlab.training import augment, loop, ops
from cifarlab.training.loop import EvalPoint, FastResult, lr_factor  # noqa: F401 - also this module's API


class FastTrainer:
    """Train ``model`` (from :mod:`cifarlab.models.fast`) on uint8 images by ``recipe``.

    ``x_train`` uint8 ``(N, 32, 32, 3)``, ``y_train`` int ``(N,)``. Call :meth:`fit`,
    then :meth:`predict` / :meth:`predict_tta` for float32 probabilities. With a ``placement``
    (``training.distribute.Placement``) other than one device, ``model`` built under its scope,
    each step trains data-parallel under its strategy (:meth:`_distributed_step`).
    """

    checkpoint_kind = "fast"  # loop.Trainer: the "trainer" of its checkpoints

    def __init__(self, model: keras.Model, recipe, x_train: np.ndarray, y_train: np.ndarray, seed: int = 0,
                 forward: str = "ops", placement=None, jit_compile: bool = False):
        from cifarlab.errors import CifarlabError

        # placement (training.distribute.Placement): None or "default" is the one-device loop;
        # otherwise ``model`` must have been built under ``placement.scope()``.
        self.placement = placement if placement is not None and placement.kind != "default" else None
        self.strategy = self.placement.strategy if self.placement else None
        self.model = model
        self.forward = forward
        self.recipe = recipe
        self.num_classes = int(model.output_shape[-1])
        self.net = logits_model(model)
        n = len(y_train)
        self.batch_size = min(recipe.batch_size, n)
        replicas = self.placement.replicas if self.placement else 1
        if self.batch_size % replicas:
            raise CifarlabError(f"the batch of {self.batch_size} images does not split evenly over {replicas} "
                                f"replicas; choose a --batch-size that is a multiple of {replicas}")
        self.steps_per_epoch = n // self.batch_size
        self.n = n
        # Several workers stop together, at a step whose stop flags they summed (train_step).
        self.agrees_on_stop = self.placement is not None and self.placement.kind == "multiworker"
        self.rng = np.random.default_rng(seed)
        if recipe.options.whiten_init_images:
            sample = self.rng.choice(n, min(n, recipe.options.whiten_init_images), replace=False)
            init_whitening(model, x_train[np.sort(sample)])
        self.x = tf.constant(x_train, dtype=tf.uint8)
        self.y = tf.constant(y_train, dtype=tf.int32)
        self.gen = tf.random.Generator.from_seed(seed)  # outside any strategy: one stream, as on one device
        self.flip_bits = tf.constant(self.rng.integers(0, 2, n).astype(bool))

        # Parameter groups: the whitening kernel is fixed by its initialisation;
        # biases (BN shifts, whitening bias) take a larger learning rate and a
        # correspondingly smaller weight decay, as in airbench.
        self.vars, self.lr_mult, self.wd, self.is_whiten_bias = [], [], [], []
        for v in model.trainable_variables:
            path = v.path
            if path.startswith("whiten/") and path.endswith("kernel"):
                continue
            is_bias = len(v.shape) == 1
            self.vars.append(v)
            self.lr_mult.append(recipe.options.bias_lr_scale if is_bias else 1.0)
            self.wd.append(recipe.options.weight_decay / (recipe.options.bias_lr_scale if is_bias else 1.0))
            self.is_whiten_bias.append(path.startswith("whiten/"))
        if recipe.optimizer not in ("sgd", "muon"):
            raise ValueError(f"the fast loop trains with 'sgd' or 'muon', not {recipe.optimizer!r}")
        # "muon": the 3x3 conv kernels by Muon, biases and the classifier by Nesterov SGD.
        self.is_muon = [recipe.optimizer == "muon" and len(v.shape) == 4 for v in self.vars]
        bn_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        bn_stats = [(v, layer.momentum) for layer in bn_layers for v in (layer.moving_mean, layer.moving_variance)]
        self.bn_momentum = {v.path: momentum for v, momentum in bn_stats}
        # The weight average covers everything a forward pass reads that
        # training changes, the batch-norm running statistics included (airbench averages its whole state).
        self.averaged = self.vars + [v for v, _ in bn_stats]
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():  # mirrored under a strategy
            self.bufs = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in self.vars]
            self.loss_sum = tf.Variable(0.0, trainable=False)
            self.correct = tf.Variable(0.0, trainable=False)
            self.seen = tf.Variable(0.0, trainable=False)
            self.stop_votes = tf.Variable(0.0, trainable=False)  # workers that saw a signal (multi-worker)
            self.ema = ([tf.Variable(tf.cast(v, tf.float32), trainable=False) for v in self.averaged]
                        if recipe.options.ema_decay else [])
            self.ema_count = tf.Variable(0.0, trainable=False)
        self.ema_in_model = False  # True once fit() has left the averaged weights in the model
        jit = bool(jit_compile)  # off: XLA's CPU convolutions bypass oneDNN (benchmarks/profile_step.py --jit)
        # No AutoGraph: every branch and loop here is on Python values (recipe fields, static shapes),
        # so it has nothing to convert, and its pass took most of the time to trace a step.
        function = functools.partial(tf.function, autograph=False)
        if self.strategy is None:
            self._step = function(self._train_step, jit_compile=jit)
        elif forward != "ops":  # Keras' batch-norm layers would update mirrored statistics per replica
            raise CifarlabError("the fast loop trains distributed only with forward='ops'")
        else:  # no XLA: a strategy's replica function and merge call do not compile as one cluster
            self._step = function(self._distributed_step)
        self._logits = function(self._eval_logits, jit_compile=jit)

    # -- the compiled parts -------------------------------------------------------------------

    def _draws(self, n, crop: int = 0):
        """The random numbers of ``n`` images' augmentation: (random flips int32 ``(n,)`` or None,
        window offsets int32 ``(2, n)`` or None), drawn from ``self.gen`` in that order. The offsets
        are translations (``recipe.options.translate``) or, with ``crop``, the corners of ``crop``-pixel windows."""
        r = self.recipe
        flips = self.gen.uniform([n], 0, 2, dtype=tf.int32) if r.options.flip == "random" else None
        if crop:
            shifts = augment.window_draws(self.gen, n, self.x.shape[1], crop)
        else:
            shifts = augment.translate_draws(self.gen, n, r.options.translate) if r.options.translate else None
        return flips, shifts

    def _augment(self, xb, flips, epoch, draws, crop: int = 0):
        r = self.recipe
        if r.options.flip == "alternating":
            xb = augment.flip_where(xb, augment.alternating_flip(flips, epoch))
        elif r.options.flip == "random":
            xb = augment.flip_where(xb, draws[0] == 1)
        if crop:
            return augment.crop(xb, draws[1][0], draws[1][1], crop)
        return augment.shift(xb, r.options.translate, draws[1]) if r.options.translate else xb

    def _crop_at(self, step: int, total: int) -> int:
        """The window size step ``step`` of ``total`` trains on, by ``recipe.options.crops``, or 0 for whole images
        (a Python int, so each size compiles its own step)."""
        return loop.crop_at(self.recipe, step, total)

    def _trained(self, whiten_bias_on: bool) -> list[int]:
        """Indices into ``self.vars`` of what a step trains: all, or all but the frozen whitening bias.

        A Python bool, so each value compiles its own step: once the whitening bias is frozen its
        gradient is not asked for, and TensorFlow drops the backward pass through the first 3x3 conv
        to its input that only that gradient needs.
        """
        return [k for k in range(len(self.vars)) if whiten_bias_on or not self.is_whiten_bias[k]]

    def _update_var(self, k, v, g, buf, lr):
        """The hand-written step of variable ``k`` (``v``, its momentum ``buf``, gradient ``g``): Muon or Nesterov SGD."""
        r = self.recipe
        if self.is_muon[k]:
            return self._muon_update(v, tf.cast(g, tf.float32), buf, lr * (r.options.muon_lr / r.learning_rate))
        step_lr = lr * self.lr_mult[k]
        g = tf.cast(g, tf.float32) + self.wd[k] * v  # weight decay through the momentum, as airbench's SGD does
        buf.assign(r.options.momentum * buf + g)
        v.assign_sub(step_lr * (g + r.options.momentum * buf) if r.options.nesterov else step_lr * buf)

    def _loss(self, logits, yb):
        eps = self.recipe.options.label_smoothing
        logp = tf.nn.log_softmax(logits)
        target = tf.one_hot(yb, self.num_classes) * (1 - eps) + eps / self.num_classes
        return -tf.reduce_mean(tf.reduce_sum(target * logp, axis=1))

    def _train_step(self, idx, epoch, lr, whiten_bias_on, crop=0):
        xb = self._augment(tf.gather(self.x, idx), tf.gather(self.flip_bits, idx), epoch,
                           self._draws(tf.shape(idx)[0], crop), crop)
        yb = tf.gather(self.y, idx)
        with tf.GradientTape() as tape:
            logits, updates = self._run(tf.cast(xb, tf.float32), training=True)
            loss = self._loss(logits, yb)
        trained = self._trained(whiten_bias_on)
        grads = tape.gradient(loss, [self.vars[k] for k in trained])
        for k, g in zip(trained, grads):
            self._update_var(k, self.vars[k], g, self.bufs[k], lr)
        n = tf.cast(tf.shape(yb)[0], tf.float32)
        self.loss_sum.assign_add(loss * n)
        self.correct.assign_add(tf.reduce_sum(tf.cast(tf.argmax(logits, 1, output_type=tf.int32) == yb, tf.float32)))
        self.seen.assign_add(n)
        for var, value in updates:
            var.assign(var * self.bn_momentum[var.path] + value * (1 - self.bn_momentum[var.path]))
        if self.ema:
            t = self.ema_count.assign_add(1.0)
            for e, v in zip(self.ema, self.averaged):
                self._ema_mix(e, v, t)

    def _ema_mix(self, e, v, t):
        """Move the average ``e`` of variable ``v`` toward it, at the ``t``-th update (t >= 1)."""
        k = tf.minimum(self.recipe.options.ema_decay, (1.0 + t) / (10.0 + t))
        return e.assign(k * e + (1.0 - k) * tf.cast(v, tf.float32))

    def _muon_update(self, v, g, buf, lr):
        """Muon on one conv kernel ``(kh, kw, c_in, c_out)``: Nesterov momentum, orthogonalised by Newton-Schulz.

        The kernel is held at Frobenius norm ``sqrt(c_out)`` (its scale is irrelevant under batch
        norm, so fixing it fixes the effective step size), and steps by ``lr`` times an update whose
        singular values are all near 1: every direction of the filter bank learns at the same rate.
        """
        mu = self.recipe.options.muon_momentum
        buf.assign(mu * buf + g)
        u = g + mu * buf
        c_out = v.shape[-1]
        x = tf.cast(tf.transpose(tf.reshape(u, [-1, c_out])), tf.bfloat16)  # (c_out, kh*kw*c_in): wide
        x = x / (tf.norm(x) + 1e-7)  # top singular value <= 1
        a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients chosen for the steepest slope at 0
        for _ in range(self.recipe.options.muon_ns_steps):
            m = tf.matmul(x, x, transpose_b=True)
            x = a * x + tf.matmul(b * m + c * tf.matmul(m, m), x)
        update = tf.reshape(tf.transpose(tf.cast(x, tf.float32)), v.shape)
        return v.assign(v * (math.sqrt(c_out) / tf.norm(v)) - lr * update)

    def timed_step(self, idx, wait: bool = True) -> None:
        """One training step on the images at ``idx`` (int32 ``(batch,)`` indices into the training set),
        for benchmarks and profiles that time steps rather than train.

        It is a first-epoch step (whitening bias training) at the recipe's full learning rate. With
        ``wait`` it returns once the step has run; without, as soon as it is queued, so that a run of
        steps overlaps as in :meth:`fit` (read ``seen`` to wait for the last one).
        """
        lr = tf.constant(self.recipe.learning_rate, tf.float32)
        self._step(tf.convert_to_tensor(idx, tf.int32), tf.constant(0), lr, True)
        if wait:
            self.seen.numpy()

    def train_flops(self, stop: int, start: int = 0, total: int | None = None) -> int:
        """:func:`cifarlab.training.loop.train_flops` of this trainer's model, recipe and batch."""
        return loop.train_flops(self.model, self.recipe, self.batch_size, stop, start, total, self.x.shape[1])

    # -- the same step under a tf.distribute strategy ----------------------------------------

    def _distributed_step(self, idx, epoch, lr, whiten_bias_on, stop_flag=0.0, crop=0):
        """One step of the global batch ``idx`` split over the strategy's replicas.

        Each worker gathers the whole global batch and draws its augmentation from its own copy
        of ``self.gen`` (the same seed and state on every worker), so replica ``i`` trains on
        exactly its share of what one device would; each replica's batch-norm statistics are its
        own. ``stop_flag`` (1.0: this worker saw a signal) is summed with everything else, so all
        workers learn of a signal at the same step.
        """
        xb, flips, yb = tf.gather(self.x, idx), tf.gather(self.flip_bits, idx), tf.gather(self.y, idx)
        draws = self._draws(tf.shape(idx)[0], crop)
        self.strategy.run(self._replica_step, args=(xb, flips, yb, draws, epoch, lr, whiten_bias_on,
                                                    tf.cast(stop_flag, tf.float32), crop))

    def _replica_step(self, xb, flips, yb, draws, epoch, lr, whiten_bias_on, stop_flag, crop=0):
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync
        n = self.batch_size // replicas
        mine = slice(ctx.replica_id_in_sync_group * n, (ctx.replica_id_in_sync_group + 1) * n)
        draws = tuple(None if d is None else d[..., mine] for d in draws)
        xb = self._augment(xb[mine], flips[mine], epoch, draws, crop)
        yb = yb[mine]
        with tf.GradientTape() as tape:
            logits, updates = self._run(tf.cast(xb, tf.float32), training=True)
            loss = self._loss(logits, yb)  # the mean over this replica's share
        trained = self._trained(whiten_bias_on)
        grads = [tf.cast(g, tf.float32) for g in tape.gradient(loss, [self.vars[k] for k in trained])]
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, 1, output_type=tf.int32) == yb, tf.float32))
        counts = tf.stack([loss * n, correct, float(n), stop_flag])
        # One all-reduce (summed) for the gradients, the batch-norm statistics and the counts; equal
        # shares make the mean over replicas the gradient of the global batch's mean loss.
        grads, stats, counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, (grads, [u[1] for u in updates], counts))
        grads = [g / replicas for g in grads]
        stats = [s / replicas for s in stats]
        self._bn_vars = [u[0] for u in updates]  # the same list on every replica
        ctx.merge_call(self._apply_everywhere, args=(grads, stats, counts, lr, trained))

    def _apply_everywhere(self, strategy, grads, stats, counts, lr, trained):
        """Cross-replica: the same update, from the same all-reduced values, on every replica's copy."""
        ext = strategy.extended

        def sgd(k):
            return lambda v, g, buf, lr: self._update_var(k, v, g, buf, lr)

        for k, g in zip(trained, grads):
            ext.update(self.vars[k].value, sgd(k), args=(g, self.bufs[k], lr), group=False)
        for var, value in zip(self._bn_vars, stats):
            m = self.bn_momentum[var.path]
            ext.update(var.value, lambda v, x, m=m: v.assign(v * m + x * (1 - m)), args=(value,), group=False)
        for j, total in enumerate((self.loss_sum, self.correct, self.seen)):
            ext.update(total, lambda v, c, j=j: v.assign_add(c[j]), args=(counts,), group=False)
        ext.update(self.stop_votes, lambda v, c: v.assign(c[3]), args=(counts,), group=False)
        if self.ema:  # each replica averages its own (identical) copy
            ext.update(self.ema_count, lambda c: c.assign_add(1.0), group=False)
            for e, v in zip(self.ema, self.averaged):
                ext.update(e, lambda e, v, c: self._ema_mix(e, v, c.read_value()), args=(v, self.ema_count),
                           group=False)

    def _eval_logits(self, xb):
        return self._run(tf.cast(xb, tf.float32), training=False)[0]

    def _run(self, x, training: bool):
        """float32 logits of float32 pixels, and the batch-norm statistics to fold into the running ones.

        ``forward="keras"`` calls the Keras layers. ``forward="ops"`` runs the same
        layers' weights through plain TensorFlow ops instead: one fused batch-norm
        op (oneDNN, bfloat16 in and out) where Keras' layer upcasts to float32 and
        makes several passes over the tensor. Both follow each layer's dtype policy,
        so the saved Keras model computes what was trained.
        """
        if self.forward == "keras":
            return tf.cast(self.net(x, training=training), tf.float32), []
        updates = []
        for layer in self.net.layers:
            cd = layer.compute_dtype
            if isinstance(layer, keras.layers.InputLayer):
                continue
            x = tf.cast(x, cd)
            if isinstance(layer, keras.layers.Rescaling):
                x = x * tf.cast(layer.scale, cd) + tf.cast(layer.offset, cd)
            elif isinstance(layer, keras.layers.Conv2D):
                x = ops.conv2d(x, tf.cast(layer.kernel, cd), layer.strides, layer.padding.upper())
                if layer.use_bias:
                    x = tf.nn.bias_add(x, tf.cast(layer.bias, cd))
            elif isinstance(layer, keras.layers.MaxPool2D):
                x = tf.nn.max_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif isinstance(layer, keras.layers.BatchNormalization):
                c = x.shape[-1]
                gamma = layer.gamma if layer.scale else tf.ones([c], tf.float32)
                beta = layer.beta if layer.center else tf.zeros([c], tf.float32)
                if training:
                    x, mean, var = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=layer.epsilon,
                                                                    is_training=True)
                    updates += [(layer.moving_mean, mean), (layer.moving_variance, var)]
                else:
                    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, layer.moving_mean,
                                                               layer.moving_variance, epsilon=layer.epsilon,
                                                               is_training=False)
            elif isinstance(layer, keras.layers.Activation):
                x = ops.activation(layer.activation.__name__, x)
            elif isinstance(layer, keras.layers.GlobalMaxPooling2D):
                x = tf.reduce_max(x, axis=[1, 2])
            elif isinstance(layer, keras.layers.Dense):
                x = tf.matmul(x, tf.cast(layer.kernel, cd))
                if layer.use_bias:
                    x = tf.nn.bias_add(x, tf.cast(layer.bias, cd))
            else:
                raise TypeError(f"fast loop: no op translation for layer {layer.name} ({type(layer).__name__})")
        return tf.cast(x, tf.float32), updates

    # -- host side ----------------------------------------------------------------------------

    def _load_average(self):
        for e, v in zip(self.ema, self.averaged):
            v.assign(tf.cast(e, v.dtype))

    @contextlib.contextmanager
    def _averaged_weights(self):
        """Within it the model holds the weight average (``recipe.options.ema_decay``), if any; after it, what it held."""
        if not self.ema or self.ema_in_model:
            yield
            return
        held = [v.numpy() for v in self.averaged]
        self._load_average()
        self.ema_in_model = True  # nested uses (predict_tta's passes) swap nothing more
        try:
            yield
        finally:
            for h, v in zip(held, self.averaged):
                v.assign(h)
            self.ema_in_model = False

    def logits(self, x: np.ndarray, dy: int = 0, dx: int = 0, flip: bool = False) -> np.ndarray:
        """float32 ``(N, classes)`` logits of uint8 images ``(N, 32, 32, 3)``, optionally shifted/mirrored
        (:func:`cifarlab.inference.tta.view`): a logits function for :mod:`cifarlab.inference.tta`.

        With ``recipe.options.ema_decay`` these are the averaged weights' logits."""
        out = []
        with self._averaged_weights():
            for i in range(0, len(x), EVAL_BATCH):
                out.append(self._logits(view(tf.constant(x[i: i + EVAL_BATCH]), dy, dx, flip)).numpy())
        return np.concatenate(out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 probabilities ``(N, classes)``, no test-time augmentation."""
        return softmax(self.logits(x))

    def predict_tta(self, x: np.ndarray) -> np.ndarray:
        """float32 probabilities with test-time augmentation: ``recipe.options.tta`` on ``recipe.options.tta_share`` of
        the images, by :func:`cifarlab.inference.tta.tta_predict` on this loop's compiled logits."""
        with self._averaged_weights():  # once for all passes
            return tta_predict(self.logits, x, self.recipe.options.tta, self.recipe.options.tta_share)

    def fit(self, epochs: float, x_val=None, y_val=None, **options) -> FastResult:
        """Train ``epochs`` epochs (fractions allowed, as airbench's 9.9) by :func:`cifarlab.training.loop.run`;
        history rows carry loss/accuracy (train, as trained) and val_* on ``x_val``/``y_val``.

        ``options``: those of :func:`~cifarlab.training.loop.run` (``on_epoch``, ``run_dir`` and
        ``checkpoint_every`` for checkpoints and resuming, ``stop``, ``progress``, ``probe``). With
        ``recipe.options.ema_decay`` every evaluation uses the weight average, and the model holds it
        when ``fit`` returns.
        """
        self.ema_in_model = False  # training goes on from whatever the model holds
        result = loop.run(self, loop.total_steps(epochs, self.steps_per_epoch), x_val, y_val, **options)
        if self.ema:  # the run's result is the averaged model
            self._load_average()
            self.ema_in_model = True
        return result

    # -- what loop.run asks of a trainer (loop.Trainer) ------------------------------------------

    def train_step(self, idx: np.ndarray, epoch: int, step: int, total: int, stop_asked: bool = False) -> bool:
        """Queue step ``step`` of ``total`` (its learning rate and window size) on the training images at
        ``idx`` (int32 ``(batch,)``), seen as in ``epoch``; True when training stops after it: ``stop_asked``,
        or on several workers whether any of them was asked (the step sums their flags)."""
        r = self.recipe
        lr = tf.constant(r.learning_rate * lr_factor(step, total, r.options.lr_end_factor), tf.float32)
        args = (tf.constant(idx, tf.int32), tf.constant(epoch, tf.int32), lr,
                epoch < r.options.whiten_bias_epochs)  # a Python bool: see _trained
        if not self.agrees_on_stop:
            self._step(*args, crop=self._crop_at(step, total))
            return stop_asked
        self._step(*args, tf.constant(float(stop_asked), tf.float32), crop=self._crop_at(step, total))
        return bool(self.stop_votes.numpy() > 0)  # a host sync per step, multi-worker only

    def sums(self) -> np.ndarray:
        """float64 ``(3,)``: the epoch's summed loss, correct predictions and images so far (waits for the steps)."""
        return np.array([v.numpy() for v in (self.loss_sum, self.correct, self.seen)], np.float64)

    def reset_sums(self) -> None:
        for v in (self.loss_sum, self.correct, self.seen):
            v.assign(0.0)

    def save_checkpoint(self, run_dir, state: dict, previous: dict | None) -> dict:
        """Checkpoint into ``run_dir``: the loop's JSON ``state`` plus the TensorFlow augmentation generator (as
        the last step left it) and the weight average's count, beside the model and :meth:`_arrays`; return
        that JSON state. Of several workers only the chief writes; the others keep track of the state."""
        from cifarlab.training import checkpoint

        state = {**state, "augment_rng": self.gen.state.numpy().tolist(),
                 "ema_count": float(self.ema_count.numpy())}
        if self.placement is None or self.placement.is_chief:
            checkpoint.write(run_dir, self.model, state, self._arrays(), previous=previous)
        return state

    # -- checkpoint state ---------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        # The hand-written optimizer's momentum buffers; the model file holds the rest.
        arrays = {f"momentum_{i:03d}": b.numpy() for i, b in enumerate(self.bufs)}
        arrays.update({f"ema_{i:03d}": e.numpy() for i, e in enumerate(self.ema)})
        return arrays

    def restore_checkpoint(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """Momentum buffers, weight average, augmentation generator and the epoch's sums from a checkpoint's
        JSON ``state`` and ``arrays`` (the loop has loaded the weights and sets the shuffle generator)."""
        for i, b in enumerate(self.bufs):
            b.assign(arrays[f"momentum_{i:03d}"])
        for i, (e, v) in enumerate(zip(self.ema, self.averaged)):  # a checkpoint without them: start afresh
            e.assign(arrays[f"ema_{i:03d}"] if f"ema_{i:03d}" in arrays else tf.cast(v, tf.float32))
        self.ema_count.assign(state.get("ema_count", 0.0))
        self.gen.state.assign(np.asarray(state["augment_rng"], dtype=self.gen.state.dtype.as_numpy_dtype))
        for v, value in zip((self.loss_sum, self.correct, self.seen), state["sums"]):
            v.assign(value)
