"""The engine under hostile or heavy conditions: garbage on a running node's Raft port, a node
of another cluster, SIGKILL after acknowledged writes, request floods, and peers that never come.
Real TCP on 127.0.0.1, real files with fsync."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio import EmbeddedEngine, NoLeader, Overloaded, Timeout, load_config
from dengine_trio.config import NodeConfig
from dengine_trio.raft.messages import AppendEntries, Entry
from dengine_trio.runtime.inbound import same_cluster
from dengine_trio.runtime.node import NodeRuntime
from dengine_trio.wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Hello,
    encode,
    encode_frame,
)

from .cluster import bootstrap_then_stop, wait_until, write_configs
from .crash_writer import key, value
from .wire_helpers import raw_handshake, read_until_closed

WAIT_S = 20  # bound on every wait; generous because the machine is shared
CRASH_WRITER = Path(__file__).with_name("crash_writer.py")


async def start_all(stack: AsyncExitStack, configs: list[NodeConfig]) -> dict[int, EmbeddedEngine]:
    engines = {}
    for cfg in configs:
        engines[cfg.cluster.node_id] = await stack.enter_async_context(EmbeddedEngine.start(cfg))
    return engines


async def wait_leader(engines: dict[int, EmbeddedEngine]) -> int:
    """The one leader every engine in ``engines`` agrees on, once it has committed its term."""
    with trio.fail_after(WAIT_S):
        while True:
            leaders = {e.node_id for e in engines.values() if e.is_leader()}
            if len(leaders) == 1:
                leader = leaders.pop()
                await engines[leader].wait_ready(WAIT_S)
                if all(e.leader_id() == leader for e in engines.values()):
                    return leader
            await trio.sleep(0.02)


def transport(engine: EmbeddedEngine) -> dict[str, Any]:
    stats = engine.status()["transport"]
    assert isinstance(stats, dict)
    return stats


def followers_caught_up(engine: EmbeddedEngine) -> bool:
    """True on a leader whose every follower has acknowledged its whole log."""
    status = engine.status()
    peers = status.get("peers")
    return isinstance(peers, dict) and all(
        p["match_index"] == status["last_log_index"] for p in peers.values()
    )


# ---------------------------------------------------------------------------------------------
# Wire attacks against a running node


def attacks(cluster_id: str, target: int, peers: list[int]) -> st.SearchStrategy[tuple[str, Any]]:
    """(kind, payload) pairs; see ``test_wire_attacks_on_a_running_follower``."""
    frame = encode_frame(
        encode(
            AppendEntries(
                term=1,
                src=peers[0],
                dst=target,
                prev_log_index=0,
                prev_log_term=0,
                entries=tuple(Entry(term=1, index=i, data=b"x" * 40) for i in range(1, 4)),
                leader_commit=0,
            )
        )
    )
    garbage = st.one_of(
        st.binary(min_size=1, max_size=64),
        # A length prefix, then arbitrary bytes: reaches the decoder instead of the framing.
        st.binary(max_size=64).map(encode_frame),
        # A real frame cut short (never whole: a whole one would be a forged message, not
        # garbage).
        st.integers(1, len(frame) - 1).map(lambda n: frame[:n]),
    )
    bad_hellos = st.one_of(
        st.text(max_size=20)
        # "" (a node that knows no id yet) and the configuration's own id (a wiped node of
        # this cluster) are let in: see ``runtime.inbound.same_cluster``.
        .filter(lambda c: not same_cluster(c, cluster_id))
        .map(lambda c: Hello(c, peers[0], target, PROTOCOL_VERSION)),
        st.integers(-1000, 1000)
        .filter(lambda dst: dst != target)
        .map(lambda dst: Hello(cluster_id, peers[0], dst, PROTOCOL_VERSION)),
        st.integers(-1000, 1000)
        .filter(lambda src: src not in peers)  # includes the target itself
        .map(lambda src: Hello(cluster_id, src, target, PROTOCOL_VERSION)),
        st.integers(-1000, 1000)
        .filter(lambda v: v != PROTOCOL_VERSION)
        .map(lambda v: Hello(cluster_id, peers[0], target, v)),
    )
    oversized = st.integers(MAX_FRAME_BYTES + 1, 2**32 - 1).map(lambda n: n.to_bytes(4, "big"))
    return st.one_of(
        st.tuples(st.just("raw"), garbage),
        st.tuples(st.just("after_hello"), garbage),
        st.tuples(st.just("bad_hello"), bad_hellos),
        st.tuples(st.just("oversized"), oversized),
    )


async def test_wire_attacks_on_a_running_follower(tmp_path: Path) -> None:
    """Garbage, truncated frames, refused handshakes and oversized frame headers, sent to one
    follower's Raft port while a client writes through it and reads through the leader. Each
    attack ends with the node closing that connection, and is followed by at least one more
    acknowledged write; afterwards there is one leader, every acknowledged write is readable
    linearizably, and the attacked node still acknowledges the leader's log."""
    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = await wait_leader(engines)
        target = next(n for n in engines if n != leader)
        peers = sorted(n for n in engines if n != target)
        host, port = engines[target].config.listen_host_port()
        # The cluster's id, which the first leader's configuration entry brought.
        await wait_until(lambda: bool(engines[target]._runtime.cluster_id), WAIT_S)
        cluster_id = engines[target]._runtime.cluster_id
        refused_before = transport(engines[target])["connections_refused"]
        sent: Counter[str] = Counter()
        acked: dict[bytes, bytes] = {}
        write_acked = trio.Event()
        attacks_done = trio.Event()

        async def keep_writing() -> None:
            nonlocal write_acked
            for i in range(100_000):
                if attacks_done.is_set():
                    return
                via, read_via = (target, leader) if i % 2 else (leader, target)
                k, v = b"w%d" % i, b"value %d" % i
                try:
                    await engines[via].client().put(k, v)
                except (NoLeader, Timeout):
                    continue  # outcome unknown: not counted as acknowledged
                acked[k] = v
                write_acked.set()
                write_acked = trio.Event()
                assert await engines[read_via].client().get_linearizable(k) == v

        async def attack(kind: str, payload: Any) -> None:
            with trio.fail_after(WAIT_S):
                async with await trio.open_tcp_stream(host, port) as stream:
                    if kind == "bad_hello":
                        assert not (await raw_handshake(stream, payload)).ok
                    else:
                        if kind != "raw":
                            hello = Hello(cluster_id, peers[0], target, PROTOCOL_VERSION)
                            assert (await raw_handshake(stream, hello)).ok
                        with suppress(trio.BrokenResourceError):
                            await stream.send_all(payload)
                    with suppress(trio.BrokenResourceError):
                        await stream.send_eof()
                    await read_until_closed(stream)  # the node hangs up on us
                sent[kind] += 1
                # The cluster serves after (and during) every attack.
                await write_acked.wait()

        def run_attacks() -> None:
            @settings(max_examples=20, deadline=None)
            @given(attacks(cluster_id, target, peers))
            def one_attack(kind_payload: tuple[str, Any]) -> None:
                trio.from_thread.run(attack, *kind_payload)

            one_attack()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing)
            # Hypothesis drives the examples from a worker thread, so that all of them hit the
            # same running cluster instead of a fresh one per example.
            await trio.to_thread.run_sync(run_attacks)
            attacks_done.set()

        assert sum(sent.values()) >= 10
        stats = transport(engines[target])
        # Every raw blob fails the handshake one way or another; nothing else was refused.
        assert stats["connections_refused"] - refused_before == sent["raw"] + sent["bad_hello"]
        assert stats["connections_closed_on_error"] >= sent["oversized"]

        leader = await wait_leader(engines)
        assert sum(e.is_leader() for e in engines.values()) == 1
        client = engines[target].client()
        await client.put(b"after", b"attacks")  # the attacked node still takes writes
        for k, v in acked.items():
            assert await client.get_linearizable(k) == v
        await wait_until(lambda: followers_caught_up(engines[leader]), WAIT_S)
        assert await engines[target].client().get_eventual(b"after") == b"attacks"


# ---------------------------------------------------------------------------------------------
# Cluster identity


async def test_node_of_another_cluster_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Node 3's address taken (once the cluster has bootstrapped and the real node 3 stopped) by
    a node whose config differs only in ``[cluster] name``: every link between it and the real
    nodes is refused at the handshake, it receives no entry, and nodes 1 and 2 keep serving as
    a two-of-three majority."""
    caplog.set_level(logging.WARNING, logger="dengine_trio.transport")
    configs = write_configs(tmp_path)
    real = configs[:2]
    text = configs[2].path.read_text()
    impostor_path = tmp_path / "impostor.toml"
    impostor_path.write_text(
        text.replace('name = "dengine"', 'name = "other"', 1).replace(
            str(tmp_path / "db3"), str(tmp_path / "impostor-db")
        )
    )
    impostor_config = load_config(impostor_path)
    assert impostor_config.cluster_id() != real[0].cluster_id()
    assert impostor_config.cluster.listen_address == configs[2].cluster.listen_address

    async with AsyncExitStack() as stack:
        engines = await start_all(stack, real)
        await bootstrap_then_stop(configs[2], engines)  # a new cluster needs every member
        leader = await wait_leader(engines)
        # What the real node 3 received before it stopped; the impostor must add nothing.
        match_before = engines[leader].status()["peers"]["3"]["match_index"]  # type: ignore[index]
        frames_before = {i: transport(e)["peers"]["3"]["frames_out"] for i, e in engines.items()}
        impostor = await stack.enter_async_context(EmbeddedEngine.start(impostor_config))
        # Both directions: the impostor's links are refused by 1 and 2, and theirs by it.
        await wait_until(
            lambda: (
                all(transport(e)["connections_refused"] >= 1 for e in engines.values())
                and all(transport(e)["peers"]["3"]["refusals"] >= 1 for e in engines.values())
                and all(p["refusals"] >= 1 for p in transport(impostor)["peers"].values())
            ),
            WAIT_S,
        )
        for node_id, engine in engines.items():
            await engine.client().put(b"k%d" % node_id, b"v%d" % node_id)
        for engine in engines.values():
            assert await engine.client().get_linearizable(b"k1") == b"v1"
            assert await engine.client().get_linearizable(b"k2") == b"v2"
        assert engines[leader].is_leader()
        status = engines[leader].status()
        peers = status["peers"]
        assert isinstance(peers, dict)
        assert peers["3"]["match_index"] <= match_before
        assert impostor.leader_id() is None
        assert impostor.status()["last_log_index"] == 0
        assert await impostor.client().get_eventual(b"k1") is None
        assert transport(impostor)["frames_in"] == 0
        assert all(
            transport(e)["peers"]["3"]["frames_out"] == frames_before[i] for i, e in engines.items()
        )

    refusals = [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]
    assert any("cluster id 'other-" in m for m in refusals)
    assert any("cluster id 'dengine-" in m for m in refusals)


# ---------------------------------------------------------------------------------------------
# Crash durability


async def test_diskfirst_keeps_every_acknowledged_write_through_sigkill(tmp_path: Path) -> None:
    (config,) = write_configs(tmp_path, size=1, strategy="DiskFirst")
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CRASH_WRITER), str(config.path)], stdout=subprocess.PIPE
    )
    acked: list[int] = []
    pending = b""

    async def read_acks() -> bool:
        """Collect the ``acked <i>`` lines that arrived; False at end of output."""
        nonlocal pending
        assert process.stdout is not None
        data = await process.stdout.receive_some()
        *lines, pending = (pending + data).split(b"\n")
        acked.extend(int(line.split()[1]) for line in lines if line.startswith(b"acked "))
        return bool(data)

    try:
        with trio.fail_after(60):
            while len(acked) < 50:
                assert await read_acks(), f"writer exited early with {process.returncode}"
            process.send_signal(signal.SIGKILL)
            # Lines already in the pipe were acknowledged too: they count as well.
            while await read_acks():
                pass
            assert await process.wait() == -signal.SIGKILL
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()

    assert acked == list(range(len(acked)))
    async with EmbeddedEngine.start(config) as engine:
        await engine.wait_ready(WAIT_S)
        client = engine.client()
        for i in acked:
            assert await client.get_linearizable(key(i)) == value(i)


# ---------------------------------------------------------------------------------------------
# Backpressure


class PendingHighWater(trio.abc.Instrument):
    """The most requests a runtime ever held pending, sampled after every task step (the only
    moments the count can change)."""

    def __init__(self, runtime: NodeRuntime, *, forwards: bool = False) -> None:
        self.runtime = runtime
        self.forwards = forwards
        self.high = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        rt = self.runtime
        pending = rt.requests.pending()
        if not self.forwards:
            pending -= rt.forwarding.pending()
        self.high = max(self.high, pending)


LIMITS = {"limits.max_pending_requests": 8}
FLOOD = 200


async def flood(engine: EmbeddedEngine, prefix: bytes) -> Counter[str]:
    """FLOOD concurrent requests (puts, and linearizable reads every fifth); count outcomes."""
    outcomes: Counter[str] = Counter()
    client = engine.client()

    async def one(i: int) -> None:
        try:
            if i % 5 == 4:
                await client.get_linearizable(prefix + b"0")
                outcomes["read"] += 1
            else:
                await client.put(prefix + b"%d" % i, b"v%d" % i)
                outcomes["put"] += 1
        except Overloaded:
            outcomes["overloaded"] += 1

    async with trio.open_nursery() as nursery:
        for i in range(FLOOD):
            nursery.start_soon(one, i)
    return outcomes


async def test_flood_on_the_leader_is_bounded_and_the_rest_succeed(tmp_path: Path) -> None:
    configs = write_configs(tmp_path, extra=LIMITS)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader = engines[await wait_leader(engines)]
        high_water = PendingHighWater(leader._runtime)
        trio.lowlevel.add_instrument(high_water)
        try:
            with trio.fail_after(WAIT_S):
                outcomes = await flood(leader, b"L")
        finally:
            trio.lowlevel.remove_instrument(high_water)
        # Every request either succeeded or was told Overloaded: nothing else went wrong.
        assert sum(outcomes.values()) == FLOOD
        assert outcomes["overloaded"] > 0
        assert outcomes["put"] > 0
        assert 0 < high_water.high <= 8
        # Once the flood has drained, the leader takes requests again.
        await leader.client().put(b"after", b"flood")
        assert await leader.client().get_linearizable(b"after") == b"flood"


async def test_flood_through_a_follower_is_bounded_on_both_nodes(tmp_path: Path) -> None:
    """Writes forwarded by a follower count toward its own limit (one waiter and one queued
    frame each), and what reaches the leader toward the leader's."""
    configs = write_configs(tmp_path, extra=LIMITS)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs)
        leader_id = await wait_leader(engines)
        follower = next(e for n, e in engines.items() if n != leader_id)
        on_leader = PendingHighWater(engines[leader_id]._runtime)
        on_follower = PendingHighWater(follower._runtime, forwards=True)
        for instrument in (on_leader, on_follower):
            trio.lowlevel.add_instrument(instrument)
        try:
            with trio.fail_after(WAIT_S):
                outcomes = await flood(follower, b"F")
        finally:
            for instrument in (on_leader, on_follower):
                trio.lowlevel.remove_instrument(instrument)
        assert sum(outcomes.values()) == FLOOD
        assert outcomes["overloaded"] > 0
        assert outcomes["put"] > 0
        assert 0 < on_follower.high <= 8
        assert 0 < on_leader.high <= 8
        # Exactly the acknowledged puts are stored (a refused one never reached the log).
        await follower.client().put(b"after", b"flood")
        # A read barrier: the follower has applied everything committed before it.
        assert await follower.client().get_linearizable(b"after") == b"flood"
        stored = 0
        for i in range(FLOOD):
            if i % 5 != 4:
                found = await follower.client().get_eventual(b"F%d" % i)
                assert found in (None, b"v%d" % i)
                stored += found is not None
        assert stored == outcomes["put"]


# ---------------------------------------------------------------------------------------------
# Virtual time: waits that would otherwise cost real seconds


async def test_lone_node_gives_up_after_the_request_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """One node of three, its peers never started: no leader can be elected, so requests fail
    with NoLeader once request_timeout_ms (5 s, virtual) has passed, and wait_ready with
    Timeout after its own timeout."""
    configs = write_configs(tmp_path)
    timeout_s = configs[0].raft.timing.request_timeout_ms / 1000
    async with EmbeddedEngine.start(configs[0]) as engine:
        client = engine.client()
        for request in (lambda: client.put(b"k", b"v"), lambda: client.get_linearizable(b"k")):
            started = trio.current_time()
            with pytest.raises(NoLeader):
                await request()
            assert timeout_s <= trio.current_time() - started < timeout_s + 1
        started = trio.current_time()
        with pytest.raises(Timeout):
            await engine.wait_ready(timeout_s=60)
        assert 60 <= trio.current_time() - started < 61
        assert engine.leader_id() is None
        assert not engine.is_leader()
        assert await client.get_eventual(b"k") is None


async def test_virtual_time_keeps_moving_for_a_lone_node(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """600 virtual seconds of a node campaigning alone (about 1,500 election deadlines) under a
    pure autojump clock: time must keep moving, which it does only if the Raft loop blocks
    whenever it has nothing to do. (It once did not: it slept until next_deadline()/1000 s
    but ticked only when current_time()*1000 >= next_deadline(), and for ~0.7% of deadlines
    the float round trip landed a hair short, so it woke, did not tick, and spun.)"""
    configs = write_configs(tmp_path)
    async with EmbeddedEngine.start(configs[0]) as engine:
        end = trio.current_time() + 600
        stuck_at: float | None = None
        async with trio.open_nursery() as nursery:

            async def idle_until_end() -> None:
                await trio.sleep_until(end)
                nursery.cancel_scope.cancel()

            nursery.start_soon(idle_until_end)
            for _ in range(60):  # bounded in real time: at most a minute
                before = trio.current_time()
                # A real second: virtual time jumps meanwhile unless some task never blocks.
                await trio.to_thread.run_sync(time.sleep, 1.0)
                if trio.current_time() == before:
                    stuck_at = before
                    nursery.cancel_scope.cancel()
        assert stuck_at is None, f"virtual time stuck at {stuck_at} s, role {engine.status()}"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        return [exc]
    return [leaf for sub in inner for leaf in _leaves(sub)]


async def test_a_node_whose_log_write_fails_stops_and_the_others_carry_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 3 steps its core in the task that reads from the leader; its log write failing
    there must stop node 3 (the error raised from its engine), never pass for a broken
    connection while the core carries on without the entries it believes it wrote."""
    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = await start_all(stack, configs[:2])
        await bootstrap_then_stop(configs[2], engines)  # a new cluster needs every member
        leader = engines[await wait_leader(engines)]
        await leader.client().put(b"before", b"3 joins")
        with pytest.raises(BaseException) as caught:
            async with EmbeddedEngine.start(configs[2]) as node3:
                storage = node3._runtime.storage
                assert storage is not None

                def disk_full(entries: object) -> None:
                    raise OSError(28, "No space left on device")

                # Once node 3 has caught up (its term saved), what comes next is stepped
                # inline, in the task reading from the leader.
                await wait_until(
                    lambda: node3._runtime.applied_index >= leader._runtime.applied_index, WAIT_S
                )
                monkeypatch.setattr(storage, "append", disk_full)
                await leader.client().put(b"during", b"node 3 fails")
                await trio.sleep(WAIT_S)  # cancelled once node 3 has stopped
        failures = _leaves(caught.value)
        assert any(
            isinstance(f, RuntimeError) and isinstance(f.__cause__, OSError) for f in failures
        ), failures
        with trio.fail_after(WAIT_S):
            await leader.client().put(b"after", b"3 stopped")
            assert await leader.client().get_linearizable(b"after") == b"3 stopped"
