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


def read_metadata(path: str | Path) -> dict:
    """The ``cifarlab.json`` of a model file; ``{}`` for a plain Keras file."""
    try:
        with zipfile.ZipFile(path) as z:
            if META_NAME in z.namelist():
                return json.loads(z.read(META_NAME))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        pass
    return {}


def load_model(path: str | Path):
    """Load ``(model, metadata)`` from a ``.keras`` file or a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise CifarlabError(f"model not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CifarlabError(f"{path}: not a Keras model file (.keras)")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CifarlabError(f"{path}: not a loadable Keras model ({first[:200]})") from None
    meta = read_metadata(path)
    if not meta.get("class_names"):
        n = int(model.output_shape[-1])
        meta["class_names"] = [str(i) for i in range(n)]
    return model, meta
