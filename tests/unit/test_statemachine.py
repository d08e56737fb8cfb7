"""KVStateMachine (issue 17): the rules one at a time; test_statemachine_model.py checks them
all together against a model."""

from __future__ import annotations

import io
import struct
from dataclasses import replace

import msgpack
import pytest

from dengine_trio import statemachine
from dengine_trio.kv_index import LOAD, SortedKeys
from dengine_trio.statemachine import (
    IGNORED,
    Compare,
    Delete,
    Get,
    KeyReused,
    KVChange,
    KVItem,
    KVStateMachine,
    Put,
    SnapshotImageError,
    TxnReadTooLarge,
    TxnResult,
    WriteResult,
    decode_result,
    encode_delete,
    encode_expire,
    encode_kv_delete,
    encode_kv_put,
    encode_put,
    encode_txn,
    read_kv_image,
    read_kv_state,
)


def image_of(sm: KVStateMachine) -> bytes:
    sink = io.BytesIO()
    sm.snapshot()(sink)
    return sink.getvalue()


def restored(image: bytes, **bounds: int) -> KVStateMachine:
    sm = KVStateMachine(**bounds)
    sm.restore(io.BytesIO(image))
    return sm


def write(sm: KVStateMachine, index: int, command: bytes) -> WriteResult:
    result = decode_result(sm.apply(index, command))
    assert isinstance(result, WriteResult)
    return result


def test_legacy_commands_keep_their_encoding_and_empty_result() -> None:
    assert encode_put(b"k", b"v") == msgpack.packb((0, b"k", b"v"))
    assert encode_delete(b"k") == msgpack.packb((1, b"k"))
    sm = KVStateMachine()
    assert sm.apply(3, encode_put(b"k", b"v")) == b""
    assert sm.get_item(b"k", 0) == KVItem(b"k", b"v", 3, 3, 0)
    assert sm.apply(4, encode_put(b"k", b"w")) == b""
    assert sm.get_item(b"k", 0) == KVItem(b"k", b"w", 3, 4, 0)
    assert sm.apply(5, encode_delete(b"k")) == b""
    assert sm.get(b"k") is None
    with pytest.raises(ValueError, match="legacy"):
        decode_result(b"")


def test_writes_answer_their_index_and_keep_create_and_mod_index() -> None:
    sm = KVStateMachine()
    first = write(sm, 7, encode_kv_put(b"k", b"1", now_ms=1))
    assert first == WriteResult(7, True, False, False, None)
    second = write(sm, 9, encode_kv_put(b"k", b"2", now_ms=1))
    assert second == WriteResult(9, True, False, True, None)
    assert sm.get_item(b"k", 0) == KVItem(b"k", b"2", 7, 9, 0)
    gone = write(sm, 10, encode_kv_delete(b"k", now_ms=1))
    assert gone == WriteResult(10, True, False, True, None)
    again = write(sm, 11, encode_kv_delete(b"k", now_ms=1))
    assert again == WriteResult(11, True, False, False, None)
    assert write(sm, 12, encode_kv_put(b"k", b"3", now_ms=1)).index == 12
    assert sm.get_item(b"k", 0) == KVItem(b"k", b"3", 12, 12)


def test_compare_and_swap_on_value_absence_and_mod_index() -> None:
    sm = KVStateMachine()
    assert write(sm, 1, encode_kv_put(b"k", b"a", now_ms=1, prev_value=None)).succeeded
    failed = write(sm, 2, encode_kv_put(b"k", b"b", now_ms=1, prev_value=None))
    # What a 409 compare_failed shows: the current value and mod_index.
    assert failed == WriteResult(2, False, False, True, KVItem(b"k", b"a", 1, 1, 0))
    assert not write(sm, 3, encode_kv_put(b"k", b"b", now_ms=1, prev_value=b"x")).succeeded
    assert write(sm, 4, encode_kv_put(b"k", b"b", now_ms=1, prev_value=b"a")).succeeded
    assert not write(sm, 5, encode_kv_put(b"k", b"c", now_ms=1, prev_index=1)).succeeded
    assert write(sm, 6, encode_kv_put(b"k", b"c", now_ms=1, prev_index=4)).succeeded
    # Both given: both must hold.
    assert not write(
        sm, 7, encode_kv_delete(b"k", now_ms=1, prev_value=b"c", prev_index=4)
    ).succeeded
    assert write(sm, 8, encode_kv_delete(b"k", now_ms=1, prev_value=b"c", prev_index=6)).succeeded
    # prev_index 0: must not exist (etcd: an absent key's mod revision is 0).
    assert write(sm, 9, encode_kv_put(b"k", b"d", now_ms=1, prev_index=0)).succeeded
    failed = write(sm, 10, encode_kv_delete(b"absent", now_ms=1, prev_value=b"x"))
    assert failed == WriteResult(10, False, False, False, None)
    assert sm.get(b"k") == b"d" and sm.last_index == 10


def test_txn_runs_one_branch_atomically_at_one_index() -> None:
    sm = KVStateMachine()
    sm.apply(1, encode_kv_put(b"a", b"1", now_ms=1))
    changes: list[KVChange] = []
    sm.listener = changes.append
    command = encode_txn(
        [Compare(b"a", "value", "==", b"1"), Compare(b"b", "exists", "==", False)],
        [Put(b"b", b"2"), Get(b"b"), Delete(b"a"), Get(b"a")],
        [Get(b"a")],
        now_ms=1,
    )
    result = decode_result(sm.apply(5, command))
    assert isinstance(result, TxnResult) and result.succeeded and result.index == 5
    assert [(r.kind, r.key, r.existed, r.item) for r in result.results] == [
        ("put", b"b", False, None),
        ("get", b"b", True, KVItem(b"b", b"2", 5, 5)),
        ("delete", b"a", True, None),
        ("get", b"a", False, None),
    ]
    assert changes == [KVChange(5, b"b", b"2", "put"), KVChange(5, b"a", None, "delete")]
    again = decode_result(sm.apply(6, command))
    assert isinstance(again, TxnResult) and not again.succeeded
    assert [(r.kind, r.item) for r in again.results] == [("get", None)]
    ordered = encode_txn(
        [
            Compare(b"b", "mod", ">", 4),
            Compare(b"b", "create", "<", 6),
            Compare(b"b", "value", "<", b"3"),
        ],
        [Put(b"c", b"x")],
        now_ms=1,
    )
    assert decode_result(sm.apply(7, ordered)).succeeded


def test_a_txn_with_one_malformed_op_changes_nothing() -> None:
    sm = KVStateMachine()
    sm.apply(1, encode_kv_put(b"a", b"1", now_ms=1))
    good = msgpack.unpackb(encode_txn([], [Put(b"b", b"2"), Delete(b"a")], now_ms=1))
    good[5].append([0, b"c", "not bytes", 0])
    assert sm.apply(2, msgpack.packb(good)) == IGNORED
    assert dict(sm.data) == {b"a": b"1"} and sm.idempotency_keys == 0


@pytest.mark.parametrize(
    "command",
    [
        [2, -1, None, 0, b"k", b"v", 0, []],  # negative now
        [2, 1, "text", 0, b"k", b"v", 0, []],  # idempotency key not bytes
        [2, 1, None, 0, b"k", b"v", -5, []],  # negative deadline
        [2, 1, None, 0, b"k", b"v", True, []],  # a bool is not a deadline
        [2, 1, None, 0, b"k", b"v", 0, [[1, 2, True]]],  # exists with <
        [2, 1, None, 0, b"k", b"v", 0, [[9, 0, b"x"]]],  # unknown target
        [2, 1, None, 0, b"k", b"v", 0, [[0, 0, 5]]],  # value compare with an int
        [2, 1, None, 0, b"k", b"v", 0, [[0, True, b"x"]]],  # a bool for an op
        [2, 1, None, 2, [], [[True, b"k"]], []],  # a bool for an op kind
        [2, 1, None, 0, b"k", b"v", 0],  # missing compares
        [2, 1, None, 1, "k", []],
        [2, 1, None, 2, [[b"k", 2, 0, -1]], [], []],
        [2, 1, None, 2, [], [[3, b"k"]], []],
        [2, 1, b"idem", 3, b"k", 1],  # an expire never carries an idempotency key
        [2, 1, None, 7],
        [2],
    ],
)
def test_malformed_version_2_commands_are_ignored_alike(command: list) -> None:
    sm = KVStateMachine()
    sm.apply(1, encode_kv_put(b"k", b"before", now_ms=1))
    assert sm.apply(2, msgpack.packb(command)) == IGNORED
    assert sm.get_item(b"k", 0) == KVItem(b"k", b"before", 1, 1)
    with pytest.raises(ValueError, match="malformed"):
        decode_result(IGNORED)


def test_encoders_refuse_what_apply_would_ignore() -> None:
    with pytest.raises(ValueError, match="written twice"):
        encode_txn([], [Put(b"k", b"1"), Delete(b"k")], now_ms=1)
    with pytest.raises(ValueError, match="exists compare"):
        encode_txn([Compare(b"k", "exists", "<", True)], [], now_ms=1)
    with pytest.raises(ValueError, match="target"):
        encode_txn([Compare(b"k", "version", "==", 1)], [], now_ms=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prev_index"):
        encode_kv_put(b"k", b"v", now_ms=1, prev_index=-1)
    with pytest.raises(TypeError):
        encode_kv_put(b"k", "text", now_ms=1)  # type: ignore[arg-type]


def test_ttl_reads_the_deadline_and_the_expirer_removes_only_the_same_write() -> None:
    sm = KVStateMachine()
    changes: list[KVChange] = []
    sm.listener = changes.append
    sm.apply(1, encode_kv_put(b"k", b"v", now_ms=1_000, expires_at_ms=1_500))
    assert sm.get_item(b"k", 1_499) == KVItem(b"k", b"v", 1, 1, 1_500)
    assert sm.get_item(b"k", 1_500) is None and sm.get(b"k", 1_500) is None
    assert sm.get(b"k") == b"v"  # without a clock: until the expirer removes it
    assert sm.range(b"", None, 10, 1_500) == ([], None)
    assert sm.expired(1_499, 10) == []
    assert sm.expired(1_500, 10) == [(b"k", 1)]
    # Rewritten (here without a TTL) before the expire command applies: it survives.
    sm.apply(2, encode_kv_put(b"k", b"w", now_ms=1_400))
    assert sm.expired(2_000, 10) == []
    assert not write(sm, 3, encode_expire(b"k", 1, now_ms=1_600)).succeeded
    assert sm.get_item(b"k", 9_999) == KVItem(b"k", b"w", 1, 2, 0)
    # A deadline not reached by the expire command's clock: not removed either.
    sm.apply(4, encode_kv_put(b"k", b"x", now_ms=1_600, expires_at_ms=2_000))
    assert not write(sm, 5, encode_expire(b"k", 4, now_ms=1_999)).succeeded
    assert write(sm, 6, encode_expire(b"k", 4, now_ms=2_000)) == WriteResult(
        6, True, False, True, None
    )
    assert sm.get(b"k") is None and sm.expired(10_000, 10) == []
    assert changes[-1] == KVChange(6, b"k", None, "expire")


def test_a_write_to_a_key_past_its_deadline_recreates_it_and_reports_the_expiry() -> None:
    sm = KVStateMachine()
    sm.apply(1, encode_kv_put(b"k", b"old", now_ms=1_000, expires_at_ms=1_100))
    changes: list[KVChange] = []
    sm.listener = changes.append
    result = write(sm, 2, encode_kv_put(b"k", b"new", now_ms=1_100, prev_value=None))
    assert result == WriteResult(2, True, False, False, None)
    assert sm.get_item(b"k", 1_100) == KVItem(b"k", b"new", 2, 2, 0)
    assert changes == [KVChange(2, b"k", None, "expire"), KVChange(2, b"k", b"new", "put")]


def test_expired_lists_earliest_first_and_skips_overwritten_entries() -> None:
    sm = KVStateMachine()
    for index, (key, deadline) in enumerate([(b"c", 30), (b"a", 10), (b"b", 20)], start=1):
        sm.apply(index, encode_kv_put(key, b"v", now_ms=1, expires_at_ms=deadline))
    sm.apply(4, encode_kv_put(b"a", b"v", now_ms=1, expires_at_ms=40))
    assert sm.expired(100, 10) == [(b"b", 3), (b"c", 1), (b"a", 4)]
    assert sm.expired(100, 2) == [(b"b", 3), (b"c", 1)]
    assert sm.expired(100, 10) == [(b"b", 3), (b"c", 1), (b"a", 4)]  # asking changes nothing


def test_the_deadline_heap_stays_bounded_when_ttl_keys_are_rewritten() -> None:
    sm = KVStateMachine()
    for index in range(1, 20_001):
        sm.apply(index, encode_kv_put(b"k", b"v", now_ms=1, expires_at_ms=10**9 + index))
    assert len(sm._deadlines) <= 2 + statemachine.DEADLINE_SLACK
    assert sm.expired(2 * 10**9, 10) == [(b"k", 20_000)]


def test_listing_pages_in_byte_order_with_a_cursor() -> None:
    sm = KVStateMachine()
    keys = [b"a/%03d" % i for i in range(0, 50, 3)] + [b"b", b"a", b"a0", b"\xff"]
    for index, key in enumerate(keys, start=1):
        sm.apply(index, encode_kv_put(key, key, now_ms=1))
    sm.apply(99, encode_kv_delete(b"a/003", now_ms=1))
    expected = sorted(k for k in keys if k.startswith(b"a/") and k != b"a/003")
    seen, after = [], None
    while True:
        items, after = sm.range(b"a/", after, 4, 1)
        seen += [item.key for item in items]
        if after is None:
            break
    assert seen == expected
    assert [i.key for i in sm.range(b"", None, 100, 1)[0]] == sorted(set(keys) - {b"a/003"})
    assert sm.range(b"", b"b", 5, 1)[0][0].key == b"\xff"
    assert sm.range(b"zz", None, 5, 1) == ([], None)
    with pytest.raises(ValueError):
        sm.range(b"", None, 0, 1)


def test_sorted_keys_across_chunk_splits_and_removals() -> None:
    index = SortedKeys()
    keys = [b"%05d" % ((i * 7919) % 5000) for i in range(5000)]
    for key in keys:
        index.add(key)
    for key in keys[::3]:
        index.discard(key)
    index.discard(b"not there")
    expected = sorted(set(keys) - set(keys[::3]))
    assert list(index) == expected and len(index) == len(expected)
    assert list(index.iter_from(b"02500")) == [k for k in expected if k >= b"02500"]
    assert len(index._chunks) > 5000 // (2 * LOAD)
    assert list(SortedKeys(expected).iter_from(b"")) == expected


def test_idempotent_replay_returns_the_first_outcome_and_applies_nothing() -> None:
    sm = KVStateMachine()
    first = write(sm, 3, encode_kv_put(b"k", b"1", now_ms=10, idempotency_key=b"req-1"))
    sm.apply(4, encode_kv_put(b"k", b"2", now_ms=11))
    changes: list[KVChange] = []
    sm.listener = changes.append
    retry = write(sm, 5, encode_kv_put(b"k", b"1", now_ms=12, idempotency_key=b"req-1"))
    assert retry == replace(first, duplicate=True)
    assert sm.get(b"k") == b"2" and changes == []
    # Any write kind, any outcome: a failed compare is remembered as such.
    cas = encode_kv_delete(b"k", now_ms=13, prev_value=b"x", idempotency_key="req-2")
    assert not write(sm, 6, cas).succeeded
    sm.apply(7, encode_kv_put(b"k", b"x", now_ms=14))
    replay = write(sm, 8, cas)
    assert (
        replay == WriteResult(6, False, True, True, KVItem(b"k", b"2", 3, 4))
        and sm.get(b"k") == b"x"
    )
    txn = encode_txn([], [Put(b"t", b"1")], now_ms=15, idempotency_key=b"req-3")
    original = decode_result(sm.apply(9, txn))
    assert decode_result(sm.apply(10, txn)) == replace(original, duplicate=True)
    assert sm.get_item(b"t", 0) == KVItem(b"t", b"1", 9, 9)


def test_an_idempotency_key_reused_for_another_request_applies_nothing() -> None:
    """The key names one request: reused for another kind of write (the newcomer's 500: a
    txn's key on a put or delete), or for the same kind with another key, value, TTL,
    compare or op, the write answers KeyReused (the first request's index), applies
    nothing and leaves the first outcome in place for the real retries."""
    sm = KVStateMachine()
    txn = encode_txn([], [Put(b"t", b"1", 100)], now_ms=10, idempotency_key=b"t")
    assert decode_result(sm.apply(1, txn)).index == 1  # type: ignore[union-attr]
    put = encode_kv_put(b"p", b"1", now_ms=10, expires_at_ms=60, idempotency_key=b"p")
    assert write(sm, 2, put).succeeded
    delete = encode_kv_delete(b"d", now_ms=10, prev_index=0, idempotency_key=b"d")
    assert write(sm, 3, delete).succeeded
    changes: list[KVChange] = []
    sm.listener = changes.append
    others = {
        b"t": [
            encode_kv_put(b"t", b"1", now_ms=11, idempotency_key=b"t"),
            encode_kv_delete(b"t", now_ms=11, idempotency_key=b"t"),
            encode_txn([], [Put(b"t", b"1", 102)], now_ms=11, idempotency_key=b"t"),  # ttl 91
            encode_txn([], [Put(b"t", b"1")], now_ms=11, idempotency_key=b"t"),
            encode_txn(
                [Compare(b"t", "exists", "==", True)],
                [Put(b"t", b"1", 100)],
                now_ms=10,
                idempotency_key=b"t",
            ),
        ],
        b"p": [
            encode_kv_put(b"p", b"2", now_ms=11, expires_at_ms=61, idempotency_key=b"p"),
            encode_kv_put(b"q", b"1", now_ms=11, expires_at_ms=61, idempotency_key=b"p"),
            encode_kv_put(b"p", b"1", now_ms=11, expires_at_ms=62, idempotency_key=b"p"),
            encode_kv_put(b"p", b"1", now_ms=11, idempotency_key=b"p"),
            encode_kv_put(
                b"p", b"1", now_ms=11, expires_at_ms=61, prev_index=2, idempotency_key=b"p"
            ),
            encode_kv_delete(b"p", now_ms=11, idempotency_key=b"p"),
            encode_txn([], [Put(b"p", b"1", 61)], now_ms=11, idempotency_key=b"p"),
        ],
        b"d": [
            encode_kv_delete(b"d", now_ms=11, idempotency_key=b"d"),
            encode_kv_delete(b"d", now_ms=11, prev_index=1, idempotency_key=b"d"),
            encode_kv_delete(b"e", now_ms=11, prev_index=0, idempotency_key=b"d"),
            encode_kv_put(b"d", b"", now_ms=11, prev_index=0, idempotency_key=b"d"),
        ],
    }
    first = {b"t": 1, b"p": 2, b"d": 3}
    index = 4
    for key, commands in others.items():
        for command in commands:
            assert decode_result(sm.apply(index, command)) == KeyReused(first[key])
            index += 1
    assert changes == [] and sm.idempotency_keys == 3
    # The same requests, retried later (their TTLs as given), still replay.
    retry_txn = encode_txn([], [Put(b"t", b"1", 150)], now_ms=60, idempotency_key=b"t")
    assert decode_result(sm.apply(index, retry_txn)).duplicate  # type: ignore[union-attr]
    retry_put = encode_kv_put(b"p", b"1", now_ms=60, expires_at_ms=110, idempotency_key=b"p")
    assert write(sm, index + 1, retry_put) == WriteResult(2, True, True, False, None)
    assert write(sm, index + 2, delete).duplicate
    assert changes == []


def test_a_txn_whose_gets_read_more_than_its_bound_applies_nothing() -> None:
    """Each get copies its value into the answer, built at apply on every replica: a 7 KB txn
    of 128 gets of a 1 MB key built 128 MB (newcomer, 023a427). With ``max_read_bytes`` the
    branch's reads are summed first (earlier puts and deletes of the branch seen, TTLs
    honoured) and over the bound nothing applies."""
    sm = KVStateMachine()
    sm.apply(1, encode_kv_put(b"big", b"x" * 1_000, now_ms=1))
    sm.apply(2, encode_kv_put(b"old", b"y" * 1_000, now_ms=1, expires_at_ms=5))
    gets = [Get(b"big")] * 3
    over = encode_txn([], [Put(b"p", b"1"), *gets], now_ms=1, max_read_bytes=3 * 1_002)
    assert decode_result(sm.apply(3, over)) == TxnReadTooLarge(3, False, 3 * 1_003, 3 * 1_002)
    assert sm.get(b"p") is None
    # Within it: the same reads; a get after the branch's own delete or put counts that.
    fits = encode_txn(
        [],
        [Delete(b"big"), Get(b"big"), Put(b"q", b"z"), Get(b"q"), Get(b"old")],
        now_ms=10,
        max_read_bytes=2,  # b"q" + b"z": the bound itself is within
    )
    result = decode_result(sm.apply(4, fits))
    assert isinstance(result, TxnResult) and result.succeeded and sm.get(b"q") == b"z"
    assert sm.get(b"big") is None
    sm.apply(5, encode_kv_put(b"big", b"x" * 1_000, now_ms=10))
    # The failure branch is the one counted when the compares fail; a replay says duplicate.
    failing = encode_txn(
        [Compare(b"big", "exists", "==", False)],
        [],
        gets,
        now_ms=10,
        max_read_bytes=3,
        idempotency_key=b"i",
    )
    assert decode_result(sm.apply(6, failing)) == TxnReadTooLarge(6, False, 3_009, 3)
    assert decode_result(sm.apply(7, failing)) == TxnReadTooLarge(6, True, 3_009, 3)
    # Without a bound (a command of before it): unbounded, as it was.
    unbounded = decode_result(sm.apply(8, encode_txn([], gets, now_ms=10)))
    assert isinstance(unbounded, TxnResult) and len(unbounded.results) == 3


def test_records_of_a_version_2_image_replay_to_any_request() -> None:
    """A version-2 image kept no fingerprints: its records replay as they did then."""
    stored = KVStateMachine().apply(5, encode_kv_put(b"k", b"v", now_ms=1, idempotency_key=b"i"))
    image = (
        struct.pack("<4sI", b"DTKV", 2)
        + msgpack.packb([5, 1])
        + msgpack.packb([b"k", b"v", 5, 5, 0])
        + msgpack.packb(1)
        + msgpack.packb([b"i", stored, 5, 1])
        + msgpack.packb(1)
    )
    back = restored(image)
    other = encode_kv_delete(b"k", now_ms=2, idempotency_key=b"i")
    assert write(back, 6, other) == WriteResult(5, True, True, False, None)
    assert back.get(b"k") == b"v"


def test_the_idempotency_table_evicts_by_count_and_by_the_logs_clock() -> None:
    sm = KVStateMachine(idempotency_max_keys=3, idempotency_ttl_ms=1_000)
    for i in range(5):
        sm.apply(i + 1, encode_kv_put(b"k", b"%d" % i, now_ms=100, idempotency_key=b"%d" % i))
    assert [r[0] for r in sm._idem_records()] == [b"2", b"3", b"4"]
    # Evicted: a retry applies again.
    assert not write(sm, 6, encode_kv_put(b"k", b"0", now_ms=100, idempotency_key=b"0")).duplicate
    assert [r[0] for r in sm._idem_records()] == [b"3", b"4", b"0"]
    # A proposer whose clock is behind does not move the log's clock back ...
    sm.apply(7, encode_kv_put(b"x", b"", now_ms=50))
    assert sm.idempotency_keys == 3
    # ... and age is measured on it: 1,000 ms after they were stamped (100), all are gone.
    sm.apply(8, encode_kv_put(b"x", b"", now_ms=1_099))
    assert sm.idempotency_keys == 3
    sm.apply(9, encode_kv_put(b"x", b"", now_ms=1_100))
    assert sm.idempotency_keys == 0


def test_the_idempotency_table_survives_a_snapshot_taken_while_it_changes() -> None:
    sm = KVStateMachine(idempotency_max_keys=2_000)
    for i in range(1_500):
        sm.apply(i + 1, encode_kv_put(b"k%d" % i, b"v", now_ms=1, idempotency_key=b"%d" % i))
    image = sm.snapshot()
    # Evictions and appends after the capture (a chunk dropped, new chunks) ...
    for i in range(1_500, 3_000):
        sm.apply(i + 1, encode_kv_put(b"k", b"v", now_ms=1, idempotency_key=b"%d" % i))
    sink = io.BytesIO()
    image(sink)
    # ... do not reach the image.
    back = restored(sink.getvalue(), idempotency_max_keys=2_000)
    assert [r[0] for r in back._idem_records()] == [b"%d" % i for i in range(1_500)]
    assert write(back, 9_999, encode_kv_put(b"k7", b"v", now_ms=5, idempotency_key=b"7")).duplicate
    # A node with a smaller bound evicts down to it when it restores.
    assert restored(sink.getvalue(), idempotency_max_keys=10).idempotency_keys == 10


def test_image_round_trip_keeps_indexes_deadlines_and_the_applied_index() -> None:
    sm = KVStateMachine()
    sm.apply(4, encode_kv_put(b"a", b"1", now_ms=5, expires_at_ms=500, idempotency_key=b"i"))
    sm.apply(6, encode_kv_put(b"a", b"2", now_ms=5, expires_at_ms=700))
    sm.apply(8, encode_kv_put(b"b", b"3", now_ms=9))
    resets: list[int] = []
    back = KVStateMachine()
    back.listener_reset = resets.append
    back.restore(io.BytesIO(image_of(sm)))
    assert resets == [8] and back.last_index == 8
    assert back.get_item(b"a", 0) == KVItem(b"a", b"2", 4, 6, 700)
    assert back.get_item(b"b", 0) == KVItem(b"b", b"3", 8, 8, 0)
    assert back.expired(700, 10) == [(b"a", 6)]
    assert [i.key for i in back.range(b"", None, 10, 0)[0]] == [b"a", b"b"]
    # The same request retried later (its TTL as given: 495 ms from its own clock) ...
    retry = encode_kv_put(b"a", b"1", now_ms=9, expires_at_ms=504, idempotency_key=b"i")
    assert write(back, 9, retry).index == 4
    # ... and not another one: the fingerprint came through the image.
    other = encode_kv_put(b"a", b"1", now_ms=9, expires_at_ms=505, idempotency_key=b"i")
    assert decode_result(back.apply(10, other)) == KeyReused(4)
    back.reset()
    assert resets == [8, 0] and dict(back.data) == {}


def v1_image(pairs: dict[bytes, bytes]) -> bytes:
    """A snapshot payload as written before issue 17 (version 1)."""
    flat = [part for pair in pairs.items() for part in pair]
    return struct.pack("<4sI", b"DTKV", 1) + msgpack.packb(flat) + msgpack.packb(len(pairs))


def test_a_version_1_image_still_restores() -> None:
    sm = restored(v1_image({b"a": b"1", b"b": b"2"}))
    assert dict(sm.data) == {b"a": b"1", b"b": b"2"}
    # Indexes were not kept: 1 stands for "at or before the image" (0 would read as absent).
    assert sm.get_item(b"a", 0) == KVItem(b"a", b"1", 1, 1, 0)
    assert not write(sm, 20, encode_kv_put(b"a", b"x", now_ms=1, prev_value=None)).succeeded
    assert write(sm, 21, encode_kv_put(b"a", b"x", now_ms=1, prev_index=1)).succeeded
    assert [i.key for i in sm.range(b"", None, 10, 0)[0]] == [b"a", b"b"]
    assert read_kv_image(io.BytesIO(v1_image({b"k": b"v"}))) == {b"k": b"v"}
    assert read_kv_state(io.BytesIO(image_of(sm))).meta[b"a"] == (1, 21, 0)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (struct.pack("<4sI", b"DTKV", 2), "index and clock"),
        (struct.pack("<4sI", b"DTKV", 2) + msgpack.packb([1, 2]), "ends before its key count"),
        (
            struct.pack("<4sI", b"DTKV", 2)
            + msgpack.packb([1, 2])
            + msgpack.packb([b"k", b"v", 1, 1]),
            "5-tuples",
        ),
        (
            struct.pack("<4sI", b"DTKV", 2)
            + msgpack.packb([1, 2])
            + msgpack.packb([b"k", b"v", 1, -1, 0])
            + msgpack.packb(1),
            "index is not",
        ),
        (
            struct.pack("<4sI", b"DTKV", 2) + msgpack.packb([1, 2]) + msgpack.packb(0),
            "before its idempotency count",
        ),
        (
            struct.pack("<4sI", b"DTKV", 2)
            + msgpack.packb([1, 2])
            + msgpack.packb(0)
            + msgpack.packb(
                [b"i", b"\x94\x00\x01\x01\xc0", 1, 1, b"i", b"\x94\x00\x01\x01\xc0", 1, 1]
            )
            + msgpack.packb(2),
            "malformed",
        ),
        (
            struct.pack("<4sI", b"DTKV", 2)
            + msgpack.packb([1, 2])
            + msgpack.packb(0)
            + msgpack.packb(0)
            + msgpack.packb(0),
            "after the end",
        ),
    ],
)
def test_malformed_version_2_images_are_refused_and_change_nothing(
    payload: bytes, problem: str
) -> None:
    sm = KVStateMachine()
    sm.apply(1, encode_kv_put(b"live", b"state", now_ms=1))
    with pytest.raises(SnapshotImageError, match=problem):
        sm.restore(io.BytesIO(payload))
    assert dict(sm.data) == {b"live": b"state"} and sm.last_index == 1


def test_capture_stays_o1_and_metadata_drains_back_with_the_values() -> None:
    sm = KVStateMachine()
    for i in range(100):
        sm.apply(i + 1, encode_kv_put(b"%03d" % i, b"old", now_ms=1, expires_at_ms=10**6))
    image = sm.snapshot()
    assert type(sm.data) is not dict and type(sm.meta) is not dict
    for i in range(0, 100, 2):
        sm.apply(200 + i, encode_kv_put(b"%03d" % i, b"new", now_ms=1))
    for i in range(1, 100, 4):
        sm.apply(300 + i, encode_kv_delete(b"%03d" % i, now_ms=1))
    expected_meta = dict(sm.meta)
    sink = io.BytesIO()
    image(sink)
    state = read_kv_state(io.BytesIO(sink.getvalue()))
    assert all(meta == (int(k) + 1, int(k) + 1, 10**6) for k, meta in state.meta.items())
    assert len(state.meta) == 100
    while type(sm.data) is not dict or type(sm.meta) is not dict:
        sm.apply(999, encode_kv_put(b"x", b"", now_ms=1))
        expected_meta[b"x"] = sm.meta[b"x"]
        assert dict(sm.meta) == expected_meta
    assert sm.get_item(b"000", 1) == KVItem(b"000", b"new", 1, 200, 0)
    assert sm.get_item(b"001", 1) is None


@pytest.mark.parametrize("index", [0, 1, 127, 2**32, 2**63])
def test_results_carry_any_index(index: int) -> None:
    sm = KVStateMachine()
    put = sm.apply(index, encode_kv_put(b"k", b"v", now_ms=1, idempotency_key=b"i"))
    assert decode_result(put) == WriteResult(index, True, False, False, None)
    replay = sm.apply(index + 1, encode_kv_put(b"k", b"v", now_ms=1, idempotency_key=b"i"))
    assert decode_result(replay) == WriteResult(index, True, True, False, None)


def test_restore_builds_the_key_index_and_heap_in_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built in runs merged in Python (no single sort holding the GIL): the same order."""
    monkeypatch.setattr(statemachine, "SORT_RUN", 7)
    monkeypatch.setattr("dengine_trio.kv_index.SORT_RUN", 7)
    sm = KVStateMachine()
    for i in range(100):
        key = b"%03d" % ((i * 37) % 100)
        sm.apply(i + 1, encode_kv_put(key, b"v", now_ms=1, expires_at_ms=1_000 - (i * 13) % 50))
    back = restored(image_of(sm))
    assert [item.key for item in back.range(b"", None, 1_000, 0)[0]] == sorted(sm.data)
    due = sorted((m[2], key, m[1]) for key, m in sm.meta.items())
    assert back.expired(2_000, 1_000) == [(key, mod) for _, key, mod in due]
    assert list(SortedKeys([b"%03d" % i for i in range(99, -1, -1)])) == sorted(sm.data)


def test_the_idempotency_table_is_bounded_in_bytes() -> None:
    """A failed compare's result holds the key's current value: without a byte bound, 100,000
    retried CAS on a large value would keep 100,000 copies of it."""
    sm = KVStateMachine(idempotency_max_bytes=10_000)
    sm.apply(1, encode_kv_put(b"big", b"x" * 4_000, now_ms=1))
    for i in range(5):
        cas = encode_kv_put(b"big", b"y", now_ms=1, prev_value=b"other", idempotency_key=b"%d" % i)
        assert not write(sm, 2 + i, cas).succeeded
    assert [r[0] for r in sm._idem_records()] == [b"3", b"4"]
    assert (
        sm._idem_bytes
        == sum(len(r[0]) + len(r[1]) + len(r[4]) for r in sm._idem_records())
        <= 10_000
    )
    assert restored(image_of(sm), idempotency_max_bytes=5_000).idempotency_keys == 1
    with pytest.raises(ValueError):
        KVStateMachine(idempotency_max_bytes=-1)
