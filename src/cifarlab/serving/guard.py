"""What keeps one slow or greedy client from starving the others, below the routes.

- :func:`header_deadline_protocol`: uvicorn's HTTP protocol, with a deadline and a
  size cap for a request's headers. uvicorn times out idle keep-alive connections but
  not a connection that dribbles its headers (slowloris), which would otherwise hold
  its socket, and a slot of ``limit_concurrency``, for ever; and with httptools it
  keeps every header line it is sent, however many.
- :class:`Admission`: at most ``max_inflight`` inference requests at once in the
  application; the next one is answered 503 with ``Retry-After`` at once, before its
  body is read, so overload costs little and the accepted keep their latency. The
  protocol above checks the same :class:`Gate` as soon as a request's headers are in
  and answers 503 itself, skipping the whole application stack: under 3x overload
  most requests are turned away, and that must cost far less than serving one.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


# Most bytes of request line and headers; more is a 431 (nginx allows 8-32 kB, Node 16 kB).
MAX_HEADER_BYTES = 64 * 1024
_TOO_LARGE = json.dumps({"error": f"request headers over {MAX_HEADER_BYTES:,} bytes", "status": 431}).encode()
HEADERS_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n\r\n"
                     + _TOO_LARGE)


def header_deadline_protocol(header_timeout_s: float, gate: "Gate | None" = None,
                             max_header_bytes: int = MAX_HEADER_BYTES) -> type:
    """An :class:`HttpToolsProtocol` that closes a connection whose request headers take over ``header_timeout_s``.

    The clock starts when the connection opens, or when the first byte of the next
    request on a keep-alive connection arrives; it stops when the headers are complete.
    Headers over ``max_header_bytes`` get a 431 and the connection closed. With
    ``gate``, a request it would turn away is answered 503 right here.
    """

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer = None
        _header_bytes = 0
        _between = True  # no request message under way: the next byte starts one

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between:
                # the first bytes of a new request on a kept-alive connection (not the rest of the
                # body of one already answered, say a 413 to an upload still arriving)
                self._arm()
            super().data_received(data)
            if self._header_timer is not None and not self.transport.is_closing():
                self._header_bytes += len(data)  # still no complete headers: all of it was header bytes
                if self._header_bytes > max_header_bytes:
                    self._disarm()
                    self.transport.write(HEADERS_TOO_LARGE)
                    self.transport.close()

        _refused = False  # this request was answered 503 here: its body is read and dropped

        def on_headers_complete(self) -> None:
            self._disarm()
            self._between = False
            path = self.url.split(b"?", 1)[0].decode("latin-1")
            if gate is None or not gate.limited(path):
                return super().on_headers_complete()
            # Only a request that starts now is decided here; one pipelined behind a request still in
            # progress waits its turn, and Admission decides when it runs.
            now = self.cycle is None or self.cycle.response_complete
            if now and gate.full():
                self._refuse(path)
            elif now and not self._uvicorn_answers():
                # Its slot is taken now, not when its task first runs: a loop iteration reads many requests
                # before any of their tasks runs, and all would pass. Admission gives the slot back.
                gate.inflight += 1
                self.scope[ADMITTED] = True
                super().on_headers_complete()
            else:
                super().on_headers_complete()

        def _uvicorn_answers(self) -> bool:
            """Whether uvicorn answers this request itself, without the app (so Admission would never run):
            over ``limit_concurrency`` (uvicorn's 503), or an upgrade."""
            limit = self.limit_concurrency
            return self.parser.should_upgrade() or (limit is not None and (len(self.connections) >= limit
                                                                            or len(self.tasks) >= limit))

        def _refuse(self, path: str) -> None:
            """Answer 503 with one write, without a task or an ASGI cycle: a refusal must cost far less than
            an answer. The connection is kept unless the client asked otherwise (or waits for 100-continue,
            so that what it sends next could not be told from the body it never sent)."""
            keep = (self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()  # as uvicorn decides
                    and not self.expect_100_continue)
            self.transport.write(gate.refusal(path, self.server_state.default_headers, keep))
            self._refused = True
            if keep:
                self.on_response_complete()  # as after any answer: the keep-alive timer, the next request
            else:
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._between = True
            if self._refused:
                self._refused = False
            else:
                super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_bytes = 0
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


BUSY_HEADERS = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
# Scope key: the protocol already took this request's in-flight slot (Admission gives it back).
ADMITTED = "cifarlab.admitted"


class Gate:
    """At most ``limit`` requests in progress to paths for which ``limited(path)`` holds.

    ``limit`` is ``max_inflight``, or with ``max_lag_s`` it adapts to the event loop (see
    :meth:`start`). Counts what is in progress and how many were turned away. The 503
    answer comes in two forms with the same body and headers: ``refusal``, the whole
    response as bytes for the protocol to write, and ``busy``, an ASGI app
    (``error_body(path, status, message)`` makes its JSON).
    """

    def __init__(self, max_inflight: int, limited, error_body, max_lag_s: float | None = None,
                 every_s: float = 0.01):
        self.max_inflight, self.limited, self.error_body = max_inflight, limited, error_body
        self.max_lag_s, self.every_s = max_lag_s, every_s
        self.limit = max_inflight
        self.inflight = self.rejected = 0
        self.lag_s = 0.0  # how late the last check ran (s)
        self._timer = None
        self._bodies: dict[str, bytes] = {}
        self._defaults: tuple[list, bytes] = ([], b"")

    def full(self) -> bool:
        return self.inflight >= self.limit

    def start(self) -> None:
        """With ``max_lag_s``, check the running event loop every ``every_s`` seconds.

        How late the check runs is the loop's lag: the time it spent on other callbacks,
        which every request waits for too, 503s included, before its bytes are even read.
        Past ``max_lag_s`` the limit drops by a quarter (down to 1): admitted requests are
        what loads the loop (an answer costs ~40 refusals). Otherwise it grows by one per
        check, back up to ``max_inflight``.
        """
        if self.max_lag_s:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self.every_s, self._check, loop, loop.time() + self.every_s)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.limit = self.max_inflight

    def _check(self, loop, due: float) -> None:
        now = loop.time()
        self.lag_s = now - due
        if self.lag_s > self.max_lag_s:
            self.limit = max(1, self.limit * 3 // 4)
        elif self.limit < self.max_inflight:
            self.limit += 1
        self._timer = loop.call_at(now + self.every_s, self._check, loop, now + self.every_s)

    def busy_body(self, path: str) -> bytes:
        """The 503's JSON for ``path``; made once per path (a few: the limited routes)."""
        body = self._bodies.get(path)
        if body is None:
            body = json.dumps(self.error_body(path, 503, "server busy; retry shortly")).encode()
            if len(self._bodies) < 64:  # any /v2/models/NAME/infer is limited: keep the cache bounded
                self._bodies[path] = body
        return body

    def refusal(self, path: str, default_headers: list, keep_alive: bool) -> bytes:
        """The whole 503 response; ``default_headers``: uvicorn's (date, server), re-encoded when they change."""
        self.rejected += 1
        if self._defaults[0] is not default_headers:  # uvicorn makes a new list each second (the date)
            self._defaults = (default_headers, b"".join(k + b": " + v + b"\r\n" for k, v in default_headers))
        body = self.busy_body(path)
        return b"".join([b"HTTP/1.1 503 Service Unavailable\r\n", self._defaults[1],
                         *(k + b": " + v + b"\r\n" for k, v in BUSY_HEADERS),
                         b"content-length: %d\r\n" % len(body),
                         b"\r\n" if keep_alive else b"connection: close\r\n\r\n", body])

    async def busy(self, scope, receive, send):
        self.rejected += 1
        body = self.busy_body(scope["path"])
        await send({"type": "http.response.start", "status": 503,
                    "headers": [*BUSY_HEADERS, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class Admission:
    """ASGI middleware that keeps to a :class:`Gate`."""

    def __init__(self, app, gate: Gate):
        self.app, self.gate = app, gate

    async def __call__(self, scope, receive, send):
        gate = self.gate
        if not scope.get(ADMITTED):  # else the protocol let it in and counted it
            if scope["type"] != "http" or not gate.limited(scope["path"]):
                return await self.app(scope, receive, send)
            if gate.full():
                return await gate.busy(scope, receive, send)
            gate.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.inflight -= 1
