"""Calibration: does a model's confidence match how often it is right?

A model is calibrated when, of all the test images it labels with confidence
near 0.8, about 80 % are right. The reliability diagram plots accuracy against
confidence per bin; the expected calibration error (ECE, Guo et al. 2017) is the
gap between the two averaged over bins, weighted by how many images fall in each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# 15 equal-width confidence bins, as in Guo et al.; fewer hide miscalibration,
# many more leave bins nearly empty on a 10,000-image test set.
BINS = 15
# The largest single-bin gap counts only bins holding at least this share of the
# images: a bin of one or two images has a gap of chance, not of calibration.
MCE_MIN_SHARE = 0.01


def reliability(y_true: np.ndarray, probs: np.ndarray, bins: int = BINS) -> dict:
    """Per-bin confidence and accuracy, and the calibration errors.

    ``y_true`` int ``(N,)``; ``probs`` float ``(N, K)``. Confidence is the top
    probability. Returns JSON-ready data: ``edges`` (bins + 1 floats), per bin
    ``count``, ``confidence`` and ``accuracy`` (``None`` for an empty bin), and
    ``ece`` and ``mce`` (largest gap in a bin holding at least
    ``MCE_MIN_SHARE`` of the images), ``mean_confidence`` and ``accuracy`` over
    all images, all as fractions 0-1.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi]; confidence 0 cannot happen with K >= 1 classes.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    right_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / count
        acc = right_sum / count
    gaps = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    n = max(len(y_true), 1)
    big = count >= MCE_MIN_SHARE * n
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [None if c == 0 else float(v) for c, v in zip(count, mean_conf)],
        "accuracy": [None if c == 0 else float(v) for c, v in zip(count, acc)],
        "ece": float((count / n * gaps).sum()),
        "mce": float(gaps[big].max()) if big.any() else 0.0,
        "mce_min_share": MCE_MIN_SHARE,
        "mean_confidence": float(conf.mean()) if len(conf) else 0.0,
        "accuracy_overall": float(correct.mean()) if len(correct) else 0.0,
        "num_images": int(len(y_true)),
    }


def verdict(rel: dict) -> str:
    """One sentence on the calibration, for people: over- or under-confident, by how much."""
    gap = rel["mean_confidence"] - rel["accuracy_overall"]
    if abs(gap) < 0.02 and rel["ece"] < 0.03:
        return (f"Well calibrated: mean confidence {rel['mean_confidence']:.1%} against accuracy "
                f"{rel['accuracy_overall']:.1%}.")
    side = "over-confident" if gap > 0 else "under-confident"
    return (f"{side.capitalize()}: mean confidence {rel['mean_confidence']:.1%} against accuracy "
            f"{rel['accuracy_overall']:.1%} ({abs(gap):.1%} {'too sure' if gap > 0 else 'too unsure'} on average).")


def plot_reliability(rels: dict[str, dict], path: Path) -> Path:
    """Reliability diagram (accuracy per confidence bin vs the diagonal) with a confidence histogram.

    ``rels`` maps a label (a run's name) to :func:`reliability` output; several
    runs share the axes for comparison.
    """
    from cifarlab.evaluation.plots import _plt, _save

    plt = _plt()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for i, (label, rel) in enumerate(rels.items()):
        edges = np.asarray(rel["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        width = (edges[1] - edges[0]) / max(len(rels), 1)
        acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
        offset = (i - (len(rels) - 1) / 2) * width
        ax.bar(centres + offset, np.nan_to_num(acc), width=width * 0.95, alpha=0.75,
               label=f"{label} (ECE {rel['ece']:.3f})", edgecolor="black", linewidth=0.4)
        hist.bar(centres + offset, rel["count"], width=width * 0.95, alpha=0.75)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.set_title("reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hist.set_xlabel("confidence (top probability)")
    hist.set_ylabel("images")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
