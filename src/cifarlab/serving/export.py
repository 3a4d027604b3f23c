"""Export a trained model for other runtimes, and prove each export right before keeping it.

Formats (all written by Keras 3's ``model.export``):

- ``savedmodel``: a TensorFlow SavedModel folder (TF Serving, ``tf.saved_model.load``),
  signature ``serve``/``serving_default``;
- ``onnx``: one ``.onnx`` file (onnxruntime and others), via tf2onnx;
- ``tflite``: one ``.tflite`` LiteRT flatbuffer (phones, edge devices).

Every export takes the model's own input: ``(batch, 32, 32, 3)`` float32 RGB pixels
in 0-255, and returns ``(batch, K)`` float32 probabilities. The export is written
to a temporary name beside the target, loaded back in its own runtime, compared
with the Keras model on ``CHECK_IMAGES`` test images, and only renamed into place
if it agrees; a failed check leaves nothing behind. A SavedModel replaces only an empty
folder or an earlier SavedModel; any other folder is refused, never deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path

FORMATS = ("savedmodel", "onnx", "tflite")
SUFFIX = {"savedmodel": "", "onnx": ".onnx", "tflite": ".tflite"}
CHECK_IMAGES = 1000  # test images each export is checked on
MIN_TOP1_AGREEMENT = 0.999  # top-1 class equal to the Keras model's on at least 99.9 % of them
# Largest |p_export - p_keras| allowed on any probability. fp32 models: 1e-3 (the
# runtimes differ only in the order of float32 sums, ~1e-6 in practice). A
# bf16/fp16 model computes in 8/11-bit mantissas, and a runtime that fuses or
# reorders its ops rounds differently: 1e-2 there.
PROB_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-2, "fp16": 1e-2}
CHECK_BATCH = 100


def check_images(model_path: Path, data: str | os.PathLike | None, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """The first ``n`` test images ``(n, 32, 32, 3)`` uint8 and where they came from.

    The same test set ``cifarlab evaluate`` uses (:func:`cifarlab.inference.testset.run_test_set`):
    ``data``, else ``CIFARLAB_DATA``, else the data source of the run the model is in. A bare model
    file with neither is refused rather than checked on a download.
    """
    import json

    from cifarlab.inference.testset import run_test_set

    run_dir = model_path if model_path.is_dir() else model_path.parent
    config_data = None
    if (run_dir / "config.json").is_file():
        try:
            config_data = json.loads((run_dir / "config.json").read_text())["data"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CifarlabError(f"{run_dir / 'config.json'}: corrupt run configuration; give --data") from None
    if data is None and not os.environ.get("CIFARLAB_DATA") and config_data is None:
        raise CifarlabError("no test images to check the export on: give --data (the model is not in a "
                            "run directory with a config.json naming its data)")
    ds = run_test_set(run_dir if config_data is not None else None, config_data, data)
    x = ds.x_test[:n]
    if len(x) == 0:
        raise CifarlabError(f"{ds.source}: no test images to check the export on")
    return x, ds.source


def _runner(fmt: str, path: Path):
    """Load an export in its own runtime: a callable (N,32,32,3) float32 -> (N,K) float32."""
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return lambda x: np.asarray(loaded.serve(x))
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the LiteRT wheel is optional; TensorFlow still ships an interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(x):
        interp.resize_tensor_input(inp, list(x.shape))
        interp.allocate_tensors()
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out).copy()

    return run


def compare(fmt: str, path: Path, ref: np.ndarray, x: np.ndarray, precision: str = "fp32") -> dict:
    """Agreement of an export with the Keras model's probabilities ``ref`` on images ``x``; raises if under the thresholds."""
    xf = x.astype(np.float32)
    run = _runner(fmt, path)
    got = np.concatenate([run(xf[i:i + CHECK_BATCH]) for i in range(0, len(xf), CHECK_BATCH)]).astype(np.float32)
    if got.shape != ref.shape:
        raise CifarlabError(f"{fmt} export gives outputs of shape {got.shape}, the Keras model {ref.shape}")
    tol = PROB_TOLERANCE.get(precision, PROB_TOLERANCE["fp32"])
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    max_diff = float(np.max(np.abs(got - ref)))
    report = {"images": len(x), "top1_agreement": agreement, "max_abs_prob_diff": max_diff,
              "required": {"top1_agreement": MIN_TOP1_AGREEMENT, "max_abs_prob_diff": tol}}
    if agreement < MIN_TOP1_AGREEMENT or not max_diff <= tol:
        raise CifarlabError(f"{fmt} export disagrees with the Keras model on {len(x)} test images: top-1 agreement "
                            f"{agreement:.2%} (need {MIN_TOP1_AGREEMENT:.1%}), largest probability difference "
                            f"{max_diff:.2g} (need <= {tol:g}); nothing written")
    return report


def export(model_or_run: str | os.PathLike, fmt: str, out: str | os.PathLike,
           data: str | os.PathLike | None = None, n_check: int = CHECK_IMAGES) -> dict:
    """Export, check on ``n_check`` test images, then move into place at ``out``; returns a report dict."""
    from cifarlab.models.io import load_model

    from cifarlab.backend import require_tensorflow

    if fmt not in FORMATS:
        raise CifarlabError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    # The converters (SavedModel, tf2onnx, LiteRT) run on TensorFlow graphs; a model trained on any
    # backend exports there (a .keras file loads on every backend).
    require_tensorflow(f"export --format {fmt}")
    src, out = Path(model_or_run), Path(out)
    if fmt == "savedmodel":
        _check_replaceable(out)  # before the slow part: a wrong -o fails at once
    model, meta = load_model(src)
    x, data_src = check_images(src, data, n_check)  # before the slow export: a missing --data fails fast
    precision = str(meta.get("precision", "fp32"))
    # The reference first: it also calls the model once, which the ONNX exporter requires.
    ref = np.asarray(model.predict(x.astype(np.float32), batch_size=CHECK_BATCH, verbose=0), dtype=np.float32)
    t0 = time.perf_counter()
    if fmt == "savedmodel":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            _keras_export(model, tmp, "tf_saved_model")
            report = compare(fmt, tmp, ref, x, precision)
            _replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        with atomic_path(out, suffix=SUFFIX[fmt]) as tmp:
            _keras_export(model, tmp, "onnx" if fmt == "onnx" else "litert")
            report = compare(fmt, tmp, ref, x, precision)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    return {"format": fmt, "path": str(out), "bytes": size, "source": str(src), "check_data": data_src,
            "precision": precision, "seconds": round(time.perf_counter() - t0, 2), **report}


def _keras_export(model, path: Path, keras_format: str) -> None:
    import contextlib
    import io

    try:
        # tf2onnx and the LiteRT converter print pages of progress to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(path), format=keras_format, verbose=False)
    except ImportError as e:
        raise CifarlabError(f"exporting to {keras_format} needs a package that is not installed ({e}); "
                            "pip install 'cifarlab[export]'") from None
    except Exception as e:  # noqa: BLE001 - converters raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CifarlabError(f"export to {keras_format} failed: {type(e).__name__}: {first[:300]}") from None


# What a SavedModel folder holds (TensorFlow's layout); a folder with anything else is not replaced.
SAVEDMODEL_ENTRIES = {"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "assets.extra", "fingerprint.pb"}


def _check_replaceable(target: Path) -> None:
    """Refuse a ``target`` that export must not replace: anything but nothing, an empty folder, or a
    SavedModel (``saved_model.pb`` and ``variables/``, and only TensorFlow's own entries)."""
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_symlink() or not target.is_dir():
        raise CifarlabError(f"{target} exists and is not a folder; a SavedModel is a folder: refusing to replace it")
    names = set(os.listdir(target))
    if not names:
        return
    if not {"saved_model.pb", "variables"} <= names:
        raise CifarlabError(f"{target} is not a SavedModel (no saved_model.pb and variables/ in it): "
                            "refusing to replace it; choose another -o")
    other = sorted(names - SAVEDMODEL_ENTRIES)
    if other:
        raise CifarlabError(f"{target} holds files a SavedModel does not ({', '.join(other[:3])}): "
                            "refusing to replace it; choose another -o")


def _replace_dir(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``; an old ``target`` (checked by :func:`_check_replaceable`)
    is moved aside first and removed after."""
    _check_replaceable(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old, target)  # put the previous export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
