"""``runtime/membership.py`` without a network: when a node takes its cluster's id, and the
admin requests a follower forwards to the leader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.errors import MembershipError
from dengine_trio.metrics import MetricsSink
from dengine_trio.raft.membership import (
    ConfChange,
    ConfChangeKind,
    Member,
    Membership,
    implicit_membership,
)
from dengine_trio.runtime.membership import (
    MembershipRuntime,
    decode_admin_request,
    decode_rejection,
    encode_admin_request,
    encode_rejection,
)
from dengine_trio.storage.cluster_identity import load_cluster_id
from tests.support.cluster import free_ports, write_cluster


class FakeRaft:
    """What MembershipRuntime reads of the core: the membership at each index."""

    def __init__(self, configs: list[tuple[int, Membership]]) -> None:
        self.configs = configs
        self.commit_index = 0
        self.snapshot_index = 0
        self.is_leader = False
        self.leader_id = 0

    def membership_at(self, index: int) -> Membership:
        found = self.configs[0][1]
        for at, m in self.configs:
            if at <= index:
                found = m
        return found


class FakeNode:
    def __init__(self, tmp_path: Path) -> None:
        [self.config, *_] = write_cluster(tmp_path, free_ports(3))
        self.config.db_root_path().mkdir(parents=True)
        self.cluster_id = ""
        self.bootstrap_cluster_id = "other-generated-id"
        self.transport = None
        self.raft: Any = None
        self.stopped = False
        self.metrics = MetricsSink()  # the runtime reports each membership to it (e044ba3)

    def set_cluster_id(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id

    def notify_state_change(self) -> None:
        pass


def explicit(cluster_id: str) -> Membership:
    return Membership(cluster_id, tuple(Member(i, f"127.0.0.1:{i}", True) for i in (1, 2, 3)))


def test_the_cluster_id_is_taken_from_a_committed_membership_only(tmp_path: Path) -> None:
    """An appended bootstrap entry may be truncated and replaced by another leader's with
    another random id: persisting it at append would tie the directory to an id the cluster
    never had (the node refused by its own cluster for good)."""
    node = FakeNode(tmp_path)
    first = explicit("dengine-aaaa-111111111111")
    raft = node.raft = FakeRaft([(0, implicit_membership((1, 2, 3))), (2, first)])
    runtime = MembershipRuntime(node)  # type: ignore[arg-type]
    runtime.changed(first, 2)  # appended, not committed
    assert load_cluster_id(node.config.db_root_path()) is None
    assert node.cluster_id == ""
    # Truncated and replaced by another leader's bootstrap entry, which commits.
    second = explicit("dengine-aaaa-222222222222")
    raft.configs = [(0, implicit_membership((1, 2, 3))), (2, second)]
    runtime.changed(second, 2)
    raft.commit_index = 2
    runtime.committed()
    assert load_cluster_id(node.config.db_root_path()) == "dengine-aaaa-222222222222"
    assert node.cluster_id == "dengine-aaaa-222222222222"


def test_admission_by_membership(tmp_path: Path) -> None:
    from dengine_trio.wire import PROTOCOL_VERSION, Hello

    node = FakeNode(tmp_path)
    node.raft = FakeRaft([(0, implicit_membership((1, 2, 3)))])
    runtime = MembershipRuntime(node)  # type: ignore[arg-type]

    def hello(src: int, joining: bool = False) -> Hello:
        return Hello("c", src, 1, PROTOCOL_VERSION, joining=joining)

    runtime.changed(implicit_membership((1, 2, 3)), 0)
    assert runtime.admit(hello(7)) == ""  # implicit: the file's list is no authority
    m = Membership("c-1", (Member(1, "a:1", True), Member(2, "a:2", True)))
    runtime.changed(m, 5)
    assert runtime.admit(hello(2)) == ""
    assert runtime.admit(hello(7, joining=True)) == ""
    assert runtime.admit(hello(3)) == "node 3 is not a member of cluster c-1 (removed?)"


changes = st.builds(
    ConfChange,
    kind=st.sampled_from(list(ConfChangeKind)),
    id=st.integers(0, 2**63 - 1),
    address=st.text(max_size=30),
    promote=st.booleans(),
    uuids=st.lists(st.tuples(st.integers(0, 2**63 - 1), st.text(max_size=32)), max_size=3).map(
        tuple
    ),
)


@settings(max_examples=100, deadline=None)
@given(change=changes, to=st.integers(0, 2**63 - 1))
def test_admin_requests_round_trip(change: ConfChange, to: int) -> None:
    assert decode_admin_request(encode_admin_request(change)) == (change, 0)
    assert decode_admin_request(encode_admin_request(None, to)) == (None, to)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_garbage_is_refused_as_a_value_error(data: bytes) -> None:
    try:
        decode_admin_request(data)
    except ValueError:
        pass


def test_a_rejection_round_trips_with_its_status() -> None:
    error = decode_rejection(encode_rejection(MembershipError("behind", "far", {"lag": 7})))
    assert (error.code, error.status, error.detail) == ("behind", 409, {"lag": 7})
    assert decode_rejection(b"\xc1").code == "bad_request"


@pytest.mark.parametrize("data", [b"", b"\x90", b"\x81\xa2op\xa3bad"])
def test_malformed_admin_requests(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_admin_request(data)
