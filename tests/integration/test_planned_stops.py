"""What a planned stop logs (issue 11 item 16): normal operations at INFO.

A hand-over the leader asked for is not a surprise (the step-down it causes is INFO), and a
leader whose peers are gone, or going, at the same time (the whole cluster stopping) does not
report a failed hand-over: there was nobody to hand over to.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from dengine_trio.cli import _hand_over_leadership, _shut_down
from dengine_trio.errors import Stopped
from tests.chaos.proxy import LinkFault

from .cluster import (
    EngineHandle,
    agreed_leader,
    proxied_cluster,
    put_recording,
    wait_until,
    write_configs,
)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_hand_over_the_leader_asked_for_is_logged_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        nodes = {c.cluster.node_id: EngineHandle(c) for c in write_configs(tmp_path)}
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        await _hand_over_leadership(nodes[leader].engine, 5.0)
        new_leader = await agreed_leader(nodes)
        assert new_leader != leader
        nursery.cancel_scope.cancel()
    assert warnings(caplog) == []
    assert any(
        r.levelno == logging.INFO
        and f"node {leader} term" in r.getMessage()
        and "stepped down as leader: handed over" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("peers_stop", ["before", "meanwhile"])
async def test_no_hand_over_warning_when_the_peers_stop_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, peers_stop: str
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        nodes = {c.cluster.node_id: EngineHandle(c) for c in write_configs(tmp_path)}
        for node in nodes.values():
            await node.start(nursery)
        leader = await agreed_leader(nodes)
        engine = nodes[leader].engine
        others = [n for n in nodes.values() if n.engine is not engine]
        if peers_stop == "before":
            for node in others:
                await node.stop()
            transport = engine._runtime.transport
            assert transport is not None
            await wait_until(lambda: not any(p.connected for p in transport.stats.peers.values()))
            assert engine.is_leader()  # still, until CheckQuorum
            await _hand_over_leadership(engine, 0.9)
        else:
            async with trio.open_nursery() as everyone:
                for node in others:
                    everyone.start_soon(node.stop)
                everyone.start_soon(_hand_over_leadership, engine, 0.9)
        nursery.cancel_scope.cancel()
    assert warnings(caplog) == []


async def test_a_request_that_completes_while_the_servers_drain_is_not_failed(
    tmp_path: Path,
) -> None:
    """Stopping answers every pending request, but only fails those still pending when the
    HTTP servers' graceful timeout nears: a write that commits meanwhile succeeds."""
    async with trio.open_nursery() as nursery:
        net, nodes = await proxied_cluster(nursery, tmp_path)
        leader = await agreed_leader(nodes)
        f = next(n for n in nodes if n != leader)
        follower = nodes[f].engine
        # The leader's messages take 0.3 s to reach F: F's forwarded write is pending that
        # long.
        net.set_link(leader, f, LinkFault(delay_s=0.3))
        outcome: list[BaseException | None] = []

        nursery.start_soon(put_recording, follower, b"k", b"v", outcome)
        await wait_until(lambda: follower.pending_requests() == 1)
        http_stop = trio.Event()
        await _shut_down(follower, http_stop, 0.9, answer_by_s=0.8)
        assert http_stop.is_set()
        await wait_until(lambda: bool(outcome))
        assert outcome == [None]
        # Stopping: whatever comes now is refused.
        with pytest.raises(Stopped):
            await follower.client().put(b"k", b"w")
        nursery.cancel_scope.cancel()
