"""Saving and loading models, with what is needed to use them later.

A cifarlab model file is an ordinary ``.keras`` file (a zip) with one extra
member, ``cifarlab.json``: class names, model and recipe names, dataset. Keras
ignores that member, so the file stays loadable by plain ``keras.saving.load_model``.
Loading always uses Keras' safe mode: a file carrying Python code (a ``Lambda``
layer's bytecode) is refused, never executed.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path

META_NAME = "cifarlab.json"


def save_model(model, path: str | Path, metadata: dict) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as z:
            z.writestr(META_NAME, json.dumps(metadata, indent=2))
    return path


MAX_META_BYTES = 1 << 20  # what save_model writes is a few hundred bytes


def read_metadata(path: str | Path) -> dict:
    """The ``cifarlab.json`` of a model file; ``{}`` for a plain Keras file or an unreadable zip.

    A ``cifarlab.json`` that is not a JSON object is refused with a :class:`CifarlabError`.
    """
    try:
        with zipfile.ZipFile(path) as z:
            if META_NAME not in z.namelist():
                return {}
            if z.getinfo(META_NAME).file_size > MAX_META_BYTES:
                raise CifarlabError(f"{path}: {META_NAME} is larger than {MAX_META_BYTES >> 20} MB")
            raw = z.read(META_NAME)
    except (zipfile.BadZipFile, OSError, KeyError):
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CifarlabError(f"{path}: {META_NAME} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CifarlabError(f"{path}: {META_NAME} is not a JSON object")
    return meta


def model_file(path: str | Path) -> Path:
    """The ``.keras`` file that ``path`` (the file itself or a run directory) names.

    A one-line :class:`CifarlabError` when there is none or it is not a zip; imports
    no Keras, so the command line checks a mistyped path before its backend starts.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise CifarlabError(f"model not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CifarlabError(f"{path}: not a Keras model file (.keras)")
    return path


def load_model(path: str | Path):
    """Load ``(model, metadata)`` from a ``.keras`` file or a run directory."""
    path = model_file(path)
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CifarlabError(f"{path}: not a loadable Keras model ({first[:200]})") from None
    meta = read_metadata(path)
    n = int(model.output_shape[-1])
    names = meta.get("class_names")
    if not names:
        meta["class_names"] = [str(i) for i in range(n)]
    elif not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise CifarlabError(f"{path}: {META_NAME} class_names is not a list of strings")
    elif len(names) != n:
        raise CifarlabError(f"{path}: {META_NAME} has {len(names)} class names for a model with {n} outputs")
    return model, meta
