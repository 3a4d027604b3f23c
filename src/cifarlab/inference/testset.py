"""Which test split a run (or a bare model) is judged on."""

from __future__ import annotations

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
