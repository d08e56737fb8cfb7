"""KVStateMachine (issue 17) against a plain model: CAS, txn, TTL and expire, idempotent
replays and the table's eviction, the listener's changes, listing, and snapshot images
written while applies go on and restored on a fresh machine."""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dengine_trio.kv_commands import FINGERPRINT_BYTES
from dengine_trio.statemachine import (
    UNSET,
    Compare,
    Delete,
    Get,
    KeyReused,
    KVChange,
    KVItem,
    KVStateMachine,
    OpResult,
    Put,
    TxnResult,
    WriteResult,
    decode_result,
    encode_delete,
    encode_expire,
    encode_kv_delete,
    encode_kv_put,
    encode_put,
    encode_txn,
)

KEYS = [b"a", b"ab", b"b", b"ba", b""]
VALUES = [b"", b"0", b"1", b"22"]


@dataclass
class Model:
    """What the state machine should do, written as plainly as possible."""

    max_keys: int
    ttl_ms: int
    max_bytes: int
    kv: dict[bytes, KVItem] = field(default_factory=dict)
    table: list[tuple[bytes, Any, int, tuple]] = field(default_factory=list)  # oldest first
    clock: int = 0
    changes: list[KVChange] = field(default_factory=list)

    def copy(self) -> Model:
        return Model(
            self.max_keys, self.ttl_ms, self.max_bytes, dict(self.kv), list(self.table), self.clock
        )

    def live(self, key: bytes, now: int) -> KVItem | None:
        item = self.kv.get(key)
        if item is None or (item.expires_at_ms and item.expires_at_ms <= now):
            return None
        return item

    def touch(self, index: int, key: bytes, now: int) -> bool:
        item = self.kv.get(key)
        if item is not None and item.expires_at_ms and item.expires_at_ms <= now:
            del self.kv[key]
            self.changes.append(KVChange(index, key, None, "expire"))
            return False
        return item is not None

    def put(self, index: int, key: bytes, value: bytes, expires_at_ms: int) -> KVItem:
        old = self.kv.get(key)
        item = KVItem(key, value, old.create_index if old else index, index, expires_at_ms)
        self.kv[key] = item
        self.changes.append(KVChange(index, key, value, "put"))
        return item

    def delete(self, index: int, key: bytes, kind: str = "delete") -> bool:
        if self.kv.pop(key, None) is None:
            return False
        self.changes.append(KVChange(index, key, None, kind))  # type: ignore[arg-type]
        return True

    def holds(self, compare: Compare, now: int) -> bool:
        item = self.live(compare.key, now)
        ops = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            ">": lambda a, b: a > b,
        }[compare.op]
        if compare.target == "value":
            return item is not None and ops(item.value, compare.operand)
        if compare.target == "exists":
            return ops(item is not None, compare.operand)
        if compare.target == "mod":
            return ops(item.mod_index if item else 0, compare.operand)
        return ops(item.create_index if item else 0, compare.operand)

    def write(self, index: int, command: tuple) -> Any:
        kind, now, idem = command[0], command[-2], command[-1]
        if now > self.clock:
            self.clock = now
        self.table = [r for r in self.table if r[2] > self.clock - self.ttl_ms]
        for record in self.table:
            if idem is not None and record[0] == idem:
                if record[3] != request(command):
                    return KeyReused(record[1].index)
                return replace(record[1], duplicate=True)
        if kind == "put":
            _, key, value, expires_at_ms, compares, _, _ = command
            existed = self.touch(index, key, now)
            if all(self.holds(c, now) for c in compares):
                self.put(index, key, value, expires_at_ms)
                result: Any = WriteResult(index, True, False, existed, None)
            else:
                result = WriteResult(index, False, False, existed, self.live(key, now))
        elif kind == "delete":
            _, key, compares, _, _ = command
            existed = self.touch(index, key, now)
            if all(self.holds(c, now) for c in compares):
                result = WriteResult(index, True, False, self.delete(index, key), None)
            else:
                result = WriteResult(index, False, False, existed, self.live(key, now))
        elif kind == "txn":
            _, compares, success, failure, _, _ = command
            succeeded = all(self.holds(c, now) for c in compares)
            results = []
            for op in success if succeeded else failure:
                existed = self.touch(index, op.key, now)
                if isinstance(op, Put):
                    self.put(index, op.key, op.value, op.expires_at_ms)
                    results.append(OpResult("put", op.key, existed, None))
                elif isinstance(op, Delete):
                    results.append(OpResult("delete", op.key, self.delete(index, op.key), None))
                else:
                    results.append(OpResult("get", op.key, existed, self.live(op.key, now)))
            result = TxnResult(index, succeeded, False, tuple(results))
        else:
            _, key, mod_index, _, _ = command
            item = self.kv.get(key)
            removed = (
                item is not None and item.mod_index == mod_index and 0 < item.expires_at_ms <= now
            )
            if removed:
                self.delete(index, key, "expire")
            result = WriteResult(index, removed, False, item is not None, None)
        if idem is not None:
            self.table.append((idem, result, self.clock, request(command)))
            self.table = self.table[-self.max_keys :] if self.max_keys else []
            while (
                sum(len(r[0]) + len(encode_result(r[1])) + FINGERPRINT_BYTES for r in self.table)
                > self.max_bytes
            ):
                del self.table[0]
        return result


def request(command: tuple) -> tuple:
    """What a (model) command asks, as the idempotency table tells requests apart: without
    its clock and idempotency key, each TTL deadline as a TTL from its clock."""
    now = command[-2]

    def ttl(deadline: int) -> int | None:
        return deadline - now if deadline else None

    def ops(branch: list[Any]) -> tuple:
        return tuple(
            (op.key, op.value, ttl(op.expires_at_ms)) if isinstance(op, Put) else op
            for op in branch
        )

    if command[0] == "put":
        _, key, value, deadline, compares, _, _ = command
        return ("put", key, value, ttl(deadline), tuple(compares))
    if command[0] == "delete":
        return ("delete", command[1], tuple(command[2]))
    _, compares, success, failure, _, _ = command
    return ("txn", tuple(compares), ops(success), ops(failure))


def encode_result(result: Any) -> bytes:
    """The size the state machine counts for a result: its encoding (kv_commands)."""

    def item(i: KVItem | None) -> Any:
        return None if i is None else [i.key, i.value, i.create_index, i.mod_index, i.expires_at_ms]

    flags = result.succeeded | (result.duplicate << 1)
    if isinstance(result, WriteResult):
        flags |= result.existed << 2
        if result.item is None:
            return bytes(13)  # [0, flags, uint64 index, nil]: 1 + 1 + 1 + 9 + 1
        return msgpack.packb((0, flags, result.index, item(result.item)))
    ops = {"put": 0, "delete": 1, "get": 2}
    results = [(ops[r.kind], r.key, r.existed, item(r.item)) for r in result.results]
    return msgpack.packb((1, flags, result.index, results))


def encode(command: tuple) -> bytes:
    kind = command[0]
    if kind == "put":
        _, key, value, expires_at_ms, compares, now, idem = command
        return encode_kv_put(
            key, value, now_ms=now, expires_at_ms=expires_at_ms, idempotency_key=idem, **compares
        )
    if kind == "delete":
        _, key, compares, now, idem = command
        return encode_kv_delete(key, now_ms=now, idempotency_key=idem, **compares)
    if kind == "txn":
        _, compares, success, failure, now, idem = command
        return encode_txn(compares, success, failure, now_ms=now, idempotency_key=idem)
    _, key, mod_index, now, _ = command
    return encode_expire(key, mod_index, now_ms=now)


def cas_compares(key: bytes, cas: dict[str, Any]) -> list[Compare]:
    """The model's compares for a put/delete's prev_value / prev_index."""
    compares = []
    if cas.get("prev_value", UNSET) is None:
        compares.append(Compare(key, "exists", "==", False))
    elif cas.get("prev_value", UNSET) is not UNSET:
        compares.append(Compare(key, "value", "==", cas["prev_value"]))
    if cas.get("prev_index") is not None:
        compares.append(Compare(key, "mod", "==", cas["prev_index"]))
    return compares


def draw_compare(data: st.DataObject, model: Model) -> Compare:
    key = data.draw(st.sampled_from(KEYS))
    target = data.draw(st.sampled_from(["value", "exists", "mod", "create"]))
    item = model.kv.get(key)
    if target == "exists":
        return Compare(
            key, "exists", data.draw(st.sampled_from(["==", "!="])), data.draw(st.booleans())
        )
    op = data.draw(st.sampled_from(["==", "==", "!=", "<", ">"]))
    if target == "value":
        operands = VALUES + ([item.value] if item else [])
        return Compare(key, "value", op, data.draw(st.sampled_from(operands)))
    near = [0, 1] + ([item.mod_index, item.create_index, item.mod_index + 1] if item else [])
    return Compare(key, target, op, data.draw(st.sampled_from(near)))  # type: ignore[arg-type]


def draw_ops(data: st.DataObject, now: int) -> list[Any]:
    ops: list[Any] = []
    written: set[bytes] = set()
    for _ in range(data.draw(st.integers(0, 3))):
        key = data.draw(st.sampled_from(KEYS))
        kind = data.draw(st.sampled_from(["put", "delete", "get"]))
        if kind != "get" and key in written:
            kind = "get"
        if kind == "put":
            ops.append(Put(key, data.draw(st.sampled_from(VALUES)), draw_deadline(data, now)))
        elif kind == "delete":
            ops.append(Delete(key))
        else:
            ops.append(Get(key))
        if kind != "get":
            written.add(key)
    return ops


def draw_deadline(data: st.DataObject, now: int) -> int:
    # ``now`` itself: due at once; the clock's steps below land exactly on the others.
    return data.draw(st.sampled_from([0, 0, now, now + 1, now + 100, now + 500]))


def draw_command(data: st.DataObject, model: Model, now: int) -> tuple:
    idem = data.draw(st.sampled_from([None, None, b"i1", b"i2", b"i3"]))
    kind = data.draw(st.sampled_from(["put", "put", "delete", "txn", "txn", "expire"]))
    if kind == "expire":
        key = data.draw(st.sampled_from(KEYS))
        item = model.kv.get(key)
        mod_index = data.draw(st.sampled_from([item.mod_index] * 3 + [0] if item else [0, 1]))
        return ("expire", key, mod_index, now, None)
    if kind == "txn":
        compares = [draw_compare(data, model) for _ in range(data.draw(st.integers(0, 2)))]
        return ("txn", compares, draw_ops(data, now), draw_ops(data, now), now, idem)
    key = data.draw(st.sampled_from(KEYS))
    item = model.kv.get(key)
    cas: dict[str, Any] = {}
    if data.draw(st.booleans()):
        cas["prev_value"] = data.draw(
            st.sampled_from([None, *VALUES, *([item.value] * 2 if item else [])])
        )
    if data.draw(st.booleans()):
        cas["prev_index"] = data.draw(
            st.sampled_from([0, 1, *([item.mod_index] * 2 if item else [])])
        )
    if kind == "put":
        value = data.draw(st.sampled_from(VALUES))
        return ("put", key, value, draw_deadline(data, now), cas, now, idem)
    return ("delete", key, cas, now, idem)


def model_command(command: tuple) -> tuple:
    """The command with its CAS arguments as the model's compares."""
    if command[0] == "put":
        _, key, value, deadline, cas, now, idem = command
        return ("put", key, value, deadline, cas_compares(key, cas), now, idem)
    if command[0] == "delete":
        _, key, cas, now, idem = command
        return ("delete", key, cas_compares(key, cas), now, idem)
    return command


def assert_same_state(sm: KVStateMachine, model: Model, now: int) -> None:
    assert dict(sm.data) == {key: item.value for key, item in model.kv.items()}
    assert dict(sm.meta) == {
        key: (item.create_index, item.mod_index, item.expires_at_ms)
        for key, item in model.kv.items()
    }
    assert [(r[0], decode_result(r[1]), r[3]) for r in sm._idem_records()] == [
        r[:3] for r in model.table
    ]
    assert sm.idempotency_keys == len(model.table)
    for key in [*KEYS, b"absent"]:
        assert sm.get_item(key, now) == model.live(key, now)
        live = model.live(key, now)
        assert sm.get(key, now) == (None if live is None else live.value)
    due = sorted(
        (item.expires_at_ms, key, item.mod_index)
        for key, item in model.kv.items()
        if 0 < item.expires_at_ms <= now
    )
    assert sm.expired(now, 100) == [(key, mod) for _, key, mod in due]
    assert sm.expired(now, 1) == [(key, mod) for _, key, mod in due[:1]]


def assert_same_listing(data: st.DataObject, sm: KVStateMachine, model: Model, now: int) -> None:
    prefix = data.draw(st.sampled_from([b"", b"a", b"b", b"c"]))
    limit = data.draw(st.integers(1, 4))
    expected = sorted(
        (item for key, item in model.kv.items() if key.startswith(prefix) and model.live(key, now)),
        key=lambda item: item.key,
    )
    pages, after = [], None
    while True:
        items, after = sm.range(prefix, after, limit, now)
        assert len(items) <= limit
        pages.extend(items)
        if after is None:
            break
        assert items and after == items[-1].key
    assert pages == expected


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    max_keys=st.sampled_from([0, 1, 2, 100]),
    ttl_ms=st.sampled_from([1, 150, 10_000]),
    # 15 bytes per short record (2-byte key + 13-byte result): 30 and 45 sit on the bound.
    max_bytes=st.sampled_from([10, 30, 45, 60, 10**6]),
)
def test_commands_match_the_model(
    data: st.DataObject, max_keys: int, ttl_ms: int, max_bytes: int
) -> None:
    bounds = {
        "idempotency_max_keys": max_keys,
        "idempotency_ttl_ms": ttl_ms,
        "idempotency_max_bytes": max_bytes,
    }
    sm = KVStateMachine(**bounds)
    changes: list[KVChange] = []
    sm.listener = changes.append
    model = Model(max_keys, ttl_ms, max_bytes)
    now = 1_000
    images: list[tuple[Any, Model]] = []
    for index in range(1, data.draw(st.integers(1, 40)) + 1):
        # The proposers' clocks: mostly forward, sometimes behind the log's clock (another
        # leader's clock, skewed), which must not move the idempotency clock back.
        deadlines = [i.expires_at_ms for i in model.kv.values() if i.expires_at_ms]
        if deadlines and data.draw(st.integers(0, 3)) == 0:  # right at a deadline, or 1 ms before
            now = data.draw(st.sampled_from(deadlines)) - data.draw(st.integers(0, 1))
        else:
            now = max(0, now + data.draw(st.sampled_from([0, 1, 50, 100, 400, -300])))
        step = data.draw(st.sampled_from(["command"] * 6 + ["legacy", "snapshot", "restore"]))
        if step == "snapshot":
            images.append((sm.snapshot(), model.copy()))
            continue
        if step == "restore" and images:
            image, at_capture = images.pop(data.draw(st.integers(0, len(images) - 1)))
            sink = io.BytesIO()
            try:
                image(sink)
            except RuntimeError:
                continue  # abandoned by a later snapshot()
            restored = KVStateMachine(**bounds)
            resets: list[int] = []
            restored.listener_reset = resets.append
            restored.restore(io.BytesIO(sink.getvalue()))
            assert resets and resets[0] == restored.last_index
            assert_same_state(restored, at_capture, now)
            if data.draw(st.booleans()):  # go on from the restored image
                sm, model = restored, at_capture.copy()
                sm.listener = changes.append
                images = []
            continue
        before = len(model.changes)
        changes.clear()
        if step == "legacy":
            key = data.draw(st.sampled_from(KEYS))
            if data.draw(st.booleans()):
                value = data.draw(st.sampled_from(VALUES))
                assert sm.apply(index, encode_put(key, value)) == b""
                model.put(index, key, value, 0)
            else:
                assert sm.apply(index, encode_delete(key)) == b""
                model.delete(index, key)
        else:
            command = draw_command(data, model, now)
            expected = model.write(index, model_command(command))
            assert decode_result(sm.apply(index, encode(command))) == expected
        assert changes == model.changes[before:]
        assert_same_state(sm, model, now)
        assert_same_listing(data, sm, model, now)
