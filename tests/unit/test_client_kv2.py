"""The Client's checks of issue 17's arguments come before anything waits for the cluster (an
engine built, never started): transaction bounds (``TooLarge``), and programming mistakes
(``ValueError``: a TTL < 1, a negative index, an idempotency key outside 1-256 bytes, a key
written twice in one branch)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dengine_trio import Compare, EmbeddedEngine, TooLarge, TxnOp
from dengine_trio.config import PUT_COMMAND_OVERHEAD_BYTES
from dengine_trio.engine import Client
from dengine_trio.kv_commands import encode_kv_put
from dengine_trio.runtime.operations import MAX_COMMAND_BYTES
from tests.support.cluster import node_config


def client(tmp_path: Path, **settings: Any) -> Client:
    config = node_config(
        tmp_path / "n1.toml", 1, "127.0.0.1:1", {1: "127.0.0.1:1"}, tmp_path, settings
    )
    return EmbeddedEngine(config).client()


async def test_a_transaction_over_its_bounds_is_too_large(tmp_path: Path) -> None:
    c = client(tmp_path, **{"limits.max_txn_ops": 4, "limits.max_txn_bytes": 100})
    compare = Compare(b"k", "exists", "==", True)
    with pytest.raises(TooLarge) as caught:
        await c.txn([compare] * 2, [TxnOp.get(b"a")] * 2, [TxnOp.get(b"b")])
    assert (caught.value.limit, caught.value.size, caught.value.max_bytes) == ("txn_ops", 5, 4)
    with pytest.raises(TooLarge) as caught:
        await c.txn([Compare(b"k", "value", "==", b"x" * 60)], [TxnOp.put(b"p", b"y" * 40)])
    assert (caught.value.limit, caught.value.size) == ("txn", 102)
    with pytest.raises(TooLarge) as caught:
        await c.txn([], [TxnOp.get(b"k" * 2000)])
    assert caught.value.limit == "key"


async def _watch(c: Client, **arguments: Any) -> object:
    return c.watch(b"k", **arguments)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.put(b"k", b"v", ttl_ms=0),
        lambda c: c.put(b"k", b"v", prev_index=-1),
        lambda c: c.put(b"k", b"v", idempotency_key=b""),
        lambda c: c.put(b"k", b"v", idempotency_key=b"i" * 257),
        lambda c: c.delete(b"k", prev_index=-3),
        lambda c: c.txn([], [TxnOp.put(b"k", b"v", ttl_ms=-1)]),
        lambda c: c.txn([], [TxnOp.put(b"k", b"1"), TxnOp.delete(b"k")]),
        lambda c: c.list(b"", limit=0),
        # KF (newcomer 0469d72's class): what HTTP refuses, the Client refuses too, as
        # ValueError (bools, floats, str keys; over int64 a ValueError, not OverflowError).
        lambda c: c.put(b"k", b"v", ttl_ms=True),
        lambda c: c.put(b"k", b"v", ttl_ms=2**53 + 1),
        lambda c: c.put(b"k", b"v", prev_index=2**63),
        lambda c: c.put(b"k", b"v", idempotency_key="x"),
        lambda c: c.delete(b"k", prev_index=True),
        lambda c: c.txn([], [TxnOp.put(b"k", b"v", ttl_ms=1.5)]),
        lambda c: c.txn([Compare(b"k", "mod", "==", 2**70)], []),
        lambda c: c.get(b"k", min_index=-1),
        lambda c: c.get(b"k", min_index=False),
        lambda c: c.get_item(b"k", min_index=1.5),
        lambda c: c.list(b"", limit=True),
        lambda c: c.list(b"", min_index=2**64),
        lambda c: _watch(c, from_index=True),
        lambda c: _watch(c, from_index=1.5),
        lambda c: _watch(c, from_index=2**63),
    ],
)
async def test_programming_mistakes_are_value_errors(
    tmp_path: Path, call: Callable[[Client], Awaitable[object]]
) -> None:
    with pytest.raises(ValueError):
        await call(client(tmp_path))


def test_the_largest_put_a_config_allows_fits_one_command() -> None:
    """Every field at its largest (a 64-bit clock, deadline and prev_index, a 256-byte
    idempotency key) around the largest key and value a loadable config allows: it fits
    ``MAX_COMMAND_BYTES`` (with the old 64-byte allowance it did not: 301 bytes are added)."""
    key = b"k" * 1024
    value = b"v" * (MAX_COMMAND_BYTES - len(key) - PUT_COMMAND_OVERHEAD_BYTES)
    big = 2**63 - 1
    command = encode_kv_put(
        key, value, now_ms=big, expires_at_ms=big, prev_index=big, idempotency_key=b"i" * 256
    )
    assert len(command) <= MAX_COMMAND_BYTES
