"""The replicated state machine: what committed commands do.

``StateMachine`` is the extension point (the mission's "custom state machine"): the engine feeds
every committed command, in log order, to ``apply`` and hands its result back to the proposer.
``KVStateMachine`` is the default, a dictionary of bytes to bytes with, per key, the Raft
indexes of its creation and last modification and an optional TTL deadline (issue 17).
Its commands and results are in ``dengine_trio.kv_commands`` (re-exported here).

Determinism (Raft paper section 2: every replica applies the same commands in the same order
and reaches the same state): ``apply`` reads no clock. Time comes from the command: the
proposer's ``now_ms`` and a TTL's absolute ``expires_at_ms`` are computed once, by the
proposer, and carried in the log, so every replica decides compares, expiry and the
idempotency table's evictions alike.

TTL
---
A key whose deadline has passed is absent for every read that passes its own wall clock
(``get_item``, ``range``, ``get(key, now_ms)``) and for every command whose ``now_ms`` is at or
past the deadline (a put re-creates it, a compare sees it absent). It is removed from the state
by the leader's expirer, which asks ``expired(now_ms, limit)`` (a heap of deadlines) and
proposes ``encode_expire(key, mod_index)``; that applies only if the key still has that
``mod_index``, so a key rewritten in between survives. A read on a node can return a key past
its deadline by at most the clock offset between that node and the proposer of the TTL.

Idempotency (exactly-once writes)
---------------------------------
A version-2 write may carry an idempotency key. The first command with that key is applied and
its result remembered with its index and the request's fingerprint
(``kv_commands.request_fingerprint``: the command without its clock, TTLs as given); a later
command with the same key and the same request (a client's retry after a timeout or a
failover, through any node) applies nothing and returns the remembered result with
``duplicate`` set. A later command with the same key and a different request (another kind
of write, another value, TTL, compare or op) applies nothing either and returns
``KeyReused`` (the original's index); nothing is remembered for it. Records restored from a
version-2 image have no fingerprint and replay to any request, as they did then.
The table is bounded by count (``idempotency_max_keys``), by bytes (``idempotency_max_bytes``:
keys, fingerprints and results; a failed compare's result holds the key's current value, a
txn's its gets')
and by age (``idempotency_ttl_ms``), oldest first; age is measured on the log's own clock, the
highest ``now_ms`` of any version-2 command applied so far, never a local clock, so every
replica evicts the same keys at the same index. The bounds must be equal on every node (a
node with a smaller table would apply a retry that the others answer from theirs). A retry
after its key was evicted is applied again.

Snapshots (issue 13; when the node takes and restores them: ``runtime/snapshotting.py``)
---------------------------------------------------------------------------------------
``snapshot`` runs on the trio loop between two ``apply`` calls and must be quick: it captures a
point-in-time image and returns a function that serializes it later, in a worker thread, while
``apply`` goes on. ``restore`` replaces the whole state from a serialized image: at start, from
the node's newest snapshot, and on a follower that receives its leader's.

``KVStateMachine`` captures copy-on-write, in O(1): ``snapshot()`` freezes the live dicts (values
and per-key metadata) as the image and puts an overlay (``_CaptureView``) in front of each;
``apply`` writes to the overlays while a worker thread serializes the frozen dicts in batches;
once the image is written, each ``apply`` moves ``MERGE_PER_APPLY`` (16) overlay entries of each
back, so there is never one long merge. The idempotency table is append-only chunks, so its
capture is a tuple of chunk references (one per 1,024 keys). Measured with ``python
bench/snapshot_cost.py`` (before issue 17: 1,000,000 15-byte keys, 256-byte values, a task
applying overwrites flat out meanwhile; 2 cores shared with other work): ``snapshot()``
0.02 ms on the loop (a ``dict.copy()`` takes 33-100 ms); the 263 MiB image written and fsynced
in 0.8-4 s; 1 ms loop sleeps late by p99 6-12 ms during it. ``docs/architecture.md``
"Snapshots of the state machine" has the figures and why not a plain copy or a forked child.

KV image format (the payload of a snapshot file, ``dengine_trio.storage.snapshots``)::

    b"DTKV" | u32 version (3, little-endian) | msgpack objects:
        [last applied index, idempotency clock (ms)]
        zero or more key batches, each an array of 5-tuples flattened:
            [key, value, create_index, mod_index, expires_at_ms, key, ...]
        one int: the total number of keys
        zero or more idempotency batches, oldest record first, flattened 5-tuples:
            [idempotency key, result bytes, index, clock ms, fingerprint, ...]
        one int: the total number of idempotency records, which ends the image

Version 2 (read, never written since the fingerprints): the same with 4-tuples, no
fingerprint (such records replay to any request).

Version 1 (read, never written since issue 17): after the prefix, batches ``[key, value, key,
value, ...]`` then the key count; its keys restore with create and mod index 1 (their real
indexes were not kept; 0 would read as "absent" in a compare), no TTL, and an empty
idempotency table.
"""

from __future__ import annotations

import heapq
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack

from .kv_commands import (
    COMPARE_OPS,
    FINGERPRINT_BYTES,
    FLAG_DUPLICATE,
    FLAG_EXISTED,
    FLAG_SUCCEEDED,
    KIND_DELETE,
    KIND_EXPIRE,
    KIND_PUT,
    KIND_TXN,
    OP_DELETE,
    OP_PUT,
    OP_WRITE,
    RESULT_READ_TOO_LARGE,
    RESULT_REUSED,
    RESULT_TXN,
    RESULT_WRITE,
    TARGETS,
    TXN_DELETE,
    TXN_GET,
    TXN_PUT,
    UNSET,
    Compare,
    Delete,
    Get,
    KeyReused,
    KVChange,
    KVItem,
    OpResult,
    Put,
    TxnOp,
    TxnReadTooLarge,
    TxnResult,
    WriteResult,
    decode_result,
    encode_expire,
    encode_kv_delete,
    encode_kv_put,
    encode_txn,
    request_fingerprint,
)
from .kv_index import SORT_RUN, SortedKeys

__all__ = [
    "COMPARE_OPS",
    "OP_DELETE",
    "OP_PUT",
    "OP_WRITE",
    "TARGETS",
    "UNSET",
    "Compare",
    "Delete",
    "Get",
    "KVChange",
    "KVItem",
    "KVStateMachine",
    "KeyReused",
    "OpResult",
    "Put",
    "SnapshotImage",
    "SnapshotImageError",
    "SnapshotSink",
    "SnapshotSource",
    "StateMachine",
    "TxnOp",
    "TxnReadTooLarge",
    "TxnResult",
    "WriteResult",
    "decode_result",
    "encode_delete",
    "encode_expire",
    "encode_kv_delete",
    "encode_kv_put",
    "encode_put",
    "encode_txn",
    "read_kv_image",
    "read_kv_state",
    "write_kv_image",
]


class SnapshotSink(Protocol):
    """Where an image is written: any binary stream (a snapshot file writer, ``io.BytesIO``)."""

    def write(self, data: bytes, /) -> object:
        """Write all of ``data``; the return value is ignored. May raise ``OSError``."""
        ...


class SnapshotSource(Protocol):
    """Where an image is read from: ``read(n)`` returns at most ``n`` bytes, ``b""`` at the end.

    A verifying source (``storage.snapshots.SnapshotReader``) raises instead of returning
    ``b""`` when the image is damaged, so a reader that reads to the end never trusts a
    damaged image.
    """

    def read(self, size: int = -1, /) -> bytes:
        """At most ``size`` bytes (``-1``: all that is left); ``b""`` only at the end."""
        ...


SnapshotImage = Callable[[SnapshotSink], None]
"""Writes a captured image to the sink; called once, in a worker thread."""


class SnapshotImageError(ValueError):
    """An image ``restore`` cannot decode (another state machine's, or a newer format)."""


class StateMachine(Protocol):
    """What the engine needs of a replicated state machine (Raft paper section 2: every
    server applies the same commands in the same order and so reaches the same state).
    ``KVStateMachine`` is the default; see the module docstring for snapshots."""

    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed command; deterministic, no I/O that can fail differently on
        different nodes. The returned bytes go back to whoever proposed the command."""
        ...

    def reset(self) -> None:
        """Forget everything: called at start, before the state is restored from the newest
        snapshot (if any) and the log after it is replayed."""
        ...

    def snapshot(self) -> SnapshotImage:
        """Capture the state as of the last applied command; return what writes it.

        Called on the event loop between two ``apply`` calls: keep it short (a copy of
        references, not serialization). The returned function runs later in a worker thread
        while ``apply`` continues, so it must not read state that ``apply`` changes; it writes
        the image to its sink in chunks (memory bounded by a chunk, not by the image).
        """
        ...

    def restore(self, source: SnapshotSource) -> None:
        """Replace the whole state by an image that ``snapshot`` wrote (possibly on another node).

        Read ``source`` in chunks until it returns ``b""``, and change the live state only
        after that: a damaged image makes ``source.read`` raise before the end, and the state
        must then be left as it was (the exception propagates). May run in a worker thread;
        no ``apply`` runs meanwhile. Raises ``SnapshotImageError`` for an image it cannot
        decode.
        """
        ...


def encode_put(key: bytes, value: bytes) -> bytes:
    """The legacy ``KVStateMachine`` command that sets ``key`` to ``value``: msgpack
    ``[OP_PUT, key, value]``; its result is ``b""``. ``encode_kv_put`` is the version-2 put
    (indexes in its result, TTL, compare-and-swap, idempotency). Size limits are the
    caller's (``Client``)."""
    return msgpack.packb((OP_PUT, key, value))


def encode_delete(key: bytes) -> bytes:
    """The legacy ``KVStateMachine`` command that removes ``key`` (absent: no-op): msgpack
    ``[OP_DELETE, key]``; its result is ``b""``. ``encode_kv_delete`` is the version-2
    delete."""
    return msgpack.packb((OP_DELETE, key))


IGNORED = b"\x00"
"""What ``apply`` returns for a command it ignores (it does not decode, or a field has the
wrong type): the same no-op on every node."""

_VALUE, _EXISTS, _MOD, _CREATE = (TARGETS[name] for name in ("value", "exists", "mod", "create"))
_EQ, _NE, _LT, _GT = (COMPARE_OPS[name] for name in ("==", "!=", "<", ">"))

IDEMPOTENCY_CHUNK = 1024
"""Records per chunk of the idempotency table: its snapshot capture copies one reference per
chunk (100 for the default 100,000 keys)."""
DEADLINE_SLACK = 1024
"""The deadline heap is rebuilt from its live entries once it holds more than twice the keys
with a TTL plus this many (entries of keys overwritten or deleted before their deadline)."""

Meta = tuple[int, int, int]
"""Per key: (create_index, mod_index, expires_at_ms)."""

Record = tuple[bytes, bytes, int, int, bytes]
"""An idempotency record: (idempotency key, result, index, log clock ms when remembered,
request fingerprint; b"" when restored from a version-2 image, which kept none)."""


def _record_bytes(record: Record) -> int:
    """What a record counts against ``idempotency_max_bytes``: key, result, fingerprint."""
    return len(record[0]) + len(record[1]) + len(record[4])


class _Plan(NamedTuple):
    """A decoded, validated version-2 command (nothing changed yet)."""

    now_ms: int
    idempotency_key: bytes | None
    kind: int
    key: bytes
    value: bytes
    expires_at_ms: int
    compares: list[tuple[bytes, int, int, Any]]
    success: list[tuple[int, bytes, bytes, int]]
    failure: list[tuple[int, bytes, bytes, int]]
    mod_index: int
    max_read_bytes: int | None = None


def _sorted_in_runs(items: list[Any]) -> list[Any]:
    """``sorted(items)`` (a sorted list is a heap too) without holding the GIL for long: runs
    of ``SORT_RUN`` sorted by C, merged in Python (``restore`` runs in a worker thread while
    the event loop goes on)."""
    if len(items) <= SORT_RUN:
        return sorted(items)
    runs = [sorted(items[at : at + SORT_RUN]) for at in range(0, len(items), SORT_RUN)]
    return list(heapq.merge(*runs))


def _is_index(value: object) -> bool:
    return type(value) is int and value >= 0


def _compare_ok(target: object, op: object, operand: object) -> bool:
    if type(target) is not int or type(op) is not int:
        return False  # not even a bool (True == 1): one spelling per command
    if target == _VALUE:
        return type(operand) is bytes and op in (_EQ, _NE, _LT, _GT)
    if target == _EXISTS:
        return type(operand) is bool and op in (_EQ, _NE)
    if target in (_MOD, _CREATE):
        return _is_index(operand) and op in (_EQ, _NE, _LT, _GT)
    return False


def _decode_compares(raw: object, key: bytes | None) -> list[tuple[bytes, int, int, Any]] | None:
    """``raw`` compares of a put/delete (``key`` given: ``[target, op, operand]``) or of a txn
    (``[key, target, op, operand]``); None if any is malformed."""
    if type(raw) is not list:
        return None
    out = []
    for item in raw:
        if type(item) is not list:
            return None
        if key is None:
            if len(item) != 4 or type(item[0]) is not bytes:
                return None
            ckey, target, op, operand = item
        else:
            if len(item) != 3:
                return None
            ckey = key
            target, op, operand = item
        if not _compare_ok(target, op, operand):
            return None
        out.append((ckey, target, op, operand))
    return out


def _decode_ops(raw: object) -> list[tuple[int, bytes, bytes, int]] | None:
    if type(raw) is not list:
        return None
    out = []
    for item in raw:
        if (
            type(item) is not list
            or len(item) < 2
            or type(item[0]) is not int
            or type(item[1]) is not bytes
        ):
            return None
        if item[0] == TXN_PUT and len(item) == 4:
            if type(item[2]) is not bytes or not _is_index(item[3]):
                return None
            out.append((TXN_PUT, item[1], item[2], item[3]))
        elif item[0] in (TXN_DELETE, TXN_GET) and len(item) == 2:
            out.append((item[0], item[1], b"", 0))
        else:
            return None
    return out


def _decode_v2(op: list[Any]) -> _Plan | None:
    """Validate a version-2 txn or expire completely before anything is applied (a txn is
    atomic: a malformed op must not leave the ops before it applied). A put or delete is
    decoded in ``KVStateMachine.apply``."""
    if len(op) < 4:
        return None
    _, now_ms, idem, kind = op[:4]
    if not _is_index(now_ms) or not (idem is None or type(idem) is bytes):
        return None
    if kind == KIND_TXN and len(op) in (7, 8):
        compares = _decode_compares(op[4], None)
        success, failure = _decode_ops(op[5]), _decode_ops(op[6])
        if compares is None or success is None or failure is None:
            return None
        max_read = op[7] if len(op) == 8 else None
        if max_read is not None and not _is_index(max_read):
            return None
        return _Plan(now_ms, idem, kind, b"", b"", 0, compares, success, failure, 0, max_read)
    if kind == KIND_EXPIRE and len(op) == 6 and idem is None:
        key, mod_index = op[4:]
        if type(key) is not bytes or not _is_index(mod_index):
            return None
        return _Plan(now_ms, None, kind, key, b"", 0, [], [], [], mod_index)
    return None


def _holds(actual: Any, op: int, operand: Any) -> bool:
    if op == _EQ:
        return bool(actual == operand)
    if op == _NE:
        return bool(actual != operand)
    if op == _LT:
        return bool(actual < operand)
    return bool(actual > operand)


def _write_result(index: int, flags: int, item: list[Any] | None) -> bytes:
    if item is None:
        # The common answer, without msgpack's call: [0, flags, uint64 index, nil] (a uint64
        # for any index is valid msgpack; decode_result reads it as any other int).
        return _SHORT_RESULT.pack(0x94, RESULT_WRITE, flags, 0xCF, index, 0xC0)
    return msgpack.packb((RESULT_WRITE, flags, index, item))


_SHORT_RESULT = struct.Struct(">BBBBQB")


def _as_duplicate(result: bytes) -> bytes:
    # Byte 2 is the flags fixint (kv_commands: [kind, flags, index, ...] in a fixarray).
    return result[:2] + bytes((result[2] | FLAG_DUPLICATE,)) + result[3:]


class KVStateMachine:
    """Keys and values are bytes; each key also has a create and mod index and an optional
    TTL deadline (``KVItem``). A command that does not decode, or whose fields have the wrong
    types, is a no-op on every node alike (it was committed, so all replicas must agree on
    ignoring it) and returns ``IGNORED`` (``b"\\x00"``); a txn is validated whole first.

    ``data`` is the live state's values, a mapping of bytes to bytes: a ``dict``, or while a
    snapshot image is being written a ``_CaptureView`` of the frozen dict plus the changes made
    since; ``meta`` is the same for ``(create_index, mod_index, expires_at_ms)``. Read them with
    ``get``, ``get_item``, ``range``, ``in``, iteration; only ``apply``, ``reset`` and
    ``restore`` change them. ``data`` includes keys past their deadline not yet expired.

    ``listener`` (None: nobody) is called in ``apply``, in index order, with one ``KVChange``
    per key put, deleted or expired (a txn: one per write op, all at its index; a write to a
    key past its deadline first reports that key's ``expire``). ``listener_reset(index)`` is
    called when the state is replaced wholesale, instead of changes: by ``restore`` (``index``
    the image's last applied index; in the thread ``restore`` runs in, possibly a worker
    thread) and by ``reset`` (index 0): history before it is gone. A listener that raises
    makes ``apply`` raise (the node stops); keep it to queueing.

    ``idempotency_max_keys``, ``idempotency_max_bytes`` and ``idempotency_ttl_ms`` (ms) bound
    the idempotency table (module docstring); they must be the same on every node. Raises
    ValueError for a negative bound or a TTL below 1 ms.
    """

    __slots__ = (
        "_capture",
        "_deadlines",
        "_idem",
        "_idem_bytes",
        "_idem_chunks",
        "_idem_clock",
        "_idem_head",
        "_keys",
        "data",
        "idempotency_max_bytes",
        "idempotency_max_keys",
        "idempotency_ttl_ms",
        "last_index",
        "listener",
        "listener_reset",
        "meta",
        "ttl_keys",
    )

    def __init__(
        self,
        *,
        idempotency_max_keys: int = 100_000,
        idempotency_ttl_ms: int = 600_000,
        idempotency_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if idempotency_max_keys < 0 or idempotency_max_bytes < 0 or idempotency_ttl_ms < 1:
            raise ValueError(
                "idempotency_max_keys and idempotency_max_bytes must be >= 0, "
                "idempotency_ttl_ms >= 1"
            )
        self.idempotency_max_keys = idempotency_max_keys
        self.idempotency_max_bytes = idempotency_max_bytes
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.listener: Callable[[KVChange], None] | None = None
        self.listener_reset: Callable[[int], None] | None = None
        self._capture: _KVImage | None = None
        self._clear()

    def _clear(self) -> None:
        self.data: MutableMapping[bytes, bytes] = {}
        self.meta: MutableMapping[bytes, Meta] = {}
        self.last_index = 0
        """The index of the last command applied (or of the restored image's)."""
        self._keys = SortedKeys()
        self._deadlines: list[tuple[int, bytes, int]] = []
        self.ttl_keys = 0
        """Keys that have a TTL deadline now (read-only outside apply and restore): while it
        is 0 a read needs no clock."""
        self._idem: dict[bytes, Record] = {}
        self._idem_chunks: deque[list[Record]] = deque()
        self._idem_head = 0
        self._idem_clock = 0
        self._idem_bytes = 0

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, command: bytes) -> bytes:
        """Apply a command of ``kv_commands`` committed at ``index``. Legacy commands return
        ``b""``, version-2 commands a result for ``decode_result``, an ignored command
        ``IGNORED``; never raises for a command's content (only what ``listener`` raises)."""
        if self._capture is not None and self._capture.finished:
            self._settle(MERGE_PER_APPLY)
        self.last_index = index
        plan: _Plan | None = None
        try:
            op = msgpack.unpackb(command)
            code = op[0]
            if code == OP_WRITE:
                if len(op) == 8 and op[3] == KIND_PUT:
                    # The most common command, decoded here without building a _Plan.
                    _, now_ms, idem, _, key, value, expires_at_ms, raw = op
                    compares = _decode_compares(raw, key) if raw else raw
                    if (
                        type(now_ms) is not int
                        or now_ms < 0
                        or not (idem is None or type(idem) is bytes)
                        or type(key) is not bytes
                        or type(value) is not bytes
                        or type(expires_at_ms) is not int
                        or expires_at_ms < 0
                        or type(compares) is not list
                    ):
                        return IGNORED
                    return self._put_v2(
                        index, now_ms, idem, key, value, expires_at_ms, compares, op
                    )
                if len(op) == 6 and op[3] == KIND_DELETE:
                    _, now_ms, idem, _, key, raw = op
                    compares = _decode_compares(raw, key) if raw else raw
                    if (
                        type(now_ms) is not int
                        or now_ms < 0
                        or not (idem is None or type(idem) is bytes)
                        or type(key) is not bytes
                        or type(compares) is not list
                    ):
                        return IGNORED
                    return self._delete_v2(index, now_ms, idem, key, compares, op)
                plan = _decode_v2(op)
                if plan is None:
                    return IGNORED
            elif code == OP_PUT:
                key, value = op[1], op[2]
                if not (isinstance(key, bytes) and isinstance(value, bytes)):
                    return IGNORED
            elif code == OP_DELETE:
                key = op[1]
                if not isinstance(key, bytes):
                    return IGNORED
            else:
                return b""
        except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException):
            return IGNORED
        # Decoded and validated: nothing below is caught (a listener's error stops the node).
        if plan is not None:
            return self._apply_v2(index, plan, op)
        if code == OP_PUT:
            self._set(index, key, value, 0)
        else:
            self._remove(index, key, "delete")
        return b""

    def _idempotent(self, now_ms: int, idem: bytes | None, command: list[Any]) -> bytes | None:
        """Advance the log's clock to ``now_ms`` (evicting by age); if ``idem`` is in the
        table, the remembered result (marked duplicate) when ``command`` is the same request
        (its fingerprint; a record without one: any request), else a ``KeyReused`` result;
        None if ``idem`` is not in the table."""
        if now_ms > self._idem_clock:
            self._idem_clock = now_ms
            self._evict(by_size=False)
        if idem is not None:
            record = self._idem.get(idem)
            if record is not None:
                if record[4] and record[4] != request_fingerprint(command):
                    return msgpack.packb((RESULT_REUSED, 0, record[2], None))
                return _as_duplicate(record[1])
        return None

    def _put_v2(
        self,
        index: int,
        now_ms: int,
        idem: bytes | None,
        key: bytes,
        value: bytes,
        expires_at_ms: int,
        compares: list[tuple[bytes, int, int, Any]],
        command: list[Any],
    ) -> bytes:
        """The body of apply for a version-2 put (decoded and validated)."""
        if now_ms > self._idem_clock or idem is not None:
            duplicate = self._idempotent(now_ms, idem, command)
            if duplicate is not None:
                return duplicate
        existed = self._expire_due(index, key, now_ms)
        if compares and not all(self._compare(c, now_ms) for c in compares):
            result = self._compare_failed(index, key, existed)
        else:
            self._set(index, key, value, expires_at_ms)
            result = _write_result(index, FLAG_SUCCEEDED | (FLAG_EXISTED * existed), None)
        if idem is not None:
            self._remember(idem, result, index, command)
        return result

    def _delete_v2(
        self,
        index: int,
        now_ms: int,
        idem: bytes | None,
        key: bytes,
        compares: list[tuple[bytes, int, int, Any]],
        command: list[Any],
    ) -> bytes:
        """The body of apply for a version-2 delete (decoded and validated)."""
        if now_ms > self._idem_clock or idem is not None:
            duplicate = self._idempotent(now_ms, idem, command)
            if duplicate is not None:
                return duplicate
        existed = self._expire_due(index, key, now_ms)
        if compares and not all(self._compare(c, now_ms) for c in compares):
            result = self._compare_failed(index, key, existed)
        else:
            removed = self._remove(index, key, "delete")
            result = _write_result(index, FLAG_SUCCEEDED | (FLAG_EXISTED * removed), None)
        if idem is not None:
            self._remember(idem, result, index, command)
        return result

    def _compare_failed(self, index: int, key: bytes, existed: bool) -> bytes:
        meta = self.meta.get(key)
        current = None if meta is None else [key, self.data[key], *meta]
        return _write_result(index, FLAG_EXISTED * existed, current)

    def _apply_v2(self, index: int, plan: _Plan, command: list[Any]) -> bytes:
        """The body of apply for a version-2 txn or expire (decoded and validated)."""
        now_ms, idem = plan.now_ms, plan.idempotency_key
        duplicate = self._idempotent(now_ms, idem, command)
        if duplicate is not None:
            return duplicate
        if plan.kind == KIND_TXN:
            result = self._apply_txn(index, plan)
        else:
            meta = self.meta.get(plan.key)
            removed = meta is not None and meta[1] == plan.mod_index and 0 < meta[2] <= now_ms
            if removed:
                self._remove(index, plan.key, "expire")
            flags = (FLAG_SUCCEEDED * removed) | (FLAG_EXISTED * (meta is not None))
            result = _write_result(index, flags, None)
        if idem is not None:
            self._remember(idem, result, index, command)
        return result

    def _apply_txn(self, index: int, plan: _Plan) -> bytes:
        now_ms = plan.now_ms
        succeeded = all(self._compare(c, now_ms) for c in plan.compares)
        branch = plan.success if succeeded else plan.failure
        if plan.max_read_bytes is not None:
            read = self._read_bytes(branch, now_ms)
            if read > plan.max_read_bytes:
                return msgpack.packb((RESULT_READ_TOO_LARGE, 0, index, [read, plan.max_read_bytes]))
        results: list[tuple[int, bytes, bool, list[Any] | None]] = []
        for op, key, value, expires_at_ms in branch:
            existed = self._expire_due(index, key, now_ms)
            if op == TXN_PUT:
                self._set(index, key, value, expires_at_ms)
                results.append((op, key, existed, None))
            elif op == TXN_DELETE:
                results.append((op, key, self._remove(index, key, "delete"), None))
            else:
                current = self.meta.get(key)
                item = None if current is None else [key, self.data[key], *current]
                results.append((op, key, existed, item))
        return msgpack.packb((RESULT_TXN, FLAG_SUCCEEDED if succeeded else 0, index, results))

    def _read_bytes(self, branch: list[tuple[int, bytes, bytes, int]], now_ms: int) -> int:
        """The keys and values the gets of ``branch`` would read (each get counted), without
        applying anything: a get sees the branch's earlier puts and deletes, else the state
        as of ``now_ms``."""
        written: dict[bytes, int | None] = {}
        total = 0
        for op, key, value, _ in branch:
            if op == TXN_PUT:
                written[key] = len(value)
            elif op == TXN_DELETE:
                written[key] = None
            else:
                if key in written:
                    size = written[key]
                else:
                    meta = self.meta.get(key)
                    live = meta is not None and not 0 < meta[2] <= now_ms
                    size = len(self.data[key]) if live else None
                if size is not None:
                    total += len(key) + size
        return total

    def _compare(self, compare: tuple[bytes, int, int, Any], now_ms: int) -> bool:
        key, target, op, operand = compare
        meta = self.meta.get(key)
        if meta is not None and 0 < meta[2] <= now_ms:
            meta = None
        if target == _VALUE:
            return meta is not None and _holds(self.data[key], op, operand)
        if target == _EXISTS:
            return _holds(meta is not None, op, operand)
        actual = 0 if meta is None else meta[1] if target == _MOD else meta[0]
        return _holds(actual, op, operand)

    def _expire_due(self, index: int, key: bytes, now_ms: int) -> bool:
        """Remove ``key`` (reported as ``expire``) if its deadline is at or before ``now_ms``,
        before a command writes it; True if the key exists (and was not expired)."""
        meta = self.meta.get(key)
        if meta is None:
            return False
        if 0 < meta[2] <= now_ms:
            self._remove(index, key, "expire")
            return False
        return True

    def _set(self, index: int, key: bytes, value: bytes, expires_at_ms: int) -> Meta:
        meta_map = self.meta
        old = meta_map.get(key)
        if old is None:
            meta = (index, index, expires_at_ms)
            self._keys.add(key)
        else:
            meta = (old[0], index, expires_at_ms)
            if old[2]:
                self.ttl_keys -= 1
        self.data[key] = value
        meta_map[key] = meta
        if expires_at_ms:
            self.ttl_keys += 1
            heapq.heappush(self._deadlines, (expires_at_ms, key, index))
            if len(self._deadlines) > 2 * self.ttl_keys + DEADLINE_SLACK:
                self._rebuild_deadlines()
        listener = self.listener
        if listener is not None:
            listener(KVChange(index, key, value, "put"))
        return meta

    def _remove(self, index: int, key: bytes, kind: Any) -> bool:
        old = self.meta.pop(key, None)
        if old is None:
            return False
        del self.data[key]
        self._keys.discard(key)
        if old[2]:
            self.ttl_keys -= 1
        listener = self.listener
        if listener is not None:
            listener(KVChange(index, key, None, kind))
        return True

    def _rebuild_deadlines(self) -> None:
        """Drop the heap entries of keys overwritten or deleted before their deadline."""
        meta = self.meta
        live = []
        for entry in self._deadlines:
            current = meta.get(entry[1])
            if current is not None and current[1] == entry[2] and current[2] == entry[0]:
                live.append(entry)
        heapq.heapify(live)
        self._deadlines = live

    # ------------------------------------------------------------------ idempotency table

    def _remember(self, idem: bytes, result: bytes, index: int, command: list[Any]) -> None:
        record = (idem, result, index, self._idem_clock, request_fingerprint(command))
        chunks = self._idem_chunks
        if not chunks or len(chunks[-1]) >= IDEMPOTENCY_CHUNK:
            chunks.append([])
        chunks[-1].append(record)
        self._idem[idem] = record
        self._idem_bytes += _record_bytes(record)
        self._evict(by_size=True)

    def _evict(self, *, by_size: bool) -> None:
        """Evict the oldest records while the oldest is ``idempotency_ttl_ms`` (or more) older
        than the log's clock or, ``by_size``, while the table is over its count or byte
        bound (checked where it grows: a record added, a restore)."""
        table, chunks = self._idem, self._idem_chunks
        oldest_kept = self._idem_clock - self.idempotency_ttl_ms
        while chunks:
            chunk = chunks[0]
            record = chunk[self._idem_head]
            if record[3] > oldest_kept and not (
                by_size
                and (
                    len(table) > self.idempotency_max_keys
                    or self._idem_bytes > self.idempotency_max_bytes
                )
            ):
                break
            del table[record[0]]
            self._idem_bytes -= _record_bytes(record)
            self._idem_head += 1
            if self._idem_head == len(chunk):
                # Drop the chunk; a capture still holding it keeps its records unchanged.
                chunks.popleft()
                self._idem_head = 0

    def _idem_records(self) -> Iterator[Record]:
        """The table's records, oldest first (live state; for tests and the model)."""
        for position, chunk in enumerate(self._idem_chunks):
            yield from chunk[self._idem_head if position == 0 else 0 :]

    @property
    def idempotency_keys(self) -> int:
        """Records in the idempotency table now."""
        return len(self._idem)

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes, now_ms: int | None = None) -> bytes | None:
        """The value of ``key`` as of the last applied command; None if absent, or (with
        ``now_ms``, this node's wall clock in ms) past its TTL deadline. Not a linearizable
        read by itself: the caller's read barrier makes it one."""
        if now_ms is not None and self.ttl_keys:
            meta = self.meta.get(key)
            if meta is not None and 0 < meta[2] <= now_ms:
                return None
        return self.data.get(key)

    def get_item(self, key: bytes, now_ms: int) -> KVItem | None:
        """``key`` with its indexes and deadline; None if absent or its deadline is at or
        before ``now_ms`` (this node's wall clock, ms since the epoch)."""
        meta = self.meta.get(key)
        if meta is None or 0 < meta[2] <= now_ms:
            return None
        return KVItem(key, self.data[key], *meta)

    def range(
        self, prefix: bytes, after: bytes | None, limit: int, now_ms: int
    ) -> tuple[list[KVItem], bytes | None]:
        """Up to ``limit`` (>= 1) keys starting with ``prefix`` (``b""``: all), strictly after
        ``after`` if given, in byte order, skipping keys past their deadline at ``now_ms``.
        Returns ``(items, next)``: ``next`` is the last key returned when more follow (pass it
        as ``after`` for the next page), else None. O(log n + limit + expired keys skipped).
        Raises ValueError for ``limit < 1``."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        start = prefix
        if after is not None and after >= start:
            start = after + b"\x00"
        items: list[KVItem] = []
        for key in self._keys.iter_from(start):
            if not key.startswith(prefix):
                break
            item = self.get_item(key, now_ms)
            if item is None:
                continue
            if len(items) == limit:
                return items, items[-1].key
            items.append(item)
        return items, None

    def expired(self, now_ms: int, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` keys whose deadline is at or before ``now_ms``, earliest first, as
        ``(key, mod_index)`` for ``encode_expire``. For the leader's expirer; O((limit +
        stale entries) log n). Changes nothing a replica could disagree on."""
        heap, meta = self._deadlines, self.meta
        found: list[tuple[bytes, int]] = []
        held: list[tuple[int, bytes, int]] = []
        while heap and len(found) < limit:
            entry = heap[0]
            if entry[0] > now_ms:
                break
            heapq.heappop(heap)
            current = meta.get(entry[1])
            if current is None or current[1] != entry[2] or current[2] != entry[0]:
                continue  # overwritten or deleted since: a stale entry
            found.append((entry[1], entry[2]))
            held.append(entry)
        for entry in held:
            heapq.heappush(heap, entry)
        return found

    # ------------------------------------------------------------------ snapshots

    def reset(self) -> None:
        """Empty the state (before the log is replayed); an image not yet started is
        abandoned, one being written keeps its own frozen copy. Calls ``listener_reset(0)``."""
        self._abandon()
        self._clear()
        if self.listener_reset is not None:
            self.listener_reset(0)

    def snapshot(self) -> SnapshotImage:
        """O(1) on the loop: the live dicts are frozen as the image, and changes made until the
        image is written go to overlays (``_CaptureView``), merged back afterwards; the
        idempotency table's chunks are referenced (append-only).

        Raises ``RuntimeError`` if the previous image is being written right now; one that was
        never started is abandoned (calling it later raises ``RuntimeError``).
        """
        if self._capture is not None:
            if not (self._capture.finished or self._capture.abandon()):
                raise RuntimeError("the previous snapshot image is still being written")
            self._settle()
        assert isinstance(self.data, dict) and isinstance(self.meta, dict)
        chunks = tuple(self._idem_chunks)
        image = _KVImage(
            _KVState(
                self.data,
                self.meta,
                _IdempotencyCapture(chunks, self._idem_head, len(chunks[-1]) if chunks else 0),
                self.last_index,
                self._idem_clock,
            )
        )
        self.data = _CaptureView(self.data)
        self.meta = _CaptureView(self.meta)
        self._capture = image
        return image

    def restore(self, source: SnapshotSource) -> None:
        """Replace the state by the image in ``source`` (``read_kv_state``: version 3, 2 or 1),
        read fully first: on ``SnapshotImageError`` or an error of ``source.read`` the state is
        unchanged. Then calls ``listener_reset`` with the image's last applied index."""
        state = read_kv_state(source)
        keys = SortedKeys(state.data)
        deadlines = _sorted_in_runs([(m[2], key, m[1]) for key, m in state.meta.items() if m[2]])
        table: dict[bytes, Record] = {}
        chunks: deque[list[Record]] = deque()
        for record in state.idempotency.records():
            if not chunks or len(chunks[-1]) >= IDEMPOTENCY_CHUNK:
                chunks.append([])
            chunks[-1].append(record)
            table[record[0]] = record
        size = sum(_record_bytes(record) for record in table.values())
        self._abandon()
        self._clear()
        self.data, self.meta = state.data, state.meta
        self.last_index, self._idem_clock = state.last_index, state.idempotency_clock
        self._keys, self._deadlines, self.ttl_keys = keys, deadlines, len(deadlines)
        self._idem, self._idem_chunks, self._idem_bytes = table, chunks, size
        # A table written under larger bounds than this node's: evict down to ours now.
        self._evict(by_size=True)
        if self.listener_reset is not None:
            self.listener_reset(state.last_index)

    def _settle(self, limit: int | None = None) -> None:
        """Move up to ``limit`` (None: all) changes of each overlay into its frozen dict, once
        its image is written (or abandoned); when none are left, the dicts are live again.

        ``apply`` moves ``MERGE_PER_APPLY`` at a time, so the overlay drains that many times
        faster than writes arrive, without one long merge on the loop.
        """
        data, meta = self.data, self.meta
        assert isinstance(data, _CaptureView) and isinstance(meta, _CaptureView)
        data.draining = meta.draining = True
        data_done = data.merge(limit)
        if meta.merge(limit) and data_done:
            self.data = data.base
            self.meta = meta.base
            self._capture = None

    def _abandon(self) -> None:
        """Drop the capture without merging: the state is about to be replaced. An image being
        written keeps its frozen dicts, which nothing changes any more."""
        if self._capture is not None:
            self._capture.abandon()
            self._capture = None


_DELETED = object()
MERGE_PER_APPLY = 16
"""Overlay entries ``KVStateMachine.apply`` moves back into each dict after a snapshot image was
written: ~1.75 us each (1,000,000 keys), so at most ~60 us added to an apply (values and
metadata)."""

_V = TypeVar("_V")


class _CaptureView(MutableMapping[bytes, _V]):
    """The live state while a snapshot image is written: ``base`` (frozen: the image reads it
    in a worker thread) plus ``changes``, each key written since mapped to its value or to
    ``_DELETED``."""

    __slots__ = ("base", "changes", "draining")

    def __init__(self, base: dict[bytes, _V]) -> None:
        self.base = base
        self.changes: dict[bytes, object] = {}
        # Set once the image is written: writes then go to ``base`` (dropping the key's
        # change), so ``changes`` only shrinks and never grows (no table rebuild on the loop).
        self.draining = False

    def __getitem__(self, key: bytes) -> _V:
        value = self.changes.get(key, self)
        if value is self:
            return self.base[key]
        if value is _DELETED:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def get(self, key: bytes, default: Any = None) -> Any:
        value = self.changes.get(key, self)
        if value is self:
            return self.base.get(key, default)
        if value is _DELETED:
            return default
        return value

    def __contains__(self, key: object) -> bool:
        value = self.changes.get(key, self)  # type: ignore[call-overload]
        if value is self:
            return key in self.base
        return value is not _DELETED

    def __setitem__(self, key: bytes, value: _V) -> None:
        if self.draining:
            self.base[key] = value
            self.changes.pop(key, None)
        else:
            self.changes[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        if self.draining:
            self.base.pop(key, None)
            self.changes.pop(key, None)
        else:
            self.changes[key] = _DELETED

    def pop(self, key: bytes, default: Any = None) -> Any:
        value = self.get(key, _DELETED)
        if value is _DELETED:
            return default
        del self[key]
        return value

    def __iter__(self) -> Iterator[bytes]:
        for key in self.base:
            if key not in self.changes:
                yield key
        for key, value in self.changes.items():
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        size = len(self.base)
        for key, value in self.changes.items():
            if key in self.base:
                size -= value is _DELETED
            else:
                size += value is not _DELETED
        return size

    def merge(self, limit: int | None) -> bool:
        """Move up to ``limit`` (None: all) changes into ``base`` (only once the image is
        written and ``draining`` is set); True when none are left. Every read in between
        stays correct: a key is in ``changes`` until its value is in ``base``."""
        base, changes = self.base, self.changes
        for _ in range(len(changes) if limit is None else min(limit, len(changes))):
            key, value = changes.popitem()
            if value is _DELETED:
                base.pop(key, None)
            else:
                base[key] = value  # type: ignore[assignment]
        return not changes


class _IdempotencyCapture(NamedTuple):
    """The idempotency table at a capture: its chunks (append-only lists; a later append goes
    past ``last_length`` or to a newer chunk), the first record's offset in the first chunk,
    and the last chunk's length then."""

    chunks: tuple[list[Record], ...]
    head: int
    last_length: int

    def records(self) -> Iterator[Record]:
        last = len(self.chunks) - 1
        for position, chunk in enumerate(self.chunks):
            start = self.head if position == 0 else 0
            end = self.last_length if position == last else len(chunk)
            yield from chunk[start:end]


_NO_IDEMPOTENCY = _IdempotencyCapture((), 0, 0)


class _KVState(NamedTuple):
    """A whole state as an image holds it."""

    data: dict[bytes, bytes]
    meta: dict[bytes, Meta]
    idempotency: _IdempotencyCapture
    last_index: int
    idempotency_clock: int


class _KVImage:
    """The image ``KVStateMachine.snapshot`` returns: call it once, with a sink, in a worker
    thread. States: pending, then running (its call) and finished; or abandoned before it ran."""

    __slots__ = ("_lock", "_state", "_value")

    def __init__(self, state: _KVState) -> None:
        self._value = state
        self._lock = threading.Lock()
        self._state = "pending"

    @property
    def finished(self) -> bool:
        return self._state in ("finished", "abandoned")

    def abandon(self) -> bool:
        """Give the image up unless it is being written; True if it is not running."""
        with self._lock:
            if self._state == "pending":
                self._state = "abandoned"
            return self._state != "running"

    def __call__(self, sink: SnapshotSink) -> None:
        with self._lock:
            if self._state != "pending":
                raise RuntimeError(f"this snapshot image was already {self._state}")
            self._state = "running"
        try:
            write_kv_image(self._value, sink)
        finally:
            self._state = "finished"


KV_IMAGE_MAGIC = b"DTKV"
KV_IMAGE_VERSION = 3
KV_IMAGE_VERSIONS = (1, 2, 3)
"""Versions ``read_kv_state`` decodes."""
_KV_PREFIX = struct.Struct("<4sI")
KV_BATCH_BYTES = 256 * 1024
"""A batch is closed once its keys and values (+ 16 bytes a key for its indexes) reach this
many bytes, or KV_BATCH_KEYS keys: small enough that packing one holds the GIL briefly, large
enough to amortize msgpack calls."""
KV_BATCH_KEYS = 4096
_KV_READ_BYTES = 256 * 1024
_META_BYTES = 16


def write_kv_image(state: _KVState, sink: SnapshotSink) -> None:
    """Serialize ``state`` (not changed by anyone meanwhile) to ``sink`` as a version-3 image,
    in batches of ``KV_BATCH_BYTES`` (256 KiB) or ``KV_BATCH_KEYS`` keys; raises what
    ``sink.write`` raises."""
    sink.write(_KV_PREFIX.pack(KV_IMAGE_MAGIC, KV_IMAGE_VERSION))
    packer = msgpack.Packer()
    sink.write(packer.pack((state.last_index, state.idempotency_clock)))
    meta = state.meta
    batch: list[object] = []
    batch_bytes = 0
    for key, value in state.data.items():
        create_index, mod_index, expires_at_ms = meta[key]
        batch += (key, value, create_index, mod_index, expires_at_ms)
        batch_bytes += len(key) + len(value) + _META_BYTES
        if batch_bytes >= KV_BATCH_BYTES or len(batch) >= 5 * KV_BATCH_KEYS:
            sink.write(packer.pack(batch))
            batch = []
            batch_bytes = 0
    if batch:
        sink.write(packer.pack(batch))
    sink.write(packer.pack(len(state.data)))
    batch, batch_bytes, count = [], 0, 0
    for record in state.idempotency.records():
        batch += record
        batch_bytes += _record_bytes(record) + _META_BYTES
        count += 1
        if batch_bytes >= KV_BATCH_BYTES or len(batch) >= 5 * KV_BATCH_KEYS:
            sink.write(packer.pack(batch))
            batch = []
            batch_bytes = 0
    if batch:
        sink.write(packer.pack(batch))
    sink.write(packer.pack(count))


def read_kv_image(source: SnapshotSource) -> dict[bytes, bytes]:
    """The keys and values of an image (version 1, 2 or 3); ``read_kv_state`` has the rest.
    Raises as ``read_kv_state``."""
    return read_kv_state(source).data


def _is_count(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def read_kv_state(source: SnapshotSource) -> _KVState:
    """Decode an image ``write_kv_image`` wrote (version 3; version 2, whose idempotency
    records have no fingerprint; or version 1 of before issue 17);
    read ``source`` to its end (``b""``).

    Raises ``SnapshotImageError`` when it is not a KV image of a known version or is
    malformed; whatever ``source.read`` raises propagates.
    """
    prefix = b""
    while len(prefix) < _KV_PREFIX.size:
        more = source.read(_KV_PREFIX.size - len(prefix))
        if not more:
            raise SnapshotImageError(f"image ends after {len(prefix)} bytes")
        prefix += more
    magic, version = _KV_PREFIX.unpack(prefix)
    if magic != KV_IMAGE_MAGIC:
        raise SnapshotImageError(f"not a key-value image (magic {magic!r})")
    if version not in KV_IMAGE_VERSIONS:
        raise SnapshotImageError(
            f"key-value image version {version}, expected one of {KV_IMAGE_VERSIONS}"
        )
    unpacker = msgpack.Unpacker(source, read_size=_KV_READ_BYTES)
    try:
        if version == 1:
            return _read_v1(unpacker)
        return _read_v2(unpacker, 5 if version == 3 else 4)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        if isinstance(exc, SnapshotImageError):
            raise
        raise SnapshotImageError(f"malformed key-value image: {exc}") from None


def _read_v1(unpacker: msgpack.Unpacker) -> _KVState:
    data: dict[bytes, bytes] = {}
    count: int | None = None
    for item in unpacker:
        if count is not None:
            raise SnapshotImageError("data after the end of the image")
        if _is_count(item):
            count = item
            continue
        if not isinstance(item, list) or len(item) % 2:
            raise SnapshotImageError("a batch is not a list of key, value pairs")
        for position in range(0, len(item), 2):
            key, value = item[position], item[position + 1]
            if not (isinstance(key, bytes) and isinstance(value, bytes)):
                raise SnapshotImageError("a key or value is not bytes")
            data[key] = value
    if count is None:
        raise SnapshotImageError("the image ends before its key count")
    if count != len(data):
        raise SnapshotImageError(f"the image holds {len(data)} keys, its end says {count}")
    # Version 1 kept no indexes: 1 stands for "at or before the image" (0 means absent).
    meta: Meta = (1, 1, 0)
    return _KVState(data, dict.fromkeys(data, meta), _NO_IDEMPOTENCY, 0, 0)


def _read_v2(unpacker: msgpack.Unpacker, width: int) -> _KVState:
    """Versions 2 (idempotency records of ``width`` 4) and 3 (5: with a fingerprint)."""
    items = iter(unpacker)
    header = next(items, None)
    if not (isinstance(header, list) and len(header) == 2 and all(_is_index(x) for x in header)):
        raise SnapshotImageError("the image does not start with its index and clock")
    data: dict[bytes, bytes] = {}
    meta: dict[bytes, Meta] = {}
    for item in items:
        if _is_count(item):
            if item != len(data):
                raise SnapshotImageError(f"the image holds {len(data)} keys, its count {item}")
            break
        if not isinstance(item, list) or len(item) % 5:
            raise SnapshotImageError("a key batch is not a list of 5-tuples")
        for at in range(0, len(item), 5):
            key, value, create_index, mod_index, expires_at_ms = item[at : at + 5]
            if not (isinstance(key, bytes) and isinstance(value, bytes)):
                raise SnapshotImageError("a key or value is not bytes")
            if not (_is_index(create_index) and _is_index(mod_index)):
                raise SnapshotImageError("a key's index is not an int >= 0")
            if not _is_index(expires_at_ms):
                raise SnapshotImageError("a key's deadline is not an int >= 0")
            data[key] = value
            meta[key] = (create_index, mod_index, expires_at_ms)
    else:
        raise SnapshotImageError("the image ends before its key count")
    records: list[Record] = []
    seen: set[bytes] = set()
    count: int | None = None
    for item in items:
        if count is not None:
            raise SnapshotImageError("data after the end of the image")
        if _is_count(item):
            count = item
            continue
        if not isinstance(item, list) or len(item) % width:
            raise SnapshotImageError(f"an idempotency batch is not a list of {width}-tuples")
        for at in range(0, len(item), width):
            idem, result, index, clock = item[at : at + 4]
            fingerprint = item[at + 4] if width == 5 else b""
            if not (isinstance(idem, bytes) and isinstance(result, bytes) and len(result) > 2):
                raise SnapshotImageError("an idempotency record is not bytes")
            if not (_is_index(index) and _is_index(clock)) or idem in seen:
                raise SnapshotImageError("an idempotency record is malformed")
            if not (type(fingerprint) is bytes and len(fingerprint) in (0, FINGERPRINT_BYTES)):
                raise SnapshotImageError("an idempotency record's fingerprint is malformed")
            seen.add(idem)
            records.append((idem, result, index, clock, fingerprint))
    if count is None:
        raise SnapshotImageError("the image ends before its idempotency count")
    if count != len(records):
        raise SnapshotImageError(f"the image holds {len(records)} records, its count {count}")
    return _KVState(
        data, meta, _IdempotencyCapture((records,), 0, len(records)), header[0], header[1]
    )
