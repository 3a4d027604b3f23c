"""cifarlab report: the HTML report of a run, Grad-CAM, calibration, and their bad input."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.cli import main

SECTIONS = ("summary", "curves", "classes", "confusion", "mistakes", "examples", "gradcam", "calibration")


class _Page(HTMLParser):
    """Section ids, images (id, alt, src) and all text of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.images, self.text, self.tags = set(), [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a)

    def handle_data(self, data):
        self.text.append(data)


def _decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
    im.load()
    return im


@pytest.fixture(scope="module")
def baseline_run(medium_archive, tmp_path_factory):
    """A second tiny run, through the CLI: --no-report and --tensorboard on the way."""
    out = tmp_path_factory.mktemp("baseline") / "baseline"
    rc = main(["train", "--recipe", "seed", "--data", str(medium_archive), "--limit", "600", "--epochs", "2", "--seed", "1",
               "--out", str(out), "--no-report", "--tensorboard", "--quiet"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def compared_report(seed_run, baseline_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "compare.html"
    assert main(["report", str(seed_run.run_dir), "--compare", str(baseline_run), "-o", str(out)]) == 0
    return out


def test_train_writes_report_and_the_measured_predictions(seed_run):
    from cifarlab.evaluation.report import load_predictions

    run_dir = seed_run.run_dir
    assert (run_dir / "report.html").is_file()
    y, probs = load_predictions(run_dir / "test_predictions.npz")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(y) == metrics["num_images"] == 500  # medium_archive's test images
    assert (probs.argmax(1) == y).mean() == pytest.approx(metrics["test_accuracy"])
    np.testing.assert_array_equal(np.asarray(metrics["confusion_matrix"]).sum(1), np.bincount(y, minlength=10))
    assert metrics["summary"] == {"test_accuracy": metrics["test_accuracy"], "evaluation": "plain",
                                  "plain_test_accuracy": metrics["test_accuracy"]}  # the seed recipe has no TTA


def test_no_report_and_tensorboard_flags(baseline_run):
    assert not (baseline_run / "report.html").exists()
    assert (baseline_run / "test_predictions.npz").is_file()
    events = list((baseline_run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}


def test_report_has_every_section_and_every_image_decodes(seed_run, compared_report):
    text = compared_report.read_text(encoding="utf-8")
    page = _Page(text)
    assert set(SECTIONS) | {"compare"} <= page.ids
    # Self-contained: nothing is fetched from anywhere.
    assert not [t for t in page.tags if t[0] in ("script", "link", "iframe")]
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)
    assert len(page.images) > 60  # curves, heat map, reliability, 24 wrong, 60 correct, 16+ Grad-CAM, compare
    for img in page.images:
        im = _decode(img["src"])
        assert im.width >= 32 and im.height >= 32
    words = " ".join(page.text)
    metrics = seed_run.metrics
    assert f"{metrics['test_accuracy']:.2%}" in words
    # Most-confused pairs in words, e.g. "cat → dog: 21 of 52" (52 cats among the test images).
    pairs = re.findall(r"(\w+) → (\w+): ([\d,]+) of ([\d,]+)", words)
    assert len(pairs) >= 5 and all(t in metrics["class_names"] and p in metrics["class_names"] for t, p, _, _ in pairs)
    from cifarlab.evaluation.metrics import most_confused

    t, p, n, total = most_confused(metrics, 1)[0]
    assert f"{t} → {p}: {n:,} of {total:,}" in words
    assert "Grad-CAM on layer" in words and "conv2" in words
    assert re.search(r"expected calibration error", words)
    assert "baseline" in words  # the compared run is named


def test_per_class_table_is_worst_first(seed_run, compared_report):
    text = compared_report.read_text(encoding="utf-8")
    table = text.split('id="per-class"', 1)[1].split("</table>", 1)[0]
    names = re.findall(r"<tr><td>([^<]+)</td>", table)
    assert sorted(names) == sorted(seed_run.metrics["class_names"])
    f1 = [seed_run.metrics["per_class"][n]["f1"] for n in names]
    assert f1 == sorted(f1)


def test_report_of_a_run_without_saved_predictions_whose_data_moved(seed_run, medium_archive, tmp_path, capsys):
    """Runs from before test_predictions.npz existed: the model predicts again; --data finds the images."""
    run = _copy_run(seed_run.run_dir, tmp_path / "copy")
    (run / "report.html").unlink()
    (run / "test_predictions.npz").unlink()
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["source"] = str(tmp_path / "moved.tar.gz")
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["report", str(run), "--data", str(medium_archive)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'report.html'}"
    words = " ".join(_Page((run / "report.html").read_text(encoding="utf-8")).text)
    assert f"{seed_run.metrics['test_accuracy']:.2%}" in words
    assert not (run / "test_predictions.npz").exists()  # a report never writes into the run but report.html


def test_report_embeds_the_runs_own_figures_and_draws_missing_or_damaged_ones(seed_run, tmp_path):
    """The curves and heat map training wrote are embedded as they are, not drawn a second time; a run
    that lost one (or holds something that is not a PNG under its name) gets it drawn afresh."""
    from cifarlab.evaluation.report import build_report

    run = _copy_run(seed_run.run_dir, tmp_path / "run")
    marker = io.BytesIO()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(marker, format="PNG")
    (run / "accuracy.png").write_bytes(marker.getvalue())  # no plot draws this: only the file itself can
    own = {name: (run / name).read_bytes() for name in ("accuracy.png", "loss.png", "confusion.png")}
    pngs = [base64.b64decode(img["src"].split(",", 1)[1]) for img in
            _Page(build_report(run, tmp_path / "a.html").read_text(encoding="utf-8")).images]
    assert all(png in pngs for png in own.values())

    (run / "confusion.png").unlink()
    (run / "loss.png").write_bytes(b"<html>not a picture</html>")
    pngs = [base64.b64decode(img["src"].split(",", 1)[1]) for img in
            _Page(build_report(run, tmp_path / "b.html").read_text(encoding="utf-8")).images]
    assert own["accuracy.png"] in pngs and b"<html>" not in b"".join(pngs)
    assert len(pngs) == len([p for p in pngs if p.startswith(b"\x89PNG")])  # the two redrawn are PNGs too
    assert not (run / "confusion.png").exists()  # drawn into the report, never into the run


# ---------------------------------------------------------------- the real browser


class _WebDriver:
    """Just enough W3C WebDriver, over HTTP to Debian's chromedriver on 127.0.0.1."""

    def __init__(self, chromedriver: str, chromium: str, profile: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                if self._call("GET", "/status")["value"]["ready"]:
                    break
            except OSError:
                time.sleep(0.05)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1300,1000"]
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["value"]["sessionId"]

    def _call(self, method, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def do(self, method, path, body=None):
        return self._call(method, f"/session/{self.session}{path}", body)["value"]

    def close(self):
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


def test_report_in_headless_chromium(chromium, compared_report, tmp_path):
    chromedriver = shutil.which("chromedriver")
    if not chromedriver:
        pytest.skip("chromedriver not installed (Debian package 'chromium-driver'; `make browser` installs it)")
    driver = _WebDriver(chromedriver, chromium, tmp_path / "profile")
    try:
        driver.do("POST", "/url", {"url": compared_report.resolve().as_uri()})
        state = driver.do("POST", "/execute/sync", {"script": """
            const img = document.getElementById('confusion-heatmap');
            img.scrollIntoView({block: 'start'});
            const r = img.getBoundingClientRect();
            const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
            return {x: r.left, y: r.top, w: r.width, h: r.height, ratio: window.devicePixelRatio,
                    nat: img.naturalWidth, broken: broken, images: document.images.length};""", "args": []})
        shot = Image.open(io.BytesIO(base64.b64decode(driver.do("GET", "/screenshot")))).convert("RGB")
        logs = driver.do("POST", "/se/log", {"type": "browser"})
    finally:
        driver.close()
    assert not [e for e in logs if e.get("level") in ("SEVERE", "WARNING")], logs
    assert state["images"] > 60 and state["broken"] == 0
    assert state["nat"] > 0 and state["w"] > 200 and state["h"] > 200
    k = state["ratio"]
    box = (int(state["x"] * k), int(state["y"] * k), int((state["x"] + state["w"]) * k),
           int(min(state["y"] + state["h"], 1000) * k))
    area = np.asarray(shot.crop(box), dtype=np.int16)
    # The viridis heat map: many pixels far from white and strongly coloured (not grey text).
    coloured = (np.abs(area - area.mean(axis=2, keepdims=True)).max(axis=2) > 40) & (area.min(axis=2) < 200)
    assert coloured.mean() > 0.2, coloured.mean()
    assert len(np.unique(area.reshape(-1, 3), axis=0)) > 50


# ---------------------------------------------------------------- Grad-CAM with a known answer


def _corner_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey noise; class 1 images carry one bright 6x6 patch in a random corner, class 0 none.

    Returns images uint8 (n, 32, 32, 3), labels (n,), corner index (n,) 0-3:
    top-left, top-right, bottom-left, bottom-right (meaningless for class 0).
    """
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.integers(40, 160, (n, 32, 32, 1)), 3, axis=3).astype(np.uint8)
    y = rng.integers(0, 2, n)
    corner = rng.integers(0, 4, n)
    for i in np.flatnonzero(y == 1):
        r, c = (corner[i] // 2) * 24 + 2, (corner[i] % 2) * 24 + 2
        x[i, r:r + 6, c:c + 6] = (250, 220, 40)
    return x, y, corner


def _functional_bn_gelu(num_classes: int):
    """A model shaped like an airbench net: conv, batch norm, GELU, pooling, no layer named conv*."""
    import keras
    from keras import layers

    inp = keras.Input((32, 32, 3))
    h = layers.Rescaling(1 / 255)(inp)
    for i, width in enumerate((16, 32)):
        h = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_c")(h)
        h = layers.BatchNormalization(name=f"block{i}_bn")(h)
        h = layers.Activation("gelu", name=f"block{i}_act")(h)
        h = layers.MaxPool2D(2, name=f"block{i}_pool")(h)
    h = layers.GlobalMaxPooling2D()(h)
    out = layers.Dense(num_classes, activation="softmax")(h)
    return keras.Model(inp, out, name="bn_gelu")


@pytest.mark.parametrize("arch", ["seed", "bn_gelu"])
def test_gradcam_peaks_where_the_class_cue_is(arch):
    import keras

    from cifarlab.evaluation.gradcam import gradcam, last_conv_layer
    from cifarlab.registry import get_model

    keras.utils.set_random_seed(0)
    model = get_model("seed").build(num_classes=2) if arch == "seed" else _functional_bn_gelu(2)
    assert last_conv_layer(model).name == ("conv2" if arch == "seed" else "block1_c")
    x, y, _ = _corner_images(1500, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x.astype(np.float32), y, epochs=4, batch_size=32, verbose=0)
    xt, yt, corner = _corner_images(40, seed=2)
    assert (model.predict(xt.astype(np.float32), verbose=0).argmax(1) == yt).mean() >= 0.95
    heat = gradcam(model, xt, yt)
    assert heat.shape == (40, 32, 32) and heat.min() >= 0 and heat.max() <= 1
    heat, corner = heat[yt == 1], corner[yt == 1]  # where did it see the patch?
    quads = np.stack([heat[:, :16, :16], heat[:, :16, 16:], heat[:, 16:, :16], heat[:, 16:, 16:]], 1).mean((2, 3))
    hits = quads.argmax(1) == corner
    assert hits.mean() >= 0.9, (hits.mean(), quads[~hits])


def test_gradcam_refuses_a_model_without_convolutions():
    import keras

    from cifarlab.errors import CifarlabError
    from cifarlab.evaluation.gradcam import last_conv_layer

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(CifarlabError, match="no convolutional layer"):
        last_conv_layer(model)


# ---------------------------------------------------------------- calibration


def test_expected_calibration_error_by_construction():
    from cifarlab.evaluation.calibration import reliability

    # 1,000 images all given 0.8 to the predicted class; 800 right: perfectly calibrated.
    probs = np.tile([0.8, 0.2], (1000, 1))
    y = np.r_[np.zeros(800, int), np.ones(200, int)]
    assert reliability(y, probs)["ece"] == pytest.approx(0.0, abs=1e-12)
    # Same confidence, half right: 0.3 too sure.
    rel = reliability(np.r_[np.zeros(500, int), np.ones(500, int)], probs)
    assert rel["ece"] == pytest.approx(0.3) and rel["mean_confidence"] - rel["accuracy_overall"] == pytest.approx(0.3)
    assert sum(rel["count"]) == 1000


# ---------------------------------------------------------------- bad input


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cifarlab: error: "), err
    return err


def test_missing_run_directory(tmp_path, capsys):
    assert "run directory not found" in _error(capsys, ["report", str(tmp_path / "nope")])


@pytest.mark.parametrize("missing", ["metrics.json", "model.keras", "config.json", "history.csv"])
def test_run_directory_missing_a_file(seed_run, tmp_path, capsys, missing):
    run = _copy_run(seed_run.run_dir, tmp_path / "run")
    (run / missing).unlink()
    err = _error(capsys, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert f"missing {missing}" in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name, damage, expect", [
    ("model.keras", b"not a zip at all", "model.keras: not a Keras model file"),
    ("config.json", b"{\"data\": ", "config.json: corrupt run configuration"),
    ("metrics.json", b"{}", "metrics.json: corrupt test metrics"),
    ("metrics.json", json.dumps({"test_accuracy": 0.5, "test_loss": 1, "per_class": {}, "macro_avg": {},
                                 "confusion_matrix": [[1]], "class_names": ["a", "b"]}).encode(),
     "metrics.json: corrupt test metrics"),
    ("history.csv", b"", "history.csv: corrupt training history"),
    ("test_predictions.npz", b"PK\x03\x04truncated", "test_predictions.npz: corrupt test predictions"),
])
def test_corrupt_run_files(seed_run, tmp_path, capsys, name, damage, expect):
    run = _copy_run(seed_run.run_dir, tmp_path / "run")
    (run / name).write_bytes(damage)
    assert expect in _error(capsys, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert not (tmp_path / "r.html").exists()


def test_truncated_model(seed_run, tmp_path, capsys):
    run = _copy_run(seed_run.run_dir, tmp_path / "run")
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 2])
    assert "model.keras" in _error(capsys, ["report", str(run)])


def test_data_gone_and_other_mistakes(seed_run, tmp_path, capsys):
    run = _copy_run(seed_run.run_dir, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["source"] = str(tmp_path / "moved.tar.gz")
    (run / "config.json").write_text(json.dumps(cfg))
    err = _error(capsys, ["report", str(run)])
    assert "moved.tar.gz" in err and "--data" in err
    assert "ending in .html" in _error(capsys, ["report", str(seed_run.run_dir), "-o", str(tmp_path / "r.pdf")])
    assert "same run" in _error(capsys, ["report", str(seed_run.run_dir), "--compare", str(seed_run.run_dir)])


def test_a_folder_of_runs_reports_the_newest_against_the_one_before(seed_run, baseline_run, tmp_path):
    runs = tmp_path / "runs"
    old, new = _copy_run(baseline_run, runs / "1-old"), _copy_run(seed_run.run_dir, runs / "2-new")
    for run, started in ((old, "2026-01-01T00:00:00+00:00"), (new, "2026-02-01T00:00:00+00:00")):
        cfg = json.loads((run / "config.json").read_text())
        cfg["started"] = started
        (run / "config.json").write_text(json.dumps(cfg))
    assert main(["report", str(runs)]) == 0
    page = _Page((runs / "report.html").read_text(encoding="utf-8"))
    assert "compare" in page.ids
    assert "Comparison: 2-new vs 1-old" in " ".join(page.text)


def test_gradcam_under_mixed_precision():
    """Models trained with --precision bf16/fp16 have low-precision feature maps."""
    import keras

    from cifarlab.evaluation.gradcam import gradcam
    from cifarlab.registry import get_model

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = get_model("seed").build(num_classes=10)
    finally:
        keras.mixed_precision.set_global_policy(before)
    x, _, _ = _corner_images(4, seed=3)
    heat = gradcam(model, x)
    assert heat.shape == (4, 32, 32) and heat.dtype == np.float32 and np.isfinite(heat).all()
    assert heat.max() <= 1 and heat.min() >= 0
