"""Image-folder datasets: ``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*``.

Class names come from the folder names under ``train/``, sorted, so the label
numbering is stable. Every image goes through :func:`cifarlab.data.images.to_array`
(any size or mode, resized to 32x32). Decoding thousands of files is slow, so the
decoded arrays are cached (``.npz`` in the cache folder) under a key made of every
file's path, size and modification time: a changed, added or removed file makes a
new key.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cifarlab.data.cifar import Arrays
from cifarlab.data.images import is_image_file, to_array
from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path


def looks_like_image_folder(path: Path) -> bool:
    return path.is_dir() and (path / "train").is_dir()


def list_split(root: Path, split: str, class_names: list[str] | None = None):
    """Return (files, labels, class_names) for one split folder."""
    folder = root / split
    if not folder.is_dir():
        raise CifarlabError(f"{root}: no {split}/ folder (expected {split}/<class>/<images>)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = classes
    else:
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise CifarlabError(f"{folder}: classes {unknown} do not appear under train/")
    files, labels = [], []
    for label, name in enumerate(class_names):
        d = folder / name
        if not d.is_dir():
            continue
        found = sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p))
        files += found
        labels += [label] * len(found)
    if not files:
        raise CifarlabError(f"{folder}: no images (.png, .jpg, .jpeg, .bmp, .webp) in any class folder")
    return files, np.asarray(labels, dtype=np.int64), class_names


def read_folder(root: Path, cache_dir: Path | None) -> Arrays:
    train_files, y_train, class_names = list_split(root, "train")
    if len(class_names) < 2:
        raise CifarlabError(f"{root / 'train'}: found {len(class_names)} class folder(s); need at least 2")
    test_files, y_test, _ = list_split(root, "test", class_names)
    key = _cache_key(root, train_files + test_files)
    cache = cache_dir / "folders" / f"{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                return Arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"], class_names, "folder", "images")
        except Exception:  # noqa: BLE001 - a bad cache entry is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    x_train, x_test = _decode_all(train_files), _decode_all(test_files)
    if cache is not None:
        try:
            with atomic_path(cache, suffix=".npz") as tmp:
                np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        except CifarlabError:
            pass  # an unwritable cache only costs speed next time
    return Arrays(x_train, y_train, x_test, y_test, class_names, "folder", "images")


def _decode_all(files: list[Path]) -> np.ndarray:
    out = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    # Pillow releases the GIL while decoding, so threads use both cores.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for i, arr in enumerate(pool.map(to_array, files)):
            out[i] = arr
    return out


def _cache_key(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]
