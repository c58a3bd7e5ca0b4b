"""Serving: the HTTP API with FastAPI's test client, and the page in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from headstart.data.dataset import demo_root
from headstart.inference import serve as serve
from headstart.inference.explain import overlay
from headstart.inference.predict import load
from headstart.inference.serve import Limits, create_app, uvicorn_options
from helpers.browser import chromium_browser
from helpers.datasets import photo


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
    return TestClient(
        create_app(
            predictor, Limits(max_upload_mb=0.5, max_pixels=1_000_000, max_files=4, max_request_pixels=2_000_000)
        )
    )


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


@pytest.mark.parametrize(
    "name, content, status, message",
    [
        ("truncated.jpg", _png(photo(1, (200, 160)), "JPEG")[:1500], 422, "truncated.jpg: cannot decode"),
        ("notes.txt", b"just some text, not a picture", 415, "not an image Pillow recognises"),
        ("empty.png", b"", 422, "empty file"),
        ("huge.png", _png(Image.new("RGB", (1200, 1000))), 413, "pixels is over the limit"),
        ("big.bmp", b"BM" + b"\x00" * (600 * 1024), 413, "larger than 0.5 MB"),
    ],
)
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
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()
        for _ in range(40):  # 40 x 64 KB = 2.5 MB
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    res = client.post("/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert res.status_code == 413 and res.json()["error"].startswith("The request is larger than")


@contextlib.contextmanager
def _serving(predictor, limits: Limits | None = None):
    """A real uvicorn server, set up as ``headstart serve`` sets it up, on a free port, in a thread."""
    import uvicorn

    limits = limits or Limits()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(create_app(predictor, limits), port=port, **uvicorn_options(limits)))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        running.should_exit = True
        thread.join(10)


def _solid_png(size: tuple[int, int]) -> bytes:
    return _png(Image.new("L", size, 128))  # a few KB, however many pixels


def _spy_decodes(monkeypatch, seconds: float = 0.0) -> dict:
    """Replaces serve's decode_bytes with one that counts its calls and how many ran at once."""
    seen = {"calls": 0, "running": 0, "peak": 0}
    lock, decode = threading.Lock(), serve.decode_bytes

    def spy(*args, **kwargs):
        with lock:
            seen["calls"] += 1
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
        try:
            time.sleep(seconds)
            return decode(*args, **kwargs)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(serve, "decode_bytes", spy)
    return seen


def test_a_request_over_the_total_pixels_is_refused_before_anything_is_decoded(client, monkeypatch):
    """Each image under the per-image limit (1 M pixels), three together over the request's (2 M)."""
    seen = _spy_decodes(monkeypatch)
    big = _solid_png((1000, 900))
    res = client.post("/predict", files=[("file", (f"{i}.png", big, "image/png")) for i in range(3)])
    assert res.status_code == 413, res.text
    assert "2,700,000 pixels together" in res.json()["error"] and "--max-request-pixels" in res.json()["error"]
    assert seen["calls"] == 0
    res = client.post("/predict", files=[("file", (f"{i}.png", big, "image/png")) for i in range(2)])
    assert res.status_code == 200 and len(res.json()["predictions"]) == 2 and seen["calls"] == 2


def test_concurrent_decodes_are_capped(predictor, monkeypatch):
    seen = _spy_decodes(monkeypatch, seconds=0.2)
    client = TestClient(create_app(predictor, Limits(max_decodes=2)))
    image = _png(photo(0))

    def post(i: int) -> int:
        return client.post("/predict", files={"file": (f"{i}.png", image, "image/png")}).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(post, range(6))) == [200] * 6
    assert seen["calls"] == 6 and 1 <= seen["peak"] <= 2


def test_a_stalled_body_gets_a_408_and_its_connection_closed(predictor):
    """The ASGI app itself, with a receive() that hands over the start of a body and then stalls."""
    app = create_app(predictor, Limits(body_timeout=0.3))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"content-length", b"100000")],
    }
    parts = [{"type": "http.request", "body": b"--xyz\r\nContent-Disposition: form-data; ", "more_body": True}]
    sent = []

    async def receive():
        if parts:
            return parts.pop()
        await anyio.sleep_forever()

    async def send(message):
        sent.append(message)

    async def main():
        with anyio.fail_after(30):  # a generous bound: the server's own deadline is 0.3 s
            await app(scope, receive, send)

    anyio.run(main)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert "--body-timeout" in json.loads(body)["error"]


def _exchange(port: int, request: bytes, dribble: bool = False) -> bytes:
    """Sends ``request``, then nothing (or, with ``dribble``, a byte every 0.1 s: a slowloris); returns
    everything the server sent back until it closed the connection."""
    received, give_up = b"", time.monotonic() + 30  # a generous bound: a server that holds on fails here
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        s.settimeout(0.1 if dribble else 30)
        while time.monotonic() < give_up:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if dribble:
                    s.sendall(b"x")
                continue
            except ConnectionResetError:  # the server closed while a dribbled byte was on its way
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the connection was still open after 30 s; received {received[:200]!r}")


def _post_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /predict HTTP/1.1",
        "Host: localhost",
        "Content-Type: multipart/form-data; boundary=xyz",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SLOW = _post_head(100_000) + b'--xyz\r\nContent-Disposition: form-data; name="file"'  # and no more


@pytest.mark.parametrize(
    "request_, dribble, status, message",
    [
        (SLOW, False, 408, b"--body-timeout"),  # the start of a body, then silence
        (SLOW, True, 408, b"--body-timeout"),  # the start of a body, then a byte now and then: a slowloris
        (_post_head(10**12), True, 413, b"larger than"),  # refused from its Content-Length; the body dribbles on
        (_post_head(10**12, "Expect: 100-continue"), False, 413, b"larger than"),  # a client waiting to be asked
    ],
)
def test_a_real_server_answers_a_slow_or_oversized_body_and_closes_the_connection(
    predictor, request_, dribble, status, message
):
    with _serving(predictor, Limits(body_timeout=0.5)) as port:
        response = _exchange(port, request_, dribble)
    if response or not dribble:  # a dribbled byte may meet the closed socket first: then a reset is the answer
        assert response.startswith(f"HTTP/1.1 {status}".encode()), response[:200]
        assert b"connection: close" in response.lower() and message in response


def test_a_real_server_closes_a_connection_that_sends_nothing(predictor):
    with _serving(predictor, Limits(keep_alive_timeout=1)) as port:
        assert _exchange(port, b"") == b""  # closed by the server, with nothing said (else it fails at 30 s)


def test_a_real_server_answers_503_beyond_its_concurrency_limit(predictor):
    with _serving(predictor, Limits(limit_concurrency=2)) as port:
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # and the connection stays open (keep-alive)
            response = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 503"), response[:200]


def test_the_page_classifies_a_photo_in_a_browser(predictor, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = _demo_images(1)[0]
    expected = predictor.predict(image)[0]
    with _serving(predictor) as port:
        browser = chromium_browser(tmp_path)
        try:
            browser.get(f"http://127.0.0.1:{port}/")
            browser.find_element(By.ID, "file").send_keys(str(image))
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#bars .bar"))
            bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
            assert [b.get_attribute("data-class") for b in bars] == [c for c, _ in expected.top]
            assert f"{100 * expected.probability:.1f} %" in bars[0].text
            shown = browser.execute_script(
                "const i = document.getElementById('preview'); return [i.complete, i.naturalWidth]"
            )
            assert shown == [True, 28]  # the photo itself is on the page (the demo images are 28 px)
            # ... and its class-activation map beside it, at the model's input size (a run's model explains)
            WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "map").get_attribute("src"))
            size = predictor.preprocessing.input_size
            mapped = browser.execute_script(
                "const i = document.getElementById('map'); return [i.hidden, i.complete, i.naturalWidth]"
            )
            assert mapped == [False, True, size]
            browser.save_screenshot(str(tmp_path / "serve.png"))
        finally:
            browser.quit()


def _probs(prediction: dict, classes: list[str]) -> list[float]:
    return [{t["class"]: t["probability"] for t in prediction["top"]}[c] for c in classes]


def test_tta_per_request_and_as_the_servers_default(client, predictor, tiny_run, monkeypatch):
    from typer.testing import CliRunner

    from headstart.cli.main import app

    images = _demo_images(2)
    files = [("file", (f.name, f.read_bytes(), "image/png")) for f in images]
    k = len(predictor.classes)
    expected = {
        tta: [[dict(r.top)[c] for c in predictor.classes] for r in predictor.predict(images, top_k=k, tta=tta)]
        for tta in (False, True)
    }
    assert expected[True] != expected[False]
    with_tta = TestClient(create_app(predictor, tta=True))
    for app_, query, tta in (
        (client, "", False),
        (client, "&tta=true", True),
        (with_tta, "", True),
        (with_tta, "&tta=false", False),
    ):
        res = app_.post(f"/predict?top_k={k}{query}", files=files)
        assert res.status_code == 200 and res.json()["tta"] is tta, res.text
        got = [_probs(p, predictor.classes) for p in res.json()["predictions"]]
        assert np.abs(np.array(got) - np.array(expected[tta])).max() < 1e-5  # batches of 2 either way
    assert with_tta.get("/healthz").json()["tta"] is True and client.get("/healthz").json()["tta"] is False
    # headstart serve --tta: the served app's default (uvicorn itself is not started here).
    served = {}
    monkeypatch.setattr("uvicorn.run", lambda app_, **kw: served.setdefault("app", app_))
    for flag, tta in (([], False), (["--tta"], True)):
        served.clear()
        # --engine torch: the server starts at once (the default converts the model first, tested elsewhere)
        assert CliRunner().invoke(app, ["serve", str(tiny_run.dir), "--engine", "torch", *flag]).exit_code == 0
        assert TestClient(served["app"]).get("/healthz").json()["tta"] is tta


def test_explain_returns_each_images_map_over_it(client, predictor):
    images = _demo_images(2)
    files = [("file", (f.name, f.read_bytes(), "image/png")) for f in images]
    plain = client.post("/predict", files=files).json()["predictions"]
    assert all("explanation" not in p for p in plain)
    answers = client.post("/predict?explain=true&method=layercam", files=files).json()["predictions"]
    expected = predictor.explain(images, method="layercam")
    size = predictor.preprocessing.input_size
    for answer, e, p in zip(answers, expected, plain):
        assert answer["label"] == p["label"] and answer["probability"] == pytest.approx(p["probability"])
        assert answer["explanation"]["method"] == "layercam"
        url = answer["explanation"]["overlay"]
        assert url.startswith("data:image/png;base64,")
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        assert shown.shape == (size, size, 3)
        assert np.abs(shown.astype(int) - overlay(e.image, e.map).astype(int)).max() <= 2  # the same map, drawn
    assert client.post("/predict?explain=true&method=nonsense", files=files).status_code == 422


def test_a_server_of_an_exported_file_says_it_cannot_explain(demo_exports):
    from headstart.inference.loading import load as load_any

    app_ = TestClient(create_app(load_any(demo_exports["onnx"])))
    assert app_.get("/healthz").json()["explain"] is False
    image = _demo_images(1)[0]
    res = app_.post("/predict?explain=true", files=[("file", (image.name, image.read_bytes(), "image/png"))])
    assert res.status_code == 400 and "exported file" in res.json()["error"]
    assert 'id="map"' not in app_.get("/").text
