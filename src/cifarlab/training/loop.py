"""What both fast-recipe loops share, host side only: the schedule, the window sizes, FLOP counts, results.

:mod:`cifarlab.training.fast` (TensorFlow's hand-written loop) and :mod:`cifarlab.training.portable`
(every backend) import it; it imports neither, nor any backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cifarlab.models.fast import model_flops


def lr_factor(step: int, total: int, end: float) -> float:
    """The learning rate's factor at ``step`` of ``total``: 1 at the start, falling linearly to ``end`` at the end."""
    return 1 + (end - 1) * (step / max(total, 1))


@dataclass
class EvalPoint:
    """Accuracy measured during training; ``train_seconds`` excludes time spent evaluating."""

    step: int
    epoch: float
    train_seconds: float
    accuracy: float


@dataclass
class FastResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    evals: list[EvalPoint] = field(default_factory=list)
    train_seconds: float = 0.0
    steps: int = 0
    images: int = 0


def crop_at(recipe, step: int, total: int) -> int:
    """The window size step ``step`` of ``total`` trains on, by ``recipe.options.crops``, or 0 for whole images."""
    return next((size for size, until in recipe.options.crops if step < round(until * total)), 0)


def train_flops(model, recipe, batch_size: int, stop: int, start: int = 0, total: int | None = None,
                size: int = 32) -> int:
    """Multiply-add FLOPs of steps ``start`` to ``stop - 1`` of a run of ``total`` steps (default: a whole
    run of ``stop``), forward + backward counted as 3 forward passes per image, at the window sizes
    of the progressive resizing."""
    total = stop if total is None else total
    sizes = [crop_at(recipe, s, total) or size for s in range(start, stop)]
    per_image = {s: model_flops(model, s) for s in set(sizes)}
    return 3 * batch_size * sum(per_image[s] for s in sizes)


def epoch_row(epoch: int, loss_sum: float, correct: float, seen: float, predict=None, x_val=None, y_val=None) -> dict:
    """The history row of epoch ``epoch`` (0-based): training loss and accuracy from the epoch's sums, and,
    with ``x_val`` (uint8 ``(N, 32, 32, 3)``) and ``y_val`` (int ``(N,)``), ``val_loss``/``val_accuracy``
    of ``predict(x_val)`` (float32 probabilities ``(N, classes)``)."""
    row = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "accuracy": float(correct) / seen}
    if x_val is not None and len(x_val):
        probs = predict(x_val)
        p = np.clip(probs[np.arange(len(y_val)), y_val], 1e-7, 1.0)
        row.update(val_loss=float(-np.log(p).mean()), val_accuracy=float((probs.argmax(1) == y_val).mean()))
    return row


def non_finite_key(row: dict) -> str | None:
    """The first of ``loss``/``val_loss`` in ``row`` that is not a finite number, if any."""
    return next((k for k in ("loss", "val_loss") if k in row and not math.isfinite(row[k])), None)
