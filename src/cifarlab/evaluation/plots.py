"""Pictures of a run: learning curves, confusion heat map, image grids. All PNG, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarlab.fileio import atomic_path


def _plt():
    import matplotlib

    if "inline" not in matplotlib.get_backend():  # a notebook keeps its inline plots
        matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_curves(history, metric: str, path: Path, best_epoch: int | None = None) -> Path:
    """Train vs validation ``metric`` ("accuracy" or "loss") per epoch; ``history`` a DataFrame."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    epochs = history["epoch"] if "epoch" in history else np.arange(1, len(history) + 1)
    ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
    if f"val_{metric}" in history:
        ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_confusion(cm, class_names: list[str], path: Path, title: str = "confusion matrix") -> Path:
    """Heat map of a confusion matrix (rows: true class, columns: predicted), counts annotated."""
    import seaborn as sns

    plt = _plt()
    k = len(class_names)
    size = max(6.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size * 1.2, size))
    sns.heatmap(np.asarray(cm), annot=k <= 20, fmt="d", cmap="viridis", xticklabels=class_names,
                yticklabels=class_names, ax=ax, cbar_kws={"label": "images"})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _save(fig, path)


def plot_grid(images: np.ndarray, labels: list[str], path: Path, colors: list[str] | None = None,
              cols: int = 8) -> Path:
    """A grid of uint8 ``(N, H, W, 3)`` images, each titled by ``labels[i]`` (up to two lines).

    One mosaic in one Axes, the titles placed in a band above each image: 32 subplots laid out by
    ``tight_layout`` took 3x as long, and every run directory draws one."""
    plt = _plt()
    n, h, w = images.shape[:3]
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    band, gap = round(0.28 * h), round(0.125 * w)  # pixels: the titles above each image, the space beside it
    cell_h, cell_w = h + band, w + gap
    mosaic = np.full((rows * cell_h, cols * cell_w - gap, 3), 255, np.uint8)
    inch = 1.5 / w  # an image 1.5 inches wide, square pixels
    fig = plt.figure(figsize=(mosaic.shape[1] * inch, mosaic.shape[0] * inch))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    for i, img in enumerate(images):
        top, left = divmod(i, cols)
        top, left = top * cell_h, left * cell_w
        mosaic[top + band:top + cell_h, left:left + w] = img
        ax.text(left + w / 2, top + band - 0.5, labels[i], ha="center", va="bottom", fontsize=7,
                color=colors[i] if colors else "black")
    ax.imshow(mosaic, interpolation="nearest")  # once the loop has filled it
    return _save(fig, path)


def plot_predictions(images, y_true, y_pred, class_names, path: Path, probs=None) -> Path:
    """Grid of images titled 'true / predicted (p)', green where right, red where wrong."""
    labels, colors = [], []
    for i in range(len(images)):
        t, p = class_names[y_true[i]], class_names[y_pred[i]]
        conf = f" {probs[i]:.0%}" if probs is not None else ""
        labels.append(f"{t}\n→ {p}{conf}")
        colors.append("green" if y_true[i] == y_pred[i] else "red")
    return plot_grid(images, labels, path, colors)
