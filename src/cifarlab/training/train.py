"""Train a model by recipe and write a complete run directory.

A run directory holds:

- ``config.json``   everything needed to rerun (``cifarlab train --config``), plus versions
- ``model.keras``   the trained model, with class names inside (see ``models.io``)
- ``history.csv``   one row per epoch: loss, accuracy, val_loss, val_accuracy, seconds
- ``metrics.json``  test loss/accuracy, per-class precision/recall/F1, confusion matrix
- ``accuracy.png``, ``loss.png``, ``confusion.png``, ``predictions.png``
- ``test_predictions.npz``  test labels and probabilities, for the report (``evaluation.report``)
- ``report.html``   the run's self-contained HTML report (unless ``report=False`` / ``--no-report``)
- ``tensorboard/``  TensorBoard logs, with ``tensorboard=True`` / ``--tensorboard``

Every trainer ends in :func:`cifarlab.training.rundir.write_run`, which writes each file
atomically and ``metrics.json`` last, so a run directory without it never looks complete. While training, ``checkpoint/`` holds the
latest checkpoint (see ``training.checkpoint``): a run that is killed, interrupted or
crashes keeps it, and the same command with the same ``--out`` resumes; a run that
fails before its first checkpoint removes what it created (the directory, if it made it).
``.cifarlab-run`` marks the folder as this program's (only such a folder is resumed) and
``.cifarlab-run.lock`` is locked by the run in progress (a second run there is refused).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.fileio import write_json
from cifarlab.training.config import TrainConfig, resolve
from cifarlab.training.rundir import Run, write_run

__all__ = ["TrainConfig", "Run", "train"]

RUNS_ROOT = "runs"


def default_run_dir(model: str, recipe: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_ROOT) / f"{stamp}-{model}-{recipe}"


def environment() -> dict:
    from cifarlab import __version__
    from cifarlab.backend import gpu_capabilities, version

    return {
        "cifarlab": __version__, "python": platform.python_version(), **version(),
        "keras": keras.__version__, "numpy": np.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "gpus": [f"compute capability {a}.{b}" for a, b in gpu_capabilities()],
        "cpu_model": cpu_model(),
    }


def deterministic_ops() -> None:
    """Ask the backend for reproducible kernels (``--seed``): the same results on one machine."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif name == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    # JAX: XLA's CPU kernels are deterministic; on GPUs XLA_FLAGS=--xla_gpu_deterministic_ops=true.


def cpu_model() -> str:
    """The CPU's marketing name (``lscpu``'s "Model name"), or the architecture where Linux does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train(config: TrainConfig | None = None, on_epoch=None, **kwargs) -> Run:
    """Train, evaluate on the test set once, and write the run directory.

    Accepts a :class:`TrainConfig` or its fields as keyword arguments, e.g.
    ``train(recipe="seed", data="cifar-10-binary.tar.gz", limit=2000, epochs=1)``.
    ``on_epoch(row)``, if given, is called after each epoch's checkpoint with that epoch's
    history row (``epoch`` from 1, ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``);
    an exception it raises stops the run as any error does (the checkpoint stays).
    """
    from cifarlab.data import load_dataset
    from cifarlab.data.findings import read_findings
    from cifarlab.training import autotune, checkpoint, distribute
    from cifarlab.training import precision as prec

    cfg = config or TrainConfig(**kwargs)
    recipe, spec = resolve(cfg)
    model_name = spec.name
    placement = distribute.setup(cfg.strategy, cfg.devices)  # first: it configures TensorFlow's devices
    placement.check_batch(recipe.batch_size)
    checkpoint.check_every(cfg.checkpoint_every)
    resolved_precision = prec.resolve(recipe.precision)
    findings = read_findings(cfg.exclude, cfg.relabel) if cfg.exclude else None
    data = load_dataset(cfg.data, dataset=cfg.dataset, validate_on=cfg.validate_on, val_fraction=cfg.val_fraction,
                        limit=cfg.limit, coarse=cfg.coarse, seed=cfg.seed, quiet=cfg.quiet, findings=findings)
    if placement.kind == "multiworker" and not cfg.out:
        raise CifarlabError("--strategy multiworker needs --out: every worker must name the same run directory")
    claimed = checkpoint.claim(Path(cfg.out or default_run_dir(model_name, recipe.name)), asdict(cfg),
                               chief=placement.is_chief, fresh=not cfg.out)
    out = claimed.out
    try:
        try:
            with autotune.turned_off(not cfg.autotune):
                run = _train_in(out, cfg, recipe, spec, data, resolved_precision, placement, on_epoch)
        except BaseException as e:
            if placement.is_chief:
                checkpoint.after_failure(claimed)
            distribute.raise_if_peer_lost(e, placement, out)
            raise
        if cfg.report and placement.is_chief:
            _write_report(run, data, cfg.quiet)
    finally:
        claimed.release()
    return run


def _write_report(run: Run, data, quiet: bool) -> None:
    """report.html for a finished run; a failure here is a warning, never the loss of the run."""
    from cifarlab.evaluation.report import build_report

    try:
        path = build_report(run.run_dir, test_set=(data.x_test, data.y_test))
    except Exception as e:  # noqa: BLE001 - the run itself is complete and must survive
        why = str(e) if isinstance(e, CifarlabError) else f"{type(e).__name__}: {e}"
        print(f"cifarlab: warning: no report written ({why}); "
              f"try `cifarlab report {run.run_dir}`", file=sys.stderr)
        return
    if not quiet:
        print(f"report: {path}")


def _train_in(out: Path, cfg: TrainConfig, recipe, spec, data, precision: str, placement=None, on_epoch=None) -> Run:
    from cifarlab.evaluation.metrics import classification_metrics
    from cifarlab.training import checkpoint, distribute
    from cifarlab.training import precision as prec
    from cifarlab.training.pipeline import batches
    from cifarlab.training.signals import StopRequest

    placement = placement or distribute.setup("auto")
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        deterministic_ops()
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
        "distribution": placement.describe(),
    }
    if placement.is_chief:
        write_json(out / "config.json", config)
    if recipe.trainer == "fast":  # the compiled custom loop of the fast/quick recipes
        from cifarlab.training.portable import train_in

        return train_in(out, cfg, recipe, spec, data, precision, config, placement, on_epoch=on_epoch)

    with placement.scope():
        model = spec.build(num_classes=data.num_classes)
        model.compile(optimizer=_optimizer(recipe), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    placement.prepare(model, data.x_train[:2], data.y_train[:2])
    callbacks = []
    if cfg.tensorboard:
        callbacks.append(_tensorboard(out))
    if recipe.options.early_stopping_patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=recipe.options.monitor, patience=recipe.options.early_stopping_patience,
            restore_best_weights=recipe.options.restore_best_weights))
    verbose = 0 if cfg.quiet or not placement.is_chief else (1 if sys.stdout.isatty() else 2)
    stop = StopRequest()
    ckpt = checkpoint.Checkpointer(out, stop, placement, cfg.checkpoint_every, siblings=list(callbacks))
    callbacks.append(ckpt)  # it records what the callbacks before it decided
    if on_epoch is not None:  # after the checkpoint, so stopping here keeps the epoch
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})))
    t0 = time.perf_counter()
    train_batches = batches(data.x_train, data.y_train, recipe.batch_size, shuffle=True, seed=cfg.seed)
    val_batches = batches(data.x_val, data.y_val, 500)  # any size: only the forward pass runs
    with stop:
        model.fit(train_batches, epochs=recipe.epochs, initial_epoch=ckpt.initial_epoch(recipe.epochs),
                  validation_data=val_batches, callbacks=callbacks, verbose=verbose,
                  shuffle=False)  # train_batches shuffles itself
    train_seconds = time.perf_counter() - t0

    history = ckpt.history_frame()  # every epoch, including those before a resume
    if not placement.is_chief:  # the chief evaluates and writes the run directory
        return Run(out, model, history, {}, config)
    model = distribute.local_model_for_eval(model, placement, lambda: spec.build(num_classes=data.num_classes))
    t0 = time.perf_counter()
    probs = model.predict(data.x_test, batch_size=500, verbose=0)
    eval_seconds = time.perf_counter() - t0
    metrics = classification_metrics(data.y_test, probs, data.class_names)
    metrics.update(epochs=len(history), train_seconds=round(train_seconds, 2), eval_seconds=round(eval_seconds, 2),
                   train_images_per_second=round(len(data.y_train) * ckpt.epochs_run_here / train_seconds, 1))
    return write_run(out, model, config, history, metrics, data.x_test, data.y_test, probs)


def _optimizer(recipe):
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=recipe.learning_rate)
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=recipe.learning_rate, momentum=0.9, nesterov=True)
    raise CifarlabError(f"recipe {recipe.name!r}: unknown optimizer {recipe.optimizer!r}")


def _tensorboard(out: Path):
    """Keras' TensorBoard callback logging into RUN_DIR/tensorboard (``tensorboard --logdir RUN_DIR``)."""
    try:
        import tensorboard  # noqa: F401 - TensorFlow writes summaries only with it installed
    except ImportError:
        raise CifarlabError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard"), histogram_freq=0, write_graph=False)
