"""A follower's forwarded write when the leader dies (issue 11 item 10).

A forward that certainly did not reach the leader (still in the transport's queue when the
leader changed) is sent again to the next leader within the request's deadline. One the
leader took is waited for only until its outcome is known: the entry it became is committed
(success) or overwritten (sent again), whichever leader settles it. Real engines on real TCP
(through the fault proxy where a link must be held), real files.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import trio

from dengine_trio.errors import DengineError
from dengine_trio.kv_commands import KIND_PUT, OP_WRITE
from dengine_trio.raft.messages import AppendEntries
from tests.chaos.proxy import LinkFault

from .cluster import CUT, HEALTHY, agreed_leader, proxied_cluster, put_recording, wait_until

REQUEST_TIMEOUT_MS = 5000


async def test_writes_to_a_follower_right_after_the_leader_dies_go_to_the_next_leader(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        _, nodes = await proxied_cluster(nursery, tmp_path, request_timeout_ms=REQUEST_TIMEOUT_MS)
        leader = await agreed_leader(nodes)
        f = next(n for n in nodes if n != leader)
        follower = nodes[f].engine
        await follower.client().put(b"before", b"1")
        outcomes: dict[int, BaseException | None] = {}

        async def put(i: int) -> None:
            try:
                await follower.client().put(b"k%d" % i, b"v%d" % i)
                outcomes[i] = None
            except DengineError as exc:
                outcomes[i] = exc

        # The leader's process goes away; writes reach the follower from then on, the first
        # ones while it still takes the dead node for its leader.
        await nodes[leader].stop()
        started = trio.current_time()
        for i in range(5):
            nursery.start_soon(put, i)
            await trio.sleep(0.15)
        await wait_until(lambda: len(outcomes) == 5, timeout_s=2 * REQUEST_TIMEOUT_MS / 1000)
        assert outcomes == dict.fromkeys(range(5))
        # Behaviour, not speed: they did not wait out the request timeout (that is a 504).
        assert trio.current_time() - started < REQUEST_TIMEOUT_MS / 1000
        new_leader = await agreed_leader({n: h for n, h in nodes.items() if h.running})
        for i in range(5):
            assert await nodes[new_leader].engine.client().get_linearizable(b"k%d" % i) == (
                b"v%d" % i
            )
        nursery.cancel_scope.cancel()


def puts(data: bytes, key: bytes) -> bool:
    """``data`` is the command ``Client.put`` makes for ``key`` (issue 17's version-2 put:
    ``[2, now_ms, idempotency_key, 0, key, ...]``)."""
    try:
        op = msgpack.unpackb(data)
    except ValueError:
        return False
    return isinstance(op, list) and op[:1] == [OP_WRITE] and op[3:5] == [KIND_PUT, key]


async def test_a_forward_the_dead_leader_took_ends_when_the_next_leader_commits_it(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        net, nodes = await proxied_cluster(nursery, tmp_path, request_timeout_ms=REQUEST_TIMEOUT_MS)
        leader = await agreed_leader(nodes)
        f, g = (n for n in nodes if n != leader)
        # G hears nothing and says nothing: the leader commits only with F's acknowledgement.
        net.set_links([(leader, g), (g, leader)], LinkFault(delay_s=60))
        transport = nodes[leader].engine._runtime.transport
        assert transport is not None
        send = transport.send
        entry_index: list[int] = []

        def hold_acks_once_appended(message: object) -> object:
            # The moment the leader replicates F's write, F's acknowledgements stop reaching
            # it (synchronously: F has not run yet): the entry gets into the leader's and F's
            # logs, and is not committed.
            if isinstance(message, AppendEntries) and message.dst == f:
                for entry in message.entries:
                    if puts(entry.data, b"k") and not entry_index:
                        entry_index.append(entry.index)
                        net.set_link(f, leader, LinkFault(delay_s=60))
            return send(message)

        transport.send = hold_acks_once_appended  # type: ignore[method-assign]
        outcome: list[BaseException | None] = []

        started = trio.current_time()
        nursery.start_soon(put_recording, nodes[f].engine, b"k", b"v", outcome)
        await wait_until(lambda: bool(entry_index))
        await wait_until(lambda: nodes[f].engine.status()["last_log_index"] >= entry_index[0])
        # The leader dies with the write unanswered; F and G elect F (G's log is shorter),
        # whose first commit covers the write.
        await nodes[leader].stop()
        net.set_links([(leader, g), (g, leader), (f, leader)], HEALTHY)
        await wait_until(lambda: bool(outcome), timeout_s=2 * REQUEST_TIMEOUT_MS / 1000)
        assert outcome == [None]
        assert trio.current_time() - started < REQUEST_TIMEOUT_MS / 1000
        assert await nodes[g].engine.client().get_linearizable(b"k") == b"v"
        nursery.cancel_scope.cancel()


async def test_a_forward_dropped_unsent_when_the_leader_restarts_goes_to_the_next_leader(
    tmp_path: Path,
) -> None:
    """F's write waits in F's queue for the leader's link; the leader's process restarts, so
    F's transport drops what it had queued for the old process: the write was certainly not
    delivered, and goes to whoever leads next instead of waiting out its deadline."""
    async with trio.open_nursery() as nursery:
        net, nodes = await proxied_cluster(
            nursery,
            tmp_path,
            election_timeout_ms=(2000, 2500),
            request_timeout_ms=2 * REQUEST_TIMEOUT_MS,
        )
        leader = await agreed_leader(nodes)
        f = next(n for n in nodes if n != leader)
        net.set_link(f, leader, CUT)
        transport = nodes[f].engine._runtime.transport
        assert transport is not None
        await wait_until(lambda: not transport.stats.peers[leader].connected)
        outcome: list[BaseException | None] = []

        started = trio.current_time()
        nursery.start_soon(put_recording, nodes[f].engine, b"k", b"v", outcome)
        await wait_until(lambda: transport.stats.peers[leader].queued > 0)
        await nodes[leader].stop()
        await nodes[leader].start(nursery)
        net.set_link(f, leader, HEALTHY)
        await wait_until(lambda: bool(outcome), timeout_s=4 * REQUEST_TIMEOUT_MS / 1000)
        assert outcome == [None]
        assert trio.current_time() - started < 2 * REQUEST_TIMEOUT_MS / 1000
        assert transport.stats.peers[leader].discarded > 0
        nursery.cancel_scope.cancel()
