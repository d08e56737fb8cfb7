"""``GET /watch``: the changes applied on this node, as Server-Sent Events.

``GET /watch?key=K`` or ``GET /watch?prefix=P`` (an empty prefix only with ``allow_all=true``),
optionally ``from_index=N`` or the ``Last-Event-ID`` header (= ``from_index`` last id + 1; the
header wins, as a browser's ``EventSource`` resends the original URL with it). Answer: ``200``
``text/event-stream`` (header ``X-Dengine-Watch-From``: the first index the stream covers),
an SSE comment, then one event per change, in index order, each once, with no gap::

    event: put
    id: 42
    data: {"key":"user/1","value":"alice","index":42}

``event`` is ``put``, ``delete`` or ``expire`` (``value`` null for the last two). The changes
of one transaction share its index; ``id`` comes with the last of them, so a client that
reconnects with ``Last-Event-ID`` resumes after a complete index. An idle stream gets a
comment line every ``[watch] heartbeat_ms``. The stream ends with a final ``event: error``
whose data says why (``{"error": "slow_consumer" | "compacted" | "stopped", "message",
"from_index"}``: ``from_index`` is where to resume), never silently.

Refusals are JSON as everywhere (:func:`dengine_trio.api.json_error`): 400 for a bad or
missing parameter (``invalid_watch``, ``empty_key``, ``empty_prefix``, ``invalid_key``,
``invalid_from_index``, ``invalid_last_event_id``, ``invalid_allow_all``,
``unknown_parameter``, ``invalid_request`` for a body), 413 ``key_too_large``, 410
``compacted`` with ``oldest_index`` when the history no longer holds ``from_index``, 503
``too_many_watchers`` (``[watch] max_watchers``) or ``stopped``. Under ``[auth]`` a watch
needs a ``read`` token.

Served by a raw ASGI route (:attr:`dengine_trio.api.App.stream_routes`) in front of Quart: it
listens for the client's disconnect itself (the app holds a disconnect that follows a complete
request, which a stream must not) and writes each batch of changes as one body message. A
request it does not serve (another method, a body, a refused token) goes to the Quart route,
which answers the same errors. In HTTP-workers mode the same route runs in the node's process;
the link carries the stream with flow control (``api/workers.py``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import trio
from quart import Response, request

from dengine_trio.api import (
    JSON_CONTENT_TYPE,
    RETRY_AFTER_S,
    ApiError,
    App,
    engine_error_response,
    json_error,
    send_response,
)
from dengine_trio.api.auth import TokenTable, authorized
from dengine_trio.engine import (
    SlowConsumer,
    TooManyWatchers,
    WatchCompacted,
    Watcher,
    WatchEvent,
)
from dengine_trio.errors import DengineError, Stopped, TooLarge

if TYPE_CHECKING:
    from dengine_trio.engine import EmbeddedEngine

__all__ = ["WATCH_PATH", "install_watch"]

WATCH_PATH = "/watch"
SSE_CONTENT_TYPE = "text/event-stream"
BATCH_BYTES = 64 * 1024
"""Changes already queued are written together, up to about this many bytes per write."""
MAX_INDEX = 2**63 - 1
_PARAMS = frozenset({"key", "prefix", "from_index", "allow_all"})
_COMPACT = (",", ":")
_DECLINED: list[Any] = []


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _bad(code: str, message: str) -> _Refused:
    return _Refused(json_error(400, code, message))


def _parse_index(text: str, code: str, what: str, minimum: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise _bad(code, f"{what} must be a decimal integer >= {minimum}, got {text[:40]!r}")
    value = int(text)
    if value < minimum or value > MAX_INDEX:
        raise _bad(code, f"{what} must be between {minimum} and {MAX_INDEX}, got {value}")
    return value


def parse_watch(
    query: bytes, last_event_id: str | None, max_key_bytes: int
) -> tuple[bytes | None, bytes | None, int | None]:
    """(key, prefix, from_index) of a watch request, or ``_Refused`` with its 4xx."""
    try:
        pairs = parse_qsl(
            query.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(query),
            encoding="utf-8",
            errors="strict",
        )
    except UnicodeDecodeError:
        raise _bad("invalid_key", "the key or prefix is not percent-encoded UTF-8") from None
    except ValueError:
        raise _bad("invalid_request", "the query string is malformed") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMS:
            raise _bad(
                "unknown_parameter",
                f"unknown parameter {name[:40]!r}; known: {', '.join(sorted(_PARAMS))}",
            )
        if name in params:
            raise _bad("invalid_request", f"parameter {name!r} given twice")
        params[name] = value
    key_text, prefix_text = params.get("key"), params.get("prefix")
    if (key_text is None) == (prefix_text is None):
        raise _bad("invalid_watch", "give exactly one of key=K and prefix=P")
    allow_text = params.get("allow_all", "false")
    if allow_text not in ("true", "false"):
        raise _bad("invalid_allow_all", "allow_all must be true or false")
    key = prefix = None
    try:
        if key_text is not None:
            if not key_text:
                raise _bad("empty_key", "the key must not be empty")
            key = key_text.encode()
        else:
            assert prefix_text is not None
            if not prefix_text and allow_text != "true":
                raise _bad(
                    "empty_prefix",
                    "an empty prefix watches every key: add allow_all=true to mean it",
                )
            prefix = prefix_text.encode()
    except UnicodeEncodeError:
        raise _bad("invalid_key", "the key or prefix is not valid Unicode") from None
    watched = key if key is not None else prefix
    assert watched is not None
    if len(watched) > max_key_bytes:
        raise _Refused(engine_error_response(TooLarge("key", len(watched), max_key_bytes)))
    from_index: int | None = None
    if "from_index" in params:
        from_index = _parse_index(params["from_index"], "invalid_from_index", "from_index", 1)
    if last_event_id:
        last = _parse_index(last_event_id.strip(), "invalid_last_event_id", "Last-Event-ID", 0)
        from_index = min(last + 1, MAX_INDEX)
    return key, prefix, from_index


def subscribe_response(error: DengineError) -> Response:
    """The JSON refusal of a watch ``WatchHub.subscribe`` refused with ``error``."""
    if isinstance(error, WatchCompacted):
        body = json.dumps(
            {"error": "compacted", "message": str(error), "oldest_index": error.oldest_index},
            separators=_COMPACT,
        )
        return Response(body, status=410, content_type=JSON_CONTENT_TYPE)
    if isinstance(error, TooManyWatchers):
        return json_error(503, "too_many_watchers", str(error), {"Retry-After": RETRY_AFTER_S})
    return engine_error_response(error)


def format_event(event: WatchEvent, with_id: bool) -> bytes:
    """One SSE event (``id`` only when ``with_id``: the last change of its index)."""
    value = event.value
    data = json.dumps(
        {
            "key": event.key.decode("utf-8", "replace"),
            "value": None if value is None else value.decode("utf-8", "replace"),
            "index": event.index,
        },
        separators=_COMPACT,
    )
    head = f"event: {event.kind}\nid: {event.index}\n" if with_id else f"event: {event.kind}\n"
    return f"{head}data: {data}\n\n".encode()


def format_end(end: BaseException, resume: int) -> bytes:
    """The final ``error`` event of a stream that ``end`` ended; ``resume``: the
    ``from_index`` that misses nothing this stream did not deliver."""
    if isinstance(end, SlowConsumer):
        code = "slow_consumer"
    elif isinstance(end, WatchCompacted):
        code = "compacted"
    elif isinstance(end, Stopped):
        code = "stopped"
    else:
        code = "internal"
    doc: dict[str, Any] = {"error": code, "message": str(end), "from_index": resume}
    if isinstance(end, WatchCompacted):
        doc["oldest_index"] = end.oldest_index
    return f"event: error\ndata: {json.dumps(doc, separators=_COMPACT)}\n\n".encode()


def install_watch(app: App, engine: EmbeddedEngine, auth: TokenTable | None) -> None:
    """Serve ``GET /watch`` on ``app`` (the KV app of ``engine``; see the module docstring)."""
    hub = engine.watch_hub
    max_key_bytes = engine.config.limits.max_key_bytes
    heartbeat_s = engine.config.watch.heartbeat_ms / 1000

    def last_event_id(headers: Any) -> str | None:
        for name, value in headers:
            if name == b"last-event-id":
                return bytes(value).decode("latin-1")
        return None

    async def serve(scope: Any, receive: Any, send: Any) -> list[Any] | None:
        if scope["method"] != "GET":
            return _DECLINED
        for name, value in scope["headers"]:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return _DECLINED
        if auth is not None and not authorized(auth, scope["headers"], "read"):
            return _DECLINED
        started = time.perf_counter()
        try:
            if hub is None:
                raise _Refused(engine_error_response(Stopped("this node serves no watches")))
            key, prefix, from_index = parse_watch(
                scope["query_string"], last_event_id(scope["headers"]), max_key_bytes
            )
            try:
                watcher = hub.subscribe(key=key, prefix=prefix, from_index=from_index)
            except DengineError as exc:
                raise _Refused(subscribe_response(exc)) from None
        except _Refused as refused:
            await send_response(send, refused.response)
            count(refused.response.status_code, started)
            return None
        try:
            await stream(watcher, receive, send, started)
        finally:
            watcher.close()
        return None

    def count(status: int, started: float) -> None:
        sink = app.metrics_sink
        if sink is not None:
            sink.http_request(WATCH_PATH, "GET", status, time.perf_counter() - started)

    async def stream(watcher: Watcher, receive: Any, send: Any, started: float) -> None:
        headers = [
            (b"content-type", SSE_CONTENT_TYPE.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-dengine-watch-from", str(watcher.from_index).encode()),
            # Proxies that buffer answers (nginx) must pass each event on at once.
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        opening = f": watching from index {watcher.from_index}\n\n".encode()
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        count(200, started)
        resume = watcher.from_index
        async with trio.open_nursery() as nursery:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_disconnect)
            while True:
                with trio.move_on_after(heartbeat_s):
                    await watcher.wait_queued()
                chunks: list[bytes] = []
                size = 0
                end: DengineError | None = None
                while size < BATCH_BYTES:
                    try:
                        event = watcher.next_nowait()
                    except trio.WouldBlock:
                        break
                    except DengineError as exc:
                        end = exc
                        break
                    complete = watcher.next_index > event.index
                    chunk = format_event(event, complete)
                    if complete:
                        resume = event.index + 1
                    chunks.append(chunk)
                    size += len(chunk)
                if end is not None:
                    chunks.append(format_end(end, resume))
                    body = b"".join(chunks)
                    # Shielded as App's last send is: Hypercorn queues http.disconnect from
                    # inside a closing connection's last send, and until_disconnect's cancel
                    # would stop it before the socket is closed (pgjones/hypercorn#330).
                    with trio.CancelScope(shield=True):
                        await send({"type": "http.response.body", "body": body, "more_body": False})
                    nursery.cancel_scope.cancel()
                    return
                body = b"".join(chunks) if chunks else b": heartbeat\n\n"
                await send({"type": "http.response.body", "body": body, "more_body": True})

    app.stream_routes[WATCH_PATH] = serve

    @app.get(WATCH_PATH)
    async def watch_view() -> Response:
        # Only what the stream route declined gets here (a body, HEAD); a refused token was
        # answered by the auth hook before this.
        if request.content_length or "Transfer-Encoding" in request.headers:
            raise ApiError(400, "invalid_request", "GET /watch takes no body")
        try:
            parse_watch(request.query_string, request.headers.get("Last-Event-ID"), max_key_bytes)
        except _Refused as refused:
            return refused.response
        return Response(b"", status=200, content_type=SSE_CONTENT_TYPE)
