"""Train a model by recipe and write a complete run directory.

A run directory holds:

- ``config.json``   everything needed to rerun (``cifarlab train --config``), plus versions
- ``model.keras``   the trained model, with class names inside (see ``models.io``)
- ``history.csv``   one row per epoch: loss, accuracy, val_loss, val_accuracy, seconds
- ``metrics.json``  test loss/accuracy, per-class precision/recall/F1, confusion matrix
- ``accuracy.png``, ``loss.png``, ``confusion.png``, ``predictions.png``

Each file is written atomically; ``metrics.json`` is written last, so a run
directory without it never looks complete. A run that fails or is interrupted
removes the directory it created.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.fileio import write_json, write_text

RUNS_ROOT = "runs"


@dataclass
class TrainConfig:
    """What a user asks of ``cifarlab train``; ``None`` means "the recipe's value"."""

    model: str | None = None  # None: the recipe's model
    recipe: str = "fast"
    data: str | None = None
    dataset: str = "cifar10"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    precision: str | None = None
    seed: int = 0
    deterministic: bool = False  # TensorFlow op determinism: identical results on one machine
    limit: int | None = None
    validate_on: str = "holdout"
    val_fraction: float = 0.1
    coarse: bool = False
    out: str | None = None
    quiet: bool = False

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            saved = json.loads(Path(path).read_text())
            fields = saved.get("request", saved)
            return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as e:
            raise CifarlabError(f"{path}: not a cifarlab config.json ({e})") from None


@dataclass
class Run:
    """The result of :func:`train`: where it went and what it measured."""

    run_dir: Path
    model: object  # keras.Model
    history: object  # pandas.DataFrame, one row per epoch
    metrics: dict
    config: dict = field(default_factory=dict)


def _check(cfg: TrainConfig, recipe) -> None:
    for name in ("epochs", "batch_size", "limit"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise CifarlabError(f"--{name.replace('_', '-')} must be a positive whole number, not {v!r}")
    if cfg.lr is not None and not (0 < cfg.lr < 10):
        raise CifarlabError(f"--lr must be a positive learning rate below 10, not {cfg.lr!r}")
    if not 0 < cfg.val_fraction < 1:
        raise CifarlabError(f"validation fraction must be between 0 and 1, not {cfg.val_fraction!r}")


def default_run_dir(model: str, recipe: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_ROOT) / f"{stamp}-{model}-{recipe}"


def _claim_run_dir(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CifarlabError(f"{out} already exists and is not empty; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CifarlabError(f"cannot write run directory {out}: {e.strerror or e}") from None
    return out


def environment() -> dict:
    import tensorflow as tf

    from cifarlab import __version__

    return {
        "cifarlab": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
        "keras": keras.__version__, "numpy": np.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def train(config: TrainConfig | None = None, **kwargs) -> Run:
    """Train, evaluate on the test set once, and write the run directory.

    Accepts a :class:`TrainConfig` or its fields as keyword arguments, e.g.
    ``train(recipe="seed", data="cifar-10-binary.tar.gz", limit=2000, epochs=1)``.
    """
    from cifarlab.registry import get_model, get_recipe

    cfg = config or TrainConfig(**kwargs)
    recipe = get_recipe(cfg.recipe).with_overrides(
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.lr, precision=cfg.precision)
    model_name = cfg.model or recipe.model
    spec = get_model(model_name)
    _check(cfg, recipe)

    from cifarlab.data import load_dataset
    from cifarlab.training import precision as prec

    resolved_precision = prec.resolve(recipe.precision)
    data = load_dataset(cfg.data, dataset=cfg.dataset, validate_on=cfg.validate_on, val_fraction=cfg.val_fraction,
                        limit=cfg.limit, coarse=cfg.coarse, seed=cfg.seed, quiet=cfg.quiet)
    out = _claim_run_dir(Path(cfg.out) if cfg.out else default_run_dir(model_name, recipe.name))
    try:
        return _train_in(out, cfg, recipe, spec, data, resolved_precision)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _train_in(out: Path, cfg: TrainConfig, recipe, spec, data, precision: str) -> Run:
    import pandas as pd
    import tensorflow as tf

    from cifarlab.evaluation.metrics import classification_metrics
    from cifarlab.models.io import save_model
    from cifarlab.training import precision as prec

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    prec.apply(precision)
    started = datetime.now(timezone.utc)
    config = {
        "request": asdict(cfg),
        "model": spec.name,
        "recipe": recipe.to_dict(),
        "precision": precision,
        "data": {"source": data.source, "dataset": data.name, "format": data.format,
                 "validation": data.validation, "num_train": len(data.y_train), "num_val": len(data.y_val),
                 "num_test": len(data.y_test), "class_names": data.class_names, **data.info},
        "command": sys.argv if Path(sys.argv[0]).name in ("cifarlab", "__main__.py") else None,
        "started": started.isoformat(timespec="seconds"),
        "environment": environment(),
    }
    write_json(out / "config.json", config)
    if recipe.trainer == "fast":  # the compiled custom loop of the fast/quick recipes
        from cifarlab.training.fast import train_in

        return train_in(out, cfg, recipe, spec, data, precision, config)

    model = spec.build(num_classes=data.num_classes)
    model.compile(optimizer=_optimizer(recipe), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [_EpochTimer()]
    if recipe.early_stopping_patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=recipe.monitor, patience=recipe.early_stopping_patience,
            restore_best_weights=recipe.restore_best_weights))
    verbose = 0 if cfg.quiet else (1 if sys.stdout.isatty() else 2)
    t0 = time.perf_counter()
    hist = model.fit(data.x_train, data.y_train, batch_size=recipe.batch_size, epochs=recipe.epochs,
                     validation_data=(data.x_val, data.y_val), callbacks=callbacks, verbose=verbose, shuffle=True)
    train_seconds = time.perf_counter() - t0

    history = pd.DataFrame(hist.history)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    history["seconds"] = callbacks[0].seconds[: len(history)]
    t0 = time.perf_counter()
    probs = model.predict(data.x_test, batch_size=500, verbose=0)
    eval_seconds = time.perf_counter() - t0
    metrics = classification_metrics(data.y_test, probs, data.class_names)
    metrics.update(epochs=len(history), train_seconds=round(train_seconds, 2), eval_seconds=round(eval_seconds, 2),
                   train_images_per_second=round(len(data.y_train) * len(history) / train_seconds, 1),
                   val_accuracy=float(history["val_accuracy"].iloc[-1]), val_loss=float(history["val_loss"].iloc[-1]))

    save_model(model, out / "model.keras", {
        "class_names": data.class_names, "model": spec.name, "recipe": recipe.name, "dataset": data.name,
        "precision": precision, "input": "float32 pixels 0-255, shape (batch, 32, 32, 3), RGB",
        "test_accuracy": metrics["test_accuracy"],
    })
    write_text(out / "history.csv", history.to_csv(index=False))
    write_run_plots(out, history, metrics, data.x_test, data.y_test, probs)
    config["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(out / "config.json", config)
    write_json(out / "metrics.json", metrics)  # last: its presence marks a complete run
    return Run(out, model, history, metrics, config)


def write_run_plots(out: Path, history, metrics: dict, x_test, y_test, probs, n_grid: int = 32) -> None:
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


def _optimizer(recipe):
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=recipe.learning_rate)
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=recipe.learning_rate, momentum=0.9, nesterov=True)
    raise CifarlabError(f"recipe {recipe.name!r}: unknown optimizer {recipe.optimizer!r}")


class _EpochTimer(keras.callbacks.Callback):
    """Wall seconds per epoch, for history.csv."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._t, 3))
