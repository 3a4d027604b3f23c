"""One self-contained HTML report of a training run (``cifarlab report``).

Everything the user needs to judge a run on one page, images embedded as base64
PNG so the file can be mailed or opened offline: configuration and final
metrics, learning curves, per-class scores worst first, the confusion heat map
with the most-confused pairs in words, the most confidently wrong test images,
correct examples per class, Grad-CAM heat maps, calibration, and optionally a
second run side by side.

Test-set predictions come from ``test_predictions.npz`` in the run directory
(written by ``cifarlab train``: the exact probabilities ``metrics.json`` was
computed from, so the report and the metrics always agree, and a compared run
needs neither its model run again nor its data), or are recomputed from the
model for runs without it. The test *images* (for the galleries and Grad-CAM)
are read from the run's data source, as ``cifarlab evaluate`` does.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.evaluation.metrics import headline
from cifarlab.fileio import atomic_path, write_text

PREDICTIONS = "test_predictions.npz"
REPORT = "report.html"
# What a run directory must hold for a report, and what each file is, for the error message.
REQUIRED = {"config.json": "run configuration", "metrics.json": "test metrics",
            "history.csv": "training history", "model.keras": "trained model"}

# How much of each gallery to show: enough to see patterns, little enough that the
# page stays a few MB and builds in seconds on a CPU.
N_WRONG = 24  # most confidently wrong test images
N_PER_CLASS = 6  # correct examples per class (classes beyond MAX_CLASSES_GRID are left out)
MAX_CLASSES_GRID = 20
N_GRADCAM = 8  # Grad-CAM: this many right and this many wrong images
N_CONFUSED = 8  # most-confused pairs listed in words
SAMPLE_SEED = 0  # which examples are drawn: fixed, so a report is reproducible
IMAGE_SCALE = 3  # 32x32 pixels are shown as 96x96, without smoothing


@dataclass
class RunData:
    """A run directory read for the report. Arrays: ``y_test`` int ``(N,)``, ``probs`` float32 ``(N, K)``."""

    path: Path
    config: dict
    metrics: dict
    history: object  # pandas.DataFrame, one row per epoch
    model: object | None  # keras.Model
    y_test: np.ndarray
    probs: np.ndarray
    x_test: np.ndarray | None  # uint8 (N, 32, 32, 3); None where not needed

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics["class_names"])


# ---------------------------------------------------------------- predictions file


def save_predictions(path: str | os.PathLike, y_true: np.ndarray, probs: np.ndarray) -> Path:
    """Write test labels and probabilities compactly (compressed ``.npz``, atomically).

    ``y_true`` int ``(N,)``, ``probs`` float ``(N, K)``; stored as int16 and float32
    (about 0.4 MB for CIFAR-10's test set).
    """
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, y_true=np.asarray(y_true, dtype=np.int16),
                            probs=np.asarray(probs, dtype=np.float32))
    return path


def load_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true int64 (N,), probs float32 (N, K))`` from :func:`save_predictions`; one-line error if corrupt."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            y, probs = z["y_true"].astype(np.int64), z["probs"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise CifarlabError(f"{path}: corrupt test predictions ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                            "delete it to recompute them from the model") from None
    if probs.ndim != 2 or y.shape != (len(probs),) or (len(y) and (y.min() < 0 or y.max() >= probs.shape[1])):
        raise CifarlabError(f"{path}: corrupt test predictions (labels {y.shape}, probabilities {probs.shape}); "
                            "delete it to recompute them from the model")
    return y, probs


# ---------------------------------------------------------------- reading a run


def _read_json(path: Path, what: str, keys: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CifarlabError(f"{path}: corrupt {what} ({str(e).splitlines()[0][:120]})") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CifarlabError(f"{path}: corrupt {what} (no {', '.join(missing)})")
    return obj


def _read_history(path: Path):
    import pandas as pd

    try:
        h = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CifarlabError(f"{path}: corrupt training history ({str(e).splitlines()[0][:120]})") from None
    missing = [c for c in ("loss", "accuracy") if c not in h.columns]
    if missing or h.empty:
        raise CifarlabError(f"{path}: corrupt training history ({'no rows' if h.empty else 'no ' + ', '.join(missing)})")
    if "epoch" not in h.columns:
        h.insert(0, "epoch", np.arange(1, len(h) + 1))
    return h


def _check_metrics(path: Path, m: dict) -> None:
    try:
        names = [str(n) for n in m["class_names"]]
        cm = np.asarray(m["confusion_matrix"], dtype=np.int64)
        ok = (len(names) >= 2 and cm.shape == (len(names), len(names))
              and all(m["per_class"][n]["support"] >= 0 for n in names))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CifarlabError(f"{path}: corrupt test metrics (class names, per-class scores and confusion matrix "
                            "do not agree)")


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """The run directory as a Path, or a one-line error naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CifarlabError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise CifarlabError(f"{run_dir}: not a run directory (a folder written by cifarlab train)")
    missing = [f"{f} ({what})" for f, what in REQUIRED.items() if not (run_dir / f).is_file()]
    if missing:
        raise CifarlabError(f"{run_dir}: incomplete run directory, missing {', '.join(missing)}")
    return run_dir


def runs_in(folder: str | os.PathLike) -> list[Path]:
    """The complete runs (sub-folders with ``metrics.json``) in ``folder``, oldest first (by start time, then name)."""
    def started(p: Path) -> str:
        try:
            return str(json.loads((p / "config.json").read_text()).get("started", ""))
        except (OSError, ValueError, AttributeError):
            return ""

    return sorted((p.parent for p in Path(folder).glob("*/metrics.json")), key=lambda p: (started(p), p.name))


def load_run(run_dir: str | os.PathLike, data: str | os.PathLike | None = None, images: bool = True,
             test_set: tuple[np.ndarray, np.ndarray] | None = None, quiet: bool = True) -> RunData:
    """Read a run directory: configuration, metrics, history, model and test predictions.

    ``images``: also load the test images (for galleries and Grad-CAM) from
    ``test_set`` (uint8 ``x (N, 32, 32, 3)``, int ``y (N,)``) if given, else from
    ``data`` or the run's own data source. Every problem is one
    :class:`CifarlabError` naming the file.
    """
    from cifarlab.models.io import load_model

    run_dir = check_run_dir(run_dir)
    config = _read_json(run_dir / "config.json", "run configuration", ("data",))
    metrics = _read_json(run_dir / "metrics.json", "test metrics",
                         ("test_accuracy", "test_loss", "per_class", "macro_avg", "confusion_matrix", "class_names"))
    _check_metrics(run_dir / "metrics.json", metrics)
    history = _read_history(run_dir / "history.csv")
    model, _ = load_model(run_dir / "model.keras")
    k = len(metrics["class_names"])
    if int(model.output_shape[-1]) != k:
        raise CifarlabError(f"{run_dir / 'model.keras'}: predicts {model.output_shape[-1]} classes but "
                            f"metrics.json names {k}")

    saved = load_predictions(run_dir / PREDICTIONS) if (run_dir / PREDICTIONS).is_file() else None
    x_test = y_test = None
    if test_set is not None:
        x_test, y_test = np.asarray(test_set[0]), np.asarray(test_set[1], dtype=np.int64)
    elif images or saved is None:
        x_test, y_test = _test_images(run_dir, config, data, quiet)
    if saved is not None:
        y_saved, probs = saved
        if probs.shape[1] != k:
            raise CifarlabError(f"{run_dir / PREDICTIONS}: {probs.shape[1]} classes, but metrics.json names {k}")
        if y_test is not None and (len(y_test) != len(y_saved) or not np.array_equal(y_test, y_saved)):
            raise CifarlabError(f"the test set read now ({len(y_test):,} images) is not the one {run_dir.name} "
                                f"was evaluated on ({len(y_saved):,}); pass the run's data with --data")
        y_test = y_saved
    else:
        from cifarlab.inference.predict import predict_arrays

        probs = predict_arrays(model, x_test)
    return RunData(run_dir, config, metrics, history, model, y_test, probs, x_test if images else None)


def _test_images(run_dir: Path, config: dict, data, quiet: bool) -> tuple[np.ndarray, np.ndarray]:
    from cifarlab.inference.testset import run_test_set

    ds = run_test_set(run_dir, config.get("data") or {}, data, quiet)
    return ds.x_test, ds.y_test


# ---------------------------------------------------------------- pictures as data URIs


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_RUN_FIGURE_BYTES = 4 << 20  # a run's curves and heat map are ~50-150 KB; anything larger is not ours


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_uri(pixels: np.ndarray, scale: int = IMAGE_SCALE) -> str:
    """A uint8 ``(H, W, 3)`` image as an enlarged PNG data URI (nearest neighbour: the pixels are the data)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return png_data_uri(buf.getvalue())


def figure_uri(draw) -> str:
    """Run ``draw(path)`` (one of the ``plots`` functions, which write a PNG file) and embed the result."""
    with tempfile.TemporaryDirectory(prefix="cifarlab-report-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return png_data_uri(path.read_bytes())


def run_figure(run: RunData, name: str, draw) -> str:
    """The run directory's own picture ``name`` embedded (training wrote it with the same ``plots`` call, and
    a finished run is never rewritten), or ``figure_uri(draw)`` where the run has no such PNG."""
    path = run.path / name
    try:
        if path.stat().st_size <= MAX_RUN_FIGURE_BYTES:
            png = path.read_bytes()
            if png.startswith(PNG_SIGNATURE):
                return png_data_uri(png)
    except OSError:
        pass
    return figure_uri(draw)


# ---------------------------------------------------------------- the sections


def best_epoch(history) -> int | None:
    """The epoch with the lowest validation loss (what early stopping watches), 1-based."""
    if "val_loss" not in history or history["val_loss"].isna().all():
        return None
    return int(history.loc[history["val_loss"].idxmin(), "epoch"])


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m} min {s} s" if h else f"{m} min {s} s"


def _wall_time(config: dict) -> str | None:
    try:
        t0 = datetime.fromisoformat(config["started"])
        t1 = datetime.fromisoformat(config["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return _duration((t1 - t0).total_seconds())


def _param_count(model) -> str:
    try:
        return f"{int(model.count_params()):,}"
    except Exception:  # noqa: BLE001 - an unbuilt model has no count; it is a nicety
        return "?"


def _recipe_options(config: dict) -> dict:
    """The recipe's per-trainer options from a run's config.json (runs before the split kept them flat)."""
    r = config.get("recipe") or {}
    return r.get("options") or r


def summary_rows(run: RunData, ece: float) -> tuple[list, list]:
    """(configuration rows, final-metric rows) as (label, value) string pairs."""
    c, m = run.config, run.metrics
    r, d, env = c.get("recipe") or {}, c.get("data") or {}, c.get("environment") or {}
    req = c.get("request") or {}
    epochs_asked = r.get("epochs")
    o = _recipe_options(c)
    stop = (f", early stopping on {o.get('monitor')} (patience {o['early_stopping_patience']}"
            f"{', best weights restored' if o.get('restore_best_weights') else ''})"
            if o.get("early_stopping_patience") is not None else "")
    cfg = [
        ("model", f"{c.get('model', '?')} ({_param_count(run.model)} parameters)"),
        ("recipe", f"{r.get('name', '?')}: {r.get('optimizer', '?')}, learning rate {r.get('learning_rate', '?')}, "
                   f"batch size {r.get('batch_size', '?')}, up to {epochs_asked} epochs{stop}"),
        ("precision", str(c.get("precision", "?"))),
        ("data source", str(d.get("source", "?"))),
        ("dataset", f"{d.get('dataset', '?')} ({d.get('format', '?')}), {len(run.class_names)} classes"),
        ("images", f"{d.get('num_train', 0):,} train, {d.get('num_val', 0):,} validation "
                   f"({'held out of train' if d.get('validation') == 'holdout' else 'the test set itself'}), "
                   f"{d.get('num_test', len(run.y_test)):,} test"
                   + (f"; first {d['limit']:,} training images only" if d.get("limit") else "")),
        ("seed", f"{req.get('seed', '?')}{' (deterministic ops)' if req.get('deterministic') else ''}"),
        ("started", f"{c.get('started', '?')} (finished {c.get('finished', '?')})"),
        ("wall time", f"{_wall_time(c) or '?'} in all, {_duration(m.get('train_seconds'))} training, "
                      f"{m.get('train_images_per_second', '?')} images/s"),
        ("software", ", ".join(f"{k} {env[k]}" for k in ("cifarlab", "tensorflow", "jax", "torch", "keras", "python")
                                if k in env)
         + (f"; GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else "; CPU only" if "gpus" in env else "")),
        ("command", " ".join(c["command"]) if c.get("command") else "Python API"),
    ]
    final = [
        *([("test accuracy with TTA", f"{m['tta_test_accuracy']:.2%}")] if m.get("tta_test_accuracy") is not None else []),
        ("test accuracy", f"{m['test_accuracy']:.2%}"),
        ("test loss", f"{m['test_loss']:.4f}"),
        ("macro F1", f"{m.get('macro_avg', {}).get('f1', float('nan')):.3f}"),
        ("validation accuracy", f"{m['val_accuracy']:.2%}" if "val_accuracy" in m else "?"),
        ("validation loss", f"{m['val_loss']:.4f}" if "val_loss" in m else "?"),
        ("epochs trained", str(m.get("epochs", len(run.history)))),
        ("expected calibration error", f"{ece:.3f}"),
    ]
    return cfg, final


def per_class_rows(metrics: dict) -> list[dict]:
    """Per-class scores, worst F1 first, with the class each is most often mistaken for."""
    names = metrics["class_names"]
    cm = np.asarray(metrics["confusion_matrix"])
    rows = []
    for i, n in enumerate(names):
        s = metrics["per_class"][n]
        off = cm[i].copy()
        off[i] = 0
        j = int(off.argmax())
        rows.append({"name": n, "precision": s["precision"], "recall": s["recall"], "f1": s["f1"],
                     "support": s["support"],
                     "confused": f"{names[j]} ({off[j]:,})" if off[j] > 0 else "-"})
    return sorted(rows, key=lambda r: (r["f1"], r["recall"]))


def confused_pairs(metrics: dict, top: int = N_CONFUSED) -> list[str]:
    """The most-confused pairs in words: ``"cat → dog: 217 of 1,000 (21.7 %)"``."""
    from cifarlab.evaluation.metrics import most_confused

    return [f"{t} → {p}: {n:,} of {total:,} ({n / total:.1%})"
            for t, p, n, total in most_confused(metrics, top) if total]


def _caption(run: RunData, i: int) -> dict:
    names = run.class_names
    pred = int(run.probs[i].argmax())
    return {"index": int(i), "true": names[run.y_test[i]], "pred": names[pred],
            "prob": float(run.probs[i, pred]), "right": bool(pred == run.y_test[i])}


def wrong_gallery(run: RunData, n: int = N_WRONG) -> list[dict]:
    """The ``n`` test images the model got wrong with the highest confidence."""
    pred = run.probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != run.y_test)
    order = wrong[np.argsort(-run.probs[wrong, pred[wrong]], kind="stable")][:n]
    return [{**_caption(run, i), "src": image_uri(run.x_test[i])} for i in order]


def correct_grid(run: RunData, per_class: int = N_PER_CLASS) -> list[dict]:
    """Per class, up to ``per_class`` correctly classified test images drawn at random (fixed seed)."""
    rng = np.random.default_rng(SAMPLE_SEED)
    pred = run.probs.argmax(axis=1)
    rows = []
    for c, name in enumerate(run.class_names[:MAX_CLASSES_GRID]):
        right = np.flatnonzero((run.y_test == c) & (pred == c))
        pick = np.sort(rng.choice(right, size=min(per_class, len(right)), replace=False)) if len(right) else []
        rows.append({"name": name, "total": int((run.y_test == c).sum()), "right": len(right),
                     "images": [{**_caption(run, i), "src": image_uri(run.x_test[i])} for i in pick]})
    return rows


def gradcam_gallery(run: RunData, n: int = N_GRADCAM) -> tuple[list[dict], str]:
    """Grad-CAM over ``n`` right and ``n`` wrong test images (random, fixed seed).

    Wrong images get two maps: what made the model say the predicted class, and
    where it saw the true one. Returns (items, the layer used).
    """
    from cifarlab.evaluation.gradcam import gradcam, last_conv_layer, overlay

    layer = last_conv_layer(run.model)
    rng = np.random.default_rng(SAMPLE_SEED)
    pred = run.probs.argmax(axis=1)
    right, wrong = np.flatnonzero(pred == run.y_test), np.flatnonzero(pred != run.y_test)
    picks = [np.sort(rng.choice(g, size=min(n, len(g)), replace=False)) for g in (right, wrong)]
    idx = np.concatenate(picks).astype(np.int64)
    if not len(idx):
        return [], layer.name
    x = run.x_test[idx]
    heat_pred = gradcam(run.model, x, pred[idx], layer=layer)
    heat_true = gradcam(run.model, x, run.y_test[idx], layer=layer)
    items = []
    for k, i in enumerate(idx):
        item = {**_caption(run, i), "src": image_uri(x[k]), "cam_pred": image_uri(overlay(x[k], heat_pred[k]), 1)}
        if not item["right"]:
            item["cam_true"] = image_uri(overlay(x[k], heat_true[k]), 1)
        items.append(item)
    return items, layer.name


def _plot_compare_curves(runs: list[RunData], path: Path) -> Path:
    from cifarlab.evaluation.plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for i, run in enumerate(runs):
            h, colour = run.history, f"C{i}"
            ax.plot(h["epoch"], h[metric], color=colour, linestyle=":", marker=".", label=f"{run.name} train")
            if f"val_{metric}" in h:
                ax.plot(h["epoch"], h[f"val_{metric}"], color=colour, marker="o", label=f"{run.name} validation")
            b = best_epoch(h)
            if b is not None:
                ax.axvline(b, color=colour, linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch (dashed: best epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def comparison(run: RunData, other: RunData, rel: dict, rel_other: dict) -> dict:
    """The two runs side by side: headline metrics, per-class F1, curves, confusion, agreement."""
    from cifarlab.evaluation import plots

    m, o = run.metrics, other.metrics

    def row(label, a, b, fmt, higher_better=True):
        diff = None if a is None or b is None else a - b
        good = None if diff is None or diff == 0 or higher_better is None else (diff > 0) == higher_better
        return {"label": label, "a": "?" if a is None else fmt(a), "b": "?" if b is None else fmt(b),
                "diff": "" if diff is None else ("+" if diff > 0 else "") + fmt(diff), "good": good}

    pct, f4 = (lambda v: f"{v:.2%}"), (lambda v: f"{v:.4f}")
    rows = [
        row("test accuracy", m["test_accuracy"], o["test_accuracy"], pct),
        row("test loss", m["test_loss"], o["test_loss"], f4, higher_better=False),
        row("macro F1", m.get("macro_avg", {}).get("f1"), o.get("macro_avg", {}).get("f1"), lambda v: f"{v:.3f}"),
        row("expected calibration error", rel["ece"], rel_other["ece"], lambda v: f"{v:.3f}", higher_better=False),
        row("epochs", m.get("epochs"), o.get("epochs"), lambda v: f"{v:g}", higher_better=None),
        row("training time (s)", m.get("train_seconds"), o.get("train_seconds"), lambda v: f"{v:,.0f}",
            higher_better=False),
    ]
    info = [("model", run.config.get("model", "?"), other.config.get("model", "?")),
            ("recipe", (run.config.get("recipe") or {}).get("name", "?"),
             (other.config.get("recipe") or {}).get("name", "?")),
            ("precision", run.config.get("precision", "?"), other.config.get("precision", "?")),
            ("parameters", _param_count(run.model), _param_count(other.model))]
    classes = []
    if run.class_names == other.class_names:
        for n in run.class_names:
            classes.append(row(n, m["per_class"][n]["f1"], o["per_class"][n]["f1"], lambda v: f"{v:.3f}"))
        classes.sort(key=lambda r: float(r["diff"] or 0))
    agreement = None
    if len(run.y_test) == len(other.y_test) and np.array_equal(run.y_test, other.y_test):
        a = run.probs.argmax(1) == run.y_test
        b = other.probs.argmax(1) == other.y_test
        agreement = {"both": int((a & b).sum()), "only_a": int((a & ~b).sum()), "only_b": int((~a & b).sum()),
                     "neither": int((~a & ~b).sum()), "total": len(a)}
    return {
        "name": other.name, "rows": rows, "info": info, "classes": classes, "agreement": agreement,
        "curves": figure_uri(lambda p: _plot_compare_curves([run, other], p)),
        "confusion_b": figure_uri(lambda p: plots.plot_confusion(
            o["confusion_matrix"], o["class_names"], p, f"{other.name} (test accuracy {o['test_accuracy']:.1%})")),
        "pairs_b": confused_pairs(o, 5),
    }


# ---------------------------------------------------------------- assembling the page


def render(run: RunData, other: RunData | None = None) -> str:
    """The report as one HTML string (every image inline)."""
    import jinja2

    from cifarlab import __version__
    from cifarlab.evaluation import plots
    from cifarlab.evaluation.calibration import plot_reliability, reliability, verdict

    m = run.metrics
    rel = reliability(run.y_test, run.probs)
    best = best_epoch(run.history)
    cfg_rows, final_rows = summary_rows(run, rel["ece"])
    cams, cam_layer = gradcam_gallery(run)
    rels = {run.name: rel}
    cmp = None
    if other is not None:
        rel_other = reliability(other.y_test, other.probs)
        rels[other.name] = rel_other
        cmp = comparison(run, other, rel, rel_other)
    h = run.history
    best_row = h[h["epoch"] == best].iloc[0] if best is not None else None
    env = jinja2.Environment(loader=jinja2.PackageLoader("cifarlab.evaluation", "templates"),
                             autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        title=f"cifarlab report: {run.name}",
        run=run, headline=headline(run.metrics), version=__version__, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        cfg_rows=cfg_rows, final_rows=final_rows,
        best=best, best_row=best_row, epochs=len(h),
        restored=bool(_recipe_options(run.config).get("restore_best_weights")),
        acc_curve=run_figure(run, "accuracy.png", lambda p: plots.plot_curves(h, "accuracy", p, best)),
        loss_curve=run_figure(run, "loss.png", lambda p: plots.plot_curves(h, "loss", p, best)),
        classes=per_class_rows(m),
        confusion=run_figure(run, "confusion.png", lambda p: plots.plot_confusion(
            m["confusion_matrix"], m["class_names"], p, f"confusion matrix (test accuracy {m['test_accuracy']:.1%})")),
        pairs=confused_pairs(m),
        wrong=wrong_gallery(run), n_wrong=int((run.probs.argmax(1) != run.y_test).sum()),
        grid=correct_grid(run), n_grid_left=max(0, len(run.class_names) - MAX_CLASSES_GRID),
        cams=cams, cam_layer=cam_layer,
        rel=rel, rel_text=verdict(rel), reliability=figure_uri(lambda p: plot_reliability(rels, p)),
        cmp=cmp,
    )


def build_report(run_dir: str | os.PathLike, output: str | os.PathLike | None = None,
                 compare: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                 test_set: tuple[np.ndarray, np.ndarray] | None = None, quiet: bool = True) -> Path:
    """Write the HTML report of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``) atomically.

    ``compare``: a second run directory shown side by side. ``data``: where the
    test images are, if not where the run was trained from. ``test_set``: the test
    images and labels already in memory (``cifarlab train`` passes them).

    ``run_dir`` may also be a folder of runs (such as ``runs/``): the newest is
    reported, side by side with the one before it unless ``compare`` names another.
    """
    folder = Path(run_dir)
    if folder.is_dir() and not (folder / "metrics.json").exists() and runs_in(folder):
        runs = runs_in(folder)
        run_dir, output = runs[-1], output if output is not None else folder / REPORT
        if compare is None and len(runs) > 1:
            compare = runs[-2]
    # Mistakes in the arguments first, before any model or data is read.
    out = Path(output) if output is not None else Path(run_dir) / REPORT
    if out.suffix.lower() not in (".html", ".htm"):
        raise CifarlabError(f"the report is an HTML file: give -o a name ending in .html, not {out}")
    if compare is not None:
        if Path(compare).resolve() == Path(run_dir).resolve():
            raise CifarlabError(f"--compare names the same run as the report ({compare})")
        check_run_dir(compare)
    run = load_run(run_dir, data=data, test_set=test_set, quiet=quiet)
    other = None
    if compare is not None:
        other = load_run(compare, data=data, images=False, quiet=quiet,
                         test_set=_shared_test_set(run, Path(compare), data))
    write_text(out, render(run, other))
    return out


def _shared_test_set(run: RunData, other_dir: Path, data) -> tuple[np.ndarray, np.ndarray] | None:
    """The report's test images for the compared run when it must predict and reads the same data."""
    if (other_dir / PREDICTIONS).is_file() or run.x_test is None:
        return None
    cfg = _read_json(other_dir / "config.json", "run configuration", ("data",))
    same = data is not None or (cfg.get("data") or {}).get("source") == (run.config.get("data") or {}).get("source")
    return (run.x_test, run.y_test) if same else None
