"""Evaluate a trained model on a dataset's test split."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cifarlab.errors import CifarlabError
from cifarlab.inference.testset import run_test_set


def evaluate(target: str | os.PathLike, data: str | os.PathLike | None = None, batch_size: int = 500,
             quiet: bool = True) -> dict:
    """Test metrics (see :func:`classification_metrics`) for a run directory or model file.

    Data: as :func:`run_test_set` finds it for a run directory; for a bare model
    file, ``data``, ``CIFARLAB_DATA`` or the official download of its dataset.
    """
    from cifarlab.evaluation.metrics import classification_metrics
    from cifarlab.models.io import load_model
    from cifarlab.inference.predict import predict_arrays

    target = Path(target)
    model, meta = load_model(target)
    run_dir, config_data = None, None
    if target.is_dir() and (target / "config.json").is_file():
        run_dir = target
        try:
            config_data = json.loads((target / "config.json").read_text())["data"]
        except (ValueError, KeyError, TypeError):
            raise CifarlabError(f"{target / 'config.json'}: corrupt run configuration") from None
    ds = run_test_set(run_dir, config_data, data, quiet, default_dataset=meta.get("dataset", "cifar10"))
    n_out = int(model.output_shape[-1])
    if n_out != ds.num_classes:
        raise CifarlabError(f"model predicts {n_out} classes but {ds.source} has {ds.num_classes}")
    probs = predict_arrays(model, ds.x_test, batch_size)
    return classification_metrics(ds.y_test, probs, meta.get("class_names") or ds.class_names)
