"""The HTTP prediction service: FastAPI on uvicorn, one model, micro-batched.

Endpoints (schema at ``/openapi.json``, browsable at ``/docs``):

- ``POST /predict``        one image: multipart field ``file`` or the raw bytes as body
- ``POST /predict/batch``  several images: multipart fields ``files``
- ``GET /health``, ``GET /classes``, ``GET /model`` (what a client needs: classes, input, test metrics)
- ``/v2/...``              the Open Inference Protocol (KServe V2), see :mod:`cifarlab.serving.v2`
- ``GET /``                a self-contained web page to try the model

Every error is JSON ``{"error": message, "status": code}`` (``{"error": message}`` under
``/v2``): 400 for a corrupt, truncated or empty image, a decompression bomb or an
image over the per-image pixel cap (refused from the header, before any pixel is
allocated) or a Host header not allowed, 408 for a body that does not arrive in time,
413 for a body over the size limit or images over the per-request pixel budget, 415
for bytes that are not a PNG, JPEG, BMP or WebP image, 405 for a wrong method, 422 for
a bad query parameter, 431 for headers over 64 kB, 503 with ``Retry-After`` when the
service is overloaded, 500 when the model fails on that request's image. A bad request
never stops the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cifarlab.data.images import (CorruptImageError, ImageError, ImageTooLargeError, NotAnImageError, probe,
                                  to_array)
from cifarlab.serving.batcher import MAX_BATCH, MAX_QUEUE, MAX_WAIT_S, QUEUE_TIMEOUT_S, MicroBatcher, ModelError, \
    Overloaded
from cifarlab.serving.guard import Admission, Gate

# Largest request body accepted by default: far above any sensible photo for a
# 32x32 classifier, small enough that the in-flight bodies fit in memory.
MAX_BYTES = 10 * 1024 * 1024
# Most images in one /predict/batch or V2 infer request; more is a 413 (send several requests).
MAX_BATCH_FILES = 256
DEFAULT_TOP_K = 5
# The model needs 32x32: 4 megapixels (a phone screenshot; a JPEG counts at its draft
# scale, so any photo fits) is plenty per image, and 16 per request bounds what one
# request makes the decoder allocate (a 16-bit PNG of a few kB may declare millions).
MAX_IMAGE_PIXELS = 4_000_000
MAX_REQUEST_PIXELS = 16_000_000
# Requests in the application at once; past that, 503 before the body is read.
MAX_INFLIGHT = 128
# A body must arrive within this; bodies still arriving may hold this much memory together.
BODY_TIMEOUT_S = 30.0
MAX_BUFFERING_BYTES = 256 * 1024 * 1024
# Host names accepted by default (against DNS rebinding: a page on another site that
# made its own name resolve to 127.0.0.1 sends its own name as Host).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Images up to this many bytes and pixels are decoded on the event loop (a hop to a
# thread costs more); larger ones in the decoder threads.
SMALL_BYTES, SMALL_PIXELS = 64 * 1024, 256 * 256
DECODE_THREADS = 2  # bounds the memory of large decodes in flight: threads x one image's pixels


@dataclass(frozen=True)
class Limits:
    """Every resource bound of the service, with the defaults above (``cifarlab serve`` flags set them)."""

    max_bytes: int = MAX_BYTES
    max_batch: int = MAX_BATCH
    max_wait_s: float = MAX_WAIT_S
    max_queue: int = MAX_QUEUE
    queue_timeout_s: float = QUEUE_TIMEOUT_S
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS
    max_inflight: int = MAX_INFLIGHT
    body_timeout_s: float = BODY_TIMEOUT_S
    max_buffering_bytes: int = MAX_BUFFERING_BYTES
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS  # ("*",): any


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class ServedModel:
    """What the service knows about its model; ``predict_fn`` maps (N,32,32,3) uint8 to (N,K) float32.

    ``info`` is what ``GET /model`` shows: only what a client needs (no paths, command
    lines or machine details, which a page on another site could otherwise read).
    """

    name: str
    class_names: list[str]
    predict_fn: object
    info: dict = field(default_factory=dict)


# Metadata and metric keys a client may see; everything else stays on the server.
PUBLIC_METADATA = ("model", "recipe", "precision", "input")
PUBLIC_METRICS = ("test_accuracy", "test_loss", "num_images", "epochs")


def load_served_model(model_or_run: str | os.PathLike) -> ServedModel:
    """Load a ``.keras`` file or run directory; a run dir's ``metrics.json`` adds the test metrics."""
    from cifarlab.models.io import load_model
    from cifarlab.serving.predict import compiled_predictor

    path = Path(model_or_run)
    model, meta = load_model(path)
    name = path.name if path.is_dir() else path.stem
    metrics = {}
    if path.is_dir():
        with contextlib.suppress(OSError, ValueError):
            metrics = json.loads((path / "metrics.json").read_text())
    if not isinstance(metrics, dict):
        metrics = {}
    dataset = meta.get("dataset")
    info = {"parameters": int(model.count_params()), "input_shape": list(model.input_shape[1:]),
            **{k: meta[k] for k in PUBLIC_METADATA if k in meta},
            # a folder dataset may be recorded as a path: its last part names it well enough
            "dataset": Path(str(dataset)).name if dataset else None,
            "metrics": {k: metrics[k] for k in PUBLIC_METRICS if isinstance(metrics.get(k), (int, float))}}
    return ServedModel(name, list(meta["class_names"]), compiled_predictor(model), info)


def error_body(path: str, status: int, message: str) -> dict:
    """The error JSON: the Open Inference Protocol's shape under /v2, with the status elsewhere."""
    return {"error": message} if path.startswith("/v2") else {"error": message, "status": status}


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message), status_code=status, headers=headers)


class Service:
    """The request-independent parts: the batcher, the decoder threads, and the shared limits."""

    def __init__(self, served: ServedModel, limits: Limits):
        self.served, self.limits = served, limits
        self.batcher = MicroBatcher(served.predict_fn, max_batch=limits.max_batch, max_wait_s=limits.max_wait_s,
                                    max_queue=limits.max_queue, queue_timeout_s=limits.queue_timeout_s)
        self.gate = Gate(limits.max_inflight, _is_inference, error_body)
        self.decoder: ThreadPoolExecutor | None = None
        self.buffering = 0  # bytes of request bodies still arriving
        self.ready = False

    async def start(self) -> None:
        self.decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="cifarlab-decode")
        await self.batcher.start()
        # One request's worth of work before the first real one: the model thread and
        # TensorFlow's kernels warm up here, not in a user's latency.
        await self.batcher.submit(np.zeros((32, 32, 3), np.uint8))
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self.decoder.shutdown(wait=True)

    async def read_body(self, request: Request) -> bytes:
        """The whole body, within the size limit, the body deadline and the shared buffering budget."""
        lim = self.limits
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise ApiError(415, "compressed request bodies (Content-Encoding) are not accepted")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > lim.max_bytes:
            raise ApiError(413, f"request body of {int(declared):,} bytes is over the limit of {lim.max_bytes:,}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(lim.body_timeout_s):
                async for chunk in request.stream():  # also bounds a chunked body with no Content-Length
                    size += len(chunk)
                    self.buffering += len(chunk)
                    if size > lim.max_bytes:
                        raise ApiError(413, f"request body is over the limit of {lim.max_bytes:,} bytes")
                    if self.buffering > lim.max_buffering_bytes:
                        raise ApiError(503, "too many uploads in progress; retry shortly", {"Retry-After": "1"})
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, f"request body not received within {lim.body_timeout_s:g} s") from None
        finally:
            self.buffering -= size
        return b"".join(chunks)

    async def uploads(self, request: Request, body: bytes) -> list[tuple[str, bytes]]:
        """(name, bytes) of each uploaded file in a multipart body."""
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=MAX_BATCH_FILES + 1,
                                                            max_part_size=self.limits.max_bytes)
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

    def budget(self, images: list[tuple[str, bytes]]) -> list[int | ApiError]:
        """Decoded pixels of each image (or why it cannot be decoded), from the headers; 413 over the budget."""
        sizes = [self._probe(data, name) for name, data in images]
        total = sum(s for s in sizes if isinstance(s, int))
        if total > self.limits.max_request_pixels:
            raise ApiError(413, f"the images decode to {total:,} pixels together, more than the "
                                f"{self.limits.max_request_pixels:,} allowed per request; send fewer or smaller images")
        return sizes

    def _probe(self, data: bytes, name: str) -> int | ApiError:
        if not data:
            return ApiError(400, f"{name}: empty image (no bytes)")
        try:
            return probe(data, name, max_pixels=self.limits.max_image_pixels)
        except ImageError as e:
            return _image_error(e)

    async def decode(self, data: bytes, name: str, pixels: int) -> np.ndarray:
        decode = functools.partial(to_array, data, name, max_pixels=self.limits.max_image_pixels)
        try:
            if len(data) <= SMALL_BYTES and pixels <= SMALL_PIXELS:
                return decode()
            return await asyncio.get_running_loop().run_in_executor(self.decoder, decode)
        except ImageError as e:
            raise _image_error(e) from None

    async def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """``(K,)`` float32 for one image, and its batch's size; 503 when overloaded, 500 on a model error."""
        try:
            return await self.batcher.submit(x)
        except Overloaded as e:
            raise ApiError(503, str(e), {"Retry-After": str(e.retry_after)}) from None
        except ModelError as e:
            raise ApiError(500, f"the model failed on this image ({e})") from None

    async def classify(self, data: bytes, name: str, pixels: int | ApiError, k: int) -> tuple[dict, int]:
        if isinstance(pixels, ApiError):
            raise pixels
        probs, n = await self.probabilities(await self.decode(data, name, pixels))
        order = np.argsort(probs)[::-1][:k]
        top = [{"class": self.served.class_names[i], "probability": float(probs[i])} for i in order]
        return {"class": top[0]["class"], "top": top}, n


def _image_error(e: ImageError) -> ApiError:
    if isinstance(e, NotAnImageError):
        return ApiError(415, str(e))
    assert isinstance(e, (ImageTooLargeError, CorruptImageError)), type(e)
    return ApiError(400, str(e))


# ---- response schemas (documentation in /openapi.json; the handlers build plain dicts of these shapes) ----

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


ERRORS = {c: {"model": ErrorOut} for c in (400, 408, 413, 415, 422, 500, 503)}
IMAGE_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
}}
BATCH_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}


def create_app(served: ServedModel, limits: Limits | None = None, **overrides) -> FastAPI:
    """The FastAPI application serving ``served`` (see :func:`load_served_model`).

    ``limits`` (default :class:`Limits`), with any of its fields overridden by keyword
    (``create_app(served, max_bytes=1000)``).
    """
    from cifarlab.serving import v2

    limits = dataclasses.replace(limits or Limits(), **overrides)
    # python-multipart logs every malformed body it sees; the client gets a 400 with the reason instead.
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    logging.getLogger("multipart").setLevel(logging.CRITICAL)
    svc = Service(served, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await svc.start()
        yield
        await svc.stop()  # after uvicorn let the in-flight requests finish: answers what is still queued

    app = FastAPI(title="cifarlab prediction service", version="1", lifespan=lifespan,
                  description=f"Classifies small colour images with the model `{served.name}` "
                              f"({len(served.class_names)} classes). Images of any size are centre-cropped and "
                              "resized to 32x32 exactly as in training.")
    app.state.service = svc
    _add_error_handlers(app)
    _add_predict_routes(app, svc)
    _add_info_routes(app, svc)
    v2.add_routes(app, svc)
    app.add_middleware(Admission, gate=svc.gate)
    if "*" not in limits.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(limits.allowed_hosts), www_redirect=False)
    return app


def _is_inference(path: str) -> bool:
    return path in ("/predict", "/predict/batch") or (path.startswith("/v2/models/") and path.endswith("/infer"))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return _error(request, exc.status_code, str(exc.detail), exc.headers)  # e.g. Allow on a 405

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(request, 422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug: answer 500 and keep serving
        return _error(request, 500, f"internal error: {type(exc).__name__}")


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _add_predict_routes(app: FastAPI, svc: Service) -> None:
    n_classes = len(svc.served.class_names)
    top_k_query = Query(DEFAULT_TOP_K, ge=1, le=1000, description="classes to return (at most the model's)")

    @app.post("/predict", response_model=PredictionOut, responses=ERRORS, openapi_extra={"requestBody": IMAGE_BODY},
              summary="Classify one image (multipart field `file`, or the raw image bytes as the body)")
    async def predict(request: Request, top_k: int = top_k_query):
        t0 = time.perf_counter()
        body = await svc.read_body(request)
        name = "image"
        if _is_multipart(request):
            files = await svc.uploads(request, body)
            if len(files) != 1:
                raise ApiError(400, f"expected one file in the multipart body, got {len(files)}")
            name, body = files[0]
        [pixels] = svc.budget([(name, body)])
        result, n = await svc.classify(body, name, pixels, min(top_k, n_classes))
        # A JSONResponse skips FastAPI's re-validation against PredictionOut (the schema
        # still documents it): the answer is built here and is already of that shape.
        return JSONResponse({"model": svc.served.name, **result, "latency_ms": _ms_since(t0), "batch_size": n})

    @app.post("/predict/batch", response_model=BatchOut, responses=ERRORS, response_model_exclude_none=True,
              openapi_extra={"requestBody": BATCH_BODY},
              summary="Classify several images (multipart fields `files`); one bad image does not fail the rest")
    async def predict_batch(request: Request, top_k: int = top_k_query):
        t0 = time.perf_counter()
        if not _is_multipart(request):
            raise ApiError(415, "send the images as multipart/form-data fields named 'files'")
        files = await svc.uploads(request, await svc.read_body(request))
        if not files:
            raise ApiError(400, "no files in the multipart body")
        sizes = svc.budget(files)

        async def one(name, data, pixels):
            try:
                result, _ = await svc.classify(data, name, pixels, min(top_k, n_classes))
                return {"file": name, **result, "status": 200}
            except ApiError as e:
                if e.status in (500, 503):
                    raise  # the service's trouble, not this image's: the whole request says so
                return {"file": name, "error": e.message, "status": e.status}

        # gather joins the micro-batches
        results = await asyncio.gather(*(one(n, d, p) for (n, d), p in zip(files, sizes)))
        return {"model": svc.served.name, "results": results, "latency_ms": _ms_since(t0)}


def _add_info_routes(app: FastAPI, svc: Service) -> None:
    page = resources.files("cifarlab.serving").joinpath("page.html").read_text(encoding="utf-8")
    lim = svc.limits

    @app.get("/health", summary="Liveness, and how much micro-batching and load shedding happened")
    async def health():
        b = svc.batcher
        return {"status": "ok", "model": svc.served.name, "images": b.images, "batches": b.batches,
                "queued": b.queued, "inflight": svc.gate.inflight, "rejected": b.rejected + svc.gate.rejected,
                "max_batch": lim.max_batch, "max_wait_ms": lim.max_wait_s * 1000, "max_bytes": lim.max_bytes,
                "max_image_pixels": lim.max_image_pixels, "max_request_pixels": lim.max_request_pixels}

    @app.get("/classes", summary="Class names, in the model's output order")
    async def classes():
        return {"classes": svc.served.class_names}

    @app.get("/model", summary="What a client needs to know about the model: classes, input, test metrics")
    async def model_info():
        return {"name": svc.served.name, "classes": svc.served.class_names, **svc.served.info}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)


def default_allowed_hosts(host: str) -> tuple[str, ...]:
    """The local names, the bind address, and for a wildcard bind this machine's own names."""
    import socket

    names = list(LOCAL_HOSTS)
    if host in ("0.0.0.0", "::", ""):
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(f"[{host}]" if ":" in host else host)
    return tuple(dict.fromkeys(n.lower() for n in names if n))


# uvicorn's own limits: connections at once (past that, a 503 at once) and idle keep-alive.
MAX_CONNECTIONS = 2048
KEEP_ALIVE_S = 5
HEADER_TIMEOUT_S = 10.0
DRAIN_S = 10


def _raise_open_files_limit(want: int) -> None:
    """Let the process hold ``want`` descriptors if the hard limit allows (soft limits of 1024 are common)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def serve(model_or_run: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          max_connections: int = MAX_CONNECTIONS, header_timeout_s: float = HEADER_TIMEOUT_S,
          announce=print) -> None:
    """Load the model and serve it until interrupted; ``port=0`` picks a free port.

    SIGINT or SIGTERM stops accepting and drains the requests in progress (up to ``DRAIN_S``).

    The socket is bound before the server starts, so a busy port is a one-line
    :class:`CifarlabError`, and the real address is announced once requests can be
    served. ``limits.allowed_hosts`` defaults to :func:`default_allowed_hosts`.
    """
    import socket

    import uvicorn

    from cifarlab.errors import CifarlabError
    from cifarlab.serving.guard import header_deadline_protocol

    limits = limits or Limits(allowed_hosts=default_allowed_hosts(host))
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
    app = create_app(served, limits)
    _raise_open_files_limit(max_connections + 256)
    sock.listen(2048)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048,
                            http=header_deadline_protocol(header_timeout_s, app.state.service.gate),
                            limit_concurrency=max_connections,
                            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=DRAIN_S)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    announce(f"serving {served.name} ({len(served.class_names)} classes) on http://{shown}:{bound}/ "
             f"(Ctrl-C stops)")
    server.run(sockets=[sock])
