"""TTL expiry decided by the leader (``runtime/expiry.py``, issue 17), with three engines in one
trio program on loopback (real TCP, real files): the leader's expirer removes a key past its
deadline from every replica (not only hides it), leaves a rewritten key alone, is taken over by
the next leader when the one that wrote the key stops, and the deadline survives a restart of
the whole cluster from a snapshot and the log.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import trio

from dengine_trio.engine import EmbeddedEngine
from dengine_trio.statemachine import KVStateMachine
from tests.integration.cluster import EngineHandle, write_configs
from tests.support.cluster import wait_until_async as wait_until


def kv(engine: EmbeddedEngine) -> KVStateMachine:
    sm = engine.state_machine
    assert isinstance(sm, KVStateMachine)
    return sm


def held(engine: EmbeddedEngine, key: bytes) -> bool:
    """The replica still holds ``key``, deadline or not (``now_ms=0``: nothing is past it)."""
    return kv(engine).get_item(key, 0) is not None


async def leader_among(engines: list[EmbeddedEngine]) -> EmbeddedEngine:
    def one() -> EmbeddedEngine | None:
        leaders = [e for e in engines if e.is_leader()]
        return leaders[0] if len(leaders) == 1 else None

    leader: EmbeddedEngine = await wait_until(one, 20)
    await leader.wait_ready(10)
    return leader


async def test_the_leaders_expirer_removes_an_expired_key_from_every_replica(
    tmp_path: Path,
) -> None:
    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(EmbeddedEngine.start(c)) for c in configs]
        leader = await leader_among(engines)
        follower = next(e for e in engines if e is not leader)
        client = follower.client()
        index = await client.put(b"short", b"x", ttl_ms=150)
        await client.put(b"rewritten", b"old", ttl_ms=150)
        await client.put(b"rewritten", b"new")  # no TTL any more: it must stay
        await client.put(b"forever", b"y")
        for engine in engines:
            await engine.wait_applied(index, 10)
            assert held(engine, b"short")

        await wait_until(lambda: not any(held(e, b"short") for e in engines), 10)
        for engine in engines:
            assert kv(engine).get_item(b"rewritten", 0) is not None
            assert kv(engine).get(b"rewritten") == b"new"
            assert kv(engine).get(b"forever") == b"y"
        assert leader.expirer is not None and leader.expirer.proposed >= 1
        # Only the leader proposes.
        assert all(
            e.expirer is not None and e.expirer.proposed == 0 for e in engines if e is not leader
        )


async def test_the_next_leader_expires_a_key_the_stopped_leader_wrote(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    async with trio.open_nursery() as nursery:
        handles = [EngineHandle(c) for c in configs]
        for handle in handles:
            await handle.start(nursery)
        leader = await leader_among([h.engine for h in handles])
        index = await leader.client().put(b"lease", b"held", ttl_ms=600)
        survivors = [h for h in handles if h.engine is not leader]
        for handle in survivors:
            await handle.engine.wait_applied(index, 10)
        await next(h for h in handles if h.engine is leader).stop()
        new_leader = await leader_among([h.engine for h in survivors])
        await wait_until(lambda: not any(held(h.engine, b"lease") for h in survivors), 15)
        assert new_leader.expirer is not None and new_leader.expirer.proposed >= 1
        for handle in survivors:
            await handle.stop()


async def test_a_deadline_survives_a_restart_of_the_whole_cluster(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    deadlines: set[int] = set()
    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(EmbeddedEngine.start(c)) for c in configs]
        leader = await leader_among(engines)
        client = leader.client()
        await client.put(b"in-snapshot", b"a", ttl_ms=2500)
        await leader.take_snapshot()
        index = await client.put(b"in-log", b"b", ttl_ms=2500)
        for engine in engines:
            await engine.wait_applied(index, 10)
        for key in (b"in-snapshot", b"in-log"):
            item = kv(leader).get_item(key, 0)
            assert item is not None
            deadlines.add(item.expires_at_ms)
    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(EmbeddedEngine.start(c)) for c in configs]
        leader = await leader_among(engines)
        # The same deadlines, from the snapshot and from the replayed log.
        await wait_until(lambda: all(held(leader, k) for k in (b"in-snapshot", b"in-log")), 10)
        restored = {kv(leader).get_item(k, 0).expires_at_ms for k in (b"in-snapshot", b"in-log")}  # type: ignore[union-attr]
        assert restored == deadlines
        await wait_until(
            lambda: not any(held(e, k) for e in engines for k in (b"in-snapshot", b"in-log")), 15
        )
