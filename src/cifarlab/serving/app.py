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
import logging
import os
import time
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cifarlab.serving import v2
from cifarlab.serving.guard import Admission
from cifarlab.serving.service import (DEFAULT_TOP_K, LOCAL_HOSTS, MAX_BYTES,  # noqa: F401 - MAX_BYTES: API
                                      ApiError, Limits, ServedModel, Service, error_body, load_served_model)


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, status, message), status_code=status, headers=headers)


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
    if "*" not in limits.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(limits.allowed_hosts), www_redirect=False)
    # Outermost (added last): the protocol may have counted a request in already (guard.ADMITTED), and
    # only Admission gives its slot back, so no middleware may answer it before Admission runs.
    app.add_middleware(Admission, gate=svc.gate)
    return app


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
                "queued": b.queued, "inflight": svc.gate.inflight, "inflight_limit": svc.gate.limit,
                "loop_lag_ms": round(svc.gate.lag_s * 1000, 1), "rejected": b.rejected + svc.gate.rejected,
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
