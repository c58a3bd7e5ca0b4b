"""A trained model behind HTTP (FastAPI): ``headstart serve RUN`` then open http://127.0.0.1:8000/.

- ``POST /predict`` — multipart field ``file`` (one or several images; ``?top_k=N``) →
  ``{"predictions": [{"filename", "label", "probability", "top": [{"class", "probability"}]}]}``.
- ``GET /healthz`` — ``{"status": "ok", ...}`` with the model's classes and input size.
- ``GET /`` — a page where a person drops or picks a photo and sees it with its top-k bars.

Uploads are bounded (``max_upload_mb`` per file, ``max_files`` per request, ``max_pixels`` per
image; the request body is counted as it arrives, so a chunked upload cannot slip past) and must
decode as an image. Every error is JSON ``{"error": "..."}``: 413 too large, 415 not an image,
422 a broken image or a request without images, 400 a multipart body that cannot be parsed;
never a 500 for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from headstart.errors import ImageError
from headstart.images import MAX_PIXELS, decode_bytes
from headstart.predict import Predictor


@dataclass
class Limits:
    max_upload_mb: float = 10.0  # per file
    max_files: int = 16  # per request
    max_pixels: int = MAX_PIXELS  # per image (decompression bombs)
    top_k: int = 3  # default; a request may ask for another with ?top_k=

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


class TooLarge(HTTPException):
    """The request body went over the limit (raised while it arrives; FastAPI passes it through)."""

    def __init__(self, message: str):
        super().__init__(413, message)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is refused with a 413 before the endpoint
    has parsed it — from its Content-Length, or by counting the bytes as they arrive."""

    def __init__(self, app, limit: int, message: str):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _json(413, self.message)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(self.message)
            return message

        await self.app(scope, counted, send)


def _json(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(predictor: Predictor, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor``."""
    from headstart.report import render

    limits = limits or Limits()
    app = FastAPI(title="headstart", description=f"Image classification: {', '.join(predictor.classes)}")
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, message=(
        f"The request is larger than {limits.max_body_bytes:,} bytes (at most {limits.max_files} files of "
        f"{limits.max_upload_mb:g} MB, the server's --max-upload-mb)."))
    info = {"classes": predictor.classes, "input_size": predictor.preprocessing.input_size,
            "backbone": predictor.model.config.get("backbone")}
    page = render("serve.html.j2", title="headstart", limits=limits, info=info,
                  subtitle=f"{len(predictor.classes)} classes: " + ", ".join(predictor.classes))

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

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **info}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.post("/predict")
    def predict(file: list[UploadFile] = File(..., description="One or several images."),
                top_k: int = Query(None, ge=1, description="How many classes per image [server's default].")) -> dict:
        if len(file) > limits.max_files:
            raise UploadError(413, f"{len(file)} files in one request; at most {limits.max_files}.")
        # Each upload is decoded and shrunk to the model's input before the next: one full-size image at a time.
        images = [predictor.prepare(_read(f, limits)) for f in file]
        probs = predictor.probabilities(images)
        out = []
        for f, p in zip(file, probs):
            top = predictor.top(p, top_k or limits.top_k)
            out.append({"filename": f.filename, "label": top[0][0], "probability": top[0][1],
                        "top": [{"class": c, "probability": q} for c, q in top]})
        return {"predictions": out}

    return app


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
