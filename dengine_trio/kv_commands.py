"""Commands and results of the default key-value state machine (``KVStateMachine``, issue 17).

A command is msgpack; ``KVStateMachine.apply`` decodes it on every replica, so its encoding is
part of the log format and never changes meaning. Two generations:

* Legacy (before issue 17, still decoded from old logs): ``[0, key, value]`` (put) and
  ``[1, key]`` (delete), made by ``encode_put`` / ``encode_delete``. Their result is ``b""``.
* Version 2, one envelope for every write: ``[2, now_ms, idempotency_key | nil, kind, ...]``
  with ``now_ms`` the proposer's wall clock (ms since the epoch) when it encoded the command:

  - put:    ``[.., 0, key, value, expires_at_ms, compares]`` (``encode_kv_put``)
  - delete: ``[.., 1, key, compares]`` (``encode_kv_delete``)
  - txn:    ``[.., 2, compares, success_ops, failure_ops]`` (``encode_txn``), optionally
    followed by ``max_read_bytes``: the most bytes of keys and values the branch's gets may
    read, else the txn applies nothing and answers ``TxnReadTooLarge``
  - expire: ``[.., 3, key, mod_index]`` (``encode_expire``; never an idempotency key)

  A put's or delete's ``compares`` are ``[target, op, operand]`` on its own key (compare-and-
  swap); a txn's are ``[key, target, op, operand]``. ``target``: 0 value (operand bytes),
  1 exists (operand bool), 2 mod_index, 3 create_index (operand int >= 0); ``op``: 0 ``==``,
  1 ``!=``, 2 ``<``, 3 ``>``. Txn ops: ``[0, key, value, expires_at_ms]`` put, ``[1, key]``
  delete, ``[2, key]`` get.

Every version-2 command returns a result (``decode_result``): ``[0, flags, index, item | nil]``
(``WriteResult``), ``[1, flags, index, [op_result, ...]]`` (``TxnResult``) or ``[2, 0,
original_index, nil]`` (``KeyReused``: the idempotency key names another request) or ``[3,
flags, index, [read_bytes, max_read_bytes]]`` (``TxnReadTooLarge``), ``flags`` a
positive fixint (bit 0 succeeded, bit 1 duplicate, bit 2 existed) at byte offset 2, so a replay
sets the duplicate bit without re-encoding; an item is ``[key, value, create_index, mod_index,
expires_at_ms]``, an op result ``[op, key, existed, item | nil]``.

Compare semantics are etcd's ``Txn`` (etcd API reference, "Transaction"): an absent key has
``mod_index`` and ``create_index`` 0 and fails every value compare; so ``prev_index=0`` means
"must not exist", like ``prev_value=None``. A key whose TTL deadline is at or before the
command's ``now_ms`` counts as absent.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

OP_PUT = 0
"""Legacy put ``[0, key, value]``."""
OP_DELETE = 1
"""Legacy delete ``[1, key]``."""
OP_WRITE = 2
"""The version-2 envelope ``[2, now_ms, idempotency_key, kind, ...]``."""

KIND_PUT = 0
KIND_DELETE = 1
KIND_TXN = 2
KIND_EXPIRE = 3

TXN_PUT = 0
TXN_DELETE = 1
TXN_GET = 2

TARGETS: dict[str, int] = {"value": 0, "exists": 1, "mod": 2, "create": 3}
"""Compare targets by name (``Compare.target``) and their code in a command."""
COMPARE_OPS: dict[str, int] = {"==": 0, "!=": 1, "<": 2, ">": 3}
"""Compare operators by name (``Compare.op``) and their code in a command."""

RESULT_WRITE = 0
RESULT_TXN = 1
RESULT_REUSED = 2
RESULT_READ_TOO_LARGE = 3
FLAG_SUCCEEDED = 1
FLAG_DUPLICATE = 2
FLAG_EXISTED = 4

_TXN_OP_NAMES = ("put", "delete", "get")

MAX_INDEX = 2**63 - 1
"""The largest index (and ``now_ms``, deadline, bound) a command carries: msgpack's int64
range, so a larger int is a ValueError here rather than msgpack's OverflowError."""
MAX_TTL_MS = 2**53
"""The longest TTL the Client and HTTP take (ms; JSON's exact integers)."""


class _Unset(enum.Enum):
    """The type of ``UNSET``: ``prev_value`` not given (None has a meaning of its own)."""

    UNSET = 0


UNSET = _Unset.UNSET
"""``prev_value`` not given (``None`` means "the key must not exist")."""
Unset = _Unset
"""The type of ``UNSET``, for annotations (``bytes | Unset | None``)."""


@dataclass(frozen=True, slots=True)
class KVItem:
    """A key as the state machine holds it. ``create_index``: the Raft index of the write that
    created it (since it was last absent); ``mod_index``: of its last modification;
    ``expires_at_ms``: absolute wall-clock deadline in ms since the epoch, 0 = no TTL."""

    key: bytes
    value: bytes
    create_index: int
    mod_index: int
    expires_at_ms: int = 0


@dataclass(slots=True)
class KVChange:
    """One change, as ``KVStateMachine.listener`` receives it: ``index`` the Raft index of the
    command (a txn's changes share it), ``value`` None unless ``kind`` is ``"put"``. Treat it
    as read-only; not frozen because one is made per change on the apply path, and a frozen
    dataclass costs ~0.3 us more to construct (its ``__init__`` goes through
    ``object.__setattr__``)."""

    index: int
    key: bytes
    value: bytes | None
    kind: Literal["put", "delete", "expire"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One compare of a txn: ``target`` of ``key`` ``op`` ``operand``.

    ``target`` "value" (operand bytes), "exists" (operand bool; ``op`` "==" or "!="),
    "mod" / "create" (the key's mod_index / create_index, operand int >= 0; 0 for an absent
    key). ``op`` one of ``==``, ``!=``, ``<``, ``>`` (bytes compare in byte order)."""

    key: bytes
    target: Literal["value", "exists", "mod", "create"]
    op: Literal["==", "!=", "<", ">"]
    operand: bytes | bool | int


@dataclass(frozen=True, slots=True)
class Put:
    """Txn op: set ``key`` to ``value``; ``expires_at_ms`` absolute deadline (0 = no TTL)."""

    key: bytes
    value: bytes
    expires_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    """Txn op: remove ``key`` (absent: nothing happens, ``existed`` False)."""

    key: bytes


@dataclass(frozen=True, slots=True)
class Get:
    """Txn op: read ``key`` as of this point of the txn (earlier ops of the txn included)."""

    key: bytes


TxnOp = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a version-2 put, delete or expire answers.

    ``index``: the Raft index it applied at (for a ``duplicate``, the original's).
    ``succeeded``: its compares held and it was applied (an expire: the key was removed).
    ``existed``: the key existed (not expired) before the write. ``item``: when a compare
    failed, the key as it is (None: absent), which is what a 409 ``compare_failed`` shows;
    None otherwise (a put's mod_index is ``index``, its create_index too if not ``existed``).
    ``duplicate``: an idempotent replay (nothing was applied this time)."""

    index: int
    succeeded: bool
    duplicate: bool
    existed: bool
    item: KVItem | None


@dataclass(frozen=True, slots=True)
class OpResult:
    """The result of one op of the branch a txn ran, in op order. ``existed``: the key
    existed before the op; ``item``: for a get, the key (None: absent); None for a put or a
    delete (a put's mod_index is the txn's index)."""

    kind: Literal["put", "delete", "get"]
    key: bytes
    existed: bool
    item: KVItem | None


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a txn answers: ``succeeded`` True if every compare held (the ``success`` ops ran),
    False if the ``failure`` ops ran; ``results`` one per op of that branch."""

    index: int
    succeeded: bool
    duplicate: bool
    results: tuple[OpResult, ...]


@dataclass(frozen=True, slots=True)
class KeyReused:
    """What a write answers when its idempotency key was first used by a different request
    (another kind of write, or the same kind with another key, value, TTL, compares or ops):
    nothing was applied and nothing remembered; ``index`` is the original request's.

    Why refuse rather than replay the stored outcome: a replay would hand a put the outcome
    of a txn (or of a put of another value) as if it were its own, and the client would
    believe a write applied that never was. The IETF draft "The Idempotency-Key HTTP Header
    Field" (section 2.7) and Stripe answer such a reuse with an error too (422 / 400)."""

    index: int


@dataclass(frozen=True, slots=True)
class TxnReadTooLarge:
    """What a txn with ``max_read_bytes`` answers when the gets of the branch that would run
    read more than that (keys plus values, each get counted, ``read_bytes`` in all): nothing
    was applied. A get copies its value into the answer, so without this a small txn of N
    gets of one big key built an answer of N times the value on every replica at apply."""

    index: int
    duplicate: bool
    read_bytes: int
    max_read_bytes: int


def _idempotency(key: bytes | str | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError("idempotency_key must be bytes, str or None")


def _check_bytes(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")


def _check_index(name: str, value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_INDEX:
        raise ValueError(f"{name} must be an int from 0 to {MAX_INDEX}")


def _cas(prev_value: bytes | _Unset | None, prev_index: int | None) -> list[list[object]]:
    compares: list[list[object]] = []
    if prev_value is None:
        compares.append([TARGETS["exists"], COMPARE_OPS["=="], False])
    elif prev_value is not UNSET:
        _check_bytes("prev_value", prev_value)
        compares.append([TARGETS["value"], COMPARE_OPS["=="], prev_value])
    if prev_index is not None:
        _check_index("prev_index", prev_index)
        compares.append([TARGETS["mod"], COMPARE_OPS["=="], prev_index])
    return compares


def encode_kv_put(
    key: bytes,
    value: bytes,
    *,
    now_ms: int,
    expires_at_ms: int = 0,
    prev_value: bytes | _Unset | None = UNSET,
    prev_index: int | None = None,
    idempotency_key: bytes | str | None = None,
) -> bytes:
    """A version-2 put: set ``key`` to ``value``; answers a ``WriteResult``.

    ``now_ms``: the proposer's wall clock (ms since the epoch); ``expires_at_ms``: absolute
    deadline ``now_ms + ttl_ms`` computed once here by the proposer (0 = no TTL).
    Compare-and-swap: ``prev_value`` bytes (the key must hold it) or None (it must not
    exist); ``prev_index`` (its mod_index must equal it; 0: must not exist). Both may be
    given (both must hold). ``idempotency_key``: a retry with the same key returns the first
    outcome and applies nothing (``KVStateMachine`` docstring). Size limits are the caller's.
    Raises TypeError / ValueError for arguments of the wrong type or a negative index.
    """
    _check_bytes("key", key)
    _check_bytes("value", value)
    _check_index("now_ms", now_ms)
    _check_index("expires_at_ms", expires_at_ms)
    return msgpack.packb(
        (
            OP_WRITE,
            now_ms,
            _idempotency(idempotency_key),
            KIND_PUT,
            key,
            value,
            expires_at_ms,
            _cas(prev_value, prev_index),
        )
    )


def encode_kv_delete(
    key: bytes,
    *,
    now_ms: int,
    prev_value: bytes | _Unset | None = UNSET,
    prev_index: int | None = None,
    idempotency_key: bytes | str | None = None,
) -> bytes:
    """A version-2 delete of ``key``; answers a ``WriteResult`` (``existed``: something was
    deleted). Compares and ``idempotency_key`` as ``encode_kv_put``."""
    _check_bytes("key", key)
    _check_index("now_ms", now_ms)
    return msgpack.packb(
        (
            OP_WRITE,
            now_ms,
            _idempotency(idempotency_key),
            KIND_DELETE,
            key,
            _cas(prev_value, prev_index),
        )
    )


def _compare(compare: Compare) -> list[object]:
    _check_bytes("compare key", compare.key)
    target = TARGETS.get(compare.target)
    op = COMPARE_OPS.get(compare.op)
    if target is None:
        raise ValueError(f"unknown compare target {compare.target!r}")
    if op is None:
        raise ValueError(f"unknown compare op {compare.op!r}")
    operand = compare.operand
    if compare.target == "value":
        _check_bytes("a value compare's operand", operand)
    elif compare.target == "exists":
        if not isinstance(operand, bool) or compare.op not in ("==", "!="):
            raise ValueError("an exists compare takes == or != and a bool")
    else:
        _check_index(f"a {compare.target} compare's operand", operand)
    return [compare.key, target, op, operand]


def _txn_ops(ops: Sequence[TxnOp]) -> list[list[object]]:
    encoded: list[list[object]] = []
    written: set[bytes] = set()
    for op in ops:
        _check_bytes("an op's key", op.key)
        if isinstance(op, Put):
            _check_bytes("a put's value", op.value)
            _check_index("expires_at_ms", op.expires_at_ms)
            encoded.append([TXN_PUT, op.key, op.value, op.expires_at_ms])
        elif isinstance(op, Delete):
            encoded.append([TXN_DELETE, op.key])
        elif isinstance(op, Get):
            encoded.append([TXN_GET, op.key])
            continue
        else:
            raise TypeError(f"not a txn op: {op!r}")
        if op.key in written:
            # etcd refuses this too ("duplicate key given in txn request"): one index, one
            # change per key, so a watcher never sees two events of one key at one index.
            raise ValueError(
                f"key {op.key.decode('utf-8', 'replace')!r} is written twice in one branch"
            )
        written.add(op.key)
    return encoded


def encode_txn(
    compares: Sequence[Compare],
    success: Sequence[TxnOp],
    failure: Sequence[TxnOp] = (),
    *,
    now_ms: int,
    idempotency_key: bytes | str | None = None,
    max_read_bytes: int | None = None,
) -> bytes:
    """A transaction, applied atomically at one index (etcd ``Txn``): if every compare holds
    the ``success`` ops run in order, else the ``failure`` ops; answers a ``TxnResult``.
    Each op sees the ops before it. The number of ops and bytes is the caller's to bound
    (``max_txn_ops``); ``max_read_bytes`` (None: unbounded) bounds the keys and values the
    branch's gets read (``TxnReadTooLarge`` beyond, nothing applied). Raises ValueError for a
    key written twice in one branch, an unknown compare target or op, a bad operand or
    bound; TypeError for a wrong type."""
    _check_index("now_ms", now_ms)
    command: tuple[object, ...] = (
        OP_WRITE,
        now_ms,
        _idempotency(idempotency_key),
        KIND_TXN,
        [_compare(c) for c in compares],
        _txn_ops(success),
        _txn_ops(failure),
    )
    if max_read_bytes is not None:
        _check_index("max_read_bytes", max_read_bytes)
        command += (max_read_bytes,)
    return msgpack.packb(command)


def encode_expire(key: bytes, mod_index: int, *, now_ms: int) -> bytes:
    """The leader's deletion of a key whose deadline passed (``KVStateMachine.expired``):
    applies only if the key still has this ``mod_index`` and a deadline <= ``now_ms``, so a
    key rewritten meanwhile survives; answers a ``WriteResult`` (``succeeded``: removed)."""
    _check_bytes("key", key)
    _check_index("mod_index", mod_index)
    _check_index("now_ms", now_ms)
    return msgpack.packb((OP_WRITE, now_ms, None, KIND_EXPIRE, key, mod_index))


FINGERPRINT_BYTES = 16
"""Size of ``request_fingerprint``'s digest (BLAKE2b-128: a collision among the keys of
one idempotency key's retries is not a practical concern)."""


def request_fingerprint(command: Sequence[Any]) -> bytes:
    """What a decoded, validated version-2 put, delete or txn command asks, as a digest: the
    command without its ``now_ms`` and idempotency key, each TTL deadline as ``deadline -
    now_ms`` (the ``ttl_ms`` the client gave; a retry computes a new deadline from its own
    ``now_ms``). Two commands have the same fingerprint iff they are the same request, so
    ``KVStateMachine`` replays an idempotency key's outcome only to the same request
    (``KeyReused`` otherwise). Deterministic: every replica computes it from the log."""
    now_ms, kind = command[1], command[3]
    # A txn's max_read_bytes is the proposer's config, not the request: left out.
    body = list(command[4:7] if kind == KIND_TXN else command[4:])

    def ttl(deadline: int) -> int | None:
        return deadline - now_ms if deadline else None

    def ops(branch: list[Any]) -> list[Any]:
        return [[op[0], op[1], op[2], ttl(op[3])] if op[0] == TXN_PUT else op for op in branch]

    if kind == KIND_PUT:
        body[2] = ttl(body[2])
    elif kind == KIND_TXN:
        body[1], body[2] = ops(body[1]), ops(body[2])
    packed = msgpack.packb([kind, *body])
    return hashlib.blake2b(packed, digest_size=FINGERPRINT_BYTES).digest()


def _item(raw: Any) -> KVItem | None:
    if raw is None:
        return None
    key, value, create_index, mod_index, expires_at_ms = raw
    return KVItem(key, value, create_index, mod_index, expires_at_ms)


def decode_result(data: bytes) -> WriteResult | TxnResult | KeyReused | TxnReadTooLarge:
    """Decode what ``KVStateMachine.apply`` returned for a version-2 command.

    Raises ValueError for ``b""`` (a legacy command's result), ``b"\\x00"`` (a command the
    state machine ignored as malformed) or anything else that is not a result.
    """
    if data == b"":
        raise ValueError("a legacy command has no result")
    if data == b"\x00":
        raise ValueError("the command was malformed and ignored by the state machine")
    try:
        raw = msgpack.unpackb(data)
        kind, flags, index, rest = raw
        if kind == RESULT_WRITE:
            return WriteResult(
                index,
                bool(flags & FLAG_SUCCEEDED),
                bool(flags & FLAG_DUPLICATE),
                bool(flags & FLAG_EXISTED),
                _item(rest),
            )
        if kind == RESULT_TXN:
            return TxnResult(
                index,
                bool(flags & FLAG_SUCCEEDED),
                bool(flags & FLAG_DUPLICATE),
                tuple(
                    OpResult(_TXN_OP_NAMES[op], key, bool(existed), _item(item))  # type: ignore[arg-type]
                    for op, key, existed, item in rest
                ),
            )
        if kind == RESULT_REUSED and type(index) is int:
            return KeyReused(index)
        if kind == RESULT_READ_TOO_LARGE:
            read_bytes, max_read_bytes = rest
            return TxnReadTooLarge(index, bool(flags & FLAG_DUPLICATE), read_bytes, max_read_bytes)
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a state machine result: {exc}") from None
    raise ValueError(f"not a state machine result (kind {kind!r})")
