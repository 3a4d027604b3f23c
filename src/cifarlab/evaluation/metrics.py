"""Metrics from predicted probabilities: loss, accuracy, per-class scores, confusion."""

from __future__ import annotations

import numpy as np

# Keras clips probabilities at this epsilon in its cross-entropy; we do the same so
# test_loss here matches what model.evaluate would print.
EPSILON = 1e-7


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """All test metrics as JSON-ready data.

    ``y_true`` int ``(N,)``; ``probs`` float ``(N, K)`` rows summing to 1.
    Returns ``test_loss`` (mean cross-entropy, nats), ``test_accuracy`` (0-1),
    ``per_class`` {name: precision, recall, f1, support}, ``macro_avg``,
    ``weighted_avg``, ``confusion_matrix`` (K x K ints, rows = true class) and
    ``class_names``.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    k = len(class_names)
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], EPSILON, 1.0)
    rep = classification_report(y_true, pred, labels=list(range(k)), target_names=class_names,
                                output_dict=True, zero_division=0)
    cm = confusion_matrix(y_true, pred, labels=list(range(k)))

    def scores(d):
        return {"precision": d["precision"], "recall": d["recall"], "f1": d["f1-score"], "support": int(d["support"])}

    return {
        "test_loss": float(-np.log(p_true).mean()),
        "test_accuracy": float((pred == y_true).mean()),
        "num_images": int(len(y_true)),
        "per_class": {name: scores(rep[name]) for name in class_names},
        "macro_avg": scores(rep["macro avg"]),
        "weighted_avg": scores(rep["weighted avg"]),
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def summary(metrics: dict) -> dict:
    """The run's headline figure: the test accuracy its recipe is defined by (with test-time augmentation
    where the run measured it, ``tta_test_accuracy``), and the plain one beside it.

    ``{"test_accuracy", "evaluation": "tta" | "plain", "plain_test_accuracy"}``, fractions 0-1."""
    if metrics.get("tta_test_accuracy") is not None:
        return {"test_accuracy": metrics["tta_test_accuracy"], "evaluation": "tta",
                "plain_test_accuracy": metrics["test_accuracy"]}
    return {"test_accuracy": metrics["test_accuracy"], "evaluation": "plain",
            "plain_test_accuracy": metrics["test_accuracy"]}


def headline(metrics: dict) -> str:
    """The headline in words, e.g. "90.74 % with test-time augmentation (89.76 % plain)"."""
    s = summary(metrics)
    if s["evaluation"] == "tta":
        return (f"{s['test_accuracy']:.2%} with test-time augmentation ({s['plain_test_accuracy']:.2%} plain)"
                .replace("%", " %"))
    return f"{s['test_accuracy']:.2%}".replace("%", " %")


def format_report(metrics: dict) -> str:
    """The classification report and confusion matrix as text, with class names."""
    import pandas as pd

    names = metrics["class_names"]
    rows = {n: metrics["per_class"][n] for n in names}
    rows["macro avg"] = metrics["macro_avg"]
    rows["weighted avg"] = metrics["weighted_avg"]
    table = pd.DataFrame(rows).T[["precision", "recall", "f1", "support"]]
    table["support"] = table["support"].astype(int)
    cm = pd.DataFrame(metrics["confusion_matrix"], index=names, columns=names)
    cm.index.name = "true \\ predicted"
    with pd.option_context("display.width", 250, "display.max_columns", 200):
        return (
            f"test accuracy {metrics['test_accuracy']:.4f}   test loss {metrics['test_loss']:.4f}   "
            f"({metrics['num_images']:,} images)\n\n"
            f"{table.to_string(float_format=lambda v: f'{v:.3f}')}\n\n"
            f"confusion matrix (rows: true class, columns: predicted)\n{cm.to_string()}\n"
        )


def most_confused(metrics: dict, top: int = 5) -> list[tuple[str, str, int, int]]:
    """The largest off-diagonal confusion cells: (true, predicted, count, true-class total)."""
    cm = np.asarray(metrics["confusion_matrix"])
    names = metrics["class_names"]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    out = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] > 0:
            out.append((names[i], names[j], int(off[i, j]), int(cm[i].sum())))
    return out
