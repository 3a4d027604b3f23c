"""JAX glue: ``jax.value_and_grad`` and ``jax.jit`` over the stateless step, as Keras' JAX trainer, and the
command line's on-disk compilation cache."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np

# XLA's compiled programs on disk, shared by a user's processes: at most this many bytes (least recently used
# go first), and only programs that took this long to compile (a JAX model's weight initialisers take 0.5-0.9 s
# each on a 2-core CPU; the smallest eager operations, a few milliseconds, stay out).
CACHE_MAX_BYTES = 1 << 30
CACHE_MIN_COMPILE_SECONDS = 0.1


def use_compilation_cache(folder) -> None:
    """Keep XLA's compiled programs in ``folder`` (a path) across processes, so that a command's next
    run skips compiling its model's initialisers and steps.

    A cache the user chose (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is. Without
    the ``filelock`` package JAX cannot bound the cache's size, and then none is kept."""
    if jax.config.jax_compilation_cache_dir or importlib.util.find_spec("filelock") is None:
        return  # filelock: JAX's size-bounded cache locks with it
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)


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
