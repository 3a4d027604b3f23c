"""`cifarlab export`: SavedModel, ONNX and TFLite, each loaded back in its own runtime and checked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


def main(capsys, *args):
    from cifarlab.cli import main as cifarlab_main

    rc = cifarlab_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def check_data(shared_archive, seed_run):
    from cifarlab.data import read_arrays
    from cifarlab.models.io import load_model
    from cifarlab.inference.predict import predict_arrays

    x = read_arrays(shared_archive).x_test[:1000]
    model, _ = load_model(seed_run.run_dir)
    return x, predict_arrays(model, x)


@pytest.mark.parametrize("fmt,name", [("savedmodel", "saved"), ("onnx", "model.onnx"), ("tflite", "model.tflite")])
def test_export_is_checked_and_loads_in_its_runtime(fmt, name, seed_run, check_data, tmp_path, capsys):
    from cifarlab.serving.export import _runner

    out = tmp_path / "exports" / name
    # No --data: the run's own data source provides the check images (up to 1,000; medium_archive has 500).
    rc, stdout, err = main(capsys, "export", seed_run.run_dir, "--format", fmt, "-o", out, "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["images"] == 500
    assert report["top1_agreement"] >= 0.999
    assert report["max_abs_prob_diff"] <= 1e-3
    assert out.is_dir() if fmt == "savedmodel" else out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no temporary left beside it
    # Independently of the built-in check: the written export, in its runtime, on the same images.
    x, want = check_data
    got = _runner(fmt, out)(x[:200].astype(np.float32))
    assert (got.argmax(1) == want[:200].argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(got, want[:200], atol=1e-3)


def test_savedmodel_replaces_an_old_export_whole(seed_run, shared_archive, tmp_path, capsys):
    out = tmp_path / "saved"
    (out / "variables").mkdir(parents=True)  # an older export, with a file the new one does not have
    (out / "saved_model.pb").write_bytes(b"older")
    (out / "assets").mkdir()
    (out / "assets" / "stale.txt").write_text("from an older export")
    rc, _, err = main(capsys, "export", seed_run.run_dir, "--format", "savedmodel", "-o", out,
                      "--data", shared_archive)
    assert rc == 0, err
    assert not (out / "assets" / "stale.txt").exists() and (out / "saved_model.pb").read_bytes() != b"older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_bare_model_file_needs_data(seed_run, tmp_path, capsys):
    model = tmp_path / "m.keras"
    shutil.copy(seed_run.run_dir / "model.keras", model)
    rc, _, err = main(capsys, "export", model, "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert rc == 2 and "give --data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_failed_check_writes_nothing(seed_run, shared_archive, tmp_path, monkeypatch):
    from cifarlab.errors import CifarlabError
    from cifarlab.serving import export as ex

    monkeypatch.setitem(ex.PROB_TOLERANCE, "fp32", -1.0)  # an impossible tolerance: the check must fail
    with pytest.raises(CifarlabError, match="disagrees .* nothing written"):
        ex.export(seed_run.run_dir, "tflite", tmp_path / "m.tflite", data=shared_archive)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_model(tmp_path, capsys):
    rc, _, err = main(capsys, "export", tmp_path / "none.keras", "--format", "onnx", "-o", tmp_path / "x.onnx")
    assert rc == 2 and "model not found" in err
    rc, _, err = main(capsys, "export", tmp_path, "--format", "pickle", "-o", tmp_path / "x")
    assert rc == 2 and "invalid choice" in err


def test_the_check_images_come_from_cifarlab_data_like_evaluate(seed_run, small_archive, tmp_path, monkeypatch):
    from cifarlab.data import read_arrays, resolve_source
    from cifarlab.serving.export import check_images

    model = tmp_path / "m.keras"  # a bare model file: no run directory to name its data
    shutil.copy(seed_run.run_dir / "model.keras", model)
    monkeypatch.setenv("CIFARLAB_DATA", str(small_archive))
    x, source = check_images(model, None, n=50)
    assert source == str(small_archive)
    np.testing.assert_array_equal(x, read_arrays(resolve_source(small_archive)).x_test[:50])
