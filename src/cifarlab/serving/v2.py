"""The Open Inference Protocol (KServe V2, as spoken by Triton, KServe and MLServer) over HTTP/REST.

Routes (beside the service's own, same model, same micro-batcher and limits):

- ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``
- ``GET /v2/models/{name}`` (metadata), ``GET /v2/models/{name}/ready``
- ``POST /v2/models/{name}/infer``; also under ``/v2/models/{name}/versions/1/...``

One input per request, either ``pixels``: UINT8 ``[N, 32, 32, 3]`` RGB, or ``images``:
BYTES ``[N]`` (or ``[N, 1]``), each element an encoded PNG/JPEG/BMP/WebP file; the
output ``probabilities`` is FP32 ``[N, classes]``. Tensor data comes as JSON
(``data``, row-major; BYTES elements base64-encoded, as JSON cannot hold raw bytes) or
in Triton's binary extension (``Inference-Header-Content-Length`` header; BYTES
elements each prefixed by a 4-byte little-endian length), which ``tritonclient`` uses
by default; outputs are binary when asked (``binary_data`` / ``binary_data_output``).
Errors are ``{"error": message}`` with a 4xx/5xx status, as the protocol has it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from cifarlab import __version__
from cifarlab.serving.service import MAX_BATCH_FILES, ApiError, Service

VERSION = "1"
PIXELS, IMAGES, PROBS = "pixels", "images", "probabilities"
IMAGE_SHAPE = (32, 32, 3)


class V2ErrorOut(BaseModel):
    error: str


ERRORS = {c: {"model": V2ErrorOut} for c in (400, 404, 408, 413, 415, 422, 500, 503)}


def add_routes(app: FastAPI, svc: Service) -> None:
    served = svc.served

    def check(model: str, version: str | None = None) -> None:
        if model != served.name:
            raise ApiError(404, f"unknown model '{model}'; this server has '{served.name}'")
        if version not in (None, "", VERSION):
            raise ApiError(404, f"unknown version '{version}' of model '{model}'; it has version {VERSION}")

    @app.get("/v2", summary="V2: server metadata")
    async def server_metadata():
        return {"name": "cifarlab", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="V2: the server is live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", responses=ERRORS,
             summary="V2: the server is ready for inference (503 while starting or draining)")
    async def ready():
        return JSONResponse({"ready": svc.ready}, status_code=200 if svc.ready else 503)

    @app.get("/v2/models/{model}", responses=ERRORS, summary="V2: model metadata (inputs, outputs)")
    @app.get("/v2/models/{model}/versions/{version}", include_in_schema=False)
    async def model_metadata(model: str, version: str | None = None):
        check(model, version)
        return {"name": served.name, "versions": [VERSION], "platform": "keras",
                "inputs": [{"name": PIXELS, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]},
                           {"name": IMAGES, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": PROBS, "datatype": "FP32", "shape": [-1, len(served.class_names)]}],
                "parameters": {"classes": served.class_names}}

    @app.get("/v2/models/{model}/ready", responses=ERRORS, summary="V2: the model is ready")
    @app.get("/v2/models/{model}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(model: str, version: str | None = None):
        check(model, version)
        return JSONResponse({"name": served.name, "ready": svc.ready}, status_code=200 if svc.ready else 503)

    @app.post("/v2/models/{model}/infer", responses=ERRORS,
              summary="V2: probabilities for UINT8 pixels or encoded image files",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "required": ["inputs"]}}}}})
    @app.post("/v2/models/{model}/versions/{version}/infer", include_in_schema=False)
    async def infer(model: str, request: Request, version: str | None = None):
        check(model, version)
        req, binary = split_body(await svc.read_body(request), request.headers.get("inference-header-content-length"))
        inputs = req.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise ApiError(400, f"'inputs' must be a list of one tensor ('{PIXELS}' or '{IMAGES}')")
        binary_out = wants_binary(req)
        tensor = read_tensor(inputs[0], binary)
        inputs[0].pop("data", None)  # the JSON lists are converted: not kept while the model works
        if isinstance(tensor, np.ndarray):
            rows = await asyncio.gather(*(svc.probabilities(x) for x in tensor))
        else:
            rows = await probabilities_of_files(svc, tensor)
        probs = np.stack([p for p, _ in rows]).astype("<f4")
        out = {"name": PROBS, "datatype": "FP32", "shape": list(probs.shape)}
        answer = {"model_name": served.name, "model_version": VERSION, "outputs": [out]}
        if isinstance(req.get("id"), str):
            answer["id"] = req["id"]
        if not binary_out:
            out["data"] = probs.ravel().tolist()
            return JSONResponse(answer)
        raw = probs.tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(answer).encode()
        return Response(head + raw, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON request and the binary tensor data after it (binary extension)."""
    if header_length is None:
        head, binary = body, b""
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise ApiError(400, f"Inference-Header-Content-Length {header_length!r} is not a length within the body")
    else:
        head, binary = body[:int(header_length)], body[int(header_length):]
    try:
        req = json.loads(head)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise ApiError(400, f"request is not valid JSON ({str(e)[:100]})") from None
    if not isinstance(req, dict):
        raise ApiError(400, "request must be a JSON object with 'inputs'")
    return req, binary


def wants_binary(req: dict) -> bool:
    """Whether the output goes in the binary extension; 400 for an output this model does not have."""
    params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    outputs = req.get("outputs")
    if outputs is None:
        return params.get("binary_data_output") is True
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ApiError(400, "'outputs' must be a list of objects")
    names = [o.get("name") for o in outputs]
    if any(n != PROBS for n in names):
        raise ApiError(400, f"unknown output(s) {[n for n in names if n != PROBS]}; the model has '{PROBS}'")
    wanted = [o.get("parameters", {}).get("binary_data") for o in outputs if isinstance(o.get("parameters"), dict)]
    return any(w is True for w in wanted) or params.get("binary_data_output") is True


def read_tensor(spec: dict, binary: bytes) -> np.ndarray | list[bytes]:
    """``(N, 32, 32, 3)`` uint8 for ``pixels``, or the N encoded files of ``images``; 400 for anything else."""
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(shape, list) or not shape or not all(type(d) is int for d in shape):
        raise ApiError(400, "input 'shape' must be a list of integers")
    n = shape[0]
    if not 1 <= n <= MAX_BATCH_FILES:
        raise ApiError(413 if n > MAX_BATCH_FILES else 400,
                       f"batch of {n} images; 1 to {MAX_BATCH_FILES} per request")
    params = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
    size = params.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != len(binary):
            raise ApiError(400, f"binary_data_size {size!r} does not match the {len(binary):,} bytes after the JSON")
        raw = binary
    elif binary:
        raise ApiError(400, "binary data after the JSON, but no input has 'binary_data_size'")
    else:
        raw = None
    if name == PIXELS and datatype == "UINT8":
        return _pixels(shape, raw, spec.get("data"))
    if name == IMAGES and datatype == "BYTES":
        if shape not in ([n], [n, 1]):
            raise ApiError(400, f"'{IMAGES}' must have shape [N] or [N, 1], not {shape}")
        files = _split_bytes(raw) if raw is not None else _base64_list(spec.get("data"))
        if len(files) != n:
            raise ApiError(400, f"'{IMAGES}' has {len(files)} elements, but its shape says {n}")
        return files
    raise ApiError(400, f"input {name!r} of type {datatype!r}: this model takes '{PIXELS}' (UINT8 "
                        f"[N, 32, 32, 3]) or '{IMAGES}' (BYTES [N], encoded image files)")


def _pixels(shape: list[int], raw: bytes | None, data) -> np.ndarray:
    if tuple(shape[1:]) != IMAGE_SHAPE:
        raise ApiError(400, f"'{PIXELS}' must have shape [N, 32, 32, 3], not {shape}")
    want = int(np.prod(shape))
    if raw is not None:
        if len(raw) != want:
            raise ApiError(400, f"'{PIXELS}' needs {want:,} bytes for shape {shape}, got {len(raw):,}")
        return np.frombuffer(raw, np.uint8).reshape(shape)
    try:
        a = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        a = None
    if a is None or a.dtype.kind not in "iu" or a.size != want:
        raise ApiError(400, f"'{PIXELS}' data must be {want:,} integers 0-255 (row-major) for shape {shape}")
    if a.min() < 0 or a.max() > 255:
        raise ApiError(400, f"'{PIXELS}' values must be 0-255 (UINT8)")
    return a.astype(np.uint8).reshape(shape)


def _split_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length, then its bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ApiError(400, "BYTES tensor data is truncated (a length prefix is cut off)")
        (length,) = struct.unpack_from("<I", raw, i)
        if i + 4 + length > len(raw):
            raise ApiError(400, f"BYTES tensor data is truncated (element {len(out)} claims {length:,} bytes)")
        out.append(raw[i + 4:i + 4 + length])
        i += 4 + length
        if len(out) > MAX_BATCH_FILES:
            raise ApiError(413, f"more than {MAX_BATCH_FILES} images in one request")
    return out


def _base64_list(data) -> list[bytes]:
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise ApiError(400, f"'{IMAGES}' data in JSON must be a list of base64 strings (or use binary data)")
    try:
        return [base64.b64decode(s, validate=True) for s in data]
    except ValueError as e:
        raise ApiError(400, f"'{IMAGES}' element is not base64 ({e})") from None


async def probabilities_of_files(svc: Service, files: list[bytes]) -> list:
    named = [(f"{IMAGES}[{i}]", data) for i, data in enumerate(files)]
    sizes = svc.budget(named)
    for s in sizes:
        if isinstance(s, ApiError):
            raise s  # one input tensor: one bad element fails the request (the error names it)

    async def one(name, data, pixels):
        return await svc.probabilities(await svc.decode(data, name, pixels))

    return await asyncio.gather(*(one(n, d, p) for (n, d), p in zip(named, sizes)))
