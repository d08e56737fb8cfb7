"""The embedded ``Client``'s side of an idempotency key (issue 17): the same request retried
replays its outcome; the key reused for a different request (another kind of write, another
value or TTL) raises ``IdempotencyKeyReused`` and applies nothing. Before the request
fingerprints, a txn's key reused on ``put`` raised a bare ``ValueError`` (HTTP 500) and a
put's key reused with another value replayed the first outcome as this put's."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dengine_trio import Compare, EmbeddedEngine, IdempotencyKeyReused, TxnOp

from .cluster import write_configs


async def test_a_key_replays_only_to_its_own_request(tmp_path: Path) -> None:
    (config,) = write_configs(tmp_path, 1)
    async with EmbeddedEngine.start(config) as engine:
        with trio.fail_after(15):
            await engine.wait_ready(10)
        c = engine.client()
        txn = await c.txn([], [TxnOp.put(b"t", b"1", ttl_ms=60_000)], idempotency_key=b"t")
        put = await c.put_outcome(b"p", b"1", ttl_ms=60_000, idempotency_key=b"p")
        delete = await c.delete_outcome(b"d", prev_index=0, idempotency_key=b"d")
        attempts = [
            (txn.index, lambda: c.put(b"t", b"1", idempotency_key=b"t")),
            (txn.index, lambda: c.delete(b"t", idempotency_key=b"t")),
            (txn.index, lambda: c.txn([], [TxnOp.put(b"t", b"2")], idempotency_key=b"t")),
            (
                txn.index,
                lambda: c.txn([Compare(b"t", "exists", "==", True)], [], idempotency_key=b"t"),
            ),
            (put.index, lambda: c.put(b"p", b"2", ttl_ms=60_000, idempotency_key=b"p")),
            (put.index, lambda: c.put(b"p", b"1", ttl_ms=59_999, idempotency_key=b"p")),
            (put.index, lambda: c.put(b"p", b"1", idempotency_key=b"p")),
            (
                put.index,
                lambda: c.txn([], [TxnOp.put(b"p", b"1", ttl_ms=60_000)], idempotency_key=b"p"),
            ),
            (delete.index, lambda: c.delete(b"d", idempotency_key=b"d")),
            (delete.index, lambda: c.put(b"d", b"", prev_index=0, idempotency_key=b"d")),
        ]
        for first_index, attempt in attempts:
            with pytest.raises(IdempotencyKeyReused) as caught:
                await attempt()
            assert caught.value.index == first_index
        # Nothing was applied by those, and the real retries still replay.
        assert await c.get(b"d") is None and await c.get(b"p") == b"1"
        again = await c.txn([], [TxnOp.put(b"t", b"1", ttl_ms=60_000)], idempotency_key=b"t")
        assert (again.index, again.duplicate) == (txn.index, True)
        retried = await c.put_outcome(b"p", b"1", ttl_ms=60_000, idempotency_key=b"p")
        assert (retried.index, retried.duplicate) == (put.index, True)
        retried = await c.delete_outcome(b"d", prev_index=0, idempotency_key=b"d")
        assert (retried.index, retried.duplicate) == (delete.index, True)
