"""Model architectures. Each is a plain :class:`ModelSpec` in :mod:`cifarlab.registry`.

Every model takes float32 pixels in 0-255, shape ``(batch, 32, 32, 3)``, and scales
them itself (a ``Rescaling`` layer), so a saved model carries its own
preprocessing: serving, export and prediction feed it raw pixels. Every model
ends in a float32 softmax over the classes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture: what it is, and where its builder lives.

    ``builder`` is ``"module:function"``; the function takes ``num_classes`` and
    returns an uncompiled ``keras.Model``. It is imported only when built, so
    listing models does not load TensorFlow.
    """

    name: str
    builder: str
    description: str

    def build(self, num_classes: int = 10, **kwargs):
        module, fn = self.builder.split(":")
        return getattr(importlib.import_module(module), fn)(num_classes=num_classes, **kwargs)
