"""What keeps one slow or greedy client from starving the others, below the routes.

- :func:`header_deadline_protocol`: uvicorn's HTTP protocol, with a deadline for a
  request's headers. uvicorn times out idle keep-alive connections but not a
  connection that dribbles its headers (slowloris), which would otherwise hold its
  socket, and a slot of ``limit_concurrency``, for ever.
- :class:`Admission`: at most ``max_inflight`` inference requests at once in the
  application; the next one is answered 503 with ``Retry-After`` at once, before its
  body is read, so overload costs little and the accepted keep their latency.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def header_deadline_protocol(header_timeout_s: float) -> type:
    """An :class:`HttpToolsProtocol` that closes a connection whose request headers take over ``header_timeout_s``.

    The clock starts when the connection opens, or when the first byte of the next
    request on a keep-alive connection arrives; it stops when the headers are complete.
    """

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a new request on a kept-alive connection
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


class Gate:
    """The count behind :class:`Admission`: requests in progress, and how many were turned away."""

    def __init__(self, max_inflight: int):
        self.max_inflight, self.inflight, self.rejected = max_inflight, 0, 0


class Admission:
    """ASGI middleware: at most ``gate.max_inflight`` concurrent requests to paths for which ``limited(path)`` holds.

    ``error_body(path, status, message)`` makes the 503's JSON.
    """

    def __init__(self, app, gate: Gate, limited, error_body):
        self.app, self.gate, self.limited, self.error_body = app, gate, limited, error_body

    async def __call__(self, scope, receive, send):
        gate = self.gate
        if scope["type"] != "http" or not self.limited(scope["path"]):
            return await self.app(scope, receive, send)
        if gate.inflight >= gate.max_inflight:
            gate.rejected += 1
            body = json.dumps(self.error_body(scope["path"], 503, f"server busy ({gate.max_inflight} requests "
                                                                  "in progress); retry shortly")).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        gate.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.inflight -= 1
