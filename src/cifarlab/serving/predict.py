"""Predict classes for images: arrays in memory or image files on disk."""

from __future__ import annotations

import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cifarlab.data.images import is_image_file, to_array
from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path
from cifarlab.inference.predict import compiled_predictor, predict_arrays

# Images per model call for file prediction: large enough that the model runs at
# full speed, small enough that a batch of decoded images is ~3 MB.
FILE_BATCH = 256


@dataclass
class Prediction:
    """Top-k classes for one image, most probable first."""

    source: str
    top: list[tuple[str, float]]  # (class name, probability 0-1); empty when error is set
    error: str | None = None  # why the file could not be read

    def to_dict(self) -> dict:
        d = {"file": self.source, "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}
        if self.error is not None:
            d["error"] = self.error
        return d


def top_k(probs: np.ndarray, class_names: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(probs)[::-1][:k]
    return [(class_names[i], float(probs[i])) for i in order]


def predict(model, files: list[str | os.PathLike], top: int = 3) -> list[Prediction]:
    """Top-``top`` predictions for image files.

    ``model`` is a path (``.keras`` file or run directory) or a ``(keras.Model,
    metadata)`` pair from :func:`cifarlab.load_model`. Each file is decoded exactly
    as training images are (:func:`cifarlab.data.images.to_array`).
    """
    from cifarlab.models.io import load_model

    model, meta = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    x = np.stack([to_array(Path(f)) for f in files])
    probs = predict_arrays(model, x)
    return [Prediction(str(f), top_k(p, meta["class_names"], top)) for f, p in zip(files, probs)]


def collect_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, image suffixes only, sorted) and keep files as given.

    A path that does not exist is kept too: it becomes an error row, not a crash.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)))
        else:
            out.append(p)
    return out


def _decode(path: Path) -> np.ndarray | str:
    try:
        return to_array(path)
    except CifarlabError as e:
        return str(e)


def predict_files(model, files: Iterable[str | os.PathLike], top: int = 3, batch_size: int = FILE_BATCH,
                  progress: bool = False) -> Iterator[Prediction]:
    """Stream predictions for many image files, in input order, ``batch_size`` files per model call.

    Unreadable files yield a :class:`Prediction` with ``error`` set instead of
    stopping the stream. Decoding runs in two threads (Pillow releases the GIL)
    while the model works on the previous batch. ``progress`` draws a tqdm bar
    on stderr.
    """
    from tqdm import tqdm

    from cifarlab.models.io import load_model

    model, meta = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    names = meta["class_names"]
    files = list(files)
    bar = tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    predict_fn = compiled_predictor(model)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="cifarlab-decode") as pool, bar:
        chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
        # Decode at most two batches ahead of the model: memory stays bounded for any number of files.
        pending = [pool.submit(lambda c: list(map(_decode, c)), c) for c in chunks[:2]]
        for j, chunk in enumerate(chunks):
            decoded = pending[j].result()
            pending[j] = None
            if j + 2 < len(chunks):
                pending.append(pool.submit(lambda c: list(map(_decode, c)), chunks[j + 2]))
            ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            probs = predict_fn(np.stack([decoded[i] for i in ok])) if ok else np.zeros((0, len(names)))
            rows = dict(zip(ok, probs))
            for i, f in enumerate(chunk):
                if i in rows:
                    yield Prediction(str(f), top_k(rows[i], names, top))
                else:
                    yield Prediction(str(f), [], error=decoded[i])
            bar.update(len(chunk))


def write_predictions_csv(preds: Iterable[Prediction], out: str | os.PathLike, top: int) -> dict:
    """Write predictions as CSV, atomically; returns ``{"images": n, "errors": m}``.

    Columns: ``file, class, probability, class_2, probability_2, ... class_K,
    probability_K, error`` (``error`` is empty for a readable file; the class
    columns are empty for an unreadable one).
    """
    header = ["file", "class", "probability"]
    for k in range(2, top + 1):
        header += [f"class_{k}", f"probability_{k}"]
    header.append("error")
    n = errors = 0
    with atomic_path(out, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for p in preds:
            cells = [p.source]
            for k in range(top):
                cells += [p.top[k][0], f"{p.top[k][1]:.6f}"] if k < len(p.top) else ["", ""]
            cells.append(p.error or "")
            w.writerow(cells)
            n += 1
            errors += p.error is not None
    return {"images": n, "errors": errors}
