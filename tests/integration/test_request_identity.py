"""Replies answer the request they were sent for, across restarts and reconnects (issue 11.8).

A follower's forwarded write and its ReadIndex are answered by the leader on the leader's own
outbound link. These schedules make an answer to a request of a follower's previous process
reach the restarted follower while a new request of the same kind is pending there: once from
the leader's send queue, kept while the link to the follower was reset (one-way), and handed
to the new process when the link comes back. Real engines, real TCP through a proxy that cuts
single directions of single links, real files.
"""

from __future__ import annotations

from pathlib import Path

import trio

from dengine_trio.errors import DengineError
from dengine_trio.raft.messages import ReadIndexResponse
from tests.chaos.proxy import LinkFault

from .cluster import (
    CUT,
    HEALTHY,
    EngineHandle,
    agreed_leader,
    proxied_cluster,
    record_sends,
    wait_until,
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

        async def put_old() -> None:
            try:
                await nodes[f].engine.client().put(b"k", b"old")
                old_put.append(None)
            except DengineError as exc:
                old_put.append(exc)

        nursery.start_soon(put_old)
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

        async def put_new() -> None:
            try:
                await nodes[f].engine.client().put(b"k", b"new")
                new_put.append(None)
            except DengineError as exc:
                new_put.append(exc)

        nursery.start_soon(put_new)
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
    async with trio.open_nursery() as nursery:
        net, nodes = await proxied_cluster(nursery, tmp_path, election_timeout_ms=(2500, 3000))
        leader = await agreed_leader(nodes)
        f = next(n for n in nodes if n != leader)
        client = nodes[leader].engine.client()
        await client.put(b"k", b"old")
        leader_sent = record_sends(nodes[leader].engine)

        def read_answers() -> list[ReadIndexResponse]:
            return [m for m in leader_sent if isinstance(m, ReadIndexResponse) and m.dst == f]

        # F's first read (request id 1 in F's process) is slow to reach the leader; F's
        # process ends meanwhile (the proxy still delivers what it had taken).
        net.set_link(f, leader, LinkFault(delay_s=1.5))
        async with trio.open_nursery() as reads:
            reads.start_soon(nodes[f].engine.client().get_linearizable, b"k")
            # Sent (the transport writes to an idle socket at once), then taken by the proxy.
            await wait_until(lambda: bool(nodes[f].engine._runtime._reads))
            await trio.sleep(0.1)
            reads.cancel_scope.cancel()
        await nodes[f].stop()
        net.set_link(f, leader, HEALTHY)

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
        # The old read reaches the leader, which answers it with its read index of now.
        await wait_until(lambda: bool(read_answers()))
        # Then a write is acknowledged (leader and G), then F's first read (request id 1
        # again) begins.
        await client.put(b"k", b"new")
        result = await f_engine.client().get_linearizable(b"k")
        # Linearizable: the read began after "new" was acknowledged.
        assert result == b"new"
        nursery.cancel_scope.cancel()
