"""`cifarlab predict` on many files: a CSV streamed in batches, bad files reported in it, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

N_GOOD = 1200


def cli(*args, cwd=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "cifarlab", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def image_tree(shared_archive, tmp_path_factory):
    """1,200 test images as PNGs in nested folders, plus files that cannot be read."""
    from cifarlab.data import read_arrays

    x = read_arrays(shared_archive).x_test[:N_GOOD]
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, a in enumerate(x):
        d = root / f"part{i % 3}" / f"sub{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{i:05d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.png").write_text("not an image")
    (bad / "empty.jpg").write_bytes(b"")
    full = (root / "part0" / "sub0" / "img00000.png").read_bytes()
    (bad / "truncated.png").write_bytes(full[: len(full) // 2])
    (bad / "notes.txt").write_text("ignored: not an image suffix")
    return root, dict(zip(map(str, paths), x))


def test_predict_folder_to_csv(seed_run, image_tree, tmp_path):
    from cifarlab.models.io import load_model
    from cifarlab.inference.predict import predict_arrays

    root, arrays = image_tree
    out = tmp_path / "predictions.csv"
    r = cli("predict", seed_run.run_dir, root, root / "missing.png", "--out", out, "--batch-size", 200, "--top-k", 2)
    assert r.returncode == 0, r.stderr
    assert f"{N_GOOD + 4} images, 4 unreadable" in r.stdout
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["file", "class", "probability", "class_2", "probability_2", "error"]
    assert len(df) == N_GOOD + 4  # 3 bad image files + the missing path; notes.txt is not an image
    errors = df[df["error"] != ""]
    assert sorted(os.path.basename(f) for f in errors["file"]) == ["empty.jpg", "missing.png", "text.png",
                                                                   "truncated.png"]
    assert (errors["class"] == "").all()
    good = df[df["error"] == ""]
    model, meta = load_model(seed_run.run_dir)
    probs = predict_arrays(model, np.stack([arrays[f] for f in good["file"]]))
    names = np.array(meta["class_names"])
    assert (good["class"].to_numpy() == names[probs.argmax(1)]).all()
    np.testing.assert_allclose(good["probability"].to_numpy(float), probs.max(1), atol=2e-6)
    assert not list(tmp_path.glob(".predictions.csv*"))  # no temporary file left


# The CLI in-process from here on (the subprocess above proves the real command; TensorFlow's
# start-up would cost ~10 s per call).

def main(capsys, *args):
    from cifarlab.cli import main as cifarlab_main

    rc = cifarlab_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_few_files_print_top_k_as_before(seed_run, image_tree, capsys):
    root, arrays = image_tree
    files = sorted(arrays)[:2]
    rc, out, err = main(capsys, "predict", seed_run.run_dir, *files, "--top-k", 2)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(files[0] + ": ") and lines[0].count("%") == 2
    rc, out, err = main(capsys, "predict", seed_run.run_dir, files[0], "--json")
    assert json.loads(out)["file"] == files[0]


def test_bad_file_without_out_is_one_line_error(seed_run, image_tree, capsys):
    root, _ = image_tree
    rc, out, err = main(capsys, "predict", seed_run.run_dir, root / "bad" / "text.png")
    assert rc == 2
    assert err.startswith("cifarlab: error: ") and "not an image" in err and len(err.splitlines()) == 1


def test_unwritable_out_is_one_line_error(seed_run, image_tree, tmp_path, capsys):
    root, _ = image_tree
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, out, err = main(capsys, "predict", seed_run.run_dir, root / "bad", "--out", blocker / "p.csv")
    assert rc == 2 and err.startswith("cifarlab: error: cannot write"), err


def test_bad_flags(seed_run, image_tree, capsys):
    root, _ = image_tree
    assert main(capsys, "predict", seed_run.run_dir, root, "--batch-size", 0)[0] == 2
    rc, out, err = main(capsys, "predict", seed_run.run_dir, root / "bad" / "missing.png")
    assert rc == 2 and "no such file" in err


def test_predict_files_streams_in_order(seed_run, image_tree):
    from cifarlab.models.io import load_model
    from cifarlab.serving.predict import collect_images, predict_files

    root, _ = image_tree
    files = collect_images([root / "bad", root / "part1"])[:50]
    loaded = load_model(seed_run.run_dir)
    preds = list(predict_files(loaded, files, top=1, batch_size=7))
    assert [p.source for p in preds] == [str(f) for f in files]
    assert sum(p.error is not None for p in preds) == 3
