"""The request-independent core of the prediction service: limits, the model, the batcher, decoding.

:mod:`cifarlab.serving.app` (the service's own routes) and :mod:`cifarlab.serving.v2`
(the Open Inference Protocol) both answer through one :class:`Service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from cifarlab.data.images import (CorruptImageError, ImageError, ImageTooLargeError, NotAnImageError, probe,
                                  to_array)
from cifarlab.serving.batcher import MAX_BATCH, MAX_QUEUE, MAX_WAIT_S, QUEUE_TIMEOUT_S, MicroBatcher, ModelError, \
    Overloaded
from cifarlab.serving.guard import Gate

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
# Requests in the application at once; past that, 503 before the body is read. The limit
# drops below this while the event loop runs more than MAX_LAG_S behind (guard.Gate).
MAX_INFLIGHT = 128
MAX_LAG_S = 0.02
# Idle this long after a burst, the server gives the C heap's free pages back (Service._trim_when_idle).
TRIM_IDLE_S = 1.0
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
    max_lag_s: float | None = MAX_LAG_S  # None: the in-flight limit stays max_inflight
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
    from cifarlab.inference.predict import compiled_predictor

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


def _is_inference(path: str) -> bool:
    return path in ("/predict", "/predict/batch") or (path.startswith("/v2/models/") and path.endswith("/infer"))


def _libc_malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_malloc_trim()


class Service:
    """The request-independent parts: the batcher, the decoder threads, and the shared limits."""

    def __init__(self, served: ServedModel, limits: Limits):
        self.served, self.limits = served, limits
        self.batcher = MicroBatcher(served.predict_fn, max_batch=limits.max_batch, max_wait_s=limits.max_wait_s,
                                    max_queue=limits.max_queue, queue_timeout_s=limits.queue_timeout_s)
        self.gate = Gate(limits.max_inflight, _is_inference, error_body, limits.max_lag_s)
        self.decoder: ThreadPoolExecutor | None = None
        self.buffering = 0  # bytes of request bodies still arriving
        self.ready = False
        self._trimmer: asyncio.Task | None = None

    async def start(self) -> None:
        self.decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="cifarlab-decode")
        await self.batcher.start()
        # One request's worth of work before the first real one: the model thread and
        # TensorFlow's kernels warm up here, not in a user's latency.
        await self.batcher.submit(np.zeros((32, 32, 3), np.uint8))
        # TensorFlow and the model leave ~500,000 objects that live as long as the process: a full
        # collection walks them all, ~220 ms with the event loop stopped, every few seconds under load.
        # Frozen, collections see only what requests allocate.
        gc.collect()
        gc.freeze()
        self.gate.start()
        self._trimmer = asyncio.create_task(self._trim_when_idle())
        self.ready = True

    async def _trim_when_idle(self) -> None:
        """Once a burst is over (no image predicted for TRIM_IDLE_S seconds, none in progress), give the
        C heap's free pages back to the system: glibc keeps them after a load peak, so the RSS would stay
        at the peak's level for good."""
        if _malloc_trim is None:
            return
        seen = trimmed = self.batcher.images
        while True:
            await asyncio.sleep(TRIM_IDLE_S)
            now = self.batcher.images
            if now == seen and now != trimmed and self.gate.inflight == 0 and not self.batcher.queued:
                _malloc_trim(0)
                trimmed = now
            seen = now

    async def stop(self) -> None:
        self.ready = False
        self.gate.stop()
        if self._trimmer is not None:
            self._trimmer.cancel()
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
