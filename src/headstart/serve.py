"""A trained model behind HTTP (FastAPI): ``headstart serve RUN`` then open http://127.0.0.1:8000/.

- ``POST /predict`` — multipart field ``file`` (one or several images; ``?top_k=N``) →
  ``{"predictions": [{"filename", "label", "probability", "top": [{"class", "probability"}]}]}``.
- ``GET /healthz`` — ``{"status": "ok", ...}`` with the model's classes and input size.
- ``GET /`` — a page where a person drops or picks a photo and sees it with its top-k bars.

Uploads are bounded (``max_upload_mb`` per file, ``max_files`` per request, ``max_pixels`` per
image) and must decode as an image. A bad upload gets a 4xx with ``{"error": "..."}``: 413 too
large, 415 not an image, 422 a broken image or a malformed request. Never a 500 for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from headstart.data import MAX_PIXELS, ImageError, decode_bytes
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


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(predictor: Predictor, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor``."""
    from headstart.report import render

    limits = limits or Limits()
    app = FastAPI(title="headstart", description=f"Image classification: {', '.join(predictor.classes)}")
    info = {"classes": predictor.classes, "input_size": predictor.preprocessing.input_size,
            "backbone": predictor.model.config.get("backbone"), "source": predictor.source}

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, e: UploadError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}" for err in e.errors())
        return JSONResponse({"error": f"Malformed request ({problems}). Send the image(s) as multipart form "
                                      "field 'file'."}, status_code=422)

    @app.middleware("http")
    async def _bounded(request: Request, call_next):
        # Refuse a body that cannot fit before reading it (per-file sizes are checked again below).
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes * limits.max_files + 2**16:
            return JSONResponse({"error": f"Request of {int(declared):,} bytes is too large (at most "
                                          f"{limits.max_files} files of {limits.max_upload_mb:g} MB)."},
                                status_code=413)
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", **info}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render("serve.html.j2", title="headstart", subtitle=f"{len(predictor.classes)} classes: "
                      + ", ".join(predictor.classes), limits=limits, info=info)

    @app.post("/predict")
    def predict(file: list[UploadFile] = File(..., description="One or several images."),
                top_k: int = Query(None, ge=1, description="How many classes per image [server's default].")) -> dict:
        if len(file) > limits.max_files:
            raise UploadError(413, f"{len(file)} files in one request; at most {limits.max_files}.")
        images = [_read(f, limits) for f in file]
        results = predictor.predict(images, top_k=top_k or limits.top_k)
        return {"predictions": [{"filename": f.filename, **{k: v for k, v in r.to_dict().items() if k != "source"}}
                                for f, r in zip(file, results)]}

    return app


def _read(upload, limits: Limits):
    """The decoded image of one upload, or an UploadError saying why not."""
    name = upload.filename or "upload"
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise UploadError(413, f"{name} is larger than {limits.max_upload_mb:g} MB (the server's --max-upload-mb).")
    try:
        return decode_bytes(data, limits.max_pixels, name)
    except ImageError as e:
        reason = str(e)
        status = 413 if "pixels is over the limit" in reason or "bomb" in reason else \
            415 if "not an image" in reason else 422
        raise UploadError(status, f"{name}: {reason}.") from None
