"""Predict classes for images: arrays in memory or image files on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarlab.data.images import to_array


@dataclass
class Prediction:
    """Top-k classes for one image, most probable first."""

    source: str
    top: list[tuple[str, float]]  # (class name, probability 0-1)

    def to_dict(self) -> dict:
        return {"file": self.source, "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}


def predict_arrays(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Probabilities ``(N, K)`` float32 for uint8 or float pixels ``(N, 32, 32, 3)`` in 0-255."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0), dtype=np.float32)


def top_k(probs: np.ndarray, class_names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(probs)[::-1][:k]
    return [(class_names[i], float(probs[i])) for i in order]


def predict(model, files: list[str | os.PathLike], top: int = 3) -> list[Prediction]:
    """Top-``top`` predictions for image files.

    ``model`` is a path (``.keras`` file or run directory) or a ``(keras.Model,
    metadata)`` pair from :func:`cifarlab.load_model`. Each file is decoded exactly
    as training images are (:func:`cifarlab.data.images.to_array`).
    """
    from cifarlab.models.io import load_model

    model, meta = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    x = np.stack([to_array(Path(f)) for f in files])
    probs = predict_arrays(model, x)
    return [Prediction(str(f), top_k(p, meta["class_names"], top)) for f, p in zip(files, probs)]
