"""cifarlab audit: planted label flips, duplicates and leaks found in a real image folder; the report;
train --exclude/--relabel; resuming after kill -9; bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("blue", "green", "red")  # sorted: label numbers 0, 1, 2
CHANNEL = {"red": 0, "green": 1, "blue": 2}
PER_CLASS, TEST_PER_CLASS = 24, 6
# Tiny cross-fitting: 3 folds of the quick net, 16 images a batch, 10 epochs (30 steps a fold; at
# 5 epochs some clean red images were still called green).
TINY = ["--folds", "3", "--epochs", "10", "--batch-size", "16", "--quiet"]


def _field(rng, colour: str, tint: float = 80) -> np.ndarray:
    """A random grey texture (16x16 noise, enlarged) tinted toward ``colour``: uint8 (32, 32, 3).

    Distinct images differ in pattern (so only planted copies correlate pixel by pixel; the check
    compares high-pass images, so smoother fields would leave it little but rounding noise), and
    the class is the tint, which a net learns in a few steps."""
    small = rng.integers(40, 170, (16, 16), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[:, :, CHANNEL[colour]] += tint
    return np.clip(rgb, 0, 255).astype(np.uint8)


def build_folder(root: Path) -> dict:
    """``root/train/<class>/*.png``, ``root/test/<class>/*.png`` with planted problems; returns their paths."""
    rng = np.random.default_rng(0)
    for split, n in (("train", PER_CLASS), ("test", TEST_PER_CLASS)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_field(rng, c)).save(root / split / c / f"{i:02d}.png")
    planted = {}
    # A red image filed under green: a label error. Confident learning counts an image as another
    # class's only if the nets give that class more than they give its average image, so the one
    # flip of this tiny set is redder than most red images.
    flip = root / "train" / "green" / "zz_flip.png"
    Image.fromarray(_field(rng, "red", tint=140)).save(flip)
    planted["flip"] = flip
    # An exact copy within train.
    planted["exact"] = (root / "train" / "blue" / "03.png", root / "train" / "blue" / "zz_copy.png")
    shutil.copy(*planted["exact"])
    # A near copy: shifted by (2, 1) pixels and recoloured (contrast and brightness).
    src = np.asarray(Image.open(root / "train" / "red" / "05.png"), dtype=np.float32)
    near = np.clip(np.roll(src, (2, 1), axis=(0, 1)) * 0.85 + 20, 0, 255).astype(np.uint8)
    planted["near"] = (root / "train" / "red" / "05.png", root / "train" / "red" / "zz_near.png")
    Image.fromarray(near).save(planted["near"][1])
    # A training image copied into the test set: a leak.
    planted["leak"] = (root / "train" / "green" / "02.png", root / "test" / "green" / "zz_leak.png")
    shutil.copy(*planted["leak"])
    planted["blank"] = root / "train" / "blue" / "zz_blank.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(planted["blank"])
    return planted


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "images"
    return root, build_folder(root)


@pytest.fixture(scope="module")
def audited(tiny, tmp_path_factory):
    root, planted = tiny
    out = tmp_path_factory.mktemp("audit") / "audit"
    assert main(["audit", "--data", str(root), "-o", str(out), *TINY]) == 0
    return out, planted


def _rows(out: Path) -> list[dict]:
    with (out / "findings.csv").open() as f:
        return list(csv.DictReader(f))


def _pair_rows(rows, kind, a: Path, b: Path):
    want = {str(a.resolve()), str(b.resolve())}
    return [r for r in rows if r["kind"] == kind and {r["path"], r["pair_path"]} == want]


def test_finds_the_planted_flip_duplicates_leak_and_blank(audited):
    out, planted = audited
    rows = _rows(out)
    labels = [r for r in rows if r["kind"] == "label"]
    flip = [r for r in labels if r["path"] == str(planted["flip"].resolve())]
    assert flip and flip[0]["given_label"] == "green" and flip[0]["suggested_label"] == "red", labels[:5]
    assert labels[0] == flip[0] and len(labels) <= 3, labels  # the most suspect; hardly any clean image
    exact = _pair_rows(rows, "duplicate", *planted["exact"])
    assert exact and exact[0]["detail"] == "exact copy" and float(exact[0]["score"]) == 1.0
    near = _pair_rows(rows, "duplicate", *planted["near"])
    assert near and near[0]["detail"].startswith("near copy: shifted"), [r for r in rows if r["kind"] != "label"]
    # The row names the later image (the copy, the one --exclude drops); indices are source positions.
    assert near[0]["path"] == str(planted["near"][1].resolve()) and near[0]["split"] == near[0]["pair_split"] == "train"
    leak = _pair_rows(rows, "leak", *planted["leak"])
    assert leak and leak[0]["split"] == "train" and leak[0]["pair_split"] == "test"
    assert [r["path"] for r in rows if r["kind"] == "blank"] == [str(planted["blank"].resolve())]
    assert len([r for r in rows if r["kind"] in ("duplicate", "leak")]) == 3  # nothing unplanted
    summary = json.loads((out / "audit.json").read_text())
    # 30 steps on 48 images a fold: the nets memorise the flip, so only the out-of-fold net finds it.
    assert summary["label_method"]["probabilities"].startswith("out-of-fold net alone"), summary["label_method"]
    assert summary["counts"]["leak"] == 1 and summary["test"]["leaked_images"] == 1
    assert summary["data"]["num_train"] == 3 * PER_CLASS + 4 and summary["folds"]["trained_now"] == [0, 1, 2]
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["fold_0.npz", "fold_1.npz", "fold_2.npz"]


def test_indices_are_source_positions(audited, tiny):
    from cifarlab.data import load_dataset

    out, planted = audited
    ds = load_dataset(str(tiny[0]), validate_on="test")
    for r in _rows(out):
        x = ds.x_train if r["split"] == "train" else ds.x_test
        from cifarlab.data.images import to_array

        np.testing.assert_array_equal(x[int(r["index"])], to_array(r["path"]))


def test_report_is_self_contained(audited):
    from test_report import _decode, _Page

    out, _ = audited
    page = _Page((out / "audit.html").read_text())
    assert {"summary", "classes", "labels", "leaks", "duplicates", "sample", "outliers"} <= page.ids
    assert len(page.images) >= 10
    for img in page.images:
        assert _decode(img["src"]).size == (96, 96)
    text = " ".join(page.text)
    assert "zz_flip.png" in text and "exact copy" in text
    assert not [t for t, a in page.tags if t in ("script", "link")]


def test_report_in_headless_chromium(chromium, audited, tmp_path):
    from test_report import _WebDriver

    chromedriver = shutil.which("chromedriver")
    if not chromedriver:
        pytest.skip("chromedriver not installed (Debian package 'chromium-driver'; `make browser` installs it)")
    out, _ = audited
    driver = _WebDriver(chromedriver, chromium, tmp_path / "profile")
    try:
        driver.do("POST", "/url", {"url": (out / "audit.html").resolve().as_uri()})
        state = driver.do("POST", "/execute/sync", {"script": """
            const g = document.querySelector('#labels figure img');
            g.scrollIntoView({block: 'start'});
            const r = g.getBoundingClientRect();
            const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
            return {w: r.width, h: r.height, broken: broken, images: document.images.length,
                    pairs: document.querySelectorAll('#duplicates .pairs-grid .item').length};""", "args": []})
        logs = driver.do("POST", "/se/log", {"type": "browser"})
    finally:
        driver.close()
    assert not [e for e in logs if e.get("level") in ("SEVERE", "WARNING")], logs
    assert state["broken"] == 0 and state["images"] >= 10 and state["pairs"] == 2
    assert state["w"] >= 90 and state["h"] >= 90


def test_exclude_leaves_out_exactly_the_listed_images(audited, tiny, tmp_path):
    from cifarlab.data import load_dataset
    from cifarlab.data.findings import read_findings

    out, planted = audited
    root = tiny[0]
    rows = _rows(out)
    listed = sorted({int(r["index"]) for r in rows if r["kind"] in ("label", "duplicate") and r["split"] == "train"})
    full = load_dataset(str(root), validate_on="test")
    ds = load_dataset(str(root), validate_on="test", findings=read_findings(f"{out / 'findings.csv'}:label,duplicate"))
    kept = [i for i in range(len(full.y_train)) if i not in listed]
    np.testing.assert_array_equal(ds.x_train, full.x_train[kept])
    np.testing.assert_array_equal(ds.y_train, full.y_train[kept])
    relabelled = load_dataset(str(root), validate_on="test",
                              findings=read_findings(f"{out / 'findings.csv'}:label", relabel=True))
    flip = next(int(r["index"]) for r in rows if r["path"] == str(planted["flip"].resolve()))
    assert len(relabelled.y_train) == len(full.y_train) and relabelled.y_train[flip] == CLASSES.index("red")

    run = tmp_path / "run"
    assert main(["train", "--recipe", "seed", "--data", str(root), "--epochs", "1", "--validate-on", "test",
                 "--exclude", f"{out / 'findings.csv'}:label,duplicate", "--out", str(run), "--no-report", "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["request"]["exclude"].endswith("findings.csv:label,duplicate")
    assert config["data"]["findings"]["excluded_indices"] == listed
    assert config["data"]["num_train"] == len(full.y_train) - len(listed)


def test_resume_after_kill_trains_only_the_missing_folds(tiny, tmp_path):
    root, _ = tiny
    out = tmp_path / "audit"
    # Only which folds train matters here, not what they find: 2 folds of 2 epochs, no report.
    cmd = [sys.executable, "-m", "cifarlab", "audit", "--data", str(root), "-o", str(out), *TINY, "--folds", "2",
           "--epochs", "2", "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = out / "folds" / "fold_0.npz"
    try:
        while not first.exists() and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert first.exists(), proc.stderr.read()
    done = sorted(p.name for p in (out / "folds").glob("fold_*.npz"))
    assert done == ["fold_0.npz"] and not (out / "audit.json").exists()
    stamp = first.stat().st_mtime_ns
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "audit.json").read_text())
    assert summary["folds"]["trained_now"] == [1]
    assert first.stat().st_mtime_ns == stamp
    assert not list((out / "folds").glob(".*tmp*"))  # no half-written fold file left behind


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cifarlab: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input_is_one_line(capsys, tiny, tmp_path, audited):
    root, _ = tiny
    out = str(tmp_path / "a")
    _one_line_error(capsys, ["audit", "--data", str(tmp_path / "missing"), "-o", out], "data not found")
    _one_line_error(capsys, ["audit", "--data", str(root), "--folds", "1", "-o", out], "--folds")
    _one_line_error(capsys, ["audit", "--data", str(root), "--folds", "x", "-o", out], "--folds")
    _one_line_error(capsys, ["audit", "--data", str(root), "--recipe", "seed", "-o", out], "fast loop")
    _one_line_error(capsys, ["audit", "--data", str(root), "--epochs", "0", "-o", out], "--epochs")
    _one_line_error(capsys, ["audit", "--data", str(root), "--limit", "5", "--folds", "3", "-o", out], "too few")
    small = tmp_path / "small"
    for c, n in (("a", 6), ("b", 2)):
        (small / "train" / c).mkdir(parents=True)
        (small / "test" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_field(np.random.default_rng(i), "red")).save(small / "train" / c / f"{i}.png")
        Image.fromarray(_field(np.random.default_rng(9), "red")).save(small / "test" / c / "t.png")
    _one_line_error(capsys, ["audit", "--data", str(small), "--folds", "3", "-o", out], "class 'b' has 2")
    assert not Path(out).exists()  # nothing written for refused input

    findings = audited[0] / "findings.csv"
    train = ["train", "--recipe", "seed", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]
    _one_line_error(capsys, [*train, "--exclude", str(tmp_path / "nope.csv")], "findings file not found")
    _one_line_error(capsys, [*train, "--exclude", f"{findings}:label,bogus"], "unknown finding kind 'bogus'")
    _one_line_error(capsys, [*train, "--relabel"], "--relabel needs --exclude")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    _one_line_error(capsys, [*train, "--exclude", str(bad)], "not a findings file")
    bad.write_text("a,b\n1,2\n")
    _one_line_error(capsys, [*train, "--exclude", str(bad)], "not a findings file")
    text = findings.read_text().splitlines()
    bad.write_text(text[0] + "\n" + "label,train,minus,,red,blue,0.5,,,,\n")
    _one_line_error(capsys, [*train, "--exclude", str(bad)], "line 2", "not an image position")
    bad.write_text(text[0] + "\n" + "label,train,99999,,red,blue,0.5,,,,\n")
    _one_line_error(capsys, [*train, "--exclude", str(bad)], "another dataset")
    assert not (tmp_path / "r").exists()


def test_label_probabilities_use_every_fold_net_unless_they_memorised():
    from cifarlab.audit.labels import find, label_issues

    rng = np.random.default_rng(0)
    n, k = 600, 5
    y = rng.integers(0, 3, n)
    clean = np.full((n, 3), 0.05, np.float32)
    clean[np.arange(n), y] = 0.9
    flipped = np.arange(0, n, 20)  # 30 images the out-of-fold net gives to the next class
    oof = clean.copy()
    oof[flipped] = 0.05
    oof[flipped, (y[flipped] + 1) % 3] = 0.9
    insample = clean * 0.9 + 0.1 / 3  # less confident than out of fold, but agreeing on the clean images
    unfitted = _unfitted(insample, flipped, y)  # the nets that trained on the flips still doubt them
    issues, info = find(y, oof, unfitted, k)
    assert info["probabilities"] == "mean of the 5 fold nets" and info["memorised_share"] == 0.0
    expected = label_issues(y, (oof + (k - 1) * unfitted) / k)
    assert np.array_equal(issues["index"], expected["index"]) and np.allclose(issues["score"], expected["score"])
    issues, info = find(y, oof, insample, k)  # the nets that trained on the flips fit them
    assert info["probabilities"].startswith("out-of-fold net alone") and info["memorised_share"] == 1.0
    expected = label_issues(y, oof)
    assert np.array_equal(issues["index"], expected["index"]) and np.allclose(issues["score"], expected["score"])


def _unfitted(insample, flipped, y):
    out = insample.copy()
    out[flipped] = 0.1
    out[flipped, (y[flipped] + 1) % 3] = 0.8
    return out


def test_candidate_pairs_are_every_close_pair_once_capped_per_image():
    """The chunked search finds what comparing every pair finds: each pair i < j at or over the
    threshold once, and an image with more later partners than the cap keeps the most similar."""
    from cifarlab.audit.duplicates import candidate_pairs

    rng = np.random.default_rng(0)
    f = rng.normal(size=(700, 16)).astype(np.float32)
    f[350:] = f[:350] + 0.4 * rng.normal(size=(350, 16))  # a near copy of each of the first 350
    f[::9] = f[0] + 0.2 * rng.normal(size=(len(f[::9]), 16))  # a cluster of 78: over the cap
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    i, j = candidate_pairs(f, 0.85, chunk=64, per_row=5)
    s = f @ f.T
    expected = set()
    for a in range(len(f)):
        later = np.flatnonzero(s[a, a + 1:] >= 0.85) + a + 1
        expected.update((a, int(b)) for b in later[np.argsort(-s[a, later])[:5]])
    assert len(expected) > 400 and max(np.bincount(i)) == 5  # the test exercises both: many pairs, the cap
    assert set(zip(i.tolist(), j.tolist())) == expected and len(i) == len(expected)
