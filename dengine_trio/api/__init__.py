"""HTTP faces of a node: the KV app (business port) and the health app (health port).

Both are Quart apps (quart-trio) served by Hypercorn inside the node's nursery. What they share
lives here: the JSON error body ``{"error": "<code>", "message": "..."}`` that every 4xx/5xx
carries (Quart's own 404/405/413 included, and Hypercorn's 400 for a request it cannot parse),
the mapping of engine errors to statuses, and the Hypercorn settings. ``create_kv_app`` is in
:mod:`dengine_trio.api.kv`, ``create_health_app`` in :mod:`dengine_trio.api.health`.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.trio import tcp_server
from hypercorn.trio.tcp_server import TCPServer
from quart import Quart, Response, request
from quart.utils import encode_headers
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dengine_trio import errors
from dengine_trio.api import idle_timer
from dengine_trio.config import (
    DEFAULT_BODY_TIMEOUT_MS,
    DEFAULT_IDLE_TIMEOUT_MS,
    DEFAULT_LISTEN_BACKLOG,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
)

__all__ = [
    "JSON_CONTENT_TYPE",
    "ApiError",
    "App",
    "ConnectionCount",
    "FastPath",
    "bind_listener",
    "engine_error_response",
    "http_error_code",
    "hypercorn_config",
    "install_error_handlers",
    "json_error",
    "kernel_backlog_cap",
    "plain_get_fast_path",
    "send_response",
]

JSON_CONTENT_TYPE = "application/json"
RETRY_AFTER_S = "1"

log = logging.getLogger("dengine_trio.api")


class ApiError(Exception):
    """A request the API refuses, raised in a handler: the response is ``status`` (an HTTP
    4xx/5xx) with the body ``{"error": code, "message": message}`` (``code`` in snake_case,
    e.g. ``"invalid_key"``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


FastPath = Callable[[Any, Any, Any], Awaitable["list[Any] | None"]]
"""``(scope, receive, send) -> None`` (answered) or the consumed receive messages (declined)."""


class App(QuartTrio):
    """A QuartTrio app that answers a complete request even if its client half-closed, and
    sends its last response message shielded from cancellation.

    ``body_timeout_s``: how long a request body may take to arrive once the headers are in
    (seconds; ``[http] body_timeout_ms``): then 408 ``request_timeout`` and the connection is
    closed. Set explicitly (not left to Quart's default) because the node relies on it: without
    it a client that stalls its body would hold a connection and a task for good.

    Half-close: Hypercorn (0.18) takes the client's FIN for a disconnect and passes the app
    ``http.disconnect``, on which quart-trio cancels the handler. A client may send its whole
    request and then shut its sending side (``nc -N``, ncat, some proxies and probes do): an
    HTTP/1.1 request ends where its framing says (RFC 9112 section 6), and a TCP FIN closes
    one direction only (RFC 9293); yet a ``POST /kv`` applied with no answer at all. TCP
    cannot tell that FIN from a client that closed for good, so once a request has arrived
    complete, a disconnect is not passed on: the handler runs to its end (bounded by the
    request timeout and ``max_pending_requests``, like any request) and its response is
    written to the half-open connection, or lost harmlessly if the client is gone. A
    disconnect before the request is complete still cancels the handler.

    Last send: quart-trio answers a request in one task and listens for ``http.disconnect`` in
    another, and cancels both as soon as either ends. When a response is the last one on its
    connection (HTTP/1.0, ``Connection: close``, an error that closes), Hypercorn (0.18, trio
    worker) closes the socket from inside the app's final ``send``: it first queues
    ``http.disconnect``, whose listener then cancels the sending task at the next checkpoint,
    before the socket is shut down and closed. The connection then stayed open forever
    (upstream: pgjones/hypercorn#330). On a kept-alive connection the same cancel skipped the
    restart of Hypercorn's idle timer, so an idle client connection was never closed either.
    Shielding that one ``send`` lets Hypercorn finish either; it cannot block longer than
    Hypercorn's own (already shielded) write of the body.
    """

    def __init__(
        self,
        *args: Any,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_MS / 1000,
        max_header_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config["BODY_TIMEOUT"] = body_timeout_s
        self.max_header_bytes = max_header_bytes
        self.stream_routes: dict[str, FastPath] = {}
        """Raw ASGI routes by exact path (``GET /watch``, :mod:`dengine_trio.api.watch`),
        tried before :attr:`fast_path` with its contract (None: answered; else the receive
        messages consumed). They see the client's disconnect: a stream must end with its
        client, where a complete request's handler runs on (see the half-close below)."""

    fast_path: FastPath | None = None
    """Serves some requests without Quart (:mod:`dengine_trio.api.kv`'s hot routes): called
    with each HTTP request once its head passed the size check; returns None when it answered
    the request, else the receive messages it consumed (maybe none), which Quart then gets
    first, so a request it declines is served exactly as without it."""

    metrics_sink: Any = None
    """Set by ``dengine_trio.metrics.http.instrument_app``: where :attr:`fast_path` counts the
    requests it answers (Quart's hooks count the others)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self.max_header_bytes is not None and _head_bytes(scope) > self.max_header_bytes:
                await _send_head_too_large(send, self.max_header_bytes)
                return
            stream_route = self.stream_routes.get(scope["path"]) if self.stream_routes else None
            if stream_route is not None:
                consumed = await stream_route(scope, receive, send)
                if consumed is None:
                    return
                if consumed:
                    receive = _replay(consumed, receive)
            fast_path = self.fast_path
            if fast_path is not None:
                consumed = await fast_path(scope, receive, send)
                if consumed is None:
                    return
                if consumed:
                    receive = _replay(consumed, receive)
            receive = _hold_disconnect_once_complete(receive)
            send = _shield_last_send(send)
        await super().__call__(scope, receive, send)


def _head_bytes(scope: Any) -> int:
    """About the size of the request line and headers as sent (bytes)."""
    size = len(scope["raw_path"]) + len(scope["query_string"]) + 16
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    return size


async def _send_head_too_large(send: Any, limit: int) -> None:
    # h11's bound (Hypercorn's h11_max_incomplete_size) holds only for a head that arrives
    # over several reads: Hypercorn reads 64 KiB at a time, and h11 parses a head that came
    # whole in one read whatever its size. This is the same bound for that case.
    body = json.dumps(
        {
            "error": "request_header_fields_too_large",
            "message": f"request line and headers exceed {limit} bytes ([http] max_header_bytes)",
        },
        separators=(",", ":"),
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", JSON_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


_NOT_SERVED: list[Any] = []


async def send_response(send: Any, response: Response) -> None:
    """Send a Quart ``response`` (a body in memory) as Quart's ASGI layer would: the same
    status, headers and body bytes."""
    body = await response.get_data()
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": encode_headers(response.headers),
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def plain_get_fast_path(
    app: App,
    routes: dict[str, Callable[[], Response]],
    query_routes: frozenset[str] = frozenset(),
) -> FastPath:
    """A fast path for ``GET`` of the exact paths in ``routes`` (each a function making the
    route's response, as its Quart view returns it) when the request has no body, and no query
    string for a path in ``query_routes``; any other request is left to Quart. Counted in
    ``app.metrics_sink`` under the path as its route."""

    async def fast_path(scope: Any, receive: Any, send: Any) -> list[Any] | None:
        if scope["method"] != "GET":
            return _NOT_SERVED
        path = scope["path"]
        make = routes.get(path)
        if make is None or (scope["query_string"] and path in query_routes):
            # A query the Quart view reads (``/replica?max_lag=N``) is its to answer.
            return _NOT_SERVED
        for name, _ in scope["headers"]:
            if name == b"content-length" or name == b"transfer-encoding":
                return _NOT_SERVED
        started = time.perf_counter()
        response = make()
        await send_response(send, response)
        sink = app.metrics_sink
        if sink is not None:
            sink.http_request(path, "GET", response.status_code, time.perf_counter() - started)
        return None

    return fast_path


def _replay(consumed: list[Any], receive: Any) -> Any:
    """``receive`` that first returns the ``consumed`` messages, in order."""
    pending = list(consumed)

    async def replaying_receive() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying_receive


def _hold_disconnect_once_complete(receive: Any) -> Any:
    complete = False

    async def receive_until_complete() -> Any:
        nonlocal complete
        message = await receive()
        if message["type"] == "http.request":
            if not message.get("more_body", False):
                complete = True
        elif message["type"] == "http.disconnect" and complete:
            # A FIN after a whole request (a half-close): the answer is still owed. quart-trio
            # cancels this wait once the handler has responded.
            await trio.sleep_forever()
        return message

    return receive_until_complete


def _shield_last_send(send: Any) -> Any:
    async def shielded_send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with trio.CancelScope(shield=True):
                await send(message)
        else:
            await send(message)

    return shielded_send


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The JSON error response every 4xx/5xx of both apps uses.

    Body ``{"error": code, "message": message}`` (compact JSON), content type
    ``application/json``, plus ``headers`` (e.g. ``Retry-After`` in seconds on a 503).
    """
    body = json.dumps({"error": code, "message": message}, separators=(",", ":"))
    return Response(body, status=status, content_type=JSON_CONTENT_TYPE, headers=headers)


_TOO_LARGE_CODES: dict[errors.SizeLimit, str] = {
    "key": "key_too_large",
    "value": "value_too_large",
    "body": "body_too_large",
    "command": "too_large",
    "txn_ops": "too_many_txn_ops",
    "txn": "txn_too_large",
    "txn_read": "txn_read_too_large",
}
"""The 413 error code of each size limit (README's error table)."""


def engine_error_response(exc: errors.DengineError) -> Response:
    """The JSON error response for an engine error (the mapping :func:`install_error_handlers`
    documents; ``TooLarge`` by its ``limit``)."""
    retry = {"Retry-After": RETRY_AFTER_S}
    if isinstance(exc, errors.NotLeader):
        return json_error(503, "not_leader", f"no leader reachable: {exc}", retry)
    if isinstance(exc, errors.NoLeader):
        return json_error(503, "no_leader", "no leader reachable, retry shortly", retry)
    if isinstance(exc, errors.Stopped):
        return json_error(503, "stopped", "this node is shutting down", retry)
    if isinstance(exc, errors.NodeRemoved):
        return json_error(503, "removed", str(exc))
    if isinstance(exc, errors.Overloaded):
        return json_error(503, "overloaded", "too many pending requests, retry shortly", retry)
    if isinstance(exc, errors.Timeout):
        return json_error(504, "timeout", "not committed in time; a write may still apply")
    if isinstance(exc, errors.TooLarge):
        return json_error(413, _TOO_LARGE_CODES[exc.limit], str(exc))
    if isinstance(exc, errors.CompareFailed):
        current = None if exc.value is None else exc.value.decode("utf-8", "replace")
        body = json.dumps(
            {
                "error": "compare_failed",
                "message": str(exc),
                "value": current,
                "index": exc.index,
            },
            separators=(",", ":"),
        )
        headers = {"X-Dengine-Index": str(exc.at_index)}
        if exc.duplicate:
            headers["Idempotent-Replayed"] = "true"
        return Response(body, status=409, content_type=JSON_CONTENT_TYPE, headers=headers)
    if isinstance(exc, errors.IdempotencyKeyReused):
        body = json.dumps(
            {"error": "idempotency_key_reused", "message": str(exc), "index": exc.index},
            separators=(",", ":"),
        )
        return Response(body, status=422, content_type=JSON_CONTENT_TYPE)
    return json_error(500, "internal", f"{type(exc).__name__}: {exc}")


def http_error_code(exc: HTTPException) -> str:
    """The error code of a werkzeug error: its name in snake_case (``method_not_allowed``)."""
    # "Method Not Allowed" -> "method_not_allowed": stable codes derived from werkzeug's names.
    name = exc.name or "error"
    return "_".join(name.lower().replace("-", " ").split())


def install_error_handlers(app: Quart) -> None:
    """Make every error of ``app`` a JSON body: API refusals, engine errors, Quart's own.

    Engine errors map to: ``NotLeader``, ``NoLeader``, ``Stopped``, ``Overloaded`` -> 503 with
    ``Retry-After: 1`` (s); ``Timeout`` -> 504 (a write may still apply); ``TooLarge`` -> 413
    ``key_too_large``, ``value_too_large``, ``body_too_large``, ``too_large`` (a command
    over the frame limit), ``too_many_txn_ops`` or ``txn_too_large`` by its ``limit``;
    ``CompareFailed`` ->
    409 ``compare_failed`` with the key's current ``value`` and ``index`` in the body and the
    deciding entry's index in ``X-Dengine-Index``; ``IdempotencyKeyReused`` -> 422
    ``idempotency_key_reused`` with the first request's ``index`` in the body;
    another ``DengineError`` -> 500. Quart/werkzeug errors keep their status (a 405 with
    ``Allow``); any other exception is logged with its traceback and answered 500 ``internal``.
    Also closes the connection after a request framed both by Content-Length and
    Transfer-Encoding (RFC 9112 section 6.1), and reads any request body a handler left unread
    before the response goes out:
    Hypercorn (0.18, h11) can stall a keep-alive connection whose response was sent before
    the request body arrived, e.g. a 405 to a PUT with a body.
    """

    async def drain_request_body(response: Response) -> Response:
        if "Transfer-Encoding" in request.headers and "Content-Length" in request.headers:
            # RFC 9112 section 6.1: a proxy in front may have framed it by Content-Length (a
            # smuggling attempt), so the server MUST close the connection after responding.
            response.headers["Connection"] = "close"
        # POST /kv reads its whole body before any 2xx, so the hot path skips this.
        if response.status_code < 400 and request.method == "POST":
            return response
        if response.status_code == 408:
            # The body already took the body timeout: waiting for it again would double it.
            response.headers["Connection"] = "close"
            return response
        if request.content_length or "Transfer-Encoding" in request.headers:
            try:
                await request.get_data(cache=False)
            except HTTPException:  # too large, or too slow: do not reuse the connection
                response.headers["Connection"] = "close"
        return response

    async def on_api_error(exc: ApiError) -> Response:
        return json_error(exc.status, exc.code, exc.message)

    async def on_engine_error(exc: errors.DengineError) -> Response:
        return engine_error_response(exc)

    async def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = json_error(status, http_error_code(exc), exc.description or exc.name)
        if status == 405 and exc.response is None:
            # 405 must say what is allowed; werkzeug keeps it in valid_methods.
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    async def on_unexpected(exc: Exception) -> Response:
        # A bug of ours, never a client's fault: keep the traceback in the log, JSON outside.
        log.exception("unhandled error in %s", app.name)
        return json_error(500, "internal", "internal error")

    app.after_request(drain_request_body)
    app.register_error_handler(ApiError, on_api_error)
    app.register_error_handler(errors.DengineError, on_engine_error)
    app.register_error_handler(HTTPException, on_http_error)
    app.register_error_handler(Exception, on_unexpected)


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound TCP socket (IPv6 if ``host`` has a colon, ``SO_REUSEADDR``, ``TCP_NODELAY``)
    for Hypercorn, so a taken port fails here at once. Raises OSError (e.g. ``EADDRINUSE``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _install_json_protocol_errors() -> None:
    """Make Hypercorn's own answer to a request it cannot parse a JSON error, like ours.

    A request h11 refuses (not HTTP, raw non-ASCII in the target, a malformed header, two
    Content-Lengths) never reaches an app: Hypercorn (0.18) answers it from
    ``H11Protocol._send_error_response`` with an empty body. This replaces that method, once
    per process, with one that sends ``{"error": ..., "message": "malformed HTTP request"}``
    and closes, as Hypercorn did. If a Hypercorn version lacks the method, nothing is patched
    (and ``tests/e2e/test_http_connections.py`` says so).
    """
    protocol = h11_protocol.H11Protocol
    original = getattr(protocol, "_send_error_response", None)
    if original is None or getattr(original, "_dengine_json", False):
        return

    async def send_json_error_response(self: Any, status_code: int) -> None:
        code = "bad_request" if status_code == 400 else _status_code_name(status_code)
        message = (
            "request line and headers too large ([http] max_header_bytes)"
            if status_code == 431
            else "malformed HTTP request"
        )
        body = json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()
        headers = [
            (b"content-type", JSON_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    send_json_error_response._dengine_json = True  # type: ignore[attr-defined]
    protocol._send_error_response = send_json_error_response  # type: ignore[method-assign]


def _install_coalesced_writes() -> None:
    """Make Hypercorn write a response's head together with its first body bytes.

    Hypercorn (0.18, h11) writes the status line and headers, the body and the end of the
    message each with a ``send_all`` of its own, each under its connection's send lock and a
    shielded cancel scope: for a small JSON answer, two system calls where one does. This
    holds the head of a final response (``h11.Response``; never a ``100 Continue``) until
    the next event of that connection and writes both at once. Every path that answers sends
    a body or an end of message right after its head (ASGI apps, Hypercorn's own error
    responses, :func:`_install_json_protocol_errors`'), so the head is never held for
    longer than the app takes to send its first body message. Patched once per process; if
    Hypercorn lacks the method, nothing is.
    """
    protocol = h11_protocol.H11Protocol
    original = getattr(protocol, "_send_h11_event", None)
    if original is None or getattr(original, "_dengine_coalesce", False):
        return
    response_type = h11.Response
    raw_data = RawData

    async def send_h11_event(self: Any, event: Any) -> None:
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        held = self.__dict__.pop("_dengine_held_head", None)
        if held is not None:
            data = held + data
        if type(event) is response_type:
            self._dengine_held_head = data
            return
        await self.send(raw_data(data=data))

    send_h11_event._dengine_coalesce = True  # type: ignore[attr-defined]
    protocol._send_h11_event = send_h11_event  # type: ignore[method-assign]


def _install_release_on_eof() -> None:
    """Make Hypercorn close a connection as soon as its client has closed it.

    Hypercorn (0.18, trio) ends its read loop at the client's EOF, but the connection's task
    group also holds the keep-alive timer, which it then waits out (``keep_alive_timeout``,
    75 s) before closing the socket. Meanwhile the socket sits in CLOSE-WAIT holding a file
    descriptor: a thousand connections opened and closed without a request (connect timeouts,
    TCP-only probes, a port scan) left a node under ``ulimit -n 1024`` unable to accept on
    either port. Once the client is gone nothing more can arrive, so the timer is ended then;
    a request still being answered is waited for (h11 then closes the connection itself, the
    client having closed its side). Patched once per process, like the error responses; if
    Hypercorn lacks the method, nothing is (``tests/e2e/test_newcomer_abandoned_connections.py``
    then fails).

    With no ``read_timeout`` (the node sets none) the loop itself is Hypercorn's without the
    cancel scope it enters around every read for that timeout (issue 18: a scope per request).
    """
    original = getattr(TCPServer, "_read_data", None)
    if original is None or getattr(original, "_dengine_release", False):
        return
    raw_data = RawData
    closed = Closed
    max_recv = getattr(tcp_server, "MAX_RECV", 1 << 16)
    stream_ended = (trio.ClosedResourceError, trio.BrokenResourceError)

    async def read_data(self: Any) -> None:
        # Hypercorn's read loop, less the ``fail_after(read_timeout or inf)`` it enters around
        # every read: a cancel scope per request for a timeout the node never sets (the
        # keep-alive timer bounds a slow head, the body timeout a slow body).
        stream = self.stream
        protocol = self.protocol
        while True:
            try:
                data = await stream.receive_some(max_recv)
            except stream_ended:
                break
            await protocol.handle(raw_data(bytes(data)))
            if not data:
                break
        await protocol.handle(closed())

    async def read_data_then_release(self: Any) -> None:
        if self.config.read_timeout is None:
            await read_data(self)
        else:
            await original(self)
        idle = self.idle_task
        if isinstance(idle, idle_timer.IdleTimer):
            idle.finish()
        else:
            await idle.stop()

    read_data_then_release._dengine_release = True  # type: ignore[attr-defined]
    TCPServer._read_data = read_data_then_release  # type: ignore[method-assign]


def _install_connection_limit() -> None:
    """Make Hypercorn serve at most ``config.dengine_max_connections`` connections at once
    per listener (per :class:`HypercornConfig`), closing any accepted beyond that at once.

    Hypercorn (0.18) has no such bound: each accepted connection is a task and a file
    descriptor for as long as the client keeps it (the keep-alive timer restarts with each
    request), so enough idle clients would exhaust ``ulimit -n`` and stop both ports.
    Patched once per process; a config without the attribute is not limited.
    """
    original = getattr(TCPServer, "run", None)
    if original is None or getattr(original, "_dengine_limit", False):
        return

    async def run_within_limit(self: Any) -> None:
        limit = getattr(self.config, "dengine_max_connections", None)
        connections = getattr(self.config, "dengine_connections", None)
        if limit is None or connections is None:
            await original(self)
            return
        if not connections.try_open(limit):
            now = trio.current_time()
            if now - self.config.dengine_refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
                self.config.dengine_refusal_logged_at = now
                log.warning(
                    "HTTP connection refused: %d connections open, the most "
                    "[http] max_connections allows (logged at most once a minute)",
                    limit,
                )
            await trio.aclose_forcefully(self.stream)
            return
        try:
            await original(self)
        finally:
            connections.close()

    run_within_limit._dengine_limit = True  # type: ignore[attr-defined]
    TCPServer.run = run_within_limit  # type: ignore[method-assign]


SEND_PIECE_BYTES = 1 << 16
"""A stalled-write check's unit (bytes): each piece of a write must leave within the send
timeout, so a write makes progress at least this fast or its connection is aborted."""


def _install_send_timeout() -> None:
    """Make Hypercorn abort a connection whose writes make no progress for
    ``config.dengine_send_timeout_s`` seconds (``[http] idle_timeout_ms``).

    Hypercorn (0.18, trio) writes each response piece in ``TCPServer.protocol_send`` under a
    shielded cancel scope with no timeout, so a client that keeps its connection open but stops
    reading held the write, the connection's task and whatever the response pinned (a snapshot
    download's open file and place, a large value's bytes) for as long as it liked. This writes
    the same bytes in :data:`SEND_PIECE_BYTES` pieces, each still shielded (a cancelled write
    would leave h11 out of step with the socket) but each given the send timeout; when one times
    out the socket is closed with SO_LINGER 0 (a reset, dropping what the kernel still holds
    for that client) and Hypercorn is told the connection closed, which ends the response
    (the app sees ``http.disconnect``). Logged at WARNING at most once a minute per process.

    Patched once per process, only if ``protocol_send`` is still the shape this replaces (an
    ``(self, event)`` coroutine that writes with ``send_all`` under ``send_lock``); otherwise
    nothing is patched and ``tests/integration/test_http_send_timeout.py`` says so.
    """
    original = getattr(TCPServer, "protocol_send", None)
    if original is None or getattr(original, "_dengine_send_timeout", False):
        return
    if not _send_shape_known(original):
        log.warning("Hypercorn's TCPServer.protocol_send changed shape: no HTTP send timeout")
        return
    raw_data = RawData
    closed = Closed

    async def protocol_send_bounded(self: Any, event: Any) -> None:
        timeout = getattr(self.config, "dengine_send_timeout_s", None)
        if timeout is None or not isinstance(event, raw_data):
            await original(self, event)
            return
        data = memoryview(event.data)
        if not data:
            # The end of a response with a Content-Length (h11 has nothing to write for it):
            # a write of nothing would cost a lock, a scope and a pass of trio's loop.
            return
        stalled = False
        lock = self.send_lock
        # Taken without a pass of trio's loop when free (``async with`` yields even then;
        # the write below yields anyway), but still a cancellation point, as ``async with``
        # was: an app whose only checkpoints are its sends (a streamed body) must see the
        # graceful stop's cancellation (``tests/integration/test_newcomer_idle_timer.py``).
        await trio.lowlevel.checkpoint_if_cancelled()
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            for start in range(0, len(data), SEND_PIECE_BYTES):
                # Shielded from outer cancellation, not from its own deadline.
                deadline = trio.current_time() + timeout
                with trio.CancelScope(shield=True, deadline=deadline) as piece:
                    await self.stream.send_all(data[start : start + SEND_PIECE_BYTES])
                if piece.cancelled_caught:
                    stalled = True
                    _abort(self.stream)
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(closed())
            return
        finally:
            lock.release()
        if stalled:
            now = trio.current_time()
            if now - self.config.dengine_stall_logged_at >= REFUSAL_LOG_INTERVAL_S:
                self.config.dengine_stall_logged_at = now
                log.warning(
                    "HTTP connection aborted: its client read nothing for %.0f s "
                    "([http] idle_timeout_ms; logged at most once a minute)",
                    timeout,
                )
            await self.protocol.handle(closed())

    protocol_send_bounded._dengine_send_timeout = True  # type: ignore[attr-defined]
    protocol_send_bounded._dengine_original = original  # type: ignore[attr-defined]
    TCPServer.protocol_send = protocol_send_bounded  # type: ignore[method-assign]


def _send_shape_known(method: Any) -> bool:
    """Whether ``method`` looks like Hypercorn 0.18's ``TCPServer.protocol_send``."""
    code = getattr(method, "__code__", None)
    if code is None or code.co_argcount != 2:
        return False
    return {"send_lock", "send_all", "stream", "RawData"} <= set(code.co_names)


def _abort(stream: Any) -> None:
    """Close ``stream``'s socket at once with a reset (SO_LINGER 0), unsent bytes dropped."""
    sock = getattr(stream, "socket", None) or getattr(
        getattr(stream, "transport_stream", None), "socket", None
    )
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


REFUSAL_LOG_INTERVAL_S = 60.0


class ConnectionCount:
    """The connections a port has open (the bound of :func:`_install_connection_limit`), in
    one process. :class:`dengine_trio.api.workers.SharedConnectionCount` is the same count
    over a node's HTTP worker processes."""

    def __init__(self) -> None:
        self.open = 0

    def try_open(self, limit: int) -> bool:
        """Count one more connection if fewer than ``limit`` are open; whether it was."""
        if self.open >= limit:
            return False
        self.open += 1
        return True

    def close(self) -> None:
        """Count one connection fewer (one :meth:`try_open` counted has closed)."""
        self.open -= 1


class _NodeHypercornConfig(HypercornConfig):
    """Hypercorn settings whose TLS context is built by :func:`dengine_trio.config.
    http_ssl_context` (Hypercorn's own replaces the context's default options with
    ``OP_NO_COMPRESSION`` alone, offers HTTP/2, and cannot ask for an optional client
    certificate), plus the connection bound of :func:`_install_connection_limit`."""

    node_ssl_context: ssl.SSLContext | None = None
    dengine_max_connections: int | None = None
    dengine_connections: ConnectionCount | None = None
    dengine_refusal_logged_at: float = float("-inf")
    dengine_send_timeout_s: float | None = None
    dengine_stall_logged_at: float = float("-inf")

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.node_ssl_context

    @property
    def ssl_enabled(self) -> bool:
        return self.node_ssl_context is not None


def _status_code_name(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "bad_request"
    return "_".join(phrase.lower().replace("-", " ").split())


def kernel_backlog_cap() -> int | None:
    """Linux's ``net.core.somaxconn``, the most any listen backlog gets; None if unknown."""
    try:
        with open("/proc/sys/net/core/somaxconn", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def hypercorn_config(
    sock: socket.socket,
    *,
    backlog: int = DEFAULT_LISTEN_BACKLOG,
    access_log: bool = False,
    graceful_timeout_s: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    tls_handshake_timeout_s: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS / 1000,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_MS / 1000,
    connections: ConnectionCount | None = None,
) -> HypercornConfig:
    """Hypercorn settings for one app listening on ``sock`` (Hypercorn takes the socket over).

    With ``ssl_context`` (``dengine_trio.config.http_ssl_context``) the port speaks HTTPS
    only; a client has ``tls_handshake_timeout_s`` seconds to finish its handshake.
    ``max_header_bytes``: request line and headers (h11's bound; more is a 400 and a close).
    ``max_connections``: connections served at once; one more is closed as it is accepted
    (counted in ``connections``, a new :class:`ConnectionCount` if None).
    ``idle_timeout_s``: Hypercorn's keep-alive timer, which runs from the connect and from
    each response until a request's head is complete: it closes an idle connection and one
    whose head trickles in (a slowloris), whichever way the time passes; also the send timeout
    (:func:`_install_send_timeout`): a write that makes no progress for that long resets its
    connection.

    ``backlog`` is the listen backlog (connections, ``[http] listen_backlog``): Hypercorn's
    default of 100 made Linux reset part of a burst of a few hundred simultaneous connects.
    Keep-alive stays on (clients and load balancers reuse connections); the access log is off
    unless asked for; the graceful timeout is short so a stopping node does not linger on
    idle keep-alive connections.
    """
    _install_json_protocol_errors()
    _install_coalesced_writes()
    _install_release_on_eof()
    idle_timer.install()
    _install_connection_limit()
    _install_send_timeout()
    config = _NodeHypercornConfig()
    config.node_ssl_context = ssl_context
    config.ssl_handshake_timeout = tls_handshake_timeout_s
    config.h11_max_incomplete_size = max_header_bytes
    config.dengine_max_connections = max_connections
    config.dengine_connections = ConnectionCount() if connections is None else connections
    config.backlog = backlog
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = logging.getLogger("hypercorn.access") if access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = idle_timeout_s
    config.dengine_send_timeout_s = idle_timeout_s
    config.include_server_header = False
    return config
