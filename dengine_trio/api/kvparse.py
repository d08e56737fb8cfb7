"""What the KV routes share: parsing JSON members and query parameters into client arguments,
and the answer of a write.

Every refusal is an :class:`~dengine_trio.api.ApiError` (a 4xx JSON body); the codes are in
README.md's error table. Kept apart from :mod:`dengine_trio.api.kv` so the transaction and
listing routes (:mod:`dengine_trio.api.txn`, :mod:`dengine_trio.api.listing`) use the very
same rules.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from dengine_trio.api import JSON_CONTENT_TYPE, ApiError

__all__ = [
    "IDEMPOTENCY_HEADER",
    "INDEX_HEADER",
    "MAX_IDEMPOTENCY_KEY_BYTES",
    "REPLAYED_HEADER",
    "idempotency_key",
    "index_member",
    "index_param",
    "key_member",
    "optional_string_member",
    "refuse_repeated",
    "ttl_member",
    "value_member",
    "write_response",
]

INDEX_HEADER = "X-Dengine-Index"
"""Header of every write's answer: the Raft log index the write applied at (decimal)."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Request header naming a write for exactly-once retries (POST/DELETE ``/kv``, ``/txn``)."""
REPLAYED_HEADER = "Idempotent-Replayed"
"""Answer header, ``true`` when the answer is the stored outcome of an earlier request with the
same ``Idempotency-Key`` (nothing was applied this time)."""
MAX_IDEMPOTENCY_KEY_BYTES = 256
"""The longest ``Idempotency-Key`` (bytes): it is stored in the replicated table."""
MAX_INDEX = 2**63 - 1
"""Indexes are u64 on disk; anything above a signed 64-bit integer is refused as malformed."""
_COMPACT = (",", ":")


def key_member(doc: dict[str, Any], name: str = "key") -> bytes:
    """``doc[name]`` as a key's UTF-8 bytes: 400 ``invalid_request`` (missing),
    ``invalid_key`` (not a string, not valid Unicode), ``empty_key``."""
    if name not in doc:
        raise ApiError(400, "invalid_request", f'missing "{name}"')
    return key_bytes(doc[name], name)


def key_bytes(key: object, name: str = "key") -> bytes:
    """A JSON key as its UTF-8 bytes (400 ``invalid_key`` / ``empty_key``)."""
    if type(key) is not str:
        raise ApiError(400, "invalid_key", f'"{name}" must be a string')
    if not key:
        raise ApiError(400, "empty_key", "the key must not be empty")
    try:
        return key.encode()
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_key", "the key is not valid Unicode") from None


def value_member(doc: dict[str, Any], name: str = "value") -> bytes:
    """``doc[name]`` as a value's UTF-8 bytes: 400 ``invalid_request`` (missing),
    ``invalid_value`` (not a string, ``null`` included, or not valid Unicode)."""
    if name not in doc:
        raise ApiError(400, "invalid_request", f'missing "{name}"')
    value = doc[name]
    if type(value) is not str:
        raise ApiError(400, "invalid_value", f'"{name}" must be a string')
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_value", f'"{name}" is not valid Unicode') from None


def optional_string_member(doc: dict[str, Any], name: str) -> bytes | None:
    """``doc[name]`` as UTF-8 bytes, or None for JSON ``null`` (the member must be present):
    400 ``invalid_value`` otherwise."""
    value = doc[name]
    if value is None:
        return None
    if type(value) is not str:
        raise ApiError(400, "invalid_value", f'"{name}" must be a string or null')
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_value", f'"{name}" is not valid Unicode') from None


def index_member(doc: dict[str, Any], name: str) -> int:
    """``doc[name]`` as a log index, an integer 0..2^63-1 (``true`` is not one): 400
    ``invalid_index`` otherwise."""
    value = doc[name]
    if type(value) is not int or not 0 <= value <= MAX_INDEX:
        raise ApiError(400, "invalid_index", f'"{name}" must be an integer from 0 to {MAX_INDEX}')
    return value


def ttl_member(doc: dict[str, Any], name: str = "ttl_ms") -> int | None:
    """``doc[name]`` (absent or ``null``: None) as a time to live in ms, an integer from 1 to
    2^53 (about 285,000 years; JSON numbers are exact up to there): 400 ``invalid_ttl``."""
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= 2**53:
        raise ApiError(400, "invalid_ttl", f'"{name}" must be an integer from 1 to 2^53 (ms)')
    return value


def index_param(args: Any, name: str) -> int | None:
    """Query parameter ``name`` as a log index (absent: None): decimal digits, at most
    2^63-1, else 400 ``invalid_index``."""
    text = args.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_INDEX:
        raise ApiError(
            400, "invalid_index", f"{name} must be a decimal integer from 0 to {MAX_INDEX}"
        )
    return int(text)


def refuse_repeated(args: Any) -> None:
    """400 ``invalid_request`` if a query parameter is given more than once: taking the first
    (werkzeug's ``get``) would give ``?prev_index=1&prev_index=7`` and the reverse order two
    meanings, and a proxy or library that appends a parameter would change a conditional
    write silently. ``GET /watch`` refuses the same (api/watch.py)."""
    for name in args:
        if len(args.getlist(name)) > 1:
            raise ApiError(400, "invalid_request", f"parameter {name[:40]!r} given twice")


def refuse_unknown(args: Any, known: tuple[str, ...]) -> None:
    """400 ``invalid_request`` naming the first query parameter not in ``known`` (the message
    lists those): a misspelt condition or freshness bound (``?min_indx=5``) must not turn
    into a request without it, which would answer a read staler than the client asked
    for, or make a conditional write unconditional."""
    for name in args:
        if name not in known:
            raise ApiError(
                400,
                "invalid_request",
                f"unknown query parameter {name[:40]!r} ({', '.join(known)})",
            )


def idempotency_key(headers: Any) -> bytes | None:
    """The request's ``Idempotency-Key`` header as bytes (absent: None). 400
    ``invalid_idempotency_key`` when it is empty, repeated, over
    :data:`MAX_IDEMPOTENCY_KEY_BYTES`, or not visible ASCII (RFC 9110 token-ish: what a client
    library sends unchanged)."""
    values = headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key given more than once")
    text: str = values[0]
    if not text or not text.isascii() or not text.isprintable() or " " in text:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 256 visible ASCII characters",
        )
    if len(text) > MAX_IDEMPOTENCY_KEY_BYTES:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key is {len(text)} bytes: at most {MAX_IDEMPOTENCY_KEY_BYTES}",
        )
    return text.encode()


def check_members(doc: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """400 ``invalid_request`` naming the first member of ``doc`` not in ``allowed``: a
    misspelt condition (``prev_vaule``) must not turn into an unconditional write."""
    for name in doc:
        if name not in allowed:
            raise ApiError(
                400,
                "invalid_request",
                f"unknown member {json.dumps(name)} in {what}"
                f" (known: {', '.join(sorted(allowed))})",
            )


def write_response(index: int, duplicate: bool, body: dict[str, Any] | None = None) -> Response:
    """The answer of a write: ``200`` with ``{"index": index}`` (plus ``body``'s members),
    ``X-Dengine-Index: index``, and ``Idempotent-Replayed: true`` on a replay."""
    doc: dict[str, Any] = {"index": index}
    if body:
        doc.update(body)
    headers = {INDEX_HEADER: str(index)}
    if duplicate:
        headers[REPLAYED_HEADER] = "true"
    return Response(
        json.dumps(doc, separators=_COMPACT), content_type=JSON_CONTENT_TYPE, headers=headers
    )
