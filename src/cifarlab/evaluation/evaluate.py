"""Evaluate a trained model on a dataset's test split."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cifarlab.errors import CifarlabError


def evaluate(target: str | os.PathLike, data: str | os.PathLike | None = None, batch_size: int = 500,
             quiet: bool = True) -> dict:
    """Test metrics (see :func:`classification_metrics`) for a run directory or model file.

    Data: ``data`` if given; else, for a run directory, the source it was trained
    on; else ``CIFARLAB_DATA`` or the official download.
    """
    from cifarlab.data import load_dataset
    from cifarlab.evaluation.metrics import classification_metrics
    from cifarlab.models.io import load_model
    from cifarlab.serving.predict import predict_arrays

    target = Path(target)
    model, meta = load_model(target)
    dataset, coarse = meta.get("dataset", "cifar10"), False
    if target.is_dir() and (target / "config.json").is_file():
        try:
            cfg = json.loads((target / "config.json").read_text())
            data = data or os.environ.get("CIFARLAB_DATA") or cfg["data"]["source"]
            dataset, coarse = cfg["data"].get("dataset", dataset), bool(cfg["data"].get("coarse"))
        except (ValueError, KeyError, TypeError):
            raise CifarlabError(f"{target / 'config.json'}: corrupt run configuration") from None
    if dataset == "folder" and data is None:
        raise CifarlabError("this model was trained on an image folder; pass it with --data")
    ds = load_dataset(data, dataset=dataset if dataset != "folder" else "cifar10", validate_on="test",
                      coarse=coarse, quiet=quiet)
    n_out = int(model.output_shape[-1])
    if n_out != ds.num_classes:
        raise CifarlabError(f"model predicts {n_out} classes but {ds.source} has {ds.num_classes}")
    probs = predict_arrays(model, ds.x_test, batch_size)
    return classification_metrics(ds.y_test, probs, meta.get("class_names") or ds.class_names)
