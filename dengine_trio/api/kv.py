"""The business app: a JSON key-value API over the embedded client.

``POST /kv`` ``{"key": "...", "value": "..."}`` -> ``200 {"index": N}`` once committed (a
follower's engine forwards it to the leader); ``GET /kv/<key>`` -> ``200 {"value": "..."}`` or
``404``; ``DELETE /kv/<key>`` -> ``200 {"index": N}``. Keys and values are JSON strings, stored
as their UTF-8 bytes. Handlers only parse, call the client and map errors, so the per-request
cost stays close to Quart's own. Issue 17's additions (TTL, compare-and-swap, ``?meta``,
``?min_index``, ``Idempotency-Key``) are on the same routes; listing (``GET /kv``) is in
:mod:`dengine_trio.api.listing`, ``POST /txn`` in :mod:`dengine_trio.api.txn`, their shared
parsing in :mod:`dengine_trio.api.kvparse`.
"""

from __future__ import annotations

import json
import logging
import time
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import trio
from quart import Response, request
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.routing import PathConverter

from dengine_trio.api import (
    JSON_CONTENT_TYPE,
    ApiError,
    App,
    FastPath,
    engine_error_response,
    http_error_code,
    install_error_handlers,
    json_error,
    send_response,
)
from dengine_trio.api.auth import TokenTable, authorized, install_auth, kv_role_needed
from dengine_trio.api.kvparse import (
    check_members,
    idempotency_key,
    index_member,
    index_param,
    key_bytes,
    key_member,
    optional_string_member,
    refuse_repeated,
    refuse_unknown,
    ttl_member,
    value_member,
    write_response,
)
from dengine_trio.api.listing import install_listing_route
from dengine_trio.api.txn import install_txn_route
from dengine_trio.api.watch import install_watch
from dengine_trio.errors import DengineError, Timeout, TooLarge
from dengine_trio.kv_commands import UNSET
from dengine_trio.policy import ReadPolicy

if TYPE_CHECKING:
    from dengine_trio.engine import EmbeddedEngine

__all__ = ["CONSISTENCY_PARAM", "create_kv_app"]

CONSISTENCY_PARAM = "consistency"
KV_PREFIX = "/kv/"
_POLICIES: dict[str, ReadPolicy] = {
    "linearizable": ReadPolicy.LINEARIZABLE,
    "lease": ReadPolicy.LEASE,
    "eventual": ReadPolicy.EVENTUAL,
}
_COMPACT = (",", ":")
_ABSENT = json.dumps(
    {"value": None, "error": "not_found", "message": "no such key"}, separators=_COMPACT
).encode()


_PUT_MEMBERS = frozenset({"key", "value", "ttl_ms", "prev_value", "prev_index"})
_GET_PARAMS = ("consistency", "meta", "min_index")
_DELETE_PARAMS = ("prev_index",)
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def policy_param(args: Any) -> ReadPolicy | None:
    """The ``consistency`` query parameter (absent: None, the config's default): 400
    ``invalid_consistency`` for an unknown one."""
    requested = args.get(CONSISTENCY_PARAM)
    if requested is None:
        return None
    policy = _POLICIES.get(requested)
    if policy is None:
        raise ApiError(
            400,
            "invalid_consistency",
            f"{CONSISTENCY_PARAM} must be one of {', '.join(_POLICIES)}",
        )
    return policy


def bool_param(args: Any, name: str) -> bool:
    """A boolean query parameter: ``true``/``false`` (or ``1``/``0``), absent false; 400
    ``invalid_request`` otherwise."""
    text = args.get(name)
    if text is None:
        return False
    value = _BOOLS.get(text)
    if value is None:
        raise ApiError(400, "invalid_request", f"{name} must be true or false")
    return value


class KeyConverter(PathConverter):
    """Matches any key, even empty, with leading, doubled or trailing slashes (URL-encoded).

    Any character at all, line breaks included: werkzeug compiles rules without ``re.DOTALL``,
    so ``.*`` would stop at a ``\n`` and a key the write path accepted would be unreachable.
    """

    regex = r"[\s\S]*"
    # werkzeug infers part_isolating from the regex unless it is set explicitly.
    part_isolating = False


def create_kv_app(engine: EmbeddedEngine) -> App:
    """The KV app of ``engine``; limits and the default read policy come from its config.

    Routes: ``POST /kv`` (JSON ``{"key": str, "value": str}`` and optionally ``"ttl_ms"``
    (int >= 1), ``"prev_value"`` (str or null), ``"prev_index"`` (int >= 0), at most
    ``max_body_bytes`` bytes) -> ``200 {"index": int}`` with ``X-Dengine-Index`` once committed
    and applied, or ``409 compare_failed`` with the key's ``value`` and ``index``;
    ``GET /kv/<key>?consistency=linearizable|lease|eventual[&meta=true][&min_index=N]`` ->
    ``200 {"value": str}`` (with ``meta``: plus ``create_index``, ``mod_index``, ``ttl_ms``) or
    ``404`` ``not_found``, ``504`` when ``min_index`` is not applied in time;
    ``DELETE /kv/<key>[?prev_index=N]`` -> ``200 {"index": int}`` or ``409``; ``GET /kv``
    (listing) and ``POST /txn``. Writes take an ``Idempotency-Key`` header (a replay answers
    the first outcome with ``Idempotent-Replayed: true``). A bad request is a 4xx JSON error
    (``invalid_json``, ``invalid_key``, ``invalid_value``, ``invalid_consistency``,
    ``invalid_ttl``, ``invalid_index``, ``too_large`` ...: the table in README.md);
    engine errors map as in :func:`install_error_handlers`. Sizes are not checked here but
    where each limit lives (key and value: ``Client``; command: the runtime; body: Quart's
    ``MAX_CONTENT_LENGTH``), all raising ``TooLarge``: so a malformed request is 400 whatever
    its sizes, and a well-formed one over a limit is 413. With ``[auth] enable = true``
    reads need a ``read`` token and writes a ``write`` one (:mod:`dengine_trio.api.auth`).
    """
    client = engine.client()
    limits = engine.config.limits

    app = App(
        __name__,
        body_timeout_s=engine.config.http.body_timeout_ms / 1000,
        max_header_bytes=engine.config.http.max_header_bytes,
    )
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    # Before any other hook: a refused request costs no more than the check.
    auth_table = install_auth(app, engine.config.auth, kv_role_needed)
    app.url_map.converters["key"] = KeyConverter
    # Doubled slashes are part of a key, not something to redirect away.
    app.url_map.merge_slashes = False
    install_error_handlers(app)

    async def on_body_too_large(_: RequestEntityTooLarge) -> Response:
        # Quart checks the body against MAX_CONTENT_LENGTH (the one check); it is answered
        # like every other size limit.
        return engine_error_response(
            TooLarge("body", request.content_length, limits.max_body_bytes)
        )

    app.register_error_handler(RequestEntityTooLarge, on_body_too_large)

    app.fast_path = _fast_path(app, engine, auth_table)
    # GET /watch (K3): Server-Sent Events of the changes applied on this node.
    install_watch(app, engine, auth_table)

    # Hoisted: these run for every request.
    loads = json.loads
    dumps = json.dumps
    response_class = app.response_class

    def parse_body(
        body: str | bytes, shape: str = '{"key": "...", "value": "..."}'
    ) -> dict[str, Any]:
        try:
            doc = loads(body)
        except (ValueError, RecursionError):  # bad syntax or encoding; absurd nesting
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        if type(doc) is not dict:
            raise ApiError(400, "invalid_request", f"expected {shape}")
        return doc

    @app.post("/kv")
    async def put_kv() -> Response:
        doc = parse_body(await request.get_data(cache=False))
        # A missing member is a malformed request; a member of the wrong type (null included)
        # is a bad key or value, named as such.
        encoded_key = key_member(doc)
        encoded_value = value_member(doc)
        check_members(doc, _PUT_MEMBERS, "a write")
        ttl_ms = ttl_member(doc)
        prev_value = optional_string_member(doc, "prev_value") if "prev_value" in doc else UNSET
        prev_index = index_member(doc, "prev_index") if "prev_index" in doc else None
        outcome = await client.put_outcome(
            encoded_key,
            encoded_value,
            ttl_ms=ttl_ms,
            prev_value=prev_value,
            prev_index=prev_index,
            idempotency_key=idempotency_key(request.headers),
        )
        return write_response(outcome.index, outcome.duplicate)

    def path_key(routed: str) -> bytes:
        # Hypercorn decodes the path leniently: a percent-escape that is not UTF-8 becomes
        # U+FFFD, so /kv/%FF would read (and DELETE delete) the key "\ufffd". Decode the raw
        # path strictly instead: a key is the UTF-8 its escapes spell, or no key at all.
        raw = request.scope.get("raw_path")
        if raw is None:  # not from Hypercorn (e.g. a test client): the routed key
            return key_bytes(routed)
        try:
            path = unquote_to_bytes(raw).decode()
        except UnicodeDecodeError:
            raise ApiError(
                400, "invalid_key", "the key in the path is not percent-encoded UTF-8"
            ) from None
        return key_bytes(path.removeprefix(KV_PREFIX) if path.startswith(KV_PREFIX) else routed)

    @app.get("/kv/<key:key>")
    async def get_kv(key: str) -> Response:
        encoded_key = path_key(key)
        policy: ReadPolicy | None = None
        meta = False
        min_index = 0
        if request.query_string:
            args = request.args
            refuse_repeated(args)
            refuse_unknown(args, _GET_PARAMS)
            policy = policy_param(args)
            meta = bool_param(args, "meta")
            min_index = index_param(args, "min_index") or 0
        try:
            if meta:
                item = await client.get_item(encoded_key, policy, min_index=min_index)
                value = None if item is None else item.value
            else:
                value = await client.get(encoded_key, policy, min_index=min_index)
        except Timeout:
            if not min_index:
                raise
            raise ApiError(
                504,
                "timeout",
                f"this node did not apply index {min_index} within the request timeout",
            ) from None
        if value is None:
            return response_class(_ABSENT, status=404, content_type=JSON_CONTENT_TYPE)
        # Values were JSON strings, so they decode; "replace" keeps a bug from becoming a 500.
        doc: dict[str, Any] = {"value": value.decode("utf-8", "replace")}
        if meta:
            assert item is not None
            doc["create_index"] = item.create_index
            doc["mod_index"] = item.mod_index
            doc["ttl_ms"] = item.ttl_ms
        return response_class(dumps(doc, separators=_COMPACT), content_type=JSON_CONTENT_TYPE)

    @app.delete("/kv/<key:key>")
    async def delete_kv(key: str) -> Response:
        encoded_key = path_key(key)
        prev_index = None
        if request.query_string:
            args = request.args
            refuse_repeated(args)
            refuse_unknown(args, _DELETE_PARAMS)
            prev_index = index_param(args, "prev_index")
        outcome = await client.delete_outcome(
            encoded_key, prev_index=prev_index, idempotency_key=idempotency_key(request.headers)
        )
        return write_response(outcome.index, outcome.duplicate)

    install_listing_route(app, client, policy_param)
    install_txn_route(app, client, parse_body)

    return app


PUT_ROUTE = "/kv"
KEY_ROUTE = "/kv/<key:key>"
"""Route templates, as Quart's rules name them (the ``route`` label of the HTTP metrics)."""

_QUERY_POLICIES: dict[bytes, ReadPolicy] = {
    f"{CONSISTENCY_PARAM}={name}".encode(): policy for name, policy in _POLICIES.items()
}
_JSON_TYPE = (b"content-type", JSON_CONTENT_TYPE.encode())
_ABSENT_HEADERS = [_JSON_TYPE, (b"content-length", str(len(_ABSENT)).encode())]
_DECLINED: list[Any] = []

log = logging.getLogger("dengine_trio.api")


def _fast_path(app: App, engine: EmbeddedEngine, auth: TokenTable | None) -> FastPath:
    """The hot routes without Quart: ``POST /kv``, ``GET /kv/<key>``, ``DELETE /kv/<key>``.

    Answers only the requests whose Quart answer it can give byte for byte: a well-formed
    request (a JSON object with string ``key`` and ``value`` for a POST, a key that is
    percent-encoded UTF-8, no ``consistency`` but a known one, no body on a GET or DELETE,
    no ``Transfer-Encoding``, a body already complete when the request starts and within
    ``max_body_bytes``, a sufficient token under ``[auth]``) is answered here, with the
    engine's own errors mapped by :func:`engine_error_response`. Anything else (a bad
    request, HEAD, an unusual framing) is declined before any engine call, with the body
    messages it read, and Quart serves it exactly as before: the error bodies, statuses and
    headers of the KV API have one source. Each answered request is counted in
    ``app.metrics_sink`` as Quart's hooks would.

    Why: Quart's request machinery (the request object, the context, hooks, routing, two
    tasks per request) cost more per request than the engine's work and Hypercorn's together.
    """
    client = engine.client()
    max_body = engine.config.limits.max_body_bytes
    body_timeout_s = engine.config.http.body_timeout_ms / 1000
    loads = json.loads

    async def answer_error(send: Any, exc: Exception) -> int:
        if isinstance(exc, DengineError):
            response = engine_error_response(exc)
        else:  # a bug of ours: the log keeps the traceback, as Quart's handler does
            log.exception("unhandled error in %s", app.name)
            response = json_error(500, "internal", "internal error")
        await send_response(send, response)
        return response.status_code

    async def send_index(send: Any, index: int) -> None:
        # What write_response makes, header order included: {"index":N}, X-Dengine-Index.
        digits = str(index).encode()
        body = b'{"index":' + digits + b"}"
        headers = [(b"x-dengine-index", digits), _JSON_TYPE, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def count(route: str, method: str, status: int, started: float) -> None:
        sink = app.metrics_sink
        if sink is not None:
            sink.http_request(route, method, status, time.perf_counter() - started)

    def body_timeout_response() -> Response:
        # What Quart answers when get_data times out (install_error_handlers' handlers).
        exc = RequestTimeout()
        response = json_error(408, http_error_code(exc), exc.description or exc.name)
        response.headers["Connection"] = "close"
        return response

    def path_key(scope: Any) -> bytes | None:
        # As the Quart route does: the raw path, strictly decoded (see get_kv's path_key).
        path: str = scope["path"]
        raw: bytes | None = scope.get("raw_path")
        if raw is None or not path.startswith(KV_PREFIX):
            return None
        try:
            decoded = unquote_to_bytes(raw).decode() if b"%" in raw else raw.decode()
        except UnicodeDecodeError:
            return None
        if not decoded.startswith(KV_PREFIX) or len(decoded) == len(KV_PREFIX):
            return None
        try:
            return decoded[len(KV_PREFIX) :].encode()
        except UnicodeEncodeError:
            return None

    def plain_head(scope: Any, needed: str) -> tuple[bool, int]:
        """(whether the request may be answered here, its Content-Length or -1)."""
        length = -1
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length != -1 or not value.isdigit():
                    return False, -1
                length = int(value)
            elif name == b"transfer-encoding" or name == b"idempotency-key":
                return False, -1
        if auth is not None and not authorized(auth, scope["headers"], needed):
            return False, -1
        return True, length

    async def fast_path(scope: Any, receive: Any, send: Any) -> list[Any] | None:
        started = time.perf_counter()
        method = scope["method"]
        if method == "POST":
            if scope["path"] != PUT_ROUTE:
                return _DECLINED
            ok, length = plain_head(scope, "write")
            if not ok or length <= 0 or length > max_body:
                return _DECLINED
            # Hypercorn's receive is a trio channel's: a body already queued is taken without
            # a checkpoint, and one still to come is waited for as Quart waits (408 after
            # [http] body_timeout_ms, the connection closed).
            channel = getattr(receive, "__self__", None)
            receive_nowait = getattr(channel, "receive_nowait", None)
            consumed: list[Any] = []
            chunks: list[bytes] = []
            deadline: float | None = None
            while True:
                message = None
                if receive_nowait is not None:
                    try:
                        message = receive_nowait()
                    except trio.WouldBlock:
                        pass
                if message is None:
                    # One deadline for the whole body, as Quart's get_data has: a body
                    # trickled in a byte at a time is cut all the same.
                    if deadline is None:
                        deadline = trio.current_time() + body_timeout_s
                    with trio.move_on_at(deadline):
                        message = await receive()
                    if message is None:
                        response = body_timeout_response()
                        # Counted first, as Quart's hook does: Hypercorn may fail the send of
                        # an answer that closes a connection whose body is still coming.
                        count(PUT_ROUTE, method, response.status_code, started)
                        await send_response(send, response)
                        return None
                consumed.append(message)
                if message["type"] != "http.request":
                    return consumed
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            try:
                doc = loads(body)
            except (ValueError, RecursionError):
                return consumed
            if type(doc) is not dict:
                return consumed
            key = doc.get("key")
            value = doc.get("value")
            # Anything beyond key and value (a TTL, a compare, an unknown member) is Quart's.
            if type(key) is not str or not key or type(value) is not str or len(doc) != 2:
                return consumed
            try:
                encoded_key = key.encode()
                encoded_value = value.encode()
            except UnicodeEncodeError:
                return consumed
            try:
                index = await client.put(encoded_key, encoded_value)
            except Exception as exc:
                status = await answer_error(send, exc)
            else:
                await send_index(send, index)
                status = 200
            route = PUT_ROUTE
        elif method == "GET" or method == "DELETE":
            path_bytes = path_key(scope)
            if path_bytes is None:
                return _DECLINED
            ok, length = plain_head(scope, "read" if method == "GET" else "write")
            if not ok or length > 0:
                return _DECLINED
            route = KEY_ROUTE
            if method == "GET":
                query = scope["query_string"]
                policy: ReadPolicy | None = None
                if query:
                    policy = _QUERY_POLICIES.get(query)
                    if policy is None:
                        return _DECLINED
                try:
                    found = await client.get(path_bytes, policy)
                except Exception as exc:
                    status = await answer_error(send, exc)
                else:
                    if found is None:
                        start = {"type": "http.response.start", "status": 404}
                        start["headers"] = _ABSENT_HEADERS
                        await send(start)
                        await send({"type": "http.response.body", "body": _ABSENT})
                        status = 404
                    else:
                        text = encode_basestring_ascii(found.decode("utf-8", "replace"))
                        out = b'{"value":' + text.encode() + b"}"
                        headers = [_JSON_TYPE, (b"content-length", str(len(out)).encode())]
                        await send(
                            {"type": "http.response.start", "status": 200, "headers": headers}
                        )
                        await send({"type": "http.response.body", "body": out})
                        status = 200
            else:
                if scope["query_string"]:  # ?prev_index=N: Quart's
                    return _DECLINED
                try:
                    index = await client.delete(path_bytes)
                except Exception as exc:
                    status = await answer_error(send, exc)
                else:
                    await send_index(send, index)
                    status = 200
        else:
            return _DECLINED
        count(route, method, status, started)
        return None

    return fast_path
