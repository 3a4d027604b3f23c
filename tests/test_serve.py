"""The HTTP service, for real: `cifarlab serve` in a subprocess on 127.0.0.1, a real client, a real browser."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image

from cifarlab.serving.app import MAX_BYTES


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 100-byte PNG whose header declares 10 gigapixels (30 GB of RGB if anyone allocated it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def test_images(small_archive):
    from cifarlab.data import read_arrays

    return read_arrays(small_archive).x_test[:40]


@pytest.fixture(scope="module")
def expected(seed_run, test_images):
    """What the Python API says about the test images: probabilities (N, K)."""
    from cifarlab.models.io import load_model
    from cifarlab.inference.predict import predict_arrays

    model, meta = load_model(seed_run.run_dir)
    return predict_arrays(model, test_images), meta["class_names"]


def test_health_classes_model(server, seed_run):
    s = server.session
    h = s.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == seed_run.run_dir.name
    classes = s.get(server.url + "/classes").json()["classes"]
    assert classes == seed_run.config["data"]["class_names"]
    info = s.get(server.url + "/model").json()
    assert info["model"] == "seed" and info["recipe"] == "seed" and info["classes"] == classes
    assert info["metrics"]["test_accuracy"] == pytest.approx(seed_run.metrics["test_accuracy"])
    schema = s.get(server.url + "/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/classes", "/model"} <= set(schema["paths"])


def test_predict_raw_and_multipart_agree_with_python_api(server, test_images, expected):
    probs, names = expected
    s = server.session
    for i in range(3):
        data = png_bytes(test_images[i])
        raw = s.post(server.url + "/predict", data=data, headers={"Content-Type": "image/png"}).json()
        multi = s.post(server.url + "/predict?top_k=3", files={"file": ("x.png", data, "image/png")}).json()
        assert raw["class"] == multi["class"] == names[int(probs[i].argmax())]
        assert len(raw["top"]) == 5 and len(multi["top"]) == 3
        for t in raw["top"]:
            assert t["probability"] == pytest.approx(float(probs[i][names.index(t["class"])]), abs=1e-5)
        assert raw["model"] and raw["latency_ms"] > 0 and raw["batch_size"] >= 1


def test_predict_batch_reports_bad_files_individually(server, test_images, expected):
    probs, names = expected
    files = [("files", ("a.png", png_bytes(test_images[0]), "image/png")),
             ("files", ("notes.txt", b"not an image at all", "text/plain")),
             ("files", ("b.png", png_bytes(test_images[1]), "image/png"))]
    r = server.session.post(server.url + "/predict/batch", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 415, 200]
    assert results[0]["class"] == names[int(probs[0].argmax())]
    assert results[2]["class"] == names[int(probs[1].argmax())]
    assert "not an image" in results[1]["error"]


def test_concurrent_requests_are_micro_batched(server, test_images, expected):
    probs, names = expected
    before = server.session.get(server.url + "/health").json()

    def one(i):
        # a session per thread: requests.Session is not thread-safe
        import requests

        with requests.Session() as s:
            s.trust_env = False
            return s.post(server.url + "/predict", data=png_bytes(test_images[i])).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, [i % len(test_images) for i in range(96)]))
    assert [a["class"] for a in answers] == [names[int(probs[i % len(test_images)].argmax())] for i in range(96)]
    after = server.session.get(server.url + "/health").json()
    assert after["images"] - before["images"] == 96
    assert after["batches"] - before["batches"] < 96  # several images per model call
    assert max(a["batch_size"] for a in answers) > 1


def _bad_requests(test_images):
    good = png_bytes(test_images[0])
    jpeg = io.BytesIO()
    Image.fromarray(np.kron(test_images[0], np.ones((8, 8, 1), np.uint8))).save(jpeg, format="JPEG")
    return [
        ("non-image bytes", "post", "/predict", {"data": b"hello, this is text"}, 415),
        ("non-image upload", "post", "/predict", {"files": {"file": ("a.png", b"\0" * 500)}}, 415),
        ("over the size limit", "post", "/predict", {"data": b"\0" * (MAX_BYTES + 1)}, 413),
        ("over the limit, chunked", "post", "/predict",
         {"data": iter([b"\0" * (1 << 20)] * 11)}, 413),
        ("decompression bomb", "post", "/predict", {"data": bomb_png()}, 400),
        ("decompression bomb upload", "post", "/predict", {"files": {"file": ("b.png", bomb_png())}}, 400),
        ("truncated PNG", "post", "/predict", {"data": good[: len(good) // 2]}, 400),
        ("truncated JPEG", "post", "/predict", {"data": jpeg.getvalue()[: len(jpeg.getvalue()) // 2]}, 400),
        ("empty body", "post", "/predict", {"data": b""}, 400),
        ("malformed multipart", "post", "/predict",
         {"data": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 400),
        ("two files to /predict", "post", "/predict",
         {"files": [("file", ("a.png", good)), ("file", ("b.png", good))]}, 400),
        ("batch without multipart", "post", "/predict/batch", {"data": good}, 415),
        ("batch bomb", "post", "/predict/batch", {"data": b"\0" * (MAX_BYTES + 1),
                                                   "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
         413),
        ("top_k out of range", "post", "/predict?top_k=0", {"data": good}, 422),
        ("GET /predict", "get", "/predict", {}, 405),
        ("PUT /predict", "put", "/predict", {"data": good}, 405),
        ("DELETE /classes", "delete", "/classes", {}, 405),
        ("POST /health", "post", "/health", {}, 405),
        ("unknown path", "get", "/nope", {}, 404),
    ]


def test_bad_requests_get_json_errors_and_the_service_lives_on(server, test_images):
    pid = server.proc.pid
    for what, method, path, kw, status in _bad_requests(test_images):
        r = getattr(server.session, method)(server.url + path, **kw)
        assert r.status_code == status, (what, r.status_code, r.text[:300])
        body = r.json()
        assert isinstance(body["error"], str) and body["error"] and body["status"] == status, what
        assert server.alive() and server.proc.pid == pid, what
    assert "pixels" in server.session.post(server.url + "/predict", data=bomb_png()).json()["error"]
    ok = server.session.post(server.url + "/predict", data=png_bytes(test_images[0]))
    assert ok.status_code == 200


def test_web_page_is_self_contained(server):
    html = server.session.get(server.url + "/").text
    assert "<input" in html and 'type="file"' in html
    for external in ("http://", "https://", "//cdn", "<link"):
        assert external not in html


def test_busy_port_is_a_one_line_error(server, seed_run, capsys):
    from cifarlab.cli import main

    port = server.url.rsplit(":", 1)[1]
    assert main(["serve", str(seed_run.run_dir), "--port", port]) == 2  # the real CLI, in-process
    err = capsys.readouterr().err
    assert err.startswith("cifarlab: error: cannot listen on 127.0.0.1:" + port) and len(err.splitlines()) == 1


# ---- property-based tests from the OpenAPI schema ------------------------------------------------

def test_api_conforms_to_its_schema(server):
    """Schemathesis generates requests for every operation from /openapi.json (bounded: 25 per operation)."""
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            response = case.call_and_validate(session=server.session, checks=checks)
            if response.status_code >= 400:
                assert isinstance(response.json()["error"], str)

        check()
    assert {"POST /predict", "POST /predict/batch", "GET /health", "GET /classes", "GET /model"} <= set(seen)
    assert server.alive()


# ---- a real browser -------------------------------------------------------------------------------

def test_browser_upload_shows_the_models_label(server, chromium, seed_run, test_images, expected, tmp_path):
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cifarlab.serving.predict import predict

    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not shutil.which(driver_path):
        pytest.skip("chromedriver not installed (Debian package 'chromium-driver')")
    image = tmp_path / "upload.png"
    image.write_bytes(png_bytes(test_images[3]))
    want = predict(seed_run.run_dir, [image], top=1)[0].top[0][0]  # the label via the Python API

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.get(server.url + "/")
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-top1"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-top1") == want
        rows = driver.find_elements(By.CSS_SELECTOR, "#result .row")
        assert len(rows) == 5
        assert rows[0].get_attribute("data-class") == want
        assert driver.find_element(By.ID, "preview").is_displayed()
        assert driver.find_element(By.ID, "error").text == ""

        # Dropping a file on the drop zone works too (a drop event carrying a File, as a drag from the desktop).
        import base64

        dropped = tmp_path / "dropped.png"
        dropped.write_bytes(png_bytes(test_images[5]))
        want2 = predict(seed_run.run_dir, [dropped], top=1)[0].top[0][0]
        driver.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            document.body.removeAttribute("data-top1");
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """, base64.b64encode(dropped.read_bytes()).decode())
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-top1"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-top1") == want2
    finally:
        driver.quit()


def test_bad_serve_flags(seed_run, capsys):
    from cifarlab.cli import main

    for flags in (["--max-upload-mb", "0"], ["--port", "70000"], ["--max-batch", "0"], ["--max-inflight", "0"],
                  ["--header-timeout", "0"], ["--max-request-pixels", "-1"], ["--allowed-hosts", "ev*l.com"],
                  ["--allowed-hosts", ","]):
        assert main(["serve", str(seed_run.run_dir), *flags]) == 2
        assert capsys.readouterr().err.startswith("cifarlab: error: --")


def test_upload_limit_is_configurable(seed_run, test_images):
    """The limit behind --max-upload-mb, on a second real server (uvicorn in a thread of this process)."""
    from servers import InProcessServer

    from cifarlab.serving.app import create_app, load_served_model

    good = png_bytes(test_images[0])
    app = create_app(load_served_model(seed_run.run_dir), max_bytes=len(good), queue_timeout_s=10)
    with InProcessServer(app) as server:
        assert server.session.post(server.url + "/predict", data=good).status_code == 200
        r = server.session.post(server.url + "/predict", data=good + b"\0")
        assert r.status_code == 413 and f"{len(good):,}" in r.json()["error"]
