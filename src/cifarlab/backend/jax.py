"""JAX glue: ``jax.value_and_grad`` and ``jax.jit`` over the stateless step, as Keras' JAX trainer."""

from __future__ import annotations

import jax
import numpy as np


def value_and_grad(fn):
    return jax.value_and_grad(fn, has_aux=True)


def compile_step(fn):
    # The state is donated: XLA updates the weights in place instead of keeping two copies.
    return jax.jit(fn, static_argnames=("whiten_bias_on",), donate_argnums=(0,))


def compile_forward(fn):
    return jax.jit(fn)


def place(tree, distribution=None):
    """``tree`` as JAX arrays; replicated over every device of ``distribution`` (a
    ``keras.distribution.DataParallel``) when given."""
    if distribution is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, tree)
    from keras.distribution import TensorLayout, distribute_tensor

    def replicated(x):
        return distribute_tensor(x, TensorLayout([None] * np.ndim(x), distribution.device_mesh))

    return jax.tree_util.tree_map(replicated, tree)


def apply(optimizer, variables, opt_values, grads, values):
    """New ``(values, opt_values)`` after one optimizer step (``variables`` are what ``values`` stand for)."""
    return optimizer.stateless_apply(opt_values, grads, values)
