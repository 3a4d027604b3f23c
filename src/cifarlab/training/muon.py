"""The fast recipes' optimizer as a Keras optimizer: Muon for conv kernels, Nesterov SGD for the rest.

The same update as the TensorFlow fast loop's hand-written one
(``FastTrainer._update_var`` / ``_muon_update``), in ``keras.ops``, so it runs on every
backend and its state (step counter, momentum buffers) is ordinary optimizer state:
``optimizer.variables``, saved and restored like any Keras optimizer's.

Variable groups, by shape (the whitening kernel is left out of the variables it is built on):

- rank 4 (the 3x3 conv kernels), with ``muon=True``: Muon, at ``learning_rate * muon_scale``;
- rank 1 (batch-norm shifts, the whitening bias): Nesterov SGD at ``learning_rate * bias_lr_scale``
  with weight decay ``weight_decay / bias_lr_scale`` (the same decay per step as the weights);
- everything else (the classifier): Nesterov SGD at ``learning_rate`` with ``weight_decay``.

Weight decay is added to the gradient and goes through the momentum, as airbench's SGD does.
Variables whose path is in ``frozen`` (a Python set, read when a step is traced) are not
updated at all: the fast recipes freeze the whitening bias after ``whiten_bias_epochs``.
"""

from __future__ import annotations

import math

import keras
from keras import ops

# Newton-Schulz quintic coefficients chosen for the steepest slope at 0 (Muon's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@keras.saving.register_keras_serializable(package="cifarlab")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``base`` at step 0, falling linearly to ``base * end`` at step ``total`` (the fast loop's ``lr_factor``)."""

    def __init__(self, base: float, total: int, end: float = 1.0):
        self.base, self.total, self.end = float(base), int(total), float(end)

    def __call__(self, step):
        return self.base * (1 + (self.end - 1) * (ops.cast(step, "float32") / max(self.total, 1)))

    def get_config(self):
        return {"base": self.base, "total": self.total, "end": self.end}


@keras.saving.register_keras_serializable(package="cifarlab")
class Muon(keras.optimizers.Optimizer):
    """Muon + Nesterov SGD with per-variable groups (see the module docstring).

    ``learning_rate``: the SGD rate (a float or a schedule); ``muon_scale``: Muon's rate over it
    (``recipe.muon_lr / recipe.learning_rate``); ``ns_steps`` Newton-Schulz iterations, in bfloat16.
    """

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0,
                 bias_lr_scale: float = 1.0, muon: bool = True, muon_scale: float = 1.0, muon_momentum: float = 0.6,
                 ns_steps: int = 3, name: str = "muon", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum, self.nesterov, self.decay = momentum, nesterov, weight_decay
        self.bias_lr_scale, self.muon, self.muon_scale = bias_lr_scale, muon, muon_scale
        self.muon_momentum, self.ns_steps = muon_momentum, ns_steps
        self.frozen: set[str] = set()

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.buffers = [self.add_variable_from_reference(v, "momentum") for v in variables]
        self._paths = [v.path for v in variables]  # TensorFlow's update_step sees its own variables, without paths

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if self._paths[index] in self.frozen:
            return
        buf = self.buffers[index]
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        rank = len(variable.shape)
        if self.muon and rank == 4:
            self._muon_step(variable, g, buf, lr * self.muon_scale)
            return
        step_lr = lr * (self.bias_lr_scale if rank == 1 else 1.0)
        g = g + (self.decay / (self.bias_lr_scale if rank == 1 else 1.0)) * variable
        self.assign(buf, self.momentum * buf + g)
        self.assign_sub(variable, step_lr * (g + self.momentum * buf) if self.nesterov else step_lr * buf)

    def _muon_step(self, variable, g, buf, lr):
        """Nesterov momentum, orthogonalised by Newton-Schulz, on a kernel ``(kh, kw, c_in, c_out)``.

        The kernel is held at Frobenius norm ``sqrt(c_out)`` (its scale is irrelevant under batch
        norm, so fixing it fixes the effective step size) and moves by ``lr`` times an update whose
        singular values are all near 1.
        """
        mu = self.muon_momentum
        self.assign(buf, mu * buf + g)
        u = g + mu * buf
        c_out = variable.shape[-1]
        x = ops.cast(ops.transpose(ops.reshape(u, (-1, c_out))), "bfloat16")  # (c_out, kh*kw*c_in): wide
        x = x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-7)  # top singular value <= 1
        a, b, c = NS_COEFFICIENTS
        for _ in range(self.ns_steps):
            m = ops.matmul(x, ops.transpose(x))
            x = a * x + ops.matmul(b * m + c * ops.matmul(m, m), x)
        update = ops.reshape(ops.transpose(ops.cast(x, variable.dtype)), variable.shape)
        norm = ops.sqrt(ops.sum(ops.square(variable)))
        self.assign(variable, variable * (math.sqrt(c_out) / norm) - lr * update)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.decay,
                      bias_lr_scale=self.bias_lr_scale, muon=self.muon, muon_scale=self.muon_scale,
                      muon_momentum=self.muon_momentum, ns_steps=self.ns_steps)
        return config


def from_recipe(recipe, total_steps: int) -> Muon:
    """The optimizer of a fast-loop recipe (``optimizer`` "muon" or "sgd") over ``total_steps`` steps."""
    o = recipe.options
    return Muon(LinearDecay(recipe.learning_rate, total_steps, o.lr_end_factor), momentum=o.momentum,
                nesterov=o.nesterov, weight_decay=o.weight_decay, bias_lr_scale=o.bias_lr_scale,
                muon=recipe.optimizer == "muon", muon_scale=o.muon_lr / recipe.learning_rate,
                muon_momentum=o.muon_momentum, ns_steps=o.muon_ns_steps)
