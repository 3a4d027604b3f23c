"""TensorFlow glue: ``tf.GradientTape`` inside ``tf.function``, as Keras' TensorFlow trainer.

(On TensorFlow the fast recipes train by the faster hand-written loop of
:mod:`cifarlab.training.fast`; this glue runs the portable loop there for comparison.)
"""

from __future__ import annotations

import functools

import tensorflow as tf

# No AutoGraph: the step's branches and loops are on Python values, nothing to convert.
_function = functools.partial(tf.function, autograph=False)


def value_and_grad(fn):
    def run(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss, aux = fn(values)
        return (loss, aux), tape.gradient(loss, values)

    return run


def compile_step(fn):
    return _function(fn)


def compile_forward(fn):
    return _function(fn)


def place(tree, distribution=None):
    return tf.nest.map_structure(tf.convert_to_tensor, tree)


def apply(optimizer, variables, opt_values, grads, values):
    """New ``(values, opt_values)`` after one optimizer step on ``variables``, which ``values`` stand for.

    Keras' TensorFlow optimizers refuse ``stateless_apply`` (tf.distribute), so the values go
    into the variables, the optimizer updates them in place, and their new values come out.
    """
    for v, x in zip([*variables, *optimizer.variables], [*values, *opt_values]):
        v.assign(x)
    optimizer.apply(grads, variables)
    return [tf.identity(v.value) for v in variables], [tf.identity(v.value) for v in optimizer.variables]
