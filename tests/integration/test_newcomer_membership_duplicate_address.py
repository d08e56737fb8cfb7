"""Newcomer reproducer (issue 14): the duplicate-address refusal compares the text of the
address, while the configuration check (``config.py``: host lower-cased, port as a number)
and the dialer treat ``127.0.0.1:09084`` and ``127.0.0.1:9084`` as one endpoint. A learner
added at another spelling of a member's Raft address is accepted; the leader then dials
that member under the new id and is refused ("Hello addressed to node 9, this is node 2")."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dengine_trio.errors import MembershipError
from dengine_trio.raft.membership import ConfChange, ConfChangeKind

from .cluster import EngineHandle, agreed_leader, write_configs


async def test_a_zero_padded_port_of_a_members_address_is_a_duplicate(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            for node in nodes.values():
                await node.start(nursery)
            leader = await agreed_leader(nodes)
            engine = nodes[leader].engine
            other = next(n for n in nodes if n != leader)
            member = nodes[other].config.own_member()
            host, _, port = member.address.rpartition(":")
            address = f"{host}:0{port}"  # config.py reads it as the same port
            with pytest.raises(MembershipError) as refused:
                await engine.change_membership(ConfChange(ConfChangeKind.ADD_LEARNER, 9, address))
            assert refused.value.code == "duplicate_address"
        nursery.cancel_scope.cancel()
