"""Data: find, download, read and split image-classification datasets.

The one entry point is :func:`load_dataset`; everything it returns is plain
numpy: uint8 images ``(N, 32, 32, 3)`` in 0-255, int64 labels ``(N,)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarlab.data.cifar import Arrays, read_official
from cifarlab.data.download import RELEASES, cache_dir, fetch
from cifarlab.data.folders import looks_like_image_folder, read_folder
from cifarlab.errors import CifarlabError

__all__ = ["Dataset", "load_dataset", "split_validation", "RELEASES"]


@dataclass
class Dataset:
    """A dataset in memory, split into train / validation / test.

    ``x_*`` are uint8 ``(N, 32, 32, 3)``, ``y_*`` int64 ``(N,)`` in
    ``range(len(class_names))``. ``validation`` says where the validation set
    came from: ``"holdout"`` (taken out of the training images, stratified) or
    ``"test"`` (the test set itself, as the seed notebook did).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str
    name: str
    format: str
    validation: str = "holdout"
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def local_source(data: str | os.PathLike | None) -> Path | None:
    """The local data a run will read: ``--data``, else ``CIFARLAB_DATA``, else None (download).
    Checks only that it exists, so a mistyped path fails before any TensorFlow start-up."""
    data = data or os.environ.get("CIFARLAB_DATA") or None
    if data is None:
        return None
    path = Path(data).expanduser()
    if not path.exists():
        raise CifarlabError(f"data not found: {path}")
    return path


def resolve_source(data: str | os.PathLike | None, dataset: str = "cifar10", quiet: bool = False) -> Path:
    """``--data`` beats ``CIFARLAB_DATA``; with neither, download ``dataset`` into the cache."""
    return local_source(data) or fetch(dataset, quiet=quiet)


def read_arrays(path: Path, coarse: bool = False) -> Arrays:
    if looks_like_image_folder(path):
        if coarse:
            raise CifarlabError("--coarse applies to CIFAR-100 archives only")
        return read_folder(path, cache_dir())
    return read_official(path, coarse=coarse)


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float = 0.1, seed: int = 0):
    """Hold out ``fraction`` of (x, y), stratified by class, reproducibly.

    Returns ``(x_train, y_train, x_val, y_val)``. Each class gives the same share
    of its images (largest-remainder rounding, so the total is exactly
    ``round(len(y) * fraction)``), chosen by a generator seeded with ``seed``.
    Both parts keep the original order. Written with numpy rather than
    scikit-learn's ``train_test_split`` because importing scikit-learn alone
    costs more than a second on every dataset load.
    """
    n_val = int(round(len(y) * fraction))
    if n_val < 1 or n_val >= len(y):
        raise CifarlabError(f"cannot hold out {fraction:.0%} of {len(y)} training images for validation")
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n_val / len(y)
    take = np.floor(quota).astype(int)
    # Hand the leftover slots to the classes with the largest fractional parts (ties: larger classes).
    order = np.lexsort((-counts, -(quota - take)))
    take[order[: n_val - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for c, k in zip(classes, take):
        members = np.flatnonzero(y == c)
        val[rng.choice(members, size=k, replace=False)] = True
    return x[~val], y[~val], x[val], y[val]


def load_dataset(
    data: str | os.PathLike | None = None,
    *,
    dataset: str = "cifar10",
    validate_on: str = "holdout",
    val_fraction: float = 0.1,
    limit: int | None = None,
    coarse: bool = False,
    seed: int = 0,
    quiet: bool = False,
    findings=None,
) -> Dataset:
    """Load a dataset and split off validation data.

    Parameters
    ----------
    data : path to an official archive (``.tar.gz``/``.tar``), its extracted folder, or an
        image folder (``train/<class>/...``, ``test/<class>/...``). ``None``: the
        ``CIFARLAB_DATA`` variable, else the official ``dataset`` downloaded into the cache.
    validate_on : ``"holdout"`` (default: ``val_fraction`` of the training images,
        stratified by class, fixed ``seed``; 5,000 of CIFAR-10's 50,000) or ``"test"``
        (validate on the test set, as the seed notebook did).
    limit : use only the first ``limit`` training images (before the hold-out).
    coarse : CIFAR-100's 20 superclasses instead of its 100 classes.
    findings : a :class:`cifarlab.data.findings.Findings` (``cifarlab audit``'s findings.csv): its
        training images are left out (or relabelled) after ``limit``, before the hold-out.
    """
    if validate_on not in ("holdout", "test"):
        raise CifarlabError(f"--validate-on must be 'holdout' or 'test', not {validate_on!r}")
    if limit is not None and limit < 1:
        raise CifarlabError(f"--limit must be a positive number of images, not {limit}")
    path = resolve_source(data, dataset, quiet=quiet)
    a = read_arrays(path, coarse=coarse)
    x, y = a.x_train, a.y_train
    if limit is not None:
        x, y = x[:limit], y[:limit]
    applied = None
    if findings is not None:
        x, y, applied = findings.apply(x, y, a.class_names, limit)
    if validate_on == "test":
        x_val, y_val = a.x_test, a.y_test
    else:
        x, y, x_val, y_val = split_validation(x, y, val_fraction, seed)
    return Dataset(
        x_train=x, y_train=y, x_val=x_val, y_val=y_val, x_test=a.x_test, y_test=a.y_test,
        class_names=a.class_names, source=str(path), name=a.dataset, format=a.format,
        validation=validate_on,
        info={"val_fraction": val_fraction if validate_on == "holdout" else None, "limit": limit,
              "coarse": coarse, "split_seed": seed, **({"findings": applied} if applied else {})},
    )
