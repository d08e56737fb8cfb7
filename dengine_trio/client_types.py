"""Values the key-value :class:`~dengine_trio.engine.Client` takes and returns beyond bytes:
an item with its indexes and deadline, a page of a listing, a write's outcome, a
transaction's operations and outcome (its compares are the state machine's
:class:`~dengine_trio.kv_commands.Compare`), etcd's ``Txn`` shape: compares, then the
``success`` or the ``failure`` list, in one log entry.

Indexes are Raft log indexes (the entry a write applied at); times are ms. Keys and values
are bytes.
"""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = [
    "Item",
    "Page",
    "TxnOp",
    "TxnOpResult",
    "TxnOutcome",
    "WriteOutcome",
]


@attrs.frozen(slots=True)
class Item:
    """A key as a read found it: ``value``; ``create_index``: the entry that created it (since
    it last did not exist); ``mod_index``: the entry that last wrote it; ``expires_at_ms``:
    wall-clock deadline (ms since the Unix epoch) of its TTL, 0 for none; ``ttl_ms``: what was
    left of the TTL when it was read (None: no TTL)."""

    key: bytes
    value: bytes
    create_index: int
    mod_index: int
    expires_at_ms: int = 0
    ttl_ms: int | None = None


@attrs.frozen(slots=True)
class Page:
    """One page of a listing: ``items`` in byte order of their keys; ``next``: the key to pass
    as ``after`` for the next page, None when the listing is complete."""

    items: tuple[Item, ...]
    next: bytes | None


@attrs.frozen(slots=True)
class WriteOutcome:
    """A write that applied: ``index`` is the log entry it applied at; ``duplicate``: the
    outcome was stored under its idempotency key by an earlier request, and this one applied
    nothing."""

    index: int
    duplicate: bool = False


@attrs.frozen(slots=True)
class TxnOp:
    """One operation of a transaction branch: ``kind`` ``"put"`` (``value``, optional
    ``ttl_ms``), ``"delete"``, or ``"get"`` (its result is in :class:`TxnOutcome`)."""

    kind: Literal["put", "delete", "get"]
    key: bytes
    value: bytes = b""
    ttl_ms: int | None = None

    @classmethod
    def put(cls, key: bytes, value: bytes, ttl_ms: int | None = None) -> TxnOp:
        """Set ``key`` to ``value``, expiring ``ttl_ms`` ms after the proposer's clock when
        given (>= 1)."""
        return cls("put", key, value, ttl_ms)

    @classmethod
    def delete(cls, key: bytes) -> TxnOp:
        """Remove ``key`` (absent: nothing happens)."""
        return cls("delete", key)

    @classmethod
    def get(cls, key: bytes) -> TxnOp:
        """Read ``key`` as of this point of the transaction."""
        return cls("get", key)


@attrs.frozen(slots=True)
class TxnOpResult:
    """What one operation of the branch that ran did: ``kind`` and ``key`` as asked;
    ``item``: for a ``get``, the key as of the transaction (None: absent)."""

    kind: str
    key: bytes
    item: Item | None = None


@attrs.frozen(slots=True)
class TxnOutcome:
    """A transaction that was applied: ``succeeded`` (every compare held, so ``success`` ran;
    else ``failure``), ``index`` its log entry, ``results`` one per operation of the branch
    that ran, ``duplicate`` as in :class:`WriteOutcome`."""

    succeeded: bool
    index: int
    results: tuple[TxnOpResult, ...] = ()
    duplicate: bool = False
