"""Evaluate a trained model on a dataset's test split."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cifarlab.errors import CifarlabError


def run_test_set(run_dir: Path | None, config_data: dict | None, data=None, quiet: bool = True,
                 default_dataset: str = "cifar10"):
    """The test split a run is judged on, as a :class:`cifarlab.data.Dataset` (``validate_on="test"``).

    Source: ``data`` if given; else ``CIFARLAB_DATA``; else the source in the run's
    ``config.json`` (``config_data`` is its ``"data"`` entry); else, with no run at
    all, the official ``default_dataset`` download.
    """
    from cifarlab.data import load_dataset

    d = config_data or {}
    source = data or os.environ.get("CIFARLAB_DATA") or d.get("source")
    dataset = d.get("dataset", default_dataset)
    if dataset == "folder":
        if source is None:
            raise CifarlabError("this model was trained on an image folder; pass it with --data")
        dataset = "cifar10"  # an image folder is recognised from the path itself
    if run_dir is not None and config_data is not None:
        if source is None:
            raise CifarlabError(f"{run_dir / 'config.json'} names no data source; pass the test data with --data")
        if not Path(source).exists():
            raise CifarlabError(f"the data {run_dir.name} was trained on is gone ({source}); "
                                "pass the test data with --data")
    return load_dataset(source, dataset=dataset, validate_on="test", coarse=bool(d.get("coarse")), quiet=quiet)


def evaluate(target: str | os.PathLike, data: str | os.PathLike | None = None, batch_size: int = 500,
             quiet: bool = True) -> dict:
    """Test metrics (see :func:`classification_metrics`) for a run directory or model file.

    Data: as :func:`run_test_set` finds it for a run directory; for a bare model
    file, ``data``, ``CIFARLAB_DATA`` or the official download of its dataset.
    """
    from cifarlab.evaluation.metrics import classification_metrics
    from cifarlab.models.io import load_model
    from cifarlab.serving.predict import predict_arrays

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
