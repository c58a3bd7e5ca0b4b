"""Serving: the HTTP API with FastAPI's test client, and the page in headless Chromium."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import chromium_browser, photo
from fastapi.testclient import TestClient
from PIL import Image

from headstart.data import demo_root
from headstart.predict import load
from headstart.serve import Limits, create_app


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return load(tiny_run.dir)


@pytest.fixture(scope="module")
def client(predictor):
    # Small limits, so that "too large" is cheap to test.
    return TestClient(create_app(predictor, Limits(max_upload_mb=0.5, max_pixels=1_000_000, max_files=4)))


def _demo_images(n: int) -> list[Path]:
    return sorted((demo_root() / "evaluation").iterdir())[:n]


def test_healthz(client, predictor):
    res = client.get("/healthz")
    assert res.status_code == 200
    assert res.json()["status"] == "ok" and res.json()["classes"] == predictor.classes


def test_predict_one_and_several_images(client, predictor):
    images = _demo_images(2)
    expected = predictor.predict(images, top_k=3)
    res = client.post("/predict", files={"file": (images[0].name, images[0].read_bytes(), "image/png")})
    assert res.status_code == 200, res.text
    [p] = res.json()["predictions"]
    assert p["filename"] == images[0].name and p["label"] == expected[0].label
    assert [t["class"] for t in p["top"]] == [c for c, _ in expected[0].top]
    # One image here, two in ``expected``: other batch sizes may round differently, in the last digits.
    assert abs(p["probability"] - expected[0].probability) < 1e-5

    files = [("file", (f.name, f.read_bytes(), "image/png")) for f in images]
    res = client.post("/predict?top_k=5", files=files)
    assert res.status_code == 200
    body = res.json()["predictions"]
    assert [p["label"] for p in body] == [r.label for r in expected]
    assert all(len(p["top"]) == min(5, len(predictor.classes)) for p in body)


@pytest.mark.parametrize("name, content, status, message", [
    ("truncated.jpg", _png(photo(1, (200, 160)), "JPEG")[:1500], 422, "truncated.jpg: cannot decode"),
    ("notes.txt", b"just some text, not a picture", 415, "not an image Pillow recognises"),
    ("empty.png", b"", 422, "empty file"),
    ("huge.png", _png(Image.new("RGB", (1200, 1000))), 413, "pixels is over the limit"),
    ("big.bmp", b"BM" + b"\x00" * (600 * 1024), 413, "larger than 0.5 MB"),
])
def test_bad_uploads_get_a_4xx_with_a_json_error(client, name, content, status, message):
    res = client.post("/predict", files={"file": (name, content, "application/octet-stream")})
    assert res.status_code == status, res.text
    assert message in res.json()["error"]


def test_malformed_requests_get_a_json_error(client):
    res = client.post("/predict", data={"other": "x"})
    assert res.status_code == 422 and "multipart form field 'file'" in res.json()["error"]
    files = [("file", (f"{i}.png", _png(photo(i)), "image/png")) for i in range(5)]
    res = client.post("/predict", files=files)
    assert res.status_code == 413 and "at most 4" in res.json()["error"]
    res = client.post("/predict?top_k=0", files={"file": ("a.png", _png(photo(0)), "image/png")})
    assert res.status_code == 422 and "top_k" in res.json()["error"]
    res = client.post("/predict", json={"file": "cat.jpg"})
    assert res.status_code == 422 and "error" in res.json()
    res = client.get("/nowhere")
    assert res.status_code == 404 and res.json() == {"error": "Not Found"}


def test_a_chunked_upload_is_counted_as_it_arrives(client):
    """No Content-Length: the body limit (4 files of 0.5 MB) still stops it, with a 413."""
    boundary = "xyz"

    def body():
        yield f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n".encode()
        for _ in range(40):  # 40 x 64 KB = 2.5 MB
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    res = client.post("/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert res.status_code == 413 and res.json()["error"].startswith("The request is larger than")


def test_the_page_classifies_a_photo_in_a_browser(predictor, tmp_path: Path):
    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    image = _demo_images(1)[0]
    expected = predictor.predict(image)[0]
    browser = chromium_browser(tmp_path)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#bars .bar"))
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert [b.get_attribute("data-class") for b in bars] == [c for c, _ in expected.top]
        assert f"{100 * expected.probability:.1f} %" in bars[0].text
        shown = browser.execute_script("const i = document.getElementById('preview'); return [i.complete, i.naturalWidth]")
        assert shown == [True, 28]  # the photo itself is on the page (the demo images are 28 px)
        browser.save_screenshot(str(tmp_path / "serve.png"))
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(10)
