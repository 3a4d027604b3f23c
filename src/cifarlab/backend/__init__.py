"""Which Keras backend cifarlab runs on (TensorFlow, JAX or PyTorch), and the little that differs per backend.

Keras fixes its backend when it is first imported, from ``KERAS_BACKEND``. So the
choice is made here, before anything imports Keras: ``--backend`` on the command
line (:func:`use`), else ``KERAS_BACKEND``, else TensorFlow where it is installed
(the default on CPU, with the fastest training loop there), else JAX, else PyTorch.
This module imports neither Keras nor a backend until asked.

One module per backend (``tensorflow.py``, ``jax.py``, ``torch.py``, loaded by :func:`glue`)
holds the gradient-and-compile glue, as Keras' own trainers are split
(``keras/src/backend/{tensorflow,jax,torch}/trainer.py``); the training step itself is
written once, in ``keras.ops`` (:mod:`cifarlab.training.portable`). Each has:

- ``value_and_grad(fn)``: ``fn(values) -> (loss, aux)`` becomes ``values -> ((loss, aux), grads)``,
  gradients of the scalar ``loss`` with respect to the list of tensors ``values``;
- ``apply(optimizer, variables, opt_values, grads, values)``: one optimizer step on values,
  returning the new ``(values, opt_values)`` (``stateless_apply`` where Keras allows it);
- ``compile_step(fn)``: compile a training step ``fn(state, *arrays, whiten_bias_on=bool)``
  (``whiten_bias_on`` static: each value compiles its own step);
- ``compile_forward(fn)``: compile an inference function of tensors;
- ``place(tree, distribution)``: the arrays as backend tensors, replicated over a
  ``keras.distribution`` distribution where given.

A new backend is one more module here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from cifarlab.errors import CifarlabError

CHOICES = ("tensorflow", "jax", "torch")
_MODULE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
_EXTRA = {"tensorflow": "cpu", "jax": "jax", "torch": "torch"}


def installed(name: str) -> bool:
    """True when the backend's package can be imported (a ``None`` entry in ``sys.modules`` blocks it)."""
    try:
        return importlib.util.find_spec(_MODULE[name]) is not None
    except (ImportError, ValueError):
        return False


def default() -> str:
    """``KERAS_BACKEND`` if set, else the first installed of TensorFlow, JAX, PyTorch."""
    env = os.environ.get("KERAS_BACKEND")
    if env:
        return env
    return next((b for b in CHOICES if installed(b)), "tensorflow")


def use(name: str | None = None) -> str:
    """Make ``name`` (default: :func:`default`) the Keras backend; returns it.

    Must run before Keras is imported; a clear error when the backend is unknown, not
    installed, or Keras already runs on another one in this process.
    """
    name = name or default()
    if name not in CHOICES:
        raise CifarlabError(f"--backend must be one of {', '.join(CHOICES)}, not {name!r}")
    if "keras" in sys.modules and sys.modules["keras"] is not None:
        running = sys.modules["keras"].backend.backend()
        if running != name:
            raise CifarlabError(f"Keras already runs on {running} in this process; "
                                f"start a new one for --backend {name}")
        return name
    if not installed(name):
        raise CifarlabError(f"--backend {name}: {_MODULE[name]} is not installed "
                            f"(pip install 'cifarlab[{_EXTRA[name]}]')")
    os.environ["KERAS_BACKEND"] = name
    return name


def current() -> str:
    """The backend Keras runs on (imports Keras)."""
    import keras

    return keras.backend.backend()


def require_tensorflow(feature: str) -> None:
    """One line instead of a traceback for a TensorFlow-only feature on another backend."""
    name = current()
    if name != "tensorflow":
        raise CifarlabError(f"{feature} needs the TensorFlow backend (--backend tensorflow), "
                            f"and this process runs on {name}")


def version() -> dict:
    """``{"backend": name, name: its version}`` for a run's config.json (imports the backend)."""
    name = current()
    module = importlib.import_module(_MODULE[name])
    return {"backend": name, name: getattr(module, "__version__", "?")}


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities ``(major, minor)`` of the GPUs the current backend sees; ``[]`` on CPU."""
    name = current()
    if name == "tensorflow":
        import tensorflow as tf

        return [tuple(tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)))
                for g in tf.config.list_physical_devices("GPU")]
    if name == "jax":
        import jax

        caps = []
        for d in jax.devices():
            if d.platform == "gpu":
                cc = str(getattr(d, "compute_capability", "0.0")).split(".")
                caps.append((int(cc[0]), int(cc[1]) if len(cc) > 1 else 0))
        return caps
    import torch

    return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]


def glue(name: str | None = None):
    """The glue module of backend ``name`` (default: the one Keras runs on)."""
    return importlib.import_module(f"{__name__}.{name or current()}")
