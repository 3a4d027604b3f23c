"""The HTTP prediction service: FastAPI on uvicorn, one model, micro-batched.

Endpoints (schema at ``/openapi.json``, browsable at ``/docs``):

- ``POST /predict``        one image: multipart field ``file`` or the raw bytes as body
- ``POST /predict/batch``  several images: multipart fields ``files``
- ``GET /health``, ``GET /classes``, ``GET /model`` (metadata, run config, test metrics)
- ``GET /``                a self-contained web page to try the model

Every error is JSON ``{"error": message, "status": code}``: 400 for a corrupt,
truncated or empty image or a decompression bomb (refused from the header, before
any pixel is allocated), 413 for a body over the size limit, 415 for bytes that
are not an image, 405 for a wrong method, 422 for a bad query parameter. A bad
request never stops the service.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cifarlab.data.images import CorruptImageError, ImageTooLargeError, NotAnImageError, to_array
from cifarlab.serving.batcher import MAX_BATCH, MAX_WAIT_S, MicroBatcher

# Largest request body accepted by default: far above any sensible photo for a
# 32x32 classifier, small enough that 32 concurrent uploads fit in memory.
MAX_BYTES = 10 * 1024 * 1024
# Most images in one /predict/batch request; more is a 413 (send several requests).
MAX_BATCH_FILES = 256
DEFAULT_TOP_K = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ServedModel:
    """What the service knows about its model; ``predict_fn`` maps (N,32,32,3) uint8 to (N,K) float32."""

    name: str
    class_names: list[str]
    predict_fn: object
    info: dict = field(default_factory=dict)


def load_served_model(model_or_run: str | os.PathLike) -> ServedModel:
    """Load a ``.keras`` file or run directory; reads ``config.json``/``metrics.json`` from a run dir."""
    from cifarlab.models.io import load_model
    from cifarlab.serving.predict import compiled_predictor

    path = Path(model_or_run)
    model, meta = load_model(path)
    run_dir = path if path.is_dir() else None
    info = {"source": str(path), "metadata": meta, "parameters": int(model.count_params()),
            "input_shape": list(model.input_shape[1:]), "config": None, "metrics": None}
    if run_dir is not None:
        for key in ("config", "metrics"):
            with contextlib.suppress(OSError, ValueError):
                info[key] = json.loads((run_dir / f"{key}.json").read_text())
    name = run_dir.name if run_dir else path.stem
    return ServedModel(name, list(meta["class_names"]), compiled_predictor(model), info)


def create_app(served: ServedModel, max_bytes: int = MAX_BYTES, max_batch: int = MAX_BATCH,
               max_wait_s: float = MAX_WAIT_S):
    """The FastAPI application serving ``served`` (see :func:`load_served_model`)."""

    # python-multipart logs every malformed body it sees; the client gets a 400 with the reason instead.
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    logging.getLogger("multipart").setLevel(logging.CRITICAL)
    batcher = MicroBatcher(served.predict_fn, max_batch=max_batch, max_wait_s=max_wait_s)
    page = resources.files("cifarlab.serving").joinpath("page.html").read_text(encoding="utf-8")
    n_classes = len(served.class_names)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        # One request's worth of work before the first real one: the model thread and
        # TensorFlow's kernels warm up here, not in a user's latency.
        await batcher.submit(np.zeros((32, 32, 3), np.uint8))
        yield
        await batcher.stop()

    app = FastAPI(title="cifarlab prediction service", version="1", lifespan=lifespan,
                  description=f"Classifies small colour images with the model `{served.name}` "
                              f"({n_classes} classes). Images of any size are centre-cropped and resized to "
                              "32x32 exactly as in training.")

    class ErrorOut(BaseModel):
        error: str
        status: int

    class TopClass(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        cls: str = Field(alias="class")
        probability: float = Field(ge=0, le=1)

    class PredictionOut(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        model: str
        cls: str = Field(alias="class", description="the most probable class")
        top: list[TopClass]
        latency_ms: float = Field(description="time in the service, from request to answer")
        batch_size: int = Field(description="images in the model call that served this one (micro-batching)")

    class BatchItem(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        file: str
        cls: str | None = Field(None, alias="class")
        top: list[TopClass] | None = None
        error: str | None = None
        status: int = Field(description="200, or the status a single /predict would answer for this image")

    class BatchOut(BaseModel):
        model: str
        results: list[BatchItem]
        latency_ms: float

    errors = {c: {"model": ErrorOut} for c in (400, 413, 415, 422)}

    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        resp = _error(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():  # e.g. Allow on a 405
            resp.headers[k] = v
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug: answer 500 and keep serving
        return _error(500, f"internal error: {type(exc).__name__}")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise ApiError(413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}")
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds a chunked body with no Content-Length
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"request body is over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def uploads(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        """(name, bytes) of each uploaded file in a multipart body."""
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=MAX_BATCH_FILES + 1,
                                                            max_part_size=max_bytes)
        except StarletteHTTPException as e:
            raise ApiError(400, f"malformed multipart body: {e.detail}") from None
        except Exception as e:  # noqa: BLE001 - python-multipart raises several types
            raise ApiError(400, f"malformed multipart body: {e}") from None
        files = []
        for _, value in form.multi_items():
            if hasattr(value, "read"):
                files.append((value.filename or "upload", await value.read()))
        await form.close()
        if len(files) > MAX_BATCH_FILES:
            raise ApiError(413, f"more than {MAX_BATCH_FILES} images in one request; send several requests")
        return files

    async def classify(data: bytes, name: str, k: int) -> tuple[dict, int]:
        if not data:
            raise ApiError(400, f"{name}: empty image (no bytes)")
        try:
            # A small image decodes in tens of microseconds, less than a hop to a thread;
            # anything larger decodes off the event loop so other requests keep flowing.
            x = to_array(data, name) if _is_small(data) else await run_in_threadpool(to_array, data, name)
        except NotAnImageError as e:
            raise ApiError(415, str(e)) from None
        except (ImageTooLargeError, CorruptImageError) as e:
            raise ApiError(400, str(e)) from None
        probs, n = await batcher.submit(x)
        order = np.argsort(probs)[::-1][:k]
        top = [{"class": served.class_names[i], "probability": float(probs[i])} for i in order]
        return {"class": top[0]["class"], "top": top}, n

    def is_multipart(request: Request) -> bool:
        return request.headers.get("content-type", "").lower().startswith("multipart/form-data")

    image_body = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    }}
    batch_body = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    }}
    top_k_query = Query(DEFAULT_TOP_K, ge=1, le=1000, description="classes to return (at most the model's)")

    @app.post("/predict", response_model=PredictionOut, responses=errors, openapi_extra={"requestBody": image_body},
              summary="Classify one image (multipart field `file`, or the raw image bytes as the body)")
    async def predict(request: Request, top_k: int = top_k_query):
        t0 = time.perf_counter()
        body = await read_body(request)
        name = "image"
        if is_multipart(request):
            files = await uploads(request, body)
            if len(files) != 1:
                raise ApiError(400, f"expected one file in the multipart body, got {len(files)}")
            name, body = files[0]
        result, n = await classify(body, name, min(top_k, n_classes))
        # A JSONResponse skips FastAPI's re-validation against PredictionOut (the schema
        # still documents it): the answer is built here and is already of that shape.
        return JSONResponse({"model": served.name, **result,
                             "latency_ms": round((time.perf_counter() - t0) * 1000, 3), "batch_size": n})

    @app.post("/predict/batch", response_model=BatchOut, responses=errors, response_model_exclude_none=True,
              openapi_extra={"requestBody": batch_body},
              summary="Classify several images (multipart fields `files`); one bad image does not fail the rest")
    async def predict_batch(request: Request, top_k: int = top_k_query):
        import asyncio

        t0 = time.perf_counter()
        if not is_multipart(request):
            raise ApiError(415, "send the images as multipart/form-data fields named 'files'")
        files = await uploads(request, await read_body(request))
        if not files:
            raise ApiError(400, "no files in the multipart body")

        async def one(name, data):
            try:
                result, _ = await classify(data, name, min(top_k, n_classes))
                return {"file": name, **result, "status": 200}
            except ApiError as e:
                return {"file": name, "error": e.message, "status": e.status}

        results = await asyncio.gather(*(one(n, d) for n, d in files))  # joins the micro-batches
        return {"model": served.name, "results": results,
                "latency_ms": round((time.perf_counter() - t0) * 1000, 3)}

    @app.get("/health", summary="Liveness, and how much micro-batching happened")
    async def health():
        return {"status": "ok", "model": served.name, "images": batcher.images, "batches": batcher.batches,
                "max_batch": max_batch, "max_wait_ms": max_wait_s * 1000, "max_bytes": max_bytes}

    @app.get("/classes", summary="Class names, in the model's output order")
    async def classes():
        return {"classes": served.class_names}

    @app.get("/model", summary="Model metadata, and the run's config and test metrics when served from a run")
    async def model_info():
        return {"name": served.name, **served.info}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    return app


# Images up to this many bytes and pixels are decoded on the event loop (see classify).
SMALL_BYTES, SMALL_PIXELS = 64 * 1024, 256 * 256


def _is_small(data: bytes) -> bool:
    """Cheap: Pillow reads only the header here. Unreadable bytes count as small (they fail fast)."""
    if len(data) > SMALL_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size[0] * im.size[1] <= SMALL_PIXELS
    except Exception:  # noqa: BLE001 - to_array reports it properly
        return True


def serve(model_or_run: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_BYTES,
          max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S, announce=print) -> None:
    """Load the model and serve it until interrupted. ``port=0`` picks a free port.

    The socket is bound before the server starts, so a busy port is a one-line
    :class:`CifarlabError`, and the real address is announced once requests can be served.
    """
    import socket

    import uvicorn

    from cifarlab.errors import CifarlabError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))  # before loading the model: a busy port fails in a moment
    except OSError as e:
        sock.close()
        raise CifarlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        served = load_served_model(model_or_run)
    except BaseException:
        sock.close()
        raise
    app = create_app(served, max_bytes=max_bytes, max_batch=max_batch, max_wait_s=max_wait_s)
    sock.listen(2048)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            backlog=2048)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    announce(f"serving {served.name} ({len(served.class_names)} classes) on http://{shown}:{bound}/ "
             f"(Ctrl-C stops)")
    server.run(sockets=[sock])
