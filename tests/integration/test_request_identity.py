"""Replies answer the request they were sent for, across restarts and reconnects (issue 11.8).

A follower's forwarded write and its ReadIndex are answered by the leader on the leader's own
outbound link. These schedules make an answer to a request of a follower's previous process
reach the restarted follower while a new request of the same kind is pending there: once from
the leader's send queue, kept while the link to the follower was reset (one-way), and handed
to the new process when the link comes back. Real engines, real TCP through a proxy that cuts
single directions of single links, real files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from dengine_trio.errors import DengineError
from dengine_trio.raft.messages import ReadIndexResponse
from tests.chaos.proxy import LinkFault

from .cluster import (
    CUT,
    HEALTHY,
    EngineHandle,
    agreed_leader,
    free_ports,
    listening_elsewhere,
    proxied_cluster,
    put_recording,
    wait_until,
    write_configs,
)


async def hand_over(nodes: dict[int, EngineHandle], leader: int, to: int) -> None:
    """Leadership from ``leader`` to ``to`` (the only up-to-date follower)."""
    assert await nodes[leader].engine.transfer_leadership(5.0)
    assert await agreed_leader({n: h for n, h in nodes.items() if h.running}) == to


async def test_a_restarted_followers_write_is_not_answered_by_its_old_writes_reply(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        net, nodes = await proxied_cluster(
            nursery, tmp_path, election_timeout_ms=(1000, 1500), request_timeout_ms=3000
        )
        leader = await agreed_leader(nodes)
        f, g = (n for n in nodes if n != leader)

        # The leader's link to F resets and stays down: what the leader sends F now waits in
        # its send queue. F's first request (request id 1 in F's process) commits via G; its
        # reply is queued.
        net.set_link(leader, f, CUT)
        old_put: list[BaseException | None] = []

        nursery.start_soon(put_recording, nodes[f].engine, b"k", b"old", old_put)
        leader_client = nodes[leader].engine.client()
        with trio.fail_after(10):
            while await leader_client.get_eventual(b"k") != b"old":
                await trio.sleep(0.01)
        await nodes[f].stop()  # F's process ends with its put unanswered
        await wait_until(lambda: bool(old_put))

        # G leads; F comes back as a new process that knows G as leader.
        await hand_over(nodes, leader, g)
        await nodes[f].start(nursery)
        await wait_until(lambda: nodes[f].engine.leader_id() == g)

        # G can commit nothing now (its links to the leader-before and to F are cut), and F's
        # first request (request id 1 again) goes to G.
        net.set_links([(g, leader), (leader, g), (g, f)], CUT)
        g_runtime = nodes[g].engine._runtime
        assert g_runtime.raft is not None
        g_last = g_runtime.raft.log.last_index
        new_put: list[BaseException | None] = []

        nursery.start_soon(put_recording, nodes[f].engine, b"k", b"new", new_put)
        await wait_until(
            lambda: g_runtime.raft is not None and g_runtime.raft.log.last_index > g_last
        )
        # The old leader's link to F comes back, with the reply to F's old put in its queue.
        net.set_link(leader, f, HEALTHY)
        await wait_until(lambda: bool(new_put))
        # The new put's entry could not commit: G heard no one. Acknowledging it would be
        # acknowledging a write that the next leader (the old one, with F) overwrites.
        assert isinstance(new_put[0], DengineError), "F acknowledged a write that never committed"
        net.heal()
        nursery.cancel_scope.cancel()


async def test_a_restarted_followers_read_is_not_answered_by_its_old_reads_index(
    tmp_path: Path,
) -> None:
    """The answer to F's old read is still on its way when F has restarted and begun a new
    read. The transport drops what was queued for F's previous process and the connections of
    that process; what is left is an answer the leader computed for the old request and sends
    after F's new process connected (here: held at the leader's send until then), on a link
    slow enough that F's new read begins before it arrives."""
    async with trio.open_nursery() as nursery:
        net, nodes = await proxied_cluster(nursery, tmp_path, election_timeout_ms=(2500, 3000))
        leader = await agreed_leader(nodes)
        f = next(n for n in nodes if n != leader)
        client = nodes[leader].engine.client()
        await client.put(b"k", b"old")

        transport = nodes[leader].engine._runtime.transport
        assert transport is not None
        send = transport.send
        held: list[ReadIndexResponse] = []

        def hold_read_answers_to_f(message: object) -> object:
            if isinstance(message, ReadIndexResponse) and message.dst == f:
                held.append(message)
                return b""
            return send(message)

        transport.send = hold_read_answers_to_f  # type: ignore[method-assign]

        # F's first read (request id 1 in F's process) gets its read index of the time.
        async with trio.open_nursery() as reads:
            reads.start_soon(nodes[f].engine.client().get_linearizable, b"k")
            await wait_until(lambda: len(held) == 1)
            reads.cancel_scope.cancel()
        await nodes[f].stop()

        # F comes back as a new process and catches up; from now on the leader's messages take
        # a second to reach F, order kept.
        await nodes[f].start(nursery)
        f_engine = nodes[f].engine
        await wait_until(
            lambda: (
                f_engine.leader_id() == leader
                and f_engine.status()["applied_index"]
                >= nodes[leader].engine.status()["commit_index"]
            )
        )
        net.set_link(leader, f, LinkFault(delay_s=1.0))
        # The leader sends its answer to the old read now, to F's new process.
        transport.send = send  # type: ignore[method-assign]
        send(held[0])
        # A write is acknowledged (leader and G), then F's first read (request id 1 again)
        # begins, before that answer arrives.
        await client.put(b"k", b"new")
        result: list[bytes | None] = []

        async def read_new() -> None:
            result.append(await f_engine.client().get_linearizable(b"k"))

        nursery.start_soon(read_new)
        await wait_until(lambda: bool(result))
        # Linearizable: the read began after "new" was acknowledged.
        assert result == [b"new"]
        nursery.cancel_scope.cancel()


async def test_a_second_process_claiming_a_node_id_is_refused_and_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11 item 17: a copy of node 2 started elsewhere (another port, another directory)
    dials the others as node 2. They refuse it, say so once, and keep working with the real
    node 2."""
    caplog.set_level(logging.INFO, logger="dengine_trio.transport")
    configs = write_configs(tmp_path)
    second = listening_elsewhere(configs[1], "127.0.0.1", free_ports(1)[0], tmp_path / "second-2")
    async with trio.open_nursery() as nursery:
        nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        impostor = EngineHandle(second)
        await impostor.start(nursery)
        refusals = [
            nodes[n].engine._runtime.transport.stats  # type: ignore[union-attr]
            for n in (1, 3)
        ]
        await wait_until(lambda: all(s.connections_refused >= 2 for s in refusals))
        # The cluster goes on with the real node 2.
        await nodes[leader].engine.client().put(b"k", b"v")
        assert await nodes[2].engine.client().get_linearizable(b"k") == b"v"
        await impostor.stop()
        nursery.cancel_scope.cancel()
    for node_id in (1, 3):
        named = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING
            and r.message.startswith(f"node {node_id}: refused connection")
            and "second process running as node 2" in r.message
        ]
        assert len(named) == 1, [r.message for r in caplog.records]
