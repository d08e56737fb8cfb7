"""The :class:`~dengine_trio.engine.Client`'s side of the KV state machine: commands it
encodes (:mod:`dengine_trio.kv_commands`), results it decodes, and reads of the live state,
with TTL judged by this node's wall clock.

Why a module of its own: the client's types (:mod:`dengine_trio.client_types`: TTLs in ms from
now, an item's remaining TTL) differ from the log's (absolute deadlines), and the conversion
has one place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from msgpack import UnpackException, unpackb

from .client_types import Item, Page, TxnOp, TxnOpResult, TxnOutcome, WriteOutcome
from .errors import CompareFailed, IdempotencyKeyReused, TooLarge
from .kv_commands import (
    FLAG_DUPLICATE,
    FLAG_SUCCEEDED,
    RESULT_WRITE,
    UNSET,
    Compare,
    Delete,
    Get,
    KVItem,
    Put,
    TxnReadTooLarge,
    TxnResult,
    WriteResult,
    _Unset,
    decode_result,
    encode_expire,
    encode_kv_delete,
    encode_kv_put,
    encode_txn,
)
from .statemachine import KVStateMachine

__all__ = [
    "UNSET",
    "encode_delete",
    "encode_expire",
    "encode_put",
    "encode_txn_ops",
    "get_item",
    "get_value",
    "list_page",
    "txn_outcome",
    "wall_clock_ms",
    "write_outcome",
]


def wall_clock_ms() -> int:
    """The wall clock, in whole ms since the Unix epoch: what TTL deadlines are measured in
    (every node compares them with its own wall clock; the bound is in docs/api.md)."""
    return time.time_ns() // 1_000_000


def encode_put(
    key: bytes,
    value: bytes,
    *,
    now_ms: int,
    expires_at_ms: int,
    prev_value: bytes | _Unset | None,
    prev_index: int | None,
    idempotency_key: bytes | None,
) -> bytes:
    """A put command (``kv_commands.encode_kv_put``)."""
    return encode_kv_put(
        key,
        value,
        now_ms=now_ms,
        expires_at_ms=expires_at_ms,
        prev_value=prev_value,
        prev_index=prev_index,
        idempotency_key=idempotency_key,
    )


def encode_delete(
    key: bytes, *, now_ms: int, prev_index: int | None, idempotency_key: bytes | None
) -> bytes:
    """A delete command (``kv_commands.encode_kv_delete``)."""
    return encode_kv_delete(
        key, now_ms=now_ms, prev_index=prev_index, idempotency_key=idempotency_key
    )


def encode_txn_ops(
    compares: Sequence[Compare],
    success: Sequence[TxnOp],
    failure: Sequence[TxnOp],
    *,
    now_ms: int,
    idempotency_key: bytes | None,
    max_read_bytes: int | None = None,
) -> bytes:
    """A txn command; each put's ``ttl_ms`` becomes a deadline from ``now_ms``;
    ``max_read_bytes`` bounds what its gets read. Raises ValueError
    (``kv_commands.encode_txn``: a key written twice in a branch, a bad compare)."""

    def ops(branch: Sequence[TxnOp]) -> list[Put | Delete | Get]:
        out: list[Put | Delete | Get] = []
        for op in branch:
            if op.kind == "put":
                deadline = 0 if op.ttl_ms is None else now_ms + op.ttl_ms
                out.append(Put(op.key, op.value, deadline))
            elif op.kind == "delete":
                out.append(Delete(op.key))
            else:
                out.append(Get(op.key))
        return out

    return encode_txn(
        compares,
        ops(success),
        ops(failure),
        now_ms=now_ms,
        idempotency_key=idempotency_key,
        max_read_bytes=max_read_bytes,
    )


def encode_expire_command(key: bytes, mod_index: int, now_ms: int) -> bytes:
    """The expirer's deletion of ``key`` at ``mod_index`` (``kv_commands.encode_expire``)."""
    return encode_expire(key, mod_index, now_ms=now_ms)


def _item(raw: KVItem, now_ms: int) -> Item:
    deadline = raw.expires_at_ms
    ttl = None if not deadline else max(0, deadline - now_ms)
    return Item(raw.key, raw.value, raw.create_index, raw.mod_index, deadline, ttl)


def write_outcome(result: bytes) -> WriteOutcome:
    """A put's or delete's result: its :class:`WriteOutcome`; raises ``CompareFailed`` (the
    key's current value and mod_index) when a compare did not hold, ``IdempotencyKeyReused``
    when its idempotency key was first used by another request (the state machine's
    ``KeyReused``; or a txn's outcome replayed from a record of before request fingerprints,
    which is not a write's outcome either)."""
    # The write path's common case read straight from the result's array ``[0, flags, index,
    # item]`` (kv_commands): decode_result builds two frozen dataclasses, ~3x the cost of the
    # unpacking, for fields this answer does not use.
    try:
        kind, flags, index, _ = unpackb(result)
    except (ValueError, TypeError, UnpackException):
        kind = flags = None
    if kind == RESULT_WRITE and type(flags) is int and flags & FLAG_SUCCEEDED:
        return WriteOutcome(index, bool(flags & FLAG_DUPLICATE))
    decoded = decode_result(result)
    if not isinstance(decoded, WriteResult):
        raise IdempotencyKeyReused(decoded.index)
    if not decoded.succeeded:
        item = decoded.item
        raise CompareFailed(
            None if item is None else item.value,
            0 if item is None else item.mod_index,
            decoded.index,
            decoded.duplicate,
        )
    return WriteOutcome(decoded.index, decoded.duplicate)


def txn_outcome(result: bytes) -> TxnOutcome:
    """A txn's result as a :class:`TxnOutcome` (a ``get``'s item with its remaining TTL as
    of this node's clock now). Raises ``TooLarge("txn_read")`` when its gets would have read
    more than the command's ``max_read_bytes`` (nothing applied), ``IdempotencyKeyReused``
    as :func:`write_outcome`."""
    decoded = decode_result(result)
    if isinstance(decoded, TxnReadTooLarge):
        raise TooLarge("txn_read", decoded.read_bytes, decoded.max_read_bytes)
    if not isinstance(decoded, TxnResult):
        raise IdempotencyKeyReused(decoded.index)
    now = wall_clock_ms()
    return TxnOutcome(
        decoded.succeeded,
        decoded.index,
        tuple(
            TxnOpResult(
                r.kind,
                r.key,
                _item(r.item, now) if r.kind == "get" and r.item is not None else None,
            )
            for r in decoded.results
        ),
        decoded.duplicate,
    )


def get_value(sm: KVStateMachine, key: bytes) -> bytes | None:
    """``key``'s value now (None: absent or past its deadline by this node's clock)."""
    if not sm.ttl_keys:  # no key has a deadline: no clock to read (the eventual read's path)
        return sm.data.get(key)
    return sm.get(key, time.time_ns() // 1_000_000)


def get_item(sm: KVStateMachine, key: bytes) -> Item | None:
    """``key`` now with its indexes and remaining TTL (None: absent or expired)."""
    now = wall_clock_ms()
    raw = sm.get_item(key, now)
    return None if raw is None else _item(raw, now)


def list_page(
    sm: KVStateMachine,
    prefix: bytes,
    after: bytes | None,
    limit: int,
    max_bytes: int | None,
) -> Page:
    """Up to ``limit`` keys starting with ``prefix`` after ``after``, cut short (at least one
    kept) once keys and values reach ``max_bytes``; ``next`` continues the listing."""
    now = wall_clock_ms()
    raws, next_key = sm.range(prefix, after, limit, now)
    items = [_item(raw, now) for raw in raws]
    if max_bytes is not None:
        total = 0
        for n, item in enumerate(items):
            total += len(item.key) + len(item.value)
            if total > max_bytes and n > 0:
                items = items[:n]
                next_key = items[-1].key
                break
    return Page(tuple(items), next_key)
