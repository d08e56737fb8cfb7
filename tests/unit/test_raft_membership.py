"""Membership changes in the Raft core (issue 14): single-server changes (Ongaro's thesis §4.1),
learners, the bootstrap entry, binding to data directories and the amnesia rule, removal of the
leader, removed nodes, snapshots.

Each test is a schedule that would break one rule: most drive whole clusters of cores through
the transcript runner (``tests/sim/transcript.py``: explicit message delivery, crashes, wipes)
and assert on the cores' state; the runner itself checks election safety, state machine safety
and that no node grants a vote while its explicit membership does not bind it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeKind,
    ConfChangeRejected,
    Member,
    Membership,
    MembershipChanged,
    ProposeConfChange,
    RaftConfig,
    RaftNode,
    Receive,
    Removed,
    Role,
    canonical_address,
    decode_membership,
    encode_membership,
    implicit_membership,
)
from dengine_trio.raft.messages import RequestVote
from dengine_trio.raft.tracker import Tracker, VoteResult
from tests.sim.transcript import Interaction, TranscriptError

V = True
L = False


def ms(*members: tuple[int, bool, str], cluster: str = "c1") -> Membership:
    return Membership(cluster, tuple(Member(i, f"n{i}", voter, uuid) for i, voter, uuid in members))


def run(it: Interaction, *lines: str) -> list[str]:
    out: list[str] = []
    for line in lines:
        out += it.run(line)
    return out


def cluster(size: int = 3, *options: str) -> Interaction:
    """A cluster with a cluster id, leader 1 elected, its bootstrap entry committed."""
    it = Interaction()
    run(it, f"start {size} cluster=c1 {' '.join(options)}", "campaign 1", "stabilize")
    run(it, "advance 50", "stabilize")
    raft = it.nodes[1].raft
    assert raft is not None and raft.role is Role.LEADER and not raft.pending_conf_index
    return it


def raft(it: Interaction, node_id: int) -> RaftNode:
    r = it.nodes[node_id].raft
    assert r is not None
    return r


def rejected(out: list[str]) -> list[str]:
    return [line.split()[2] for line in out if "conf-change-rejected" in line]


# ---------------------------------------------------------------------------- membership.py


def test_encoding_round_trips_and_garbage_is_refused() -> None:
    m = Membership("c1", (Member(1, "a:1", True, "u1"), Member(4, "b:2", False, "", True)))
    assert decode_membership(encode_membership(m)) == m
    for garbage in (
        b"",
        b"\xc1",
        b"\x93\x02\xa0\x90",  # another version
        b"\x92\x01\xa0",  # too short
    ):
        with pytest.raises(ValueError):
            decode_membership(garbage)
    import msgpack

    for rows in (
        [[2, "", True, "", False], [1, "", True, "", False]],  # unsorted
        [[1, "", True, "", False], [1, "", True, "", False]],  # repeated
        [[0, "", True, "", False]],  # not positive
        [[True, "", True, "", False]],  # a bool is not an id
        [[1, "", 1, "", False]],  # an int is not a bool
        [[1, 5, True, "", False]],
    ):
        with pytest.raises(ValueError):
            decode_membership(msgpack.packb([1, "c1", rows]))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (ConfChange(ConfChangeKind.ADD_LEARNER, 2, "n9"), "duplicate_id"),
        (ConfChange(ConfChangeKind.ADD_LEARNER, 9, "n2"), "duplicate_address"),
        (ConfChange(ConfChangeKind.ADD_LEARNER, 9, ""), "bad_request"),
        (ConfChange(ConfChangeKind.ADD_LEARNER, 0, "n0"), "bad_request"),
        (ConfChange(ConfChangeKind.PROMOTE, 9), "unknown_member"),
        (ConfChange(ConfChangeKind.PROMOTE, 1), "not_learner"),
        (ConfChange(ConfChangeKind.REMOVE, 9), "unknown_member"),
        (ConfChange(ConfChangeKind.BIND, uuids=((9, "x"),)), "unknown_member"),
        (ConfChange(ConfChangeKind.BIND, uuids=((1, ""),)), "bad_request"),
        (ConfChange(ConfChangeKind.BIND), "bad_request"),
        (ConfChange(99, 2), "bad_request"),  # type: ignore[arg-type]
    ],
)
def test_a_change_that_cannot_apply_is_refused_with_its_code(change: ConfChange, code: str) -> None:
    with pytest.raises(ConfChangeError) as e:
        ms((1, V, "u1"), (2, L, "")).with_change(change)
    assert e.value.code == code


def test_the_last_voter_cannot_be_removed_but_a_learner_beside_it_can() -> None:
    m = ms((1, V, "u1"), (2, L, ""))
    with pytest.raises(ConfChangeError) as e:
        m.with_change(ConfChange(ConfChangeKind.REMOVE, 1))
    assert e.value.code == "last_voter"
    assert m.with_change(ConfChange(ConfChangeKind.REMOVE, 2)).ids == (1,)


def test_changes_apply_one_server_at_a_time() -> None:
    m = ms((1, V, "u1"))
    m = m.with_change(ConfChange(ConfChangeKind.ADD_LEARNER, 3, "n3", True, ((3, "u3"),)))
    assert m.learners == (3,) and m.get(3) == Member(3, "n3", False, "u3", True)
    m = m.with_change(ConfChange(ConfChangeKind.PROMOTE, 3))
    assert m.voters == (1, 3) and m.get(3) == Member(3, "n3", True, "u3", False)
    m = m.with_change(ConfChange(ConfChangeKind.BIND, uuids=((3, "u3"), (1, "u1"))))
    assert m.voters == (1, 3)  # bound as they are: nothing changes
    # A voter on another data directory is another server: out as a voter, in as a learner
    # promoted once caught up, never swapped in place (two servers at once).
    m = m.with_change(ConfChange(ConfChangeKind.BIND, uuids=((1, "u1b"),)))
    assert m.get(1) == Member(1, "n1", False, "u1b", True) and m.voters == (3,)
    with pytest.raises(ConfChangeError) as e:
        m.with_change(ConfChange(ConfChangeKind.BIND, uuids=((3, "u3b"),)))
    assert e.value.code == "last_voter"


def test_bind_rebinds_one_voter_at_a_time_but_any_learners() -> None:
    m = ms((1, V, "u1"), (2, V, "u2"), (3, V, "u3"), (4, L, ""), (5, L, ""))
    with pytest.raises(ConfChangeError) as e:
        m.with_change(ConfChange(ConfChangeKind.BIND, uuids=((1, "x"), (2, "y"))))
    assert e.value.code == "bad_request"
    m = m.with_change(ConfChange(ConfChangeKind.BIND, uuids=((1, "x"), (4, "a"), (5, "b"))))
    assert m.voters == (2, 3) and m.learners == (1, 4, 5)
    assert [x.uuid for x in m.members] == ["x", "u2", "u3", "a", "b"]
    with pytest.raises(ConfChangeError):
        implicit_membership((1, 2)).with_change(ConfChange(ConfChangeKind.REMOVE, 2))


# ---------------------------------------------------------------------------- the tracker


def test_learners_are_tracked_but_never_counted() -> None:
    t = Tracker(1, (1, 2, 3), (4, 5))
    t.start_progress(1)
    assert set(t.progress) == {2, 3, 4, 5}
    for learner in (4, 5):
        t.progress[learner].match_index = 9
        t.progress[learner].acked_seq = 9
        t.progress[learner].last_contact_ms = 100.0
    # The leader alone holds 5: the learners' 9s make no majority of the voters.
    assert t.committed_index(5) == 0
    assert t.confirmed_round(3) == 0
    assert t.quorum_contact_ms(100.0) == float("-inf")
    t.start_votes()
    assert t.record_vote(4, True) is VoteResult.PENDING
    assert t.record_vote(5, True) is VoteResult.PENDING


def test_a_leader_that_is_not_a_voter_counts_without_itself() -> None:
    t = Tracker(1, (2, 3), ())
    t.start_progress(1)
    t.progress[2].match_index = 4
    assert t.committed_index(10) == 0  # its own 10 is no vote
    t.progress[3].match_index = 3
    assert t.committed_index(10) == 3


def test_set_members_adds_and_drops_progress() -> None:
    t = Tracker(1, (1, 2, 3))
    t.start_progress(5)
    t.set_members((1, 2), (4,), next_index=7)
    assert set(t.progress) == {2, 4} and t.progress[4].next_index == 7 and t.quorum == 2


# ---------------------------------------------------------------------------- the core


def test_implicit_membership_and_no_bootstrap_without_a_cluster_id() -> None:
    """Without a cluster id (the simulator's and transcripts' default) nothing changes."""
    it = Interaction()
    run(it, "start 3", "campaign 1", "stabilize")
    leader = raft(it, 1)
    assert leader.membership.implicit and leader.log.last_index == 1
    out = run(it, "change 1 remove 3")
    assert rejected(out) == ["bad_request"]


def test_the_first_leader_makes_the_membership_explicit_and_binds_who_it_knows() -> None:
    it = cluster()
    for i in (1, 2, 3):
        r = raft(it, i)
        assert r.membership == Membership(
            "c1", tuple(Member(j, "", True, f"u{j}") for j in (1, 2, 3))
        )
        assert r.membership_index == 2 and r.membership_at(1).implicit


def test_a_second_change_while_one_is_pending_is_rejected() -> None:
    it = cluster(4)
    out = run(it, "change 1 remove 4", "change 1 add 5")
    assert rejected(out) == ["pending"]
    assert raft(it, 1).pending_conf_index == raft(it, 1).log.last_index
    run(it, "stabilize")
    assert rejected(run(it, "change 1 add 5", "stabilize")) == []
    assert raft(it, 1).membership.learners == (5,)


def test_a_change_before_the_new_leaders_noop_commits_is_rejected() -> None:
    it = cluster(3, "check_quorum=false")  # 3 votes at once, not sticky to the dead leader
    run(it, "crash 1", "campaign 2", "deliver type=MsgPreVote", "deliver type=MsgPreVoteResp")
    run(it, "deliver type=MsgVote", "deliver type=MsgVoteResp")
    new = raft(it, 2)
    # Its no-op is appended, not committed (nothing delivered to 3 yet).
    assert new.role is Role.LEADER and new.commit_index < new.log.last_index
    assert rejected(run(it, "change 2 remove 1")) == ["pending"]
    run(it, "stabilize 2 3")
    assert rejected(run(it, "change 2 remove 1", "stabilize 2 3")) == []
    assert new.membership.ids == (2, 3)


def test_a_follower_names_the_leader_when_refusing_a_change() -> None:
    it = cluster()
    effects = raft(it, 2).step(10_000.0, ProposeConfChange(7, ConfChange(ConfChangeKind.REMOVE, 3)))
    assert [e for e in effects if isinstance(e, ConfChangeRejected)] == [
        ConfChangeRejected(7, "not_leader", "this node is not the leader", 1, {})
    ]


def test_a_learner_is_never_counted_toward_commit() -> None:
    """Two learners and the leader would be 3 of 5; they are 1 of 3 voters."""
    it = cluster(3)
    run(it, "add-node 4 5", "change 1 add 4", "stabilize", "change 1 add 5", "stabilize")
    assert raft(it, 1).membership.learners == (4, 5)
    run(it, "crash 2 3", "propose 1 x=1", "stabilize 1 4 5", "run 1000")
    leader = raft(it, 1)
    for learner in (4, 5):  # the learners hold it ...
        assert raft(it, learner).log.last_index == leader.log.last_index
    assert leader.commit_index < leader.log.last_index  # ... and it is not committed
    assert leader.role is Role.FOLLOWER  # CheckQuorum: the learners' answers are no quorum


def test_a_learner_never_campaigns_and_its_vote_never_counts() -> None:
    it = cluster(3)
    run(it, "add-node 4", "change 1 add 4", "run 500")
    assert raft(it, 4).next_deadline() == float("inf")  # after heartbeats, too
    run(it, "crash 1", "advance 5000 4")
    assert raft(it, 4).role is Role.FOLLOWER and raft(it, 4).term == raft(it, 2).term
    # 2 campaigns cut off from 3: the learner's grant alone is no majority of {1, 2, 3}.
    run(it, "partition 2 4 / 3", "campaign 2", "stabilize 2 4")
    run(it, "advance 1 2", "stabilize 2 4")
    assert raft(it, 2).role is not Role.LEADER


def test_truncating_an_uncommitted_config_entry_reverts_the_membership() -> None:
    it = cluster(5, "check_quorum=false")
    run(it, "add-node 6", "change 1 add 6")
    run(it, "drop to=3,4,5,6", "deliver to=2", "drop")  # the entry reaches 2 only
    r2 = raft(it, 2)
    assert r2.membership.learners == (6,)
    run(it, "crash 1", "campaign 3", "stabilize 3 4 5")
    assert raft(it, 3).role is Role.LEADER
    out = run(it, "stabilize 2 3 4 5")
    assert r2.membership.learners == () and r2.membership_index == 2
    assert any("membership @2" in line for line in out)  # MembershipChanged on the revert


def test_a_change_survives_the_leaders_crash_if_the_next_leader_has_it() -> None:
    it = cluster(3)
    run(it, "change 1 remove 3", "drop to=3", "deliver to=2", "crash 1")
    # 2's membership is {1, 2}: it needs 1. Without it, the change waits; no one can lead.
    run(it, "campaign 2", "stabilize 2 3", "advance 2000 2 3", "stabilize 2 3")
    assert all(raft(it, i).role is not Role.LEADER for i in (2, 3))
    run(it, "restart 1", "run 3000")
    assert {raft(it, i).role for i in (1, 2)} == {Role.LEADER, Role.FOLLOWER}
    for i in (1, 2):
        assert raft(it, i).membership.ids == (1, 2) and not raft(it, i).pending_conf_index


def test_the_removed_leader_hands_over_and_stops() -> None:
    it = cluster(3)
    out = run(it, "change 1 remove 1", "stabilize")
    old = raft(it, 1)
    assert old.role is Role.FOLLOWER and old.next_deadline() == float("inf")
    assert any("MsgTimeoutNow" in line for line in out)
    new = [i for i in (2, 3) if raft(it, i).role is Role.LEADER]
    assert len(new) == 1 and raft(it, new[0]).membership.ids == (2, 3)
    run(it, f"propose {new[0]} y=2", "run 5000")
    assert old.role is Role.FOLLOWER and raft(it, new[0]).role is Role.LEADER


def test_the_removed_leader_counts_quorums_without_itself_until_it_commits() -> None:
    it = cluster(3)
    run(it, "change 1 remove 1")
    leader = raft(it, 1)
    index = leader.log.last_index
    run(it, "drop to=3", "stabilize 1 2")  # only 2 acknowledges: no majority of {2, 3}
    assert leader.commit_index < index and leader.role is Role.LEADER
    run(it, "run 100")  # the next heartbeat brings 3 the entry: committed, handed over
    assert leader.role is Role.FOLLOWER


def test_a_removed_node_cannot_disrupt_even_without_prevote() -> None:
    it = cluster(3, "pre_vote=false", "check_quorum=false")  # nothing else to stop it
    run(it, "partition 1 2 / 3", "change 1 remove 3", "stabilize 1 2", "run 100")
    assert raft(it, 1).membership.ids == (1, 2) and raft(it, 3).membership.is_voter(3)
    assert not raft(it, 2).pending_conf_index  # 2 knows the removal is committed
    term = raft(it, 1).term
    run(it, "heal", "campaign 3", "stabilize 2 3")  # not delivered to 1 yet: it is cut below
    run(it, "advance 3000 3", "stabilize")
    assert raft(it, 3).term > term  # it campaigned, again and again ...
    assert raft(it, 1).term == raft(it, 2).term == term  # ... and nobody moved
    assert raft(it, 1).role is Role.LEADER


def test_a_wiped_voter_votes_again_only_once_its_bind_is_appended() -> None:
    it = cluster(3)
    out = run(it, "wipe 3")
    wiped = raft(it, 3)
    assert wiped.membership.implicit and wiped.uuid == "u3-1"
    # What the leader knew of 3's log described a disk that is gone: probe from scratch.
    assert raft(it, 1).progress[3].match_index == 0
    # The leader noticed the new data directory; no BIND yet reached 3: the leader goes down.
    run(it, "drop", "crash 1", "campaign 2", "stabilize 2 3", "advance 3000 2 3", "stabilize 2 3")
    assert raft(it, 2).role is not Role.LEADER  # 3 would not vote: no leader without 1
    assert "granted" not in " ".join(o for o in out if "3->2 MsgVoteResp" in o)
    run(it, "restart 1", "campaign 1", "stabilize", "advance 50", "stabilize")
    leader = next(i for i in (1, 2) if raft(it, i).role is Role.LEADER)
    assert wiped.membership.get(3) == Member(3, "", True, "u3-1")  # bound, by a BIND
    run(it, f"crash {leader}", "run 3000")
    assert {raft(it, i).role for i in (3 - leader, 3)} == {Role.LEADER, Role.FOLLOWER}


def test_a_wiped_voter_counts_in_no_quorum_until_it_is_a_voter_again() -> None:
    """Its acknowledgements after the wipe could rest on promises its old disk made (a vote
    for a newer leader): the leader and the wiped node alone must not commit anything."""
    it = cluster(3)
    # A change is pending (never delivered), so no BIND can take 3 back as a learner yet:
    # it stays a voter in the leader's membership, on a data directory not the bound one.
    run(it, "change 1 add 4", "drop", "wipe 3", "crash 2", "propose 1 lost?=1")
    leader = raft(it, 1)
    assert leader.membership.voters == (1, 2, 3) and leader.pending_conf_index
    add_index, last = leader.pending_conf_index, leader.log.last_index
    run(it, "stabilize 1 3")
    assert raft(it, 3).log.last_index >= last  # 3 holds everything, acknowledged ...
    assert leader.commit_index < add_index  # ... and nothing is committed
    run(it, "restart 2", "run 3000")
    m = raft(it, 1).membership
    assert m.voters == (1, 2, 3) and m.get(3) == Member(3, "", True, "u3-1")


def test_a_node_never_votes_in_the_term_that_bound_it() -> None:
    """A voter taken back on a new disk may have voted in that term before the wipe."""
    from dengine_trio.raft import Entry, EntryKind

    bound = ms((1, V, "u1"), (2, V, "u2"), (3, V, "new"))
    old = ms((1, V, "u1"), (2, V, "u2"), (3, L, "new"))
    entries = [
        Entry(4, 1, encode_membership(old), EntryKind.CONFIG),
        Entry(5, 2, encode_membership(bound), EntryKind.CONFIG),
    ]
    r = RaftNode(
        RaftConfig(node_id=3, voters=(1, 2, 3), check_quorum=False),
        random.Random(0),
        term=5,
        entries=entries,
        uuid="new",
        now_ms=0.0,
    )
    later = 10_000.0  # past the quiet period after a restart
    r.step(later, Receive(RequestVote(5, 2, 3, 2, 5, explicit=True, dst_uuid="new")))
    assert r.voted_for == 0
    r.step(later, Receive(RequestVote(6, 2, 3, 2, 5, explicit=True, dst_uuid="new")))
    assert r.voted_for == 2 and r.term == 6


def test_an_implicit_node_helps_elect_a_candidate_that_binds_it() -> None:
    """The bootstrap entry reached 2 only and the leader died: 3, still implicit, votes for 2
    because 2's membership binds it to 3's own data directory (no deadlock)."""
    it = Interaction()
    run(it, "start 3 cluster=c1", "campaign 1", "stabilize")
    it2 = Interaction()
    run(
        it2,
        "start 3 cluster=c1",
        "campaign 1",
        "deliver type=MsgPreVote",
        "deliver type=MsgPreVoteResp",
        "deliver type=MsgVote",
        "deliver type=MsgVoteResp",
        "deliver to=2 type=MsgApp",
        "drop",
        "crash 1",
    )
    assert not raft(it2, 2).membership.implicit and raft(it2, 3).membership.implicit
    run(it2, "campaign 2", "stabilize 2 3")
    assert raft(it2, 2).role is Role.LEADER


def test_an_implicit_node_refuses_an_explicit_candidate_that_does_not_bind_it() -> None:
    r = RaftNode(RaftConfig(node_id=3, voters=(1, 2, 3)), random.Random(0), uuid="new")
    for dst_uuid in ("", "old"):
        vote = RequestVote(5, 2, 3, 0, 0, explicit=True, dst_uuid=dst_uuid)
        assert not [e for e in r.step(0.0, Receive(vote)) if type(e).__name__ == "Send"]
        assert r.term == 0  # ignored: not even the term moved
    vote = RequestVote(5, 2, 3, 0, 0, explicit=True, dst_uuid="new")
    r.step(0.0, Receive(vote))
    assert r.voted_for == 2


def test_a_joining_node_is_no_member_and_neither_votes_nor_campaigns() -> None:
    r = RaftNode(
        RaftConfig(node_id=4, voters=(1, 2, 3)), random.Random(0), membership=Membership("", ())
    )
    assert r.next_deadline() == float("inf")
    r.step(0.0, Receive(RequestVote(5, 2, 4, 0, 0)))
    assert r.term == 0 and r.voted_for == 0


def test_promoting_a_far_behind_learner_is_rejected_with_its_lag() -> None:
    it = cluster(3, "max_promote_lag_entries=2")
    run(it, "change 1 add 4", "stabilize")  # node 4 never started: it holds nothing
    run(it, "propose 1 a=1 b=2 c=3", "stabilize")
    out = run(it, "change 1 promote 4")
    assert rejected(out) == ["behind"]
    assert any("lag=" + str(raft(it, 1).log.last_index) in line for line in out)


def test_a_joiner_is_promoted_automatically_once_caught_up_but_a_replica_is_not() -> None:
    it = cluster(3)
    run(it, "propose 1 a=1", "stabilize")
    run(it, "add-node 4 5", "change 1 add 4 promote=true", "stabilize")
    run(it, "change 1 add 5", "stabilize", "advance 100", "stabilize")
    m = raft(it, 1).membership
    assert m.voters == (1, 2, 3, 4) and m.learners == (5,)
    assert m.get(4) == Member(4, "n4", True, "u4") and m.get(5) == Member(5, "n5", False, "u5")


def test_a_learner_catching_up_by_snapshot_adopts_its_membership() -> None:
    it = cluster(3)
    run(it, "propose 1 a=1", "stabilize", "add-node 4")
    run(it, "crash 4", "change 1 add 4", "stabilize", "snapshot 1")
    leader = raft(it, 1)
    at = leader.membership_at(leader.snapshot_index)
    assert at.learners == (4,)
    out = run(it, "restart 4", "run 100")
    assert any("MsgSnap" in line for line in out)
    assert raft(it, 4).membership == at and raft(it, 4).membership_index == leader.snapshot_index
    with pytest.raises(ValueError):
        leader.membership_at(leader.snapshot_index - 1)


def test_a_restart_replays_config_entries_over_the_snapshot_membership() -> None:
    base = ms((1, V, "u1"), (2, V, "u2"), (3, V, "u3"))
    after = base.with_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4, "n4"))
    from dengine_trio.raft import Entry, EntryKind

    entries = [
        Entry(1, 6, b"x"),
        Entry(1, 7, encode_membership(after), EntryKind.CONFIG),
    ]
    r = RaftNode(
        RaftConfig(node_id=1, voters=(1, 2, 3)),
        random.Random(0),
        term=1,
        entries=entries,
        snapshot_index=5,
        snapshot_term=1,
        membership=base,
        membership_index=5,
        uuid="u1",
    )
    assert r.membership == after and r.membership_index == 7 and r.pending_conf_index == 7
    assert r.membership_at(6) == base


def test_a_membership_change_is_announced_before_the_messages_that_rely_on_it() -> None:
    it = cluster(3)
    leader = raft(it, 1)
    effects = leader.step(
        it.nodes[1].clock, ProposeConfChange(1, ConfChange(ConfChangeKind.ADD_LEARNER, 4, "n4"))
    )
    kinds = [type(e).__name__ for e in effects]
    assert "MembershipChanged" in kinds
    first_send_to_4 = next(
        i for i, e in enumerate(effects) if getattr(getattr(e, "message", None), "dst", 0) == 4
    )
    changed = next(i for i, e in enumerate(effects) if isinstance(e, MembershipChanged))
    assert changed < first_send_to_4


def test_the_transcript_runner_refuses_a_vote_by_an_unbound_node() -> None:
    """The runner's amnesia check can fail: a core that ignored its binding is caught."""
    it = cluster(3, "check_quorum=false")
    r3 = raft(it, 3)
    r3.uuid = "another-directory"
    r3._refuses_candidate = lambda m: False  # type: ignore[method-assign]
    with pytest.raises(TranscriptError, match="granted a vote while unbound"):
        run(it, "crash 1", "campaign 2", "stabilize")


def test_leadership_is_never_transferred_to_a_learner() -> None:
    """A learner never campaigns: a TimeoutNow to it would leave the cluster leaderless."""
    it = cluster(3)
    run(it, "add-node 4", "change 1 add 4", "stabilize")
    out = run(it, "transfer-leader 1 to=4", "stabilize")
    assert not any("MsgTimeoutNow" in line for line in out)
    assert raft(it, 1).role is Role.LEADER
    out = run(it, "transfer-leader 1", "stabilize")  # the best follower is a voter
    assert any("1->2 MsgTimeoutNow" in line or "1->3 MsgTimeoutNow" in line for line in out)


def test_membership_at_answers_from_the_snapshot_on_after_compaction() -> None:
    it = cluster(3)
    run(it, "add-node 4", "change 1 add 4", "stabilize", "propose 1 a=1", "stabilize")
    run(it, "change 1 remove 4", "stabilize", "propose 1 b=2", "stabilize")
    leader = raft(it, 1)
    run(it, "snapshot 1")
    assert leader.snapshot_index > leader.membership_index
    assert leader.membership_at(leader.snapshot_index).ids == (1, 2, 3)
    assert leader._configs == [(leader.membership_index, leader.membership)]  # the rest dropped
    with pytest.raises(ValueError):
        leader.membership_at(leader.snapshot_index - 1)
    run(it, "add-node 5", "change 1 add 5", "stabilize")
    assert leader.membership_at(leader.snapshot_index).ids == (1, 2, 3)
    assert leader.membership_at(leader.log.last_index).ids == (1, 2, 3, 5)


def test_a_leader_whose_quorum_shrinks_mid_step_steps_down_in_that_step() -> None:
    """CheckQuorum holds at every step boundary: 2 is long gone, 3 answers; then 3 turns out
    to run on a wiped directory (counted nowhere): the leader hears from no majority."""
    it = cluster(3, "disk=manual")  # no Persisted step after it: the identity step alone
    run(it, "crash 2", "run 700")
    leader = raft(it, 1)
    assert leader.role is Role.LEADER and leader.has_quorum_contact(leader.now)
    run(it, "wipe 3")  # steps 1 with PeerIdentity(3, "u3-1"), nothing else
    assert leader.role is Role.FOLLOWER


def test_leadership_is_never_transferred_to_a_voter_on_an_unbound_directory() -> None:
    """It would find nobody to vote for it (its membership is implicit, the others explicit)."""
    it = cluster(3)
    run(it, "change 1 add 4", "drop", "wipe 3")  # pending change: 3 stays an (uncounted) voter
    assert raft(it, 1).membership.is_voter(3)
    out = run(it, "transfer-leader 1 to=3", "stabilize 1 3")
    assert not any("MsgTimeoutNow" in line for line in out)


def test_a_removed_node_learns_of_its_removal_and_stops_campaigning() -> None:
    """The leader goes on replicating to a member it removed until the removal commits, so
    the removed node appends it too: no member any more, it has no election timer."""
    it = cluster(3)
    run(it, "change 1 remove 3", "stabilize", "run 100")
    removed = raft(it, 3)
    assert not removed.membership.is_voter(3) and removed.next_deadline() == float("inf")
    assert 3 not in raft(it, 1).progress  # committed: no longer replicated to
    out = run(it, "propose 1 z=1", "stabilize")
    assert not any("->3 " in line for line in out)


_members = st.lists(
    st.builds(
        Member,
        st.integers(1, 6),
        st.sampled_from(["", "a:1", "b:2", "c:3"]),
        st.booleans(),
        st.sampled_from(["", "u", "v"]),
        st.booleans(),
    ),
    max_size=6,
    unique_by=lambda m: m.id,
).map(lambda ms_: tuple(sorted(ms_, key=lambda m: m.id)))
_changes = st.builds(
    ConfChange,
    st.sampled_from(list(ConfChangeKind)),
    st.integers(0, 7),
    st.sampled_from(["", "a:1", "d:4"]),
    st.booleans(),
    st.lists(st.tuples(st.integers(1, 7), st.sampled_from(["", "u", "w"])), max_size=3).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(_members, _changes)
def test_every_change_moves_at_most_one_voter_and_round_trips(
    members: tuple[Member, ...], change: ConfChange
) -> None:
    """Thesis §4.1: the voter sets before and after any change differ by at most one server
    (so their majorities overlap), the last voter is never removed, and every membership
    survives its encoding."""
    before = Membership("c1", members)
    assert decode_membership(encode_membership(before)) == before
    try:
        after = before.with_change(change)
    except ConfChangeError:
        return
    assert len(set(before.voters) ^ set(after.voters)) <= 1
    assert after.voters or not before.voters
    assert decode_membership(encode_membership(after)) == after


def test_two_wiped_voters_are_taken_back_one_at_a_time() -> None:
    """S's simulator: two voters wiped while a change was pending; once it committed, the
    leader's automatic BIND named both voters (two servers at once) and raised."""
    it = cluster(5)
    run(it, "change 1 add 6", "drop", "wipe 4", "wipe 5")  # the pending change blocks a BIND
    run(it, "run 3000")
    m = raft(it, 1).membership
    assert m.voters == (1, 2, 3, 4, 5)
    assert m.get(4) == Member(4, "", True, "u4-1") and m.get(5) == Member(5, "", True, "u5-1")


@pytest.mark.parametrize(
    ("member", "other"),
    [
        ("127.0.0.1:9084", "127.0.0.1:09084"),  # a zero-padded port is the same port
        ("127.0.0.1:9084", "127.0.0.1:0009084"),
        ("db4.example.com:9084", "DB4.Example.COM:9084"),  # host names are case-insensitive
        ("db4.example.com:9084", "db4.example.com.:9084"),  # the fully qualified spelling
        ("[::1]:9084", "::1:9084"),  # IPv6 with or without brackets
        ("[::1]:9084", "[0:0:0:0:0:0:0:1]:9084"),  # compressed or not
        ("[fe80::a:1]:9084", "[FE80::A:1]:9084"),  # hex digits' case
        ("127.0.0.1:9084", "[::ffff:127.0.0.1]:9084"),  # an IPv4-mapped IPv6 address
        ("xn--bcher-kva.example:9084", "bücher.example:9084"),  # IDNA: what the resolver gets
        ("127.0.0.1:9084", "127.0.0.1:\u0669\u0660\u0668\u0664"),  # int() reads other digits
    ],
)
def test_another_spelling_of_a_members_address_is_a_duplicate(member: str, other: str) -> None:
    m = Membership("c1", (Member(1, member, True, "u1"),))
    with pytest.raises(ConfChangeError) as e:
        m.with_change(ConfChange(ConfChangeKind.ADD_LEARNER, 9, other))
    assert e.value.code == "duplicate_address" and e.value.detail == {"id": 1}


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("127.0.0.1:09084", "127.0.0.1:9084"),
        ("DB4.Example.COM:9084", "db4.example.com:9084"),
        ("db4.example.com.:9084", "db4.example.com.:9084"),  # kept: what is dialed
        ("::1:9084", "[::1]:9084"),
        ("[0:0:0:0:0:0:0:1]:09084", "[::1]:9084"),
        ("[::ffff:127.0.0.1]:9084", "[::ffff:7f00:1]:9084"),
        ("bücher.example:9084", "xn--bcher-kva.example:9084"),
        ("n4", "n4"),  # not host:port: left as written (the core carries it opaquely)
        ("", ""),
    ],
)
def test_canonical_address(address: str, canonical: str) -> None:
    assert canonical_address(address) == canonical


def test_different_ports_or_hosts_are_not_duplicates() -> None:
    m = Membership("c1", (Member(1, "127.0.0.1:9084", True, "u1"), Member(2, "", True, "u2")))
    for address in ("127.0.0.1:9085", "127.0.0.2:9084", "localhost:9084", "n1"):
        assert m.with_change(ConfChange(ConfChangeKind.ADD_LEARNER, 9, address)).ids == (1, 2, 9)


def test_promoting_a_learner_that_never_acknowledged_is_rejected_with_its_lag() -> None:
    """A learner whose address nobody answers at (match 0) in a log shorter than
    ``max_promote_lag_entries``: promoting it would add a voter that is down from its first
    moment. Refused ``behind`` as rule 7's automatic promotion would be."""
    it = cluster(3)
    run(it, "change 1 add 4", "stabilize", "advance 500", "stabilize")  # 4 never started
    leader = raft(it, 1)
    assert leader.log.last_index < leader.config.max_promote_lag_entries
    out = run(it, "change 1 promote 4")
    assert rejected(out) == ["behind"]
    assert any(f"lag={leader.log.last_index}" in line for line in out)
    assert leader.membership.learners == (4,)


def test_promoting_a_learner_silent_for_an_election_timeout_is_rejected() -> None:
    """Caught up once, then gone (crashed) for longer than the election timeout: refused."""
    it = cluster(3)
    run(it, "add-node 4", "change 1 add 4", "stabilize", "advance 100", "stabilize")
    leader = raft(it, 1)
    assert leader.progress[4].match_index == leader.log.last_index
    run(it, "crash 4", "run 1000")
    assert rejected(run(it, "change 1 promote 4")) == ["behind"]
    run(it, "restart 4", "advance 100", "stabilize")
    assert rejected(run(it, "change 1 promote 4", "stabilize")) == []
    assert leader.membership.voters == (1, 2, 3, 4)


# ------------------------------------------------ strict reconfiguration: quorum_at_risk


def test_removing_a_healthy_voter_while_another_is_silent_is_refused() -> None:
    """3 voters, 3 down: removing 2 would leave {1, 3}, one of them active, a majority of
    2 needed: the cluster could never commit again. Removing the silent 3 is fine."""
    it = cluster(3)
    run(it, "crash 3", "run 1000")
    leader = raft(it, 1)
    out = run(it, "change 1 remove 2")
    assert rejected(out) == ["quorum_at_risk"]
    assert any("[3]" in line and "needed=2" in line for line in out), out
    assert leader.membership.voters == (1, 2, 3) and not leader.pending_conf_index
    assert rejected(run(it, "change 1 remove 3", "stabilize 1 2")) == []
    assert leader.membership.voters == (1, 2) and leader.commit_index == leader.log.last_index


def test_removing_a_healthy_voter_of_five_while_two_are_silent_is_refused() -> None:
    it = cluster(5)
    run(it, "crash 4 5", "run 1000")
    leader = raft(it, 1)
    assert rejected(run(it, "change 1 remove 2")) == ["quorum_at_risk"]
    assert rejected(run(it, "change 1 remove 3")) == ["quorum_at_risk"]
    assert rejected(run(it, "change 1 remove 4", "stabilize 1 2 3")) == []
    assert leader.membership.voters == (1, 2, 3, 5) and not leader.pending_conf_index


def test_removing_a_learner_is_allowed_whoever_is_silent() -> None:
    it = cluster(3)
    run(it, "add-node 4", "change 1 add 4", "stabilize", "crash 3 4", "run 1000")
    leader = raft(it, 1)
    assert rejected(run(it, "change 1 remove 4", "stabilize 1 2")) == []
    assert leader.membership.ids == (1, 2, 3) and not leader.pending_conf_index


def test_the_leader_removing_itself_while_a_follower_is_silent_is_refused() -> None:
    """Once its removal is appended the leader counts quorums without itself: {2, 3} with 3
    silent could never commit it."""
    it = cluster(3)
    run(it, "crash 3", "run 1000")
    leader = raft(it, 1)
    assert rejected(run(it, "change 1 remove 1")) == ["quorum_at_risk"]
    assert leader.role is Role.LEADER and leader.membership.voters == (1, 2, 3)


def test_a_voter_on_another_data_directory_is_not_active() -> None:
    """Voter 3 answers the leader but runs on a data directory not the one it is bound to
    (wiped): it counts in no quorum and never votes. The leader takes it back as a learner
    (BIND) the moment it hears of the new directory, so the window is set up by hand: the
    leader knows 3's new uuid, no BIND appended yet. Removing 2 would leave {1, 3}, with 3
    unable to help: refused, naming 3."""
    it = cluster(3)
    leader = raft(it, 1)
    leader._peer_uuids[3] = "u3-1"  # as ``PeerIdentity`` would, without its BIND
    run(it, "run 100")
    assert leader.progress[3].last_contact_ms > leader.now - leader.config.election_timeout_min_ms
    out = run(it, "change 1 remove 2")
    assert rejected(out) == ["quorum_at_risk"]
    assert any("[3]" in line for line in out), out
    assert leader.membership.voters == (1, 2, 3)


def test_member_contact_shows_the_leader_what_a_quorum_at_risk_refusal_is_decided_by() -> None:
    """``member_contact`` (``GET /members``' ``heard_ms_ago`` and ``active``) agrees with the
    check, member by member: all active while all answer; a silent voter inactive with its
    silence; a voter on another data directory inactive though it answers; followers know
    nothing (only a leader hears from all)."""
    it = cluster(3)
    leader = raft(it, 1)
    run(it, "run 100")
    contact = leader.member_contact()
    assert contact[1] == (0, True)
    assert all(active for _, active in contact.values()) and set(contact) == {1, 2, 3}
    assert raft(it, 2).member_contact() == {}
    run(it, "crash 3", "run 1000")
    heard, active = leader.member_contact()[3]
    assert not active and heard is not None
    assert heard > leader.config.election_timeout_min_ms
    assert leader.member_contact()[2][1] is True
    assert rejected(run(it, "change 1 remove 2")) == ["quorum_at_risk"]


def test_member_contact_counts_a_voter_on_another_data_directory_inactive() -> None:
    it = cluster(3)
    leader = raft(it, 1)
    leader._peer_uuids[3] = "u3-1"  # as in the test above: a new directory, no BIND yet
    run(it, "run 100")
    heard, active = leader.member_contact()[3]
    assert heard is not None and heard < leader.config.election_timeout_min_ms
    assert active is False


def test_a_node_holding_its_uncommitted_removal_campaigns_until_told_it_committed() -> None:
    """Thesis §4.2.2: node 3 appended its own removal, which has not committed as far as it
    knows: it keeps an election timer (it may be needed to elect a leader). A member's word
    that the removal committed (``Removed``, the handshake's refusal, when the leader's
    heartbeat saying so never arrived) stops it, as the commit itself would."""
    it = cluster(3)
    run(it, "change 1 remove 3", "stabilize 1 3")  # 2 never answers: not committed
    node = raft(it, 3)
    removal = node.membership_index
    assert 3 not in node.membership.ids and node.commit_index < removal
    assert node.next_deadline() != float("inf")  # may campaign
    node.step_many(node.now, [Removed(removal)])
    assert node.next_deadline() == float("inf") and node.role is Role.FOLLOWER
