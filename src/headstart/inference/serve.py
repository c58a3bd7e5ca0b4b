"""A trained model behind HTTP (FastAPI): ``headstart serve RUN`` then open http://127.0.0.1:8000/.

- ``POST /predict`` — multipart field ``file`` (one or several images; ``?top_k=N``; ``?tta=true``:
  test-time augmentation, each image averaged with its mirror image, the server's ``--tta`` otherwise;
  ``?explain=true[&method=gradcam]``: with each image's class-activation map over it, a PNG data URL, a run's
  model only) → ``{"predictions": [{"filename", "label", "probability", "top": [{"class", "probability"}],
  "explanation": {"method", "overlay"}}], "tta": bool}``. A multi-label model's answers also hold ``labels``
  (the classes at or above their thresholds, ``[{"class", "probability"}]``); ``?threshold=0.4`` sets one for
  every class (the server's ``--threshold`` otherwise, else each class's own).
- ``GET /healthz`` — ``{"status": "ok", ...}`` with the model's classes and input size (and a multi-label
  model's thresholds).
- ``GET /`` — a page where a person drops or picks a photo and sees it with its top-k bars.

Every request is bounded (``Limits``; ``headstart serve --help`` states each): bytes per file and files
per request (the body is counted as it arrives, so a chunked upload cannot slip past), pixels per
image and per request (read from the images' headers before any is decoded), full-size decodes at
once across requests, and the time a client has to send its body. Every error is JSON
``{"error": "..."}``: 413 too large, 415 not an image, 422 a broken image or a request without images,
400 a multipart body that cannot be parsed, 408 a body that did not arrive in time; never a 500 for
bad input. Beyond ``limit_concurrency`` connections uvicorn itself answers 503 (plain text).
"""

from __future__ import annotations

import base64
import io
import math
import os
import threading
import warnings
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

import anyio
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException

from headstart.data.images import MAX_PIXELS, decode_bytes
from headstart.errors import ConfigError, ImageError
from headstart.inference.prediction import EXPLAIN_METHODS, ImagePredictor

Method = Literal[EXPLAIN_METHODS]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Limits:
    """What one client may ask of the server. ``headstart serve`` has an option for each, same name."""

    max_upload_mb: float = 10.0  # per file
    max_files: int = 16  # per request
    max_pixels: int = MAX_PIXELS  # per image (decompression bombs)
    # All the images of one request together. A 79 KB PNG can be 9000x9000 (81 M pixels: ~1.8 s and
    # ~250 MB to decode), so bytes alone do not bound the work; 200 M still takes 16 phone photos.
    max_request_pixels: int = 200_000_000
    # Full-size images decoded at once, across requests: each holds ~3 bytes a pixel until it is
    # shrunk to the model's input, and more decodes than cores only add memory.
    max_decodes: int = field(default_factory=_cpus)
    body_timeout: float = 30.0  # seconds to send a whole request body; a stalled upload is not held
    keep_alive_timeout: int = 5  # seconds an idle connection stays open (uvicorn's default)
    limit_concurrency: int = 512  # connections and requests at once, beyond which uvicorn answers 503
    top_k: int = 3  # default; a request may ask for another with ?top_k=

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not (0 < value < math.inf):  # also refuses NaN
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"{f.name} ({flag}) must be a positive number; received {value!r}.")
        if self.max_request_pixels < self.max_pixels:
            raise ConfigError(
                f"max_request_pixels (--max-request-pixels) is {self.max_request_pixels:,}, below max_pixels "
                f"(--max-pixels, {self.max_pixels:,}): an image the server accepts could never be sent. "
                "Raise it to at least max_pixels."
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes * self.max_files + 2**16  # room for the multipart headers


class UploadError(Exception):
    """A bad upload: its HTTP status and the message sent back as ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


STATUS = {"too_large": 413, "not_image": 415, "unreadable": 422}  # by ImageError.kind


class BodyLimit:
    """ASGI middleware: each request body bounded in size and in time before the endpoint parses it.

    Over ``limit`` bytes → 413, from its Content-Length or by counting the bytes as they arrive; not all
    arrived ``timeout`` seconds after the request began → 408. Both are raised as HTTPExceptions while
    the endpoint reads the body (FastAPI passes those through to the JSON handler).

    A response that starts before its body has all arrived (a 413, a 408, a 404 for a POST) first
    reads and discards the rest, until the same deadline, so the connection can carry the next
    request; a body still incomplete by then gets ``Connection: close``. Otherwise uvicorn would go on
    discarding it for as long as the client kept sending, each byte resetting its keep-alive timer.
    """

    def __init__(self, app, limit: int, timeout: float, message: str):
        self.app, self.limit, self.timeout, self.message = app, limit, timeout, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        deadline = anyio.current_time() + self.timeout
        seen, done, asked = 0, False, False

        async def read() -> dict:
            nonlocal done
            message = await receive()
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def counted() -> dict:
            nonlocal seen, asked
            if done:  # after the body, receive() waits for a disconnect: no deadline for that
                return await receive()
            asked = True
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await read()
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self.message)
                return message
            raise HTTPException(
                408, f"The request body did not arrive within {self.timeout:g} s (the server's --body-timeout)."
            )

        async def closing_if_unread(message: dict) -> None:
            if message["type"] == "http.response.start" and not done:
                # A client waiting for "100 Continue" has sent nothing yet: close rather than invite the upload.
                if asked or headers.get(b"expect", b"").lower() != b"100-continue":
                    with anyio.move_on_after(deadline - anyio.current_time()):
                        while not done:
                            await read()
                if not done:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _json(413, self.message)(scope, counted, closing_if_unread)
        await self.app(scope, counted, closing_if_unread)


def _json(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    predictor: ImagePredictor, limits: Limits | None = None, tta: bool = False, threshold: float | None = None
) -> FastAPI:
    """The FastAPI application serving ``predictor``; ``tta``: test-time augmentation unless a request says;
    ``threshold``: a multi-label model's one threshold for every class unless a request says (None: each class's)."""
    from headstart.reporting.report import render

    limits = limits or Limits()
    app = FastAPI(title="headstart", description=f"Image classification: {', '.join(predictor.classes)}")
    app.add_middleware(
        BodyLimit,
        limit=limits.max_body_bytes,
        timeout=limits.body_timeout,
        message=(
            f"The request is larger than {limits.max_body_bytes:,} bytes (at most {limits.max_files} files of "
            f"{limits.max_upload_mb:g} MB, the server's --max-upload-mb)."
        ),
    )
    decoding = threading.BoundedSemaphore(limits.max_decodes)
    info = {
        "classes": predictor.classes,
        "input_size": predictor.preprocessing.input_size,
        "backbone": predictor.backbone,
        "tta": tta,
        "explain": predictor.maps([], []) is not None,  # class-activation maps: a run's model, not an exported file
    }
    if predictor.multi_label:  # the labels an answer gives: each class at or above its threshold
        info["thresholds"] = predictor.thresholds_for(threshold).tolist()
    page = render(
        "serve.html.j2",
        title="headstart",
        limits=limits,
        info=info,
        subtitle=f"{len(predictor.classes)} classes: " + ", ".join(predictor.classes),
    )

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, e: UploadError):
        return _json(e.status, e.message)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        return _json(e.status_code, str(e.detail), e.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return _json(422, f"Malformed request ({problems}). Send the image(s) as multipart form field 'file'.")

    # These two answer on the event loop, not in the thread pool: they stay quick while every worker
    # thread is busy decoding (or waiting to).
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", **info}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.post("/predict")
    def predict(
        file: Annotated[list[UploadFile], File(description="One or several images.")],
        top_k: Annotated[int | None, Query(ge=1, description="How many classes per image [server's default].")] = None,
        tta: Annotated[bool | None, Query(description="Average each image with its mirror [server's default].")] = None,
        explain: Annotated[bool, Query(description="Also return where the model saw the class (a picture).")] = False,
        method: Annotated[Method, Query(description="With explain: how the map is computed.")] = "gradcam",
        threshold: Annotated[
            float | None, Query(gt=0, lt=1, description="Multi-label: one threshold for every class [the server's].")
        ] = None,
    ) -> dict:
        if threshold is not None and not predictor.multi_label:
            raise UploadError(400, "threshold applies to multi-label models; this one gives one class an image.")
        # this request's, the server's (--threshold), or each class's own; None: a single-label model
        thresholds = predictor.thresholds_for(threshold) if threshold is not None else info.get("thresholds")
        if explain and not info["explain"]:
            raise UploadError(
                400,
                "This server's model is an exported file: explanations need the run's model (serve the run folder).",
            )
        if len(file) > limits.max_files:
            raise UploadError(413, f"{len(file)} files in one request; at most {limits.max_files}.")
        pixels = sum(_declared_pixels(f.file) for f in file)
        if pixels > limits.max_request_pixels:
            raise UploadError(
                413,
                f"The {len(file)} images hold {pixels:,} pixels together; at most "
                f"{limits.max_request_pixels:,} a request (the server's --max-request-pixels). "
                "Send fewer images a request, or smaller ones.",
            )
        # Each upload is decoded and shrunk to the model's input before the next: one full-size image
        # at a time in a request, and at most max_decodes across requests.
        images = []
        for f in file:
            with decoding:
                images.append(predictor.prepare(_read(f, limits)))
        used = info["tta"] if tta is None else tta
        probs = predictor.probabilities(images, tta=used)
        out = []
        for f, p in zip(file, probs):
            top = predictor.top(p, top_k or limits.top_k)
            answer = {
                "filename": f.filename,
                "label": top[0][0],
                "probability": top[0][1],
                "top": [{"class": c, "probability": q} for c, q in top],
            }
            if thresholds is not None:
                answer["labels"] = [{"class": c, "probability": q} for c, q in predictor.labels_of(p, thresholds)]
            out.append(answer)
        if explain:
            from headstart.inference.explain import overlay  # PyTorch and the grad-cam library: a run's model only

            for answer, image, cam in zip(out, images, predictor.maps(images, probs.argmax(1).tolist(), method)):
                answer["explanation"] = {"method": method, "overlay": _png_url(overlay(image, cam))}
        return {"predictions": out, "tta": used}

    return app


def _png_url(pixels) -> str:
    """An RGB array as a PNG data URL, what an <img> shows and JSON carries."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def uvicorn_options(limits: Limits) -> dict:
    """uvicorn's settings for ``limits``: ``uvicorn.run(app, host=..., port=..., **uvicorn_options(limits))``."""
    return {
        "log_level": "warning",
        "limit_concurrency": limits.limit_concurrency,
        "timeout_keep_alive": limits.keep_alive_timeout,
        "http": _idle_closing_protocol(),
    }


def _idle_closing_protocol() -> type:
    """uvicorn's HTTP protocol (httptools' or h11's, as it would pick), with its keep-alive timeout running
    from the moment a client connects: uvicorn starts it only after a response, so a client that connects
    and sends nothing would hold its connection (and a place under --limit-concurrency) for ever."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class IdleClosing(AutoHTTPProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    return IdleClosing


def _declared_pixels(file) -> int:
    """Width x height from an image file's header: Pillow's open reads the header and decodes nothing.
    0 for a file that is not an image, or one Pillow refuses outright: its decode says why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as im:  # leaves a file it did not open itself open
                return im.width * im.height
    except Exception:
        return 0
    finally:
        file.seek(0)


def _read(upload: UploadFile, limits: Limits):
    """The decoded image of one upload, or an UploadError saying why not."""
    name = upload.filename or "upload"
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise UploadError(413, f"{name} is larger than {limits.max_upload_mb:g} MB (the server's --max-upload-mb).")
    try:
        return decode_bytes(data, limits.max_pixels, name)
    except ImageError as e:
        raise UploadError(STATUS[e.kind], f"{name}: {e}.") from None
