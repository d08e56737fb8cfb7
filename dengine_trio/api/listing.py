"""``GET /kv?prefix=P&limit=N&after=K``: keys in byte order with their values, paginated.

Under the request's ``consistency`` (as ``GET /kv/<key>``) and after ``min_index``; one page is
collected from one instant of the state machine (nothing applies meanwhile, so a page is a
consistent snapshot; successive pages are not one snapshot, as with etcd's paginated range).
Answer: ``200 {"items": [{"key", "value", "create_index", "mod_index", "ttl_ms"}], "next":
str | null}``; pass ``next`` as ``after`` for the following page.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from quart import Response, request

from dengine_trio.api import JSON_CONTENT_TYPE, ApiError, App
from dengine_trio.api.kvparse import index_param, refuse_repeated, refuse_unknown
from dengine_trio.errors import Timeout
from dengine_trio.policy import ReadPolicy

if TYPE_CHECKING:
    from dengine_trio.engine import Client

__all__ = ["DEFAULT_LIMIT", "LIST_MAX_BYTES", "MAX_LIMIT", "install_listing_route"]

DEFAULT_LIMIT = 100
"""Keys per page when ``limit`` is not given."""
MAX_LIMIT = 1000
"""The most keys one page may ask for (``limit``)."""
LIST_MAX_BYTES = 1 << 20
"""A page stops early (with a ``next``) once its keys and values reach this many bytes (at
least one key per page), so one request cannot make the node build a huge answer."""
_LIST_PARAMS = ("prefix", "after", "limit", "consistency", "min_index")


def _text_params(query: bytes) -> dict[str, str]:
    """The query's parameters, decoded so that a percent-escape (or byte) that is not UTF-8
    stays detectable: as a lone surrogate (``surrogateescape``), which ``_text_param``
    refuses. ``request.args`` decodes leniently (werkzeug), so ``prefix=%FF`` became a
    prefix of text that no UTF-8 key has, and a listing of the wrong keys; the first value of
    a repeated name, as ``request.args.get``."""
    params: dict[str, str] = {}
    text = query.decode("ascii", "surrogateescape")
    for name, value in parse_qsl(text, keep_blank_values=True, errors="surrogateescape"):
        params.setdefault(name, value)
    return params


def _text_param(params: dict[str, str], name: str) -> bytes | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ApiError(
            400, "invalid_key", f"{name} is not valid Unicode (percent-encoded UTF-8)"
        ) from None


def install_listing_route(
    app: App, client: Client, policy_param: Callable[[Any], ReadPolicy | None]
) -> None:
    """Add ``GET /kv`` to the KV ``app``. Refusals: 400 ``invalid_limit`` (``limit`` not an
    integer from 1 to 1000), ``invalid_request`` (a parameter given twice), ``invalid_key``
    (``prefix``/``after`` not percent-encoded UTF-8), ``invalid_request`` (a parameter other
    than ``prefix``, ``after``, ``limit``, ``consistency``, ``min_index``), ``invalid_consistency``,
    ``invalid_index`` (``min_index``); 504 ``timeout`` when ``min_index`` is not applied in
    time."""
    dumps = json.dumps

    @app.get("/kv")
    async def list_kv() -> Response:
        args = request.args
        refuse_repeated(args)
        refuse_unknown(args, _LIST_PARAMS)
        params = _text_params(request.query_string)
        prefix = _text_param(params, "prefix") or b""
        after = _text_param(params, "after")
        text = args.get("limit")
        limit = DEFAULT_LIMIT
        if text is not None:
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
                raise ApiError(
                    400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}"
                )
            limit = int(text)
        policy = policy_param(args)
        min_index = index_param(args, "min_index") or 0
        try:
            page = await client.list(
                prefix,
                after=after,
                limit=limit,
                policy=policy,
                min_index=min_index,
                max_bytes=LIST_MAX_BYTES,
            )
        except Timeout:
            if not min_index:
                raise
            raise ApiError(
                504,
                "timeout",
                f"this node did not apply index {min_index} within the request timeout",
            ) from None
        doc = {
            "items": [
                {
                    "key": item.key.decode("utf-8", "replace"),
                    "value": item.value.decode("utf-8", "replace"),
                    "create_index": item.create_index,
                    "mod_index": item.mod_index,
                    "ttl_ms": item.ttl_ms,
                }
                for item in page.items
            ],
            "next": None if page.next is None else page.next.decode("utf-8", "replace"),
        }
        return Response(dumps(doc, separators=(",", ":")), content_type=JSON_CONTENT_TYPE)
