"""The end of every training run: the one writer of a finished run directory.

Every trainer (Keras' ``fit`` in :mod:`cifarlab.training.train`, the fast loop in
:mod:`cifarlab.training.fast`, and any backend's) trains, measures the test set once, and
hands the result to :func:`write_run`, which writes ``model.keras``, ``history.csv``, the
plots, ``test_predictions.npz`` and ``config.json``, each atomically, then ``metrics.json``
last: a run directory without it never looks complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cifarlab.fileio import write_json, write_text

__all__ = ["Run", "write_run", "write_run_plots", "MODEL_INPUT"]

# What model.keras takes, recorded in its metadata (models.io).
MODEL_INPUT = "float32 pixels 0-255, shape (batch, 32, 32, 3), RGB"


@dataclass
class Run:
    """The result of :func:`cifarlab.training.train.train`: where it went and what it measured."""

    run_dir: Path
    model: object  # keras.Model
    history: object  # pandas.DataFrame, one row per epoch
    metrics: dict
    config: dict = field(default_factory=dict)


def write_run(out: Path, model, config: dict, history, metrics: dict, x_test: np.ndarray, y_test: np.ndarray,
              probs: np.ndarray) -> Run:
    """Write the finished run into ``out`` and return it as a :class:`Run`.

    ``config``: the run's configuration as written to ``config.json`` when training began (its
    ``model``, ``recipe``, ``precision`` and ``data`` entries go into the model's metadata);
    ``finished`` is added. ``history``: a pandas DataFrame, one row per epoch; its last
    ``val_accuracy``/``val_loss``, if any, are added to ``metrics``. ``metrics``: from
    :func:`cifarlab.evaluation.metrics.classification_metrics` plus the trainer's own figures;
    ``test_accuracy`` (and ``tta_test_accuracy`` where measured) are copied into the model's
    metadata. ``x_test`` uint8 ``(N, 32, 32, 3)``, ``y_test`` int ``(N,)``, ``probs`` float32
    ``(N, classes)``: the test probabilities ``metrics`` were computed from, saved for the report.
    """
    from cifarlab.evaluation.metrics import summary
    from cifarlab.evaluation.report import PREDICTIONS, save_predictions
    from cifarlab.models.io import save_model
    from cifarlab.training import checkpoint

    out = Path(out)
    if "val_accuracy" in history:
        metrics.update(val_accuracy=float(history["val_accuracy"].iloc[-1]),
                       val_loss=float(history["val_loss"].iloc[-1]))
    metrics["summary"] = summary(metrics)
    data = config["data"]
    meta = {"class_names": data["class_names"], "model": config["model"], "recipe": config["recipe"]["name"],
            "dataset": data["dataset"], "precision": config["precision"], "input": MODEL_INPUT,
            "test_accuracy": metrics["test_accuracy"]}
    if "tta_test_accuracy" in metrics:
        meta["tta_test_accuracy"] = metrics["tta_test_accuracy"]
    save_model(model, out / "model.keras", meta)
    write_text(out / "history.csv", history.to_csv(index=False))
    write_run_plots(out, history, metrics, x_test, y_test, probs)
    save_predictions(out / PREDICTIONS, y_test, probs)  # for the report: the very probabilities measured
    config["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(out / "config.json", config)
    write_json(out / "metrics.json", metrics)  # last: its presence marks a complete run
    checkpoint.finish(out)
    return Run(out, model, history, metrics, config)


def write_run_plots(out: Path, history, metrics: dict, x_test, y_test, probs, n_grid: int = 32) -> None:
    """``accuracy.png``, ``loss.png``, ``confusion.png`` and ``predictions.png`` (the first ``n_grid`` test images)."""
    from cifarlab.evaluation import plots

    best = int(history.loc[history["val_loss"].idxmin(), "epoch"]) if "val_loss" in history else None
    plots.plot_curves(history, "accuracy", out / "accuracy.png", best)
    plots.plot_curves(history, "loss", out / "loss.png", best)
    plots.plot_confusion(metrics["confusion_matrix"], metrics["class_names"], out / "confusion.png",
                         f"confusion matrix (test accuracy {metrics['test_accuracy']:.1%})")
    pred = probs.argmax(axis=1)
    idx = np.arange(min(n_grid, len(y_test)))
    plots.plot_predictions(x_test[idx], y_test[idx], pred[idx], metrics["class_names"], out / "predictions.png",
                           probs[idx, pred[idx]])
