"""The per-backend glue of the portable training loop (:mod:`cifarlab.training.portable`).

One module per Keras backend, named as ``keras.backend.backend()`` names it, each with:

- ``value_and_grad(fn)``: ``fn(values) -> (loss, aux)`` becomes
  ``values -> ((loss, aux), grads)``, gradients of the scalar ``loss`` with respect to the
  list of tensors ``values``;
- ``compile_step(fn)``: compile a training step ``fn(state, *arrays, whiten_bias_on=bool)``
  (``whiten_bias_on`` static: each value compiles its own step);
- ``apply(optimizer, variables, opt_values, grads, values)``: one optimizer step on values,
  returning the new ``(values, opt_values)`` (``stateless_apply`` where Keras allows it);
- ``compile_forward(fn)``: compile an inference function of tensors;
- ``place(tree, distribution)``: put arrays where the step wants them (replicated over a
  ``keras.distribution`` distribution, or as they are).

The step itself, written once in ``keras.ops``, is in :mod:`cifarlab.training.portable`.
"""

from __future__ import annotations

import importlib


def load(name: str):
    """The glue module of backend ``name`` ("tensorflow", "jax" or "torch")."""
    return importlib.import_module(f"{__name__}.{name}")
