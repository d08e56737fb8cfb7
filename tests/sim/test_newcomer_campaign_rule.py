"""A newcomer's attacks on the campaign rule of fa45557 (docs/architecture.md, "Membership
changes in the core", rules 5 and 6; thesis §4.2.2): a node removed by a CONFIG entry that is
not committed as far as its own commit index knows still campaigns, without counting its own
vote, and stops once its commit index reaches that entry; when a removal commits, the leader
tells the removed members its commit index (one Heartbeat) before it stops replicating to
them. Each schedule is built step by step and asserts that what it aimed at happened."""

from __future__ import annotations

from dengine_trio.raft import Role
from dengine_trio.raft.membership import ConfChange, ConfChangeKind
from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    TimeoutNow,
)

from .cluster import Cluster, SimNode
from .test_membership import explicit_cluster, finish, wait_op, wait_until

ADD, REMOVE = ConfChangeKind.ADD_LEARNER, ConfChangeKind.REMOVE
CAMPAIGNING = (Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER)


def _record_leaders(c: Cluster) -> list[tuple[int, int, bool]]:
    """(node, term, voter of its own latest membership) for every leader from now on."""
    seen: list[tuple[int, int, bool]] = []

    def hook(moment: str, node: SimNode) -> bool:
        if moment == "became-leader" and node.raft is not None:
            me = node.raft.membership.get(node.id)
            seen.append((node.id, node.raft.term, me is not None and me.voter))
        return False

    c.hooks.append(hook)
    return seen


def _removed_and_told(c: Cluster, leader: int, r: int) -> int:
    """``leader`` removes ``r``; once committed and ``r`` knows it: the removal's index."""
    op = c.change(leader, ConfChange(REMOVE, r))
    wait_op(c, op)
    assert c.history[op].ok
    removal = c.raft(leader).membership_index
    assert wait_until(c, lambda: c.raft(r).commit_index >= removal)
    return removal


def _power_cut(c: Cluster, *groups: list[int]) -> None:
    """Every node stops (durable state kept) and starts again within ``groups``."""
    for n in c.ids:
        c.crash(n, lose_unflushed=False)
    c.partition(*groups)
    for n in c.ids:
        c.restart(n)


def _readd_as_read_replica(c: Cluster, leader: int) -> tuple[int, int]:
    """Remove a follower R (the removal commits and R learns it), then add R back, old disk,
    as a read replica (a learner, promote False), bound again to its uuid and caught up.
    Returns (R, the index of the entry that removed it)."""
    r = next(n for n in c.ids if n != leader)
    op = c.change(leader, ConfChange(REMOVE, r))
    wait_op(c, op)
    assert c.history[op].ok
    removal = c.raft(leader).membership_index
    assert r not in c.raft(leader).membership.ids
    # The commit heartbeat told R: it knows its removal committed, and is quiet.
    assert wait_until(c, lambda: c.raft(r).commit_index >= removal)
    assert c.raft(r).next_deadline() == float("inf")
    c.add_node(r)  # its old disk, its config now a joining node's
    op = c.change(leader, ConfChange(ADD, r, c.address(r), promote=False))
    wait_op(c, op)
    assert c.history[op].ok

    def settled() -> bool:
        lr = c.raft(leader)
        me = lr.membership.get(r)
        return (
            me is not None
            and not me.voter
            and me.uuid == c.nodes[r].uuid
            and not lr.pending_conf_index
            and c.raft(r).log.last_index == lr.log.last_index
            and c.raft(r).commit_index == lr.commit_index
        )

    assert wait_until(c, settled)
    assert c.raft(r).membership == c.raft(leader).membership
    assert c.raft(r).membership_index > removal  # a later CONFIG entry: the removal committed
    return r, removal


def test_a_read_replica_that_was_once_a_voter_never_campaigns_after_a_restart() -> None:
    """Voters {A, B, R}, CheckQuorum off (PreVote on, the default).

    1. A removes R; the removal (index i) commits and R learns it (the commit heartbeat): R
       is quiet, no election timer.
    2. R is added back, old disk, as a read replica: a learner, bound again to its uuid,
       caught up. R's log now holds CONFIG entries after i, which by rule 2 (one change at a
       time, appended only once the previous one committed) proves i is committed.
    3. R restarts (no snapshot): its commit index is 0 again. ``_cache_self`` walks R's
       configurations back past the newest one (R a learner) to the entry i that removed R
       as a voter, and sets ``_campaigns_until = i``: R, a learner of its latest membership,
       has an election timer again.
    4. A's heartbeats and AppendEntries to R are dropped (so R does not learn the commit
       index at once; a slow link would do). R pre-campaigns; A (CheckQuorum off: no
       stickiness) and B grant, R campaigns for real, A steps down and both vote: R leads
       (term 2), a learner of its own latest membership, and hands over to A (term 3).

    Wrong: learners never campaign (thesis §4.2.1, architecture rule 3); thesis §4.2.2 lets a
    server outside its latest configuration campaign only "until the Cnew entry is
    committed", and here R's own log proves it is. A read replica's restart deposes the
    leader. (The simulator's ``may_vote`` did not flag it: it judged by the commit index,
    as the core did.) Expected: R never campaigns. Fixed: ``_cache_self`` and ``may_vote``
    look only at the newest entry (the only one that can be uncommitted); a strict xfail
    until then."""
    c, leader = explicit_cluster(seed=11, check_quorum=False)
    r, removal = _readd_as_read_replica(c, leader)
    leaders = _record_leaders(c)
    c.crash(r)
    c.restart(r)
    raft = c.raft(r)
    me = raft.membership.get(r)
    assert me is not None and not me.voter  # a learner of its latest membership
    assert raft.commit_index < removal < raft.membership_index
    c.drop(leader, r, Heartbeat, AppendEntries)  # A's votes still reach R
    campaigned = wait_until(c, lambda: c.raft(r).role in CAMPAIGNING, 4_000)
    c.run_for(500)
    as_learner = [(n, t) for n, t, voter in leaders if n == r and not voter]
    assert not campaigned and not as_learner, (
        f"node {r}, a learner of its latest membership {c.raft(r).membership} whose removal "
        f"(index {removal}) its own log shows committed, campaigned; led as a learner in "
        f"terms {[t for _, t in as_learner]}"
    )
    finish(c)


def test_a_node_removed_twice_never_campaigns_after_a_full_restart() -> None:
    """Voters {A, B, R}, defaults (PreVote and CheckQuorum on).

    1. A removes R (index i, committed, R told); R is added back, old disk, as a read
       replica; then removed again (index j > i, committed, R told: it holds j and knows it
       committed). R's latest membership does not have it at all.
    2. Power cut: every node restarts (no snapshots: every commit index is 0), and A and B
       cannot reach each other (R reaches both).
    3. R: ``_cache_self`` walks back past j and the re-add to i, where R was a bound voter
       just before: ``_campaigns_until = i`` > 0 = its commit index, so R campaigns although
       its log proves i committed (j was appended after it, rule 2). A and B (commit index
       0: every membership of their logs is in reach, C0 has R) grant: R's log is as long.
       R leads a membership it is not a member of.

    Wrong: thesis §4.2.2 lets a server outside its latest configuration campaign only until
    that configuration's entry is committed, and §4.2.3 says removed servers must not
    disrupt; R's own log shows both removals committed. Expected: R never campaigns.
    Fixed as the test above (a strict xfail until then)."""
    c, a = explicit_cluster(seed=12)
    r, _ = _readd_as_read_replica(c, a)
    again = _removed_and_told(c, a, r)
    assert r not in c.raft(r).membership.ids and c.raft(r).next_deadline() == float("inf")
    b = next(n for n in c.ids if n not in (a, r))
    leaders = _record_leaders(c)
    _power_cut(c, [a, r], [b, r])
    assert r not in c.raft(r).membership.ids and c.raft(r).commit_index == 0
    campaigned = wait_until(c, lambda: c.raft(r).role in CAMPAIGNING, 4_000)
    c.run_for(1_000)
    outsider = [t for n, t, voter in leaders if n == r and not voter]
    assert not campaigned and not outsider, (
        f"node {r}, not a member of its latest membership {c.raft(r).membership} (its "
        f"removal at {again} is in its log, after an earlier one), campaigned; led in terms "
        f"{outsider}"
    )
    finish(c)


def test_the_commit_heartbeat_never_commits_a_stale_entry_and_the_removed_node_is_ignored() -> None:
    """Voters {A, B, C, D, R}. A removes R (C2 at i) and writes at i + 1, both reaching R
    only (A's AppendEntries to B, C, D are dropped). A and R crash (R's log durable). B, C,
    D elect B (term t + 1), whose no-op overwrites i on them; B's AppendEntries to R are
    dropped, its heartbeats pass. R comes back and follows B. B removes R again (C2' at
    i + 1, term t + 1) and commits it with C and D: the commit heartbeat tells R "commit
    i + 1, term t + 1". R holds at i + 1 A's write of term t: it must not take that commit
    (Log Matching, §5.3: only an entry of the same index and term vouches for the prefix),
    nor apply i or i + 1 (the simulator checks every apply against the committed log).
    Then B stops talking to R: R, holding its own removal C2 not committed in its eyes,
    campaigns (thesis §4.2.2) and is ignored by B, C and D, whose committed C2' has no R
    (§4.2.3): same leader, same term, writes commit."""
    c, a = explicit_cluster(size=5, seed=13)
    r, *others = (n for n in c.ids if n != a)
    for n in others:
        c.drop(a, n, AppendEntries)
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    stale = c.put(a, "stale")
    t = c.raft(a).term

    def r_holds_both() -> bool:
        return c.raft(r).durable_index >= i + 1

    assert wait_until(c, r_holds_both)
    assert c.raft(r).log.term_at(i + 1) == t and r not in c.raft(r).membership.ids
    c.crash(a)
    c.crash(r, lose_unflushed=False)
    c.heal()
    for n in others:
        c.drop(n, r, AppendEntries)
    assert wait_until(c, lambda: c.leader() in others and c.raft(c.leader())._committed_in_term())
    b = c.leader()
    assert b is not None and c.raft(b).term > t and c.raft(b).log.term_at(i) != t
    c.restart(r)
    assert wait_until(c, lambda: c.raft(r).leader_id == b)
    op = c.change(b, ConfChange(REMOVE, r))
    j = c.raft(b).membership_index
    for _ in range(3_000):  # 1 ms steps: the moment B commits the removal
        if c.raft(b).commit_index >= j:
            break
        c.run_for(1)
    committed_at = c.now
    assert c.raft(b).commit_index >= j and j >= i + 1 and c.raft(b).log.term_at(j) != t
    term = c.raft(b).term
    c.run_for(100)
    assert c.history[op].ok, c.history[op]
    # The commit heartbeat reached R (B's heartbeats stop once the removal commits).
    assert c.raft(r)._last_leader_contact >= committed_at - 1
    assert c.raft(r).log.term_at(j) != c.raft(b).log.term_at(j)  # R holds something else there
    assert c.raft(r).commit_index < i, c.raft(r).commit_index
    campaigned = wait_until(c, lambda: c.raft(r).role in CAMPAIGNING, 4_000)
    assert campaigned  # R's own removal (A's C2) is not committed in its eyes
    c.run_for(3_000)
    assert c.leader() == b and c.raft(b).term == term
    assert c.raft(r).commit_index < i
    written = c.put(b, "after")
    c.run_for(500)
    assert c.history[written].ok and not c.history[stale].ok
    finish(c)


def test_a_removed_node_that_missed_the_commit_heartbeat_campaigns_and_is_ignored() -> None:
    """Voters {A, B, R}, PreVote and CheckQuorum both off (nothing sticky, every campaign
    raises terms). A removes R; R appends the removal (AppendEntries pass) but every
    Heartbeat from A to R is dropped, the commit notice with them, so R's commit index never
    reaches the removal: R campaigns for real, again and again (its term climbs; thesis
    §4.2.2, it cannot know it is not needed). A and B, whose committed membership has no R,
    ignore its requests before looking at their term (§4.2.3): same leader, same term, writes
    commit, for seconds."""
    c, a = explicit_cluster(seed=14, pre_vote=False, check_quorum=False)
    r = next(n for n in c.ids if n != a)
    c.drop(a, r, Heartbeat)
    op = c.change(a, ConfChange(REMOVE, r))
    wait_op(c, op)
    assert c.history[op].ok
    removal = c.raft(a).membership_index
    assert c.raft(r).membership_index == removal and c.raft(r).commit_index < removal
    term, r_term = c.raft(a).term, c.raft(r).term
    c.run_for(6_000)
    assert c.raft(r).term >= r_term + 3  # it campaigned, several times
    assert c.raft(r).commit_index < removal
    assert c.leader() == a and c.raft(a).term == term
    b = next(n for n in c.ids if n not in (a, r))
    assert c.raft(b).term == term
    written = c.put(a, "after")
    c.run_for(500)
    assert c.history[written].ok
    finish(c)


def test_after_a_full_restart_a_removed_node_may_lead_once_and_hands_over() -> None:
    """Voters {A, B, R}. A removes R; the removal (the last entry) commits and R is told.
    Power cut: all restart, every commit index 0, and A and B cannot reach each other. R
    cannot know its removal committed (its latest membership {A, B} is the newest entry of
    its log), so it campaigns (thesis §4.2.2), without its own vote: it wins only with both
    A and B (a majority of {A, B}), leads {A, B} without itself, commits its no-op (and with
    it the removal), and hands over: it never leads again, has no election timer, and once
    healed a voter leads and writes commit."""
    c, a = explicit_cluster(seed=15)
    r = next(n for n in c.ids if n != a)
    b = next(n for n in c.ids if n not in (a, r))
    removal = _removed_and_told(c, a, r)
    assert c.raft(a).log.last_index == removal == c.raft(r).log.last_index
    leaders = _record_leaders(c)
    _power_cut(c, [a, r], [b, r])
    assert wait_until(c, lambda: any(n == r for n, _, _ in leaders), 5_000)
    led = [(t, voter) for n, t, voter in leaders if n == r]
    assert len(led) == 1 and not led[0][1]
    assert wait_until(c, lambda: c.raft(r).role is Role.FOLLOWER)
    assert c.raft(r).commit_index > removal and c.raft(r).next_deadline() == float("inf")
    c.heal()
    assert wait_until(c, lambda: c.leader() in (a, b))
    c.run_for(2_000)
    assert [n for n, _, _ in leaders].count(r) == 1
    finish(c)


def test_a_stale_timeout_now_lets_a_node_whose_removal_is_pending_lead_and_hand_over() -> None:
    """Voters {A, B, R}. A transfers leadership to R; the TimeoutNow is held and the
    transfer times out (A keeps leading, its lease void for the term). A then removes R
    (C2 = {A, B}); B's AppendEntries answers to A are dropped, so C2 stays uncommitted
    everywhere while R holds it. The held TimeoutNow lands: R, removed by an entry not
    committed in its eyes, may campaign (thesis §4.2.2) and a transfer campaign passes
    stickiness: A and B (C2 uncommitted, R still a member of a membership they may fall back
    to) grant, and R leads {A, B} without itself, counting neither its vote nor its log.
    It commits its no-op with A and B (and C2 with it), hands over to a voter and is quiet
    from then on; writes commit. (Before fa45557 R ignored the TimeoutNow.)"""
    c, a = explicit_cluster(seed=16)
    r = next(n for n in c.ids if n != a)
    b = next(n for n in c.ids if n not in (a, r))
    c.hold(a, r, TimeoutNow)
    c.transfer(a, r)
    assert wait_until(c, lambda: any(isinstance(m, TimeoutNow) for m in c.held), 1_000)
    c.run_for(c.raft(a).config.election_timeout_min_ms + 50)
    assert c.leader() == a and not c.raft(a)._leader.transfer_target
    term = c.raft(a).term
    slow = c.drop(b, a, AppendEntriesResponse)
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    removal = c.raft(a).membership_index
    assert wait_until(c, lambda: c.raft(r).membership_index == removal, 500)
    assert c.raft(a).commit_index < removal and c.raft(r).commit_index < removal
    leaders = _record_leaders(c)
    assert c.release(a, r, TimeoutNow) == 1
    assert wait_until(c, lambda: bool(leaders), 1_000)
    assert leaders[0][:2] == (r, term + 1) and not leaders[0][2]  # R led, a non-voter
    c.remove_rule(slow)
    assert wait_until(c, lambda: c.leader() in (a, b), 3_000)
    assert c.raft(r).commit_index >= removal and c.raft(r).next_deadline() == float("inf")
    c.run_for(3_000)
    assert [n for n, _, _ in leaders].count(r) == 1
    written = c.put(c.wait_for_leader(), "after")
    c.run_for(500)
    assert c.history[written].ok
    finish(c)


def test_a_wiped_node_holding_its_pending_removal_has_no_election_timer() -> None:
    """Voters {A, B, R}. B's AppendEntries answers to A are dropped, so A's removal of R
    (C2 = {A, B}) stays uncommitted. R is wiped at once (new uuid, implicit, empty) and the
    leader, still replicating to a departing member, brings it the whole log, C2 included.
    R was a bound voter before C2, but under its old uuid: the rule "removed by an entry not
    committed yet" must not give the new data directory (which never voted in this
    cluster's explicit memberships, and has forgotten any vote) an election timer. Then C2
    commits; R never leads, writes commit."""
    c, a = explicit_cluster(seed=18)
    r = next(n for n in c.ids if n != a)
    b = next(n for n in c.ids if n not in (a, r))
    slow = c.drop(b, a, AppendEntriesResponse)
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    removal = c.raft(a).membership_index
    leaders = _record_leaders(c)
    old_uuid = c.nodes[r].uuid
    c.wipe(r)
    assert c.nodes[r].uuid != old_uuid and c.raft(r).membership.implicit
    assert wait_until(c, lambda: c.raft(r).membership_index == removal, 3_000)
    raft = c.raft(r)
    assert raft.commit_index < removal and c.raft(a).commit_index < removal
    assert raft.log.last_index == c.raft(a).log.last_index
    assert raft.next_deadline() == float("inf") and raft.role is Role.FOLLOWER
    c.run_for(2_000)
    assert c.raft(r).role is Role.FOLLOWER and c.leader() == a
    c.remove_rule(slow)
    assert wait_until(c, lambda: c.raft(a).commit_index >= removal)
    written = c.put(a, "after")
    c.run_for(500)
    assert c.history[written].ok and c.history[op].ok
    assert all(n != r for n, _, _ in leaders)
    finish(c)
