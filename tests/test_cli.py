"""The command line end to end: real processes, real files."""

import json
import os
import subprocess
import sys
import types
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import builders
from cifarlab.cli import main


def cifarlab(*args, env=None, check=True):
    e = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], capture_output=True, text=True, env=e,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"cifarlab {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p


def assert_one_line_error(p, pattern):
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifarlab: error: "), p.stderr
    assert "Traceback" not in p.stderr
    import re
    assert re.search(pattern, lines[0]), lines[0]


MARKER_FILES = [".cifarlab-run", ".cifarlab-run.lock"]  # cifarlab's own folder, locked while a run trains in it
RUN_FILES = ["config.json", "model.keras", "history.csv", "metrics.json", "accuracy.png", "loss.png",
             "confusion.png", "predictions.png", "test_predictions.npz", "report.html"]


def test_train_evaluate_predict_end_to_end(medium_archive, tmp_path):
    # The 2,000-image slice of the shared copy (500 test images): the whole test split is evaluated three
    # times below (train, evaluate, evaluate --data), so the full copy's 10,000 would cost most of the test.
    archive = medium_archive
    run = tmp_path / "run"
    p = cifarlab("train", "--model", "seed", "--recipe", "seed", "--data", archive, "--limit", 2000,
                 "--epochs", 1, "--out", run, "--quiet")
    assert "test accuracy" in p.stdout and p.stderr.strip() == ""
    assert sorted(os.listdir(run)) == sorted(RUN_FILES + MARKER_FILES)

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"]["batch_size"] == 32 and cfg["recipe"]["optimizer"] == "adam"
    assert cfg["precision"] == "fp32" and cfg["data"]["num_train"] == 1800 and cfg["data"]["num_val"] == 200
    assert cfg["data"]["source"] == str(archive) and cfg["environment"]["tensorflow"]
    hist = pd.read_csv(run / "history.csv")
    assert list(hist.columns[:5]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"] and len(hist) == 1
    m = json.loads((run / "metrics.json").read_text())
    assert 0.2 < m["test_accuracy"] < 0.6 and m["test_loss"] > 0 and m["epochs"] == 1
    assert set(m["per_class"]) == set(builders.CIFAR10_NAMES)
    assert np.asarray(m["confusion_matrix"]).sum() == 500  # every test image of the archive
    for png in RUN_FILES[4:8]:
        with Image.open(run / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    for f in run.iterdir():
        assert not f.name.startswith(".") or f.name in MARKER_FILES, f"temporary file left behind: {f}"

    p = cifarlab("evaluate", run)
    assert "airplane" in p.stdout and "confusion matrix" in p.stdout and f"{m['test_accuracy']:.4f}" in p.stdout
    # The rest in this process (the same main(); each real process costs seconds of start-up).
    p = _in_process(["evaluate", run / "model.keras", "--data", archive, "--json"], check=True)
    assert json.loads(p.stdout)["test_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-9)

    # A PNG and an (enlarged) JPEG of test image 0, a cat: predicted like the array itself.
    from cifarlab.data import load_dataset
    ds = load_dataset(archive, validate_on="test", limit=10)
    Image.fromarray(ds.x_test[0]).save(tmp_path / "cat.png")
    Image.fromarray(ds.x_test[0]).resize((96, 96), Image.Resampling.NEAREST).save(tmp_path / "cat.jpg", quality=95)
    p = _in_process(["predict", run, tmp_path / "cat.png", tmp_path / "cat.jpg", "--json", "--top-k", 5], check=True)
    preds = [json.loads(line) for line in p.stdout.splitlines()]
    assert [len(x["top"]) for x in preds] == [5, 5]
    top_png = preds[0]["top"]
    assert sum(t["probability"] for t in top_png) <= 1.0 + 1e-6
    from cifarlab import load_model, predict_arrays
    model, meta = load_model(run)
    probs = predict_arrays(model, ds.x_test[:1])[0]
    assert top_png[0]["class"] == meta["class_names"][int(probs.argmax())]
    assert top_png[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert preds[1]["top"][0]["class"] == top_png[0]["class"]
    p = _in_process(["predict", run / "model.keras", tmp_path / "cat.png"], check=True)
    assert p.stdout.startswith(f"{tmp_path / 'cat.png'}: {top_png[0]['class']} ")


def test_same_seed_same_results(tmp_path, small_archive):
    # Two processes with the same seed: the first from flags, the second from the first's config.json
    # (--config reruns a run). Either broken, determinism or the rerun, and the two differ.
    first, again = tmp_path / "r0", tmp_path / "r1"
    cifarlab("train", "--data", small_archive, "--recipe", "seed", "--limit", 600, "--epochs", 2, "--seed", 7,
             "--out", first, "--quiet", "--no-report")
    cfg = json.loads((first / "config.json").read_text())
    assert cfg["request"]["seed"] == 7 and cfg["request"]["deterministic"] is True
    cifarlab("train", "--config", first / "config.json", "--out", again, "--quiet", "--no-report")
    h0, h1 = (pd.read_csv(o / "history.csv").drop(columns="seconds") for o in (first, again))
    assert len(h0) == 2
    pd.testing.assert_frame_equal(h0, h1)
    m0, m1 = (json.loads((o / "metrics.json").read_text()) for o in (first, again))
    assert m0["confusion_matrix"] == m1["confusion_matrix"] and m0["test_loss"] == m1["test_loss"]


def test_info_show_summary_list(shared_archive, tmp_path):
    p = cifarlab("info", "--data", shared_archive)
    assert "(50000, 32, 32, 3) uint8, pixels 0-255" in p.stdout and "3 cat" in p.stdout
    assert "5,000" in p.stdout and "1,000" in p.stdout
    info = json.loads(cifarlab("info", "--data", shared_archive, "--json").stdout)
    assert info["splits"]["train"]["per_class"]["frog"] == 5000
    out = tmp_path / "pics.png"
    p = cifarlab("show", "--data", shared_archive, "--split", "test", "0", "1", "2", "-o", out)
    assert "#0: cat (3)" in p.stdout
    with Image.open(out) as im:
        assert im.format == "PNG"
    p = cifarlab("summary", "seed")
    assert "225,610" in p.stdout and "conv1" in p.stdout and "Traceback" not in p.stderr
    assert "seed" in cifarlab("list").stdout


def test_bad_input_one_line_errors(tmp_path, shared_archive):
    """Each user mistake: exit 2, one line on stderr, no traceback, nothing left behind."""
    notmodel = tmp_path / "model.keras"
    notmodel.write_bytes(b"PK\x03\x04 definitely not a zip")
    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40)).save(img)
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    cases = [
        (["train", "--data", tmp_path / "missing.tar.gz", "--out", tmp_path / "r"], "data not found"),
        (["train", "--data", shared_archive, "--model", "resnet999", "--out", tmp_path / "r"], "unknown model"),
        (["train", "--data", shared_archive, "--recipe", "nope", "--out", tmp_path / "r"], "unknown recipe"),
        (["train", "--epochs", "zero"], "invalid int value"),
        (["train", "--data", shared_archive, "--epochs", "0", "--out", tmp_path / "r"], "--epochs must be a positive"),
        (["train", "--data", shared_archive, "--lr", "-1", "--out", tmp_path / "r"], "--lr must be"),
        (["train", "--data", shared_archive, "--precision", "fp8", "--out", tmp_path / "r"], "--precision must be"),
        (["train", "--validate-on", "train"], "invalid choice"),
        (["train", "--bogus"], "unrecognized arguments"),
        (["evaluate", notmodel], "not a Keras model file"),
        (["predict", notmodel, img], "not a Keras model file"),
        (["show", "--data", shared_archive, "99999"], "index 99999 out of range"),
        (["info"], "cannot download .*--data PATH"),
    ]
    # Three in real processes (no traceback can hide), the rest in-process (seconds each saved).
    for args, pattern in cases[:1] + cases[8:10]:
        assert_one_line_error(cifarlab(*args, check=False), pattern)
    for args, pattern in cases[1:8] + cases[10:]:
        assert_one_line_error(_in_process(args), pattern)
    assert not (tmp_path / "r").exists()


def _in_process(args, check=False):
    """``cifarlab ARGS`` through :func:`main` in this process: returncode, stdout and stderr as a process's."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main([str(a) for a in args])
    if check and rc != 0:
        raise AssertionError(f"cifarlab {' '.join(map(str, args))} exited {rc}:\n{err.getvalue()[-3000:]}")
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def test_predict_rejects_non_image(seed_run, tmp_path, capsys):
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    assert main(["predict", str(seed_run.run_dir), str(txt)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cifarlab: error: {txt}: not an image file of an accepted format (PNG, JPEG, BMP, WEBP)"


def test_lambda_model_refused_by_safe_mode(tmp_path, capsys):
    import keras
    m = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Lambda(lambda x: x * 2),
                          keras.layers.Flatten(), keras.layers.Dense(10)])
    m.save(tmp_path / "lambda.keras")
    assert main(["evaluate", str(tmp_path / "lambda.keras")]) == 2
    assert "not a loadable Keras model" in capsys.readouterr().err


def test_existing_run_dir_is_never_overwritten(seed_run, capsys, shared_archive):
    before = (seed_run.run_dir / "metrics.json").read_bytes()
    rc = main(["train", "--recipe", "seed", "--data", str(shared_archive), "--limit", "100", "--epochs", "1",
               "--out", str(seed_run.run_dir), "--quiet"])
    assert rc == 2 and "holds a completed run" in capsys.readouterr().err
    assert (seed_run.run_dir / "metrics.json").read_bytes() == before


def test_folder_dataset_trains(tmp_path):
    root = builders.image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10, test_per_class=3)
    p = cifarlab("train", "--recipe", "seed", "--data", root, "--epochs", 1, "--out", tmp_path / "run", "--quiet", "--no-report")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["class_names"] == ["a", "b", "c"] and m["num_images"] == 9
    assert "run directory" in p.stdout


def test_mistaken_paths_and_flags_are_reported_before_keras_starts(tmp_path, seed_run):
    """Each command checks its paths and flags first: in a process where Keras fails to import, the
    user's mistakes still get their one-line errors, and no backend was imported."""
    fake = tmp_path / "fake.keras"
    with zipfile.ZipFile(fake, "w") as z:  # passes the cheap check, as a real model file would
        z.writestr("config.json", "{}")
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    missing = tmp_path / "missing"
    cases = [
        (["evaluate", missing], "model not found"),
        (["evaluate", notes], "not a Keras model file"),
        (["evaluate", seed_run.run_dir, "--data", missing], "data not found"),
        (["predict", missing, notes], "model not found"),
        (["predict", fake, missing / "cat.png"], "cat.png: no such file"),
        (["predict", fake, notes], "notes.png: not an image file"),
        (["summary", missing / "m.keras"], "neither a registered model"),
        (["summary", notes], "not a Keras model file"),
        (["report", missing], "run directory not found"),
        (["serve", missing], "model not found"),
        (["serve", fake, "--port", "70000"], "--port must be 0-65535"),
        (["export", missing, "--format", "onnx", "-o", tmp_path / "m.onnx"], "model not found"),
        (["train", "--data", missing, "--out", tmp_path / "r"], "data not found"),
    ]
    script = (
        "import contextlib, io, json, sys\n"
        "sys.modules['keras'] = None  # importing Keras raises ImportError\n"
        "from cifarlab.cli import main\n"
        "out = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(args)\n"
        "    out.append([rc, err.getvalue()])\n"
        "print(json.dumps(out))\n"
        "print(sorted(m for m in ('tensorflow', 'jax', 'torch') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", script, json.dumps([[str(a) for a in args] for args, _ in cases])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    answers, backends = p.stdout.splitlines()
    assert backends == "[]"  # nor did any command start a backend some other way
    for (args, pattern), (rc, err) in zip(cases, json.loads(answers)):
        assert_one_line_error(types.SimpleNamespace(returncode=rc, stderr=err), pattern)
    assert not missing.exists() and not (tmp_path / "r").exists() and not (tmp_path / "m.onnx").exists()
