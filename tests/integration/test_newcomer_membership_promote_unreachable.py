"""Newcomer reproducer (issue 14): ``promote`` checks only the learner's lag in entries
(``max_promote_lag_entries``, 1000) against its match index, so in a cluster whose log is
shorter than that, a learner that never answered (a typo in its address, a machine not
started) is promoted at once: a voter that is down from its first moment, a fourth voter in
a three-node cluster that now needs 3 acknowledgements and survives one failure less than
the operator expects. Auto-promotion (rule 7) asks for a recent acknowledgement; the manual
promotion should be refused the same way (``behind``, as a learner that holds nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dengine_trio.errors import MembershipError
from dengine_trio.raft.membership import ConfChange, ConfChangeKind
from tests.support.cluster import free_ports

from .cluster import EngineHandle, agreed_leader, write_configs


async def test_a_learner_that_never_answered_is_not_promoted(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    nodes = {c.cluster.node_id: EngineHandle(c) for c in configs}
    (nobody,) = free_ports(1)  # nothing listens there
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            for node in nodes.values():
                await node.start(nursery)
            leader = await agreed_leader(nodes)
            engine = nodes[leader].engine
            add = ConfChange(ConfChangeKind.ADD_LEARNER, 9, f"127.0.0.1:{nobody}")
            await engine.change_membership(add)
            await trio.sleep(1.0)  # many heartbeat rounds: the learner never answers
            with pytest.raises(MembershipError) as refused:
                await engine.change_membership(ConfChange(ConfChangeKind.PROMOTE, 9))
            assert refused.value.code == "behind"
        nursery.cancel_scope.cancel()
